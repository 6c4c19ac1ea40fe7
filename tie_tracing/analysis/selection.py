"""Coordinate selection (SPEC §7, Eq. 5): where to install an edit, chosen from TIE heatmaps.

``score(l, k, m) = mean_{f∈V} |TIE_f(l, k, m)| − β · mean_{g∈N} |TIE_g(l, k, m)|`` and the
chosen coordinate is the argmax. ``V`` are the traced forget/validation facts, ``N`` the
neighbour facts to keep (traced the same way). ``β = 0`` is naive max-magnitude selection (the
paper's headline setting); ``β > 0`` trades forget strength for selectivity.

The function works on plain tensors ``[fact, layer, step, module]`` or on
:class:`~tie_tracing.core.results.TIEResult` objects (whose ``tie`` it uses, with their labels).
Limits: it scores ``|TIE|`` per fact, so the sign of an effect is ignored; it refuses NaN
(normalised heatmaps can hold NaN where the clean–corrupt gap vanished: select on the raw
result, or fill the NaN yourself and say so). Ties go to the first cell in
``[layer, step, module]`` order.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core._guards import as_ints, as_real
from ..core.errors import ShapeError
from ..core.results import MODULE_ORDER, Coordinate, TIEPair, TIEResult, comparability_problems

__all__ = ["select_coordinate"]


def _analysis_tensor(x: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy for analysis; half precisions (bf16, fp16) become float32.

    Heatmaps are small, so the analyses run on CPU whatever device and dtype the trace used
    (masks and generators here are CPU ones). float32/float64 keep their dtype.
    """
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.cpu()


def _as_heatmaps(x: Any, what: str) -> tuple[torch.Tensor, tuple, tuple, tuple]:
    """``(tensor [fact, layer, step, module], layers, steps, modules)`` from a result or tensor.

    A :class:`TIEResult` contributes its known facts only (:meth:`TIEResult.known_only`: a
    fact the model does not know measures nothing). The tensor is a detached CPU copy,
    float32 for half-precision input (see :func:`_analysis_tensor`).
    """
    if isinstance(x, TIEResult):
        r = x.known_only()
        return _analysis_tensor(r.tie), r.layers, r.steps, r.modules
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a TIEResult or a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        hint = (
            " (for one map pass x[None]; Eq. 5 needs per-fact maps to average |TIE|)"
            if x.ndim == 3
            else ""
        )
        raise ShapeError(
            f"{what} must be [fact, layer, step, module] (4 axes), got shape {tuple(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a float tensor, got {x.dtype}")
    n_m = x.shape[3]
    modules = MODULE_ORDER if n_m == len(MODULE_ORDER) else tuple(f"m{i}" for i in range(n_m))
    return _analysis_tensor(x), tuple(range(x.shape[1])), tuple(range(x.shape[2])), modules


def _restriction_mask(
    shape: tuple[int, int, int],
    steps_labels: tuple,
    module_labels: tuple,
    modules: Sequence[str] | str | None,
    steps: Sequence[int] | int | None,
) -> torch.Tensor:
    """Boolean ``[layer, step, module]``: True where a cell may win."""
    allowed = torch.ones(shape, dtype=torch.bool)
    if modules is not None:
        names = [modules] if isinstance(modules, str) else list(modules)
        if not names:
            raise ValueError("modules= is empty: no cell could be selected")
        unknown = [m for m in names if m not in module_labels]
        if unknown:
            raise ValueError(
                f"unknown module(s) {unknown}; the heatmaps have {list(module_labels)}"
            )
        keep = torch.tensor([m in names for m in module_labels])
        allowed &= keep[None, None, :]
    if steps is not None:
        if not isinstance(steps, (int, Sequence, torch.Tensor)) or isinstance(steps, (str, bool)):
            raise TypeError(
                f"steps= must be a step label or a list of them, got {type(steps).__name__} "
                f"{steps!r}"
            )
        wanted = (
            [steps]
            if isinstance(steps, int)
            else [int(s) if isinstance(s, torch.Tensor) else s for s in steps]
        )
        if not wanted:
            raise ValueError("steps= is empty: no cell could be selected")
        bad = [s for s in wanted if s not in steps_labels]
        if bad:
            raise ValueError(
                f"step(s) {bad} out of range; the heatmaps cover steps {list(steps_labels)}"
            )
        keep = torch.tensor([s in wanted for s in steps_labels])
        allowed &= keep[None, :, None]
    return allowed


