"""What Figure 2 reports, computed once: maps over people with cluster-bootstrap CIs, the
contrast object − name, the final-answer effect, the immediate share, the commit-aligned
view and the cells that are zero by architecture (SPEC §5, §10.1).

The figure layer (:func:`~tie_tracing.figures.plotting.plot_figure2`) only draws what
:func:`figure2_data` returns; nothing here runs a model.

* **CIs resample people.** Facts of one subject are not independent (they share the
  subject's name, whose embedding the corruption hits), so every interval here is a
  **cluster bootstrap** (:func:`cluster_bootstrap_ci`): each resample draws people with
  replacement and averages all their facts.
* **Quantities** (each a :class:`MapStats`, ``[layer, step, module]``):

  - ``tie`` — Eq. 4 on the result's target (the object by default);
  - ``final`` — the **final-answer effect** ``IE_{T−1}(l, k, m)``: what the patch at step
    ``k`` changes in the log-probability of the finished answer;
  - ``immediate`` — the ``k' = k`` part of Eq. 4, ``IE_k / Σ_{j=0}^{T−1−k} γ^j``: what the
    patched forward itself contributes to ``TIE`` (``immediate_share`` is its share of the
    absolute mass);
  - ``contrast`` — ``TIE_object − TIE_name`` per fact (given a trace of the same facts under
    ``target="name"``): what is specific to the fact beyond the subject's identity;
  - ``aligned`` / ``aligned_final`` — ``TIE`` and ``IE_{T−1}`` on a step axis relative to each
    fact's object-commit step in the clean run (``k − c_f``; facts whose object never
    commits are left out), so that facts that decide their object at different steps line
    up.
* **Structural zeros** (``structural``, ``[layer, module]``): the sites that
  :func:`~tie_tracing.tracing.tie.structural_zeros` found zero by architecture for every
  averaged fact (recorded by the trace from the backbone, not inferred from values).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.errors import ShapeError
from ..core.results import TIEResult, comparability_problems

__all__ = [
    "Figure2Data",
    "MapStats",
    "cluster_bootstrap_ci",
    "commit_aligned",
    "figure2_data",
    "final_effect",
    "immediate_part",
    "structural_mask",
    "tie_map_stats",
]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def cluster_bootstrap_ci(
    per_fact: torch.Tensor,
    groups: Sequence[Any],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile cluster-bootstrap CI of the NaN-aware mean over facts, per cell.

    Each resample draws ``n_groups`` groups (people) with replacement and takes the mean over
    every fact of the drawn groups, a group drawn twice counting twice; a fact's NaN cell is
    left out of that cell's mean. With one fact per group this is the ordinary bootstrap
    over facts. One group gives the degenerate interval ``(mean, mean)``: no spread between
    people to resample (callers say so).

    Args:
        per_fact: ``[fact, ...]`` float tensor.
        groups: One label per fact (e.g. ``result.subjects``).
        n_resamples, confidence, seed: of the bootstrap.

    Returns:
        ``(low, high)``, each ``per_fact.shape[1:]``, float64 on the CPU.

    Raises:
        ShapeError: ``groups`` does not have one label per fact.
        ValueError: no facts; ``confidence`` outside ``(0, 1)``.

    Example:
        >>> x = torch.tensor([[0.0], [0.0], [4.0], [4.0]])   # two people, two facts each
        >>> low, high = cluster_bootstrap_ci(x, ["a", "a", "b", "b"], n_resamples=400)
        >>> float(low[0]), float(high[0])                   # 0, 2 or 4: all of a or all of b
        (0.0, 4.0)
    """
    if not isinstance(per_fact, torch.Tensor) or per_fact.ndim < 1:
        raise ShapeError("per_fact must be a tensor with a leading fact axis")
    n = per_fact.shape[0]
    if n == 0:
        raise ValueError("cluster_bootstrap_ci over an empty fact axis")
    if len(groups) != n:
        raise ShapeError(f"groups has {len(groups)} labels for {n} facts: give one per fact")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    data = _np(per_fact).reshape(n, -1)
    shape = per_fact.shape[1:]
    labels = list(dict.fromkeys(groups))
    index = np.array([labels.index(g) for g in groups])
    finite = np.isfinite(data)
    values = np.where(finite, data, 0.0)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(labels), [1.0 / len(labels)] * len(labels), size=n_resamples)
    weights = counts[:, index].astype(np.float64)  # [boot, fact]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (weights @ values) / (weights @ finite)  # [boot, cells]
        full = values.sum(0) / finite.sum(0)
    alpha = (1.0 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        low = np.nanquantile(means, alpha, axis=0)
        high = np.nanquantile(means, 1 - alpha, axis=0)
    if len(labels) == 1:
        low, high = full, full.copy()
    const = np.all((data == data[:1]) | ~finite, axis=0) & finite.any(0)
    low = np.where(const, full, low)
    high = np.where(const, full, high)
    return (
        torch.from_numpy(low.reshape(shape)).double(),
        torch.from_numpy(high.reshape(shape)).double(),
    )


def final_effect(result: TIEResult) -> torch.Tensor:
    """``[fact, layer, step, module]``: ``IE_{T−1}``, the patch's effect on the finished
    answer's log-probability (NaN where the trace did not follow the future to the end)."""
    return result.ie[..., -1]


def immediate_part(result: TIEResult) -> torch.Tensor:
    """``[fact, layer, step, module]``: the ``k' = k`` term of Eq. 4,
    ``IE_k(l, k, m) / Σ_{j=0}^{T−1−k} γ^j`` (the patched forward's own contribution to
    ``TIE``; ``TIE − immediate_part`` is what the later steps add)."""
    n_t = result.n_later_steps
    gamma = float(result.config["decay"])
    norm = [sum(gamma**j for j in range(n_t - k)) for k in range(n_t)]
    return torch.stack(
        [result.ie[:, :, si, :, k] / norm[k] for si, k in enumerate(result.steps)], dim=2
    )


def commit_aligned(
    per_fact: torch.Tensor,
    steps: Sequence[int],
    commit: torch.Tensor,
    n_steps: int,
    *,
    trim: bool = False,
) -> tuple[torch.Tensor, list[int]]:
    """``per_fact`` ``[fact, layer, step, module]`` on the step axis relative to each fact's
    commit step: ``[fact, layer, relative, module]`` over ``k − c_f ∈ −(T−1) … T−1``, NaN where
    a fact has no such step and for facts that never committed (``c_f < 0``). Also the
    relative step labels; ``trim`` keeps only the span of relative steps some fact reaches."""
    rel = list(range(-(n_steps - 1), n_steps))
    f, n_l, _, n_m = per_fact.shape
    out = torch.full((f, n_l, len(rel), n_m), float("nan"), dtype=per_fact.dtype)
    for i in range(f):
        c = int(commit[i])
        if c < 0:
            continue
        for si, k in enumerate(steps):
            out[i, :, k - c + n_steps - 1] = per_fact[i, :, si]
    if trim:  # only the relative steps some fact reaches
        used = [j for j in range(len(rel)) if torch.isfinite(out[:, :, j]).any()]
        if used:
            keep = list(range(used[0], used[-1] + 1))
            return out[:, :, keep], [rel[j] for j in keep]
    return out, rel


@dataclass(frozen=True, eq=False)
class MapStats:
    """One quantity over ``[layer, step, module]``: mean over facts and its cluster CI.

    Attributes:
        name: What it is (``"tie"``, ``"final"``, ``"immediate"``, ``"contrast"``, …).
        per_fact: ``[fact, layer, step, module]`` (the averaged facts).
        mean, low, high: ``[layer, step, module]`` NaN-aware mean and 95% CI over people.
        n_facts: Facts with a value, per cell ``[layer, step, module]``.
        steps: Labels of the step axis (relative steps for the aligned views).
    """

    name: str
    per_fact: torch.Tensor
    mean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    n_facts: torch.Tensor
    steps: tuple[int, ...]

    @property
    def crosses_zero(self) -> torch.Tensor:
        """``[layer, step, module]`` bool: the CI contains 0 (``low < 0 < high``)."""
        return (self.low < 0) & (self.high > 0)


def _stats(
    name: str,
    per_fact: torch.Tensor,
    groups: Sequence[str],
    steps: Sequence[int],
    n_resamples: int,
    seed: int,
) -> MapStats:
    x = per_fact.detach().to("cpu", torch.float64)
    finite = torch.isfinite(x)
    count = finite.sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = torch.where(count > 0, torch.where(finite, x, 0.0).sum(0) / count, math.nan)
    low, high = cluster_bootstrap_ci(x, groups, n_resamples=n_resamples, seed=seed)
    return MapStats(name, x, mean, low, high, count, tuple(int(s) for s in steps))


@dataclass(frozen=True, eq=False)
class Figure2Data:
    """Everything Figure 2 draws and states, from :func:`figure2_data`.

    Attributes:
        maps: Name → :class:`MapStats`: ``tie``, ``final``, ``immediate``, ``aligned``,
            ``aligned_final`` and, given a name-target trace, ``name`` and ``contrast``.
        layers, steps, modules: Axis labels (``steps`` of the unaligned maps).
        fact_ids, people: The averaged facts (those the model knows) and their subjects.
        n_facts_all: Facts in the result, unknown ones included.
        commit_steps: ``[fact]`` the clean run's object-commit step of each averaged fact.
        idle: ``[step]`` bool, steps idle for every averaged fact.
        structural: ``[layer, module]`` bool, sites zero by architecture for every averaged
            fact (``config["structural_zeros"]``; all ``False`` when not recorded).
        immediate_share: ``Σ|immediate| / (Σ|immediate| + Σ|TIE − immediate|)`` over the
            averaged facts and measured cells: how much of Eq. 4 is the patched forward's
            own effect.
        target: The result's target; ``config``: its settings.
    """

    maps: dict[str, MapStats]
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    modules: tuple[str, ...]
    fact_ids: tuple[str, ...]
    people: tuple[str, ...]
    n_facts_all: int
    commit_steps: torch.Tensor
    idle: torch.Tensor
    structural: torch.Tensor
    immediate_share: float
    target: str
    config: dict = field(repr=False)

    @property
    def n_people(self) -> int:
        return len(set(self.people))

    def summary(self, module: str = "resid") -> dict[str, Any]:
        """Numbers the figure's caption and the main job state, for one module: where the
        Eq. 4 map, the final-answer effect and the contrast peak (cell, mean, CI), the
        immediate share, the commit steps, the people behind the CIs, and the share of the
        mean map's ``|TIE|`` on each step (``step_profile``) and on each step relative to the
        object commit (``aligned_profile``): how the map sits on the step axis."""
        mi = self.modules.index(module)
        out: dict[str, Any] = {
            "module": module,
            "target": self.target,
            "n_facts": len(self.fact_ids),
            "n_people": self.n_people,
            "immediate_share": self.immediate_share,
            "object_commit_steps": sorted({int(c) for c in self.commit_steps}),
            "structural_zero_layers": sorted(
                {self.layers[i] for i in range(len(self.layers)) if self.structural[i, mi]}
            ),
        }
        for name, key in (("tie", "step_profile"), ("aligned", "aligned_profile")):
            m = self.maps[name]  # share of the mean map's |value| on each (relative) step
            mass = m.mean[:, :, mi].abs().nan_to_num(0.0)
            mass[self.structural[:, mi]] = 0.0
            total = float(mass.sum())
            by_step = (mass.sum(0) / total).tolist() if total > 0 else [math.nan] * len(m.steps)
            out[key] = dict(zip(m.steps, by_step))
        for name in ("tie", "final", "contrast", "aligned_final"):
            if name not in self.maps:
                continue
            m = self.maps[name]
            mean = m.mean[:, :, mi].clone()
            mean[self.structural[:, mi]] = math.nan
            if not torch.isfinite(mean).any():
                continue
            flat = mean.nan_to_num(0.0).abs().flatten()
            i = int(flat.argmax())
            li, si = divmod(i, mean.shape[1])
            out[name] = {
                "layer": self.layers[li],
                "step": m.steps[si],
                "mean": float(m.mean[li, si, mi]),
                "ci95": [float(m.low[li, si, mi]), float(m.high[li, si, mi])],
                "mean_abs_map": float(torch.nanmean(m.mean[:, :, mi].abs())),
            }
        return out


def tie_map_stats(result: TIEResult, *, n_resamples: int = 2000, seed: int = 0) -> MapStats:
    """Eq. 4's map over every fact of ``result`` (callers pass ``result.known_only()``): the
    NaN-aware mean and its 95% CI over people (:func:`cluster_bootstrap_ci` by subject)."""
    return _stats("tie", result.tie, result.subjects, result.steps, n_resamples, seed)


def figure2_data(
    result: TIEResult,
    name: TIEResult | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Figure2Data:
    """Figure 2's numbers from a trace (and, for the contrast, a trace of the same facts under
    ``target="name"``), over the facts the model knows, with CIs that resample people.

    Args:
        result: A :class:`~tie_tracing.core.results.TIEResult` (the object target by default).
        name: The same facts traced with ``target="name"`` and otherwise the same settings
            (``tt.tracing.SweepCache`` makes it nearly free); ``None``: no contrast.
        n_resamples, seed: Of the cluster bootstrap.

    Raises:
        TypeError: not a ``TIEResult``.
        ValueError: ``name`` is not a name-target trace of the same facts and settings
            (says what differs); no fact the model knows.

    Example:
        >>> r = TIEResult.synthetic(n_facts=4, n_layers=3, n_steps=4, seed=0)
        >>> d = figure2_data(r, n_resamples=200)
        >>> sorted(d.maps), tuple(d.maps["tie"].mean.shape)
        (['aligned', 'aligned_final', 'final', 'immediate', 'tie'], (3, 4, 3))
    """
    if not isinstance(result, TIEResult):
        raise TypeError(f"figure2_data takes a TIEResult, got {type(result).__name__}")
    keep = result.known
    if not bool(keep.any()):
        keep = torch.ones_like(keep)  # none known: average every fact (the figure says so)
    idx = keep.nonzero().flatten().tolist()
    r = result.select_facts(idx) if len(idx) < result.n_facts else result
    people = tuple(r.subjects)
    n_t = r.n_later_steps
    steps = tuple(r.steps)
    maps: dict[str, MapStats] = {}

    def add(key: str, per_fact: torch.Tensor, labels: Sequence[int] = steps) -> None:
        maps[key] = _stats(key, per_fact, people, labels, n_resamples, seed)

    add("tie", r.tie)
    add("final", final_effect(r))
    imm = immediate_part(r)
    add("immediate", imm)
    try:
        commit = r.object_commit_step
    except KeyError:  # no commit maps recorded: nothing to align to
        commit = torch.full((r.n_facts,), -1, dtype=torch.long)
    aligned, rel = commit_aligned(r.tie, steps, commit, n_t, trim=True)
    add("aligned", aligned, rel)
    aligned_f, _ = commit_aligned(final_effect(r), steps, commit, n_t, trim=True)
    add("aligned_final", aligned_f, rel)
    if name is not None:
        _check_name(result, name)
        named = name.select_facts(idx) if len(idx) < result.n_facts else name
        add("name", named.tie)
        add("contrast", r.tie - named.tie)
    later = (r.tie - imm).abs()
    ok = torch.isfinite(imm) & torch.isfinite(later)
    a, b = float(imm.abs()[ok].sum()), float(later[ok].sum())
    share = a / (a + b) if a + b > 0 else math.nan
    try:
        idle = r.idle_steps[:, list(steps)].all(0)
    except KeyError:
        idle = torch.zeros(len(steps), dtype=torch.bool)
    structural = structural_mask(r)
    return Figure2Data(
        maps=maps,
        layers=tuple(r.layers),
        steps=steps,
        modules=tuple(r.modules),
        fact_ids=tuple(r.fact_ids),
        people=people,
        n_facts_all=result.n_facts,
        commit_steps=commit,
        idle=idle,
        structural=structural,
        immediate_share=share,
        target=str(r.config.get("target", "answer")),
        config=dict(r.config),
    )


def structural_mask(result: TIEResult) -> torch.Tensor:
    """``[layer, module]`` bool: the sites recorded zero by architecture
    (``config["structural_zeros"]``, from the backbone at trace time) for **every** fact of
    ``result``; all ``False`` for results that do not record them."""
    zeros = result.config.get("structural_zeros") or {}
    out = torch.zeros(len(result.layers), len(result.modules), dtype=torch.bool)
    if not isinstance(zeros, dict) or not all(fid in zeros for fid in result.fact_ids):
        return out
    common = set.intersection(*({tuple(c) for c in zeros[fid]} for fid in result.fact_ids))
    for layer, module in common:
        if layer in result.layers and module in result.modules:
            out[result.layers.index(layer), result.modules.index(module)] = True
    return out


def _check_name(result: TIEResult, name: TIEResult) -> TIEResult:
    if not isinstance(name, TIEResult):
        raise TypeError(f"name= takes a TIEResult, got {type(name).__name__}")
    if name.config.get("target") != "name":
        raise ValueError(
            f"name= must be traced with target='name', got target="
            f"{name.config.get('target')!r}: trace the same facts with target='name'"
        )
    if tuple(name.fact_ids) != tuple(result.fact_ids):
        raise ValueError(
            "name= must hold the same facts in the same order as the result (fact ids "
            f"{list(result.fact_ids)[:3]}… vs {list(name.fact_ids)[:3]}…)"
        )
    problems = [p for p in comparability_problems(result, name) if not p.startswith("target ")]
    if tuple(result.seeds) != tuple(name.seeds):
        problems.append(f"seeds {list(result.seeds)} vs {list(name.seeds)}")
    if problems:
        raise ValueError(
            "name= was traced with other settings than the result: " + "; ".join(problems)
        )
    return name