def _check_finite(x: torch.Tensor, allowed: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x) & allowed
    if bad.any():
        fact, layer, step, module = (int(i) for i in torch.nonzero(bad)[0])
        kind = "NaN" if bool(torch.isnan(x[bad]).any()) else "inf"
        raise ValueError(
            f"{what} hold {kind} in {int(bad.sum())} considered cells (first: fact {fact}, layer "
            f"index {layer}, step index {step}, module index {module}); select on the raw "
            "result, or fill non-finite cells explicitly"
        )


def _warn_if_flat(score: torch.Tensor, allowed: torch.Tensor, what: str) -> None:
    """Warn when every considered cell has the same score: the argmax is then arbitrary."""
    considered = score[allowed]
    if considered.numel() > 1 and bool((considered == considered[0]).all()):
        warnings.warn(
            f"every considered cell of the {what} scores {float(considered[0]):g}: the "
            "selected coordinate is arbitrary (the first cell). Check that the trace measured "
            "an effect (an all-zero TIE often means the model does not know the facts)",
            stacklevel=3,
        )


def split_pair(heatmaps: Any, neighbours: Any, fn: str = "select_coordinate") -> tuple[Any, Any]:
    """``(forget, neighbours)`` from ``heatmaps`` and ``neighbours=``: a
    :class:`~tie_tracing.core.results.TIEPair` or a mapping ``{"forget": ..., "neighbours": ...}``
    is unpacked; two :class:`TIEResult` s must be comparable (same model, ν, steps, sampler,
    …: the error names what differs)."""
    if isinstance(heatmaps, TIEPair) or isinstance(heatmaps, Mapping):
        keys = set(heatmaps.keys())
        if keys != {"forget", "neighbours"}:
            raise ValueError(
                f"{fn}: a mapping of heatmaps needs exactly the keys 'forget' and 'neighbours', "
                f"got {sorted(map(str, keys))}"
            )
        if neighbours is not None:
            raise ValueError(
                f"{fn}: the heatmaps already carry their neighbours; drop neighbours= (or pass "
                "the forget result alone)"
            )
        heatmaps, neighbours = heatmaps["forget"], heatmaps["neighbours"]
    if isinstance(heatmaps, TIEResult) and isinstance(neighbours, TIEResult):
        problems = comparability_problems(heatmaps, neighbours)
        if problems:
            raise ValueError(
                f"{fn}: the forget and neighbour traces were made differently ("
                + "; ".join(problems)
                + "), so their effects are not comparable; trace them together with "
                "tt.trace_tie(model, facts, neighbours=...), or with the same settings and nu="
            )
    return heatmaps, neighbours


def select_coordinate(
    heatmaps: TIEResult | TIEPair | Mapping[str, TIEResult] | torch.Tensor,
    *,
    beta: float = 0.0,
    neighbours: TIEResult | torch.Tensor | None = None,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> Coordinate:
    """Choose the intervention coordinate by Eq. 5 (SPEC §7).

    ``score = mean_f |TIE_f| − β · mean_g |TIE_g|`` per cell; the argmax wins.

    Args:
        heatmaps: Per-fact TIE of the forget/validation facts ``V``: a
            :class:`~tie_tracing.core.results.TIEResult` or a float tensor
            ``[fact, layer, step, module]``; or both sets at once, a
            :class:`~tie_tracing.core.results.TIEPair` (what ``tt.trace_tie(model, facts,
            neighbours=keep)`` returns) or a mapping ``{"forget": ..., "neighbours": ...}``.
            A bare tensor gets layer/step labels ``0 …`` and module labels
            ``("resid", "attn", "mlp")`` when it has 3 modules (the package convention),
            else ``("m0", "m1", …)``.
        beta: ``β ≥ 0``.
        neighbours: Per-fact TIE of the neighbour facts ``N``, same ``[layer, step, module]``
            shape (any number of facts), when ``heatmaps`` does not carry them; required
            when ``β > 0``. Two results must have been traced alike (model, ``ν``, steps,
            sampler, ``lp``, ``target``, γ): a difference is an error naming it.
        modules: Restrict to these module names (e.g. ``"resid"``, as the paper installs).
        steps: Restrict to these step labels.

    Returns:
        A :class:`~tie_tracing.core.results.Coordinate` with the winner's labels, its score and
        ``scores`` ``[layer, step, module]``, where cells excluded by ``modules=``/``steps=``
        are NaN.

    Raises:
        ValueError: β < 0 or not finite; β > 0 without neighbours; no facts; NaN in a
            considered cell; unknown module names or step labels; forget and neighbour
            results traced differently.
        ShapeError: a tensor is not 4-D, or neighbours differ in ``[layer, step, module]``.

    Example:
        >>> tie = torch.zeros(2, 3, 4, 3); tie[:, 1, 0, 2] = 1.0; tie[:, 2, 3, 0] = 0.8
        >>> select_coordinate(tie)
        Coordinate(layer=1, step=0, module='mlp', score=1, beta=0, scores[layer=3, step=4, module=3])
        >>> select_coordinate(tie, modules="resid").module
        'resid'
    """
    heatmaps, neighbours = split_pair(heatmaps, neighbours)
    beta = as_real(beta)
    steps = as_ints(steps) if steps is not None else None
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or beta != beta
        or abs(beta) == float("inf")
    ):
        raise ValueError(f"beta must be a finite number, got {beta!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and neighbours is None:
        raise ValueError(
            f"beta={beta} > 0 needs neighbours= (the facts to keep, traced like the forget "
            "facts): pair = tt.trace_tie(model, facts, neighbours=keep) traces both and "
            "select_coordinate(pair, beta=...) takes it; or use beta=0"
        )
    x, layers, step_labels, module_labels = _as_heatmaps(heatmaps, "heatmaps")
    if x.shape[0] == 0:
        raise ValueError("heatmaps hold no facts: Eq. 5 averages over at least one fact")
    cell_shape = (x.shape[1], x.shape[2], x.shape[3])
    allowed = _restriction_mask(cell_shape, step_labels, module_labels, modules, steps)
    _check_finite(x, allowed, "heatmaps")
    score = x.abs().mean(0)
    if neighbours is not None:
        n, n_layers, n_steps, n_modules = _as_heatmaps(neighbours, "neighbours")
        if tuple(n.shape[1:]) != cell_shape:
            raise ShapeError(
                f"neighbours are [layer, step, module] = {tuple(n.shape[1:])}, heatmaps {cell_shape}"
            )
        if isinstance(heatmaps, TIEResult) and isinstance(neighbours, TIEResult):
            if (n_layers, n_steps, n_modules) != (layers, step_labels, module_labels):
                raise ShapeError("neighbours and heatmaps have different layer/step/module labels")
        if n.shape[0] == 0:
            if beta > 0:
                raise ValueError("neighbours hold no facts but beta > 0")
        else:
            _check_finite(n, allowed, "neighbours")
            if beta > 0:
                score = score - beta * n.abs().mean(0).to(score.dtype)
    _warn_if_flat(score, allowed, "heatmaps")
    scores = torch.where(allowed, score, torch.full_like(score, float("nan")))
    flat = torch.where(allowed, score, torch.full_like(score, -float("inf"))).flatten()
    best = int(torch.argmax(flat))
    li, rest = divmod(best, cell_shape[1] * cell_shape[2])
    si, mi = divmod(rest, cell_shape[2])
    return Coordinate(
        layer=layers[li],
        step=step_labels[si],
        module=module_labels[mi],
        score=float(score[li, si, mi]),
        scores=scores,
        beta=float(beta),
        layers=layers,
        steps=step_labels,
        modules=module_labels,
    )
