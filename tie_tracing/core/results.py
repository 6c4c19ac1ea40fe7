"""Result objects: what tracing and selection return, with their axes, labels and provenance.

Three frozen dataclasses carry everything that defines a result (penzai's "what you see is
what you get"): the tensors, their axis names (``.dims``) and labels, the clean and corrupted
baselines, the config, the seeds, the model id and the package version.

* :class:`TIEResult` — diffusion-time tracing (SPEC §5): ``tie`` ``[fact, layer, step,
  module]`` (Eq. 4) and the raw indirect effects ``ie`` ``[fact, layer, step, module,
  later_step]`` (Eq. 3), plus log-probability baselines, committed tokens and the engine's
  divergence statistic. :func:`tie_from_ie` is Eq. 4 itself; the engine calls it.
* :class:`PositionalResult` — ROME-style positional tracing (SPEC §6): ``[fact, layer,
  position, module]``, NaN-padded to the longest prompt.
* :class:`Coordinate` — the winner of coordinate selection (SPEC §7, Eq. 5) with the whole
  score landscape.

Every result saves to one ``.safetensors`` file (tensors, plus the metadata as JSON in the
safetensors header), written atomically (temporary file in the same directory, then
``os.replace``); ``load`` reproduces the object exactly (tensors bit for bit, metadata equal).

Limits: results hold CPU or device tensors as given, but ``save`` always writes CPU copies
and ``load`` returns CPU tensors. ``config`` must be JSON-serialisable; it is copied through
a JSON round trip at construction (tuples become lists) so that a saved and re-loaded result
compares equal. Averages over facts are NaN-aware (``torch.nanmean``): a fact whose cell is
NaN (for example a normalised cell whose clean-corrupt gap vanished) is left out of that
cell's mean rather than poisoning it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from .._version import __version__
from ._guards import as_int
from ._io import ResultFileError, Saveable, load_object, save_object, to_dataframe
from .errors import ShapeError
from .provenance import PositionalProvenance, Provenance, TraceProvenance
from .sampler import commit_steps as _commit_steps

__all__ = [
    "Coordinate",
    "PositionalResult",
    "ResultFileError",
    "TIEPair",
    "TIEResult",
    "tie_from_ie",
]

MODULE_ORDER: tuple[str, ...] = ("resid", "attn", "mlp")
# Config keys that legitimately differ between runs on different fact sets; ``concat``
# keeps each part's value in a list instead of refusing to merge.
_PER_RUN_CONFIG_KEYS: tuple[str, ...] = ("nu", "sigma_emb", "seed", "engine_stats")
# Config keys holding per-fact lists; ``concat`` joins them.
_JOINED_CONFIG_KEYS: tuple[str, ...] = ("unknown_facts",)

R = TypeVar("R", bound="_ResultBase")


# ----------------------------------------------------------------------------- Eq. 4


def tie_from_ie(
    ie: torch.Tensor,
    decay: float,
    *,
    steps: Sequence[int] | None = None,
    nan_policy: str = "propagate",
) -> torch.Tensor:
    """Aggregate indirect effects over later steps with exponential decay (SPEC §5, Eq. 4).

    ``TIE(k) = Σ_{k'≥k} γ^{k'-k} · IE_{k'}(k) / Σ_{k'≥k} γ^{k'-k}``, the sums running over the
    later steps ``k' = k … T-1`` of the trajectory. Entries with ``k' < k`` are ignored
    whatever they hold (the engine stores NaN there).

    Args:
        ie: Indirect effects ``[..., step, module, later_step]`` (any leading axes, e.g.
            ``[fact, layer, step, module, later_step]``). ``later_step`` covers all ``T``
            denoising steps ``0 … T-1``.
        decay: ``γ ∈ (0, 1]``; ``1`` is the plain mean over later steps.
        steps: The denoising step of each index of the ``step`` axis (default ``0 … K-1``);
            lets a sweep over a subset of steps be aggregated correctly.
        nan_policy: ``"propagate"`` (exact Eq. 4: a NaN among a cell's later steps makes the
            cell NaN) or ``"omit"`` (NaN later steps get weight 0 and the remaining weights
            are renormalised; a cell with none left is NaN).

    Returns:
        ``[..., step, module]``, the dtype of ``ie``.

    Example:
        >>> ie = torch.tensor([[[1.0, 1.0]], [[float("nan"), 4.0]]])  # [step=2, module=1, later=2]
        >>> tie_from_ie(ie, 0.5)  # step 0: (1 + 0.5*1)/1.5 ; step 1: 4
        tensor([[1.],
                [4.]])
    """
    if not (isinstance(decay, (int, float)) and 0.0 < float(decay) <= 1.0):
        raise ValueError(f"decay must lie in (0, 1], got {decay!r}")
    if nan_policy not in ("propagate", "omit"):
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', got {nan_policy!r}")
    if ie.ndim < 3:
        raise ShapeError(
            f"ie must be [..., step, module, later_step] (at least 3 axes), got shape {tuple(ie.shape)}"
        )
    if not ie.is_floating_point():
        raise TypeError(f"ie must be a float tensor, got {ie.dtype}")
    n_steps, n_later = ie.shape[-3], ie.shape[-1]
    step_labels = list(range(n_steps)) if steps is None else [int(s) for s in steps]
    if len(step_labels) != n_steps:
        raise ShapeError(f"steps has {len(step_labels)} labels but ie has {n_steps} steps")
    if any(not 0 <= s < n_later for s in step_labels):
        raise ValueError(f"steps {step_labels} must lie in 0 … {n_later - 1} (the later_step axis)")
    s = torch.tensor(step_labels, device=ie.device).unsqueeze(-1)  # [K, 1]
    later = torch.arange(n_later, device=ie.device).unsqueeze(0)  # [1, T]
    lag = later - s  # [K, T]
    valid = (lag >= 0).unsqueeze(-2)  # [K, 1, T] broadcasts over module
    weights = torch.where(
        valid, float(decay) ** lag.clamp(min=0).to(torch.float64).unsqueeze(-2), 0.0
    )  # [K, 1, T]
    values = torch.where(valid, ie.to(torch.float64), 0.0)
    if nan_policy == "omit":
        finite = ~torch.isnan(values)
        weights = weights * finite
        values = torch.nan_to_num(values, nan=0.0)
    total = weights.sum(-1)
    out = (values * weights).sum(-1) / total  # omit: 0/0 -> NaN where nothing is left
    return out.to(ie.dtype)


# ----------------------------------------------------------------------------- helpers


def _to_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuple(v) for v in value)
    return value


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in t.shape)


def _fmt_shape(t: torch.Tensor, dims: Sequence[str]) -> str:
    return "[" + ", ".join(f"{d}={n}" for d, n in zip(dims, t.shape)) + "]"


def _pad_dim(t: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    if t.shape[dim] == size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, torch.full(shape, value, dtype=t.dtype, device=t.device)], dim=dim)


#: Config entries that map fact ids to values: concatenation joins them.
_PER_FACT_CONFIG_KEYS = frozenset({"prompt_length", "structural_zeros"})


def _merge_configs(configs: Sequence[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    keys = set().union(*(c.keys() for c in configs))
    merged: dict[str, Any] = {}
    for key in sorted(keys, key=str):
        values = [c.get(key, "<missing>") for c in configs]
        if key in _JOINED_CONFIG_KEYS:
            merged[key] = [x for c in configs for x in (c.get(key) or [])]
        elif key in _PER_FACT_CONFIG_KEYS and all(isinstance(v, dict) for v in values):
            joined: dict[str, Any] = {}
            for v in values:
                clash = {k for k in v if k in joined and joined[k] != v[k]}
                if clash:
                    raise ValueError(
                        f"cannot concat {kind}s: config[{key!r}] disagrees for facts {sorted(clash)}"
                    )
                joined.update(v)
            merged[key] = joined
        elif all(v == values[0] for v in values):
            merged[key] = values[0]
        elif key in _PER_RUN_CONFIG_KEYS:
            merged[key] = values  # one entry per concatenated part
        else:
            raise ValueError(
                f"cannot concat {kind}s: config[{key!r}] differs between parts: {values}"
            )
    return merged


# ----------------------------------------------------------------------------- base


def _refuse_pool(i: int, what: str, mine: Any, theirs: Any) -> ValueError:
    return ValueError(
        f"cannot pool seeds: result {i} has {what}={mine!r}, result 0 has {theirs!r} "
        "(pool traces of the same facts and settings under different noise seeds)"
    )


@dataclass(frozen=True, eq=False)
class _ResultBase:
    """Shared machinery: save/load, fact selection, metadata normalisation."""

    _KIND: ClassVar[str] = ""
    _CONFIG: ClassVar[type[Provenance]] = Provenance  # the typed provenance of ``config``
    _FACT_TENSORS: ClassVar[tuple[str, ...]] = ()  # tensor fields with a leading fact axis
    _FACT_TUPLES: ClassVar[tuple[str, ...]] = ("fact_ids", "subjects", "questions", "answers")
    _EXTRA_FACT_TUPLES: ClassVar[tuple[str, ...]] = ()  # more per-fact tuple fields

    # -- construction ------------------------------------------------------------------
    def _normalise_metadata(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                continue
            if f.name == "config":
                if not isinstance(value, Mapping):
                    raise TypeError(
                        f"config must be a {self._CONFIG.__name__} or a dict of its fields, got "
                        f"{type(value).__name__}"
                    )
                value = self._CONFIG.from_record(value)
            elif isinstance(value, (list, tuple)):
                value = _to_tuple(value)
            object.__setattr__(self, f.name, value)
        ids = [i for i in self.fact_ids if i]  # type: ignore[attr-defined]
        if len(ids) != len(set(ids)):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"fact ids must be unique, repeated: {dup}")

    def _check_fact_tuples(self, n_facts: int) -> None:
        for name in self._FACT_TUPLES:
            value = getattr(self, name)
            if len(value) != n_facts:
                raise ShapeError(
                    f"{type(self).__name__}: {name} has {len(value)} entries, expected one per "
                    f"fact ({n_facts})"
                )

    @property
    def n_facts(self) -> int:
        """Number of facts (length of the leading ``fact`` axis)."""
        return len(self.fact_ids)  # type: ignore[attr-defined]

    def _fact_label(self, i: int) -> str:
        fid = self.fact_ids[i]  # type: ignore[attr-defined]
        return f"{fid!r}" if fid else f"#{i}"

    # -- combination (shared by every result) ------------------------------------------
    #: Fields every part must share to be concatenated / pooled.
    _SAME_TO_CONCAT: ClassVar[tuple[str, ...]] = ()
    _SAME_TO_POOL: ClassVar[tuple[str, ...]] = ()
    #: Per-fact tensors padded to the longest part: ``name -> (dim, fill value)``.
    _PAD: ClassVar[dict[str, tuple[int, Any]]] = {}
    #: Config fields that may differ between seeds of one pool.
    _POOL_FREE: ClassVar[frozenset[str]] = frozenset(
        {"seed", "n_noise", "engine_stats", "unknown_facts", "pooled"}
    )

    @classmethod
    def _parts(cls: type[R], results: Iterable[R], what: str) -> list[R]:
        parts = list(results)
        if not parts:
            raise ValueError(f"{what} needs at least one {cls.__name__}")
        if any(not isinstance(p, cls) for p in parts):
            raise TypeError(f"{what}: every part must be a {cls.__name__}")
        return parts

    def _check_concat(self, first: Any, i: int) -> None:
        """More agreement a part ``i`` must show to be concatenated (a hook)."""

    @classmethod
    def concat(cls: type[R], results: Iterable[R]) -> R:
        """Stack results over the fact axis (e.g. traces of fact batches).

        The fields of ``_SAME_TO_CONCAT`` (labels, model id, version, …) and the config must
        agree, except the per-run config entries ``nu``, ``sigma_emb``, ``seed`` and
        ``engine_stats``, which become a list with one entry per part when they differ, and
        ``unknown_facts`` (joined) and ``prompt_length`` (merged by fact id). Per-fact tensors
        of ``_PAD`` are padded to the longest part (token ids with ``-1``, masks with
        ``False``, positional maps with NaN). Seeds are the union of the parts', in order.
        """
        parts = cls._parts(results, "concat")
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            for name in cls._SAME_TO_CONCAT:
                if getattr(p, name) != getattr(first, name):
                    raise ValueError(
                        f"cannot concat {cls.__name__}s: part {i} has {name}={getattr(p, name)!r}, "
                        f"part 0 has {getattr(first, name)!r}"
                    )
            p._check_concat(first, i)
        merged = _merge_configs([p.config for p in parts], cls.__name__)  # type: ignore[attr-defined]
        tensors: dict[str, Any] = {}
        for name in cls._FACT_TENSORS:
            ts = [getattr(p, name) for p in parts]
            if name in cls._PAD:
                dim, fill = cls._PAD[name]
                width = max(int(t.shape[dim]) for t in ts)
                ts = [_pad_dim(t, dim, width, fill) for t in ts]
            tensors[name] = torch.cat(ts, dim=0)
        names = cls._FACT_TUPLES + cls._EXTRA_FACT_TUPLES
        tuples = {name: tuple(x for p in parts for x in getattr(p, name)) for name in names}
        seeds = tuple(dict.fromkeys(s for p in parts for s in p.seeds))  # type: ignore[attr-defined]
        changes = {**tensors, **tuples, "seeds": seeds, "config": cls._CONFIG.from_record(merged)}  # type: ignore[attr-defined]
        return dataclasses.replace(first, **changes)  # type: ignore[type-var]

    def _check_pool(self, first: Any, i: int) -> None:
        """More agreement a part ``i`` must show to be pooled (a hook; e.g. the clean run)."""

    @classmethod
    def _pool_parts(cls: type[R], results: Iterable[R]) -> list[R]:
        """The parts of a seed pool, checked: same facts and settings (``_SAME_TO_POOL``, the
        config but ``_POOL_FREE``), none normalised, every seed in one part only."""
        parts = cls._parts(results, "pool_seeds")
        first: Any = parts[0]
        for i, p in enumerate(parts):
            part: Any = p
            if part.config.normalized:
                raise ValueError(
                    f"cannot pool seeds: result {i} is normalised; pool the raw traces, then "
                    "call .normalized() on the pooled result"
                )
            if not part.seeds:
                raise ValueError(f"cannot pool seeds: result {i} records no seed")
            if i == 0:
                continue
            for name in cls._SAME_TO_POOL:
                if getattr(part, name) != getattr(first, name):
                    raise _refuse_pool(i, name, getattr(part, name), getattr(first, name))
            part._check_pool(first, i)
            for key in sorted((set(part.config) | set(first.config)) - cls._POOL_FREE, key=str):
                mine = part.config.get(key, "<missing>")
                theirs = first.config.get(key, "<missing>")
                if mine != theirs:
                    raise _refuse_pool(i, f"config[{key!r}]", mine, theirs)
        owner: dict[int, int] = {}
        for i, p in enumerate(parts):
            for s in p.seeds:  # type: ignore[attr-defined]
                if s in owner:
                    raise ValueError(
                        f"cannot pool seeds: seed {s} appears in result {owner[s]} and result {i}; "
                        "its noise draws would be counted twice"
                    )
                owner[s] = i
        return parts

    @staticmethod
    def _pooled_config(parts: Sequence[Any], draws: Sequence[int]) -> dict[str, Any]:
        """The pool's config: every seed, the total draws, one ``pooled`` entry per part
        (``{"seeds", "n_noise"}``, flattened when a part is itself a pool), the union of
        unknown facts in fact order, and the engine counters per part."""
        first = parts[0]
        entries: list[dict[str, Any]] = []
        for p, n in zip(parts, draws):
            entries += p.config.get("pooled") or [{"seeds": list(p.seeds), "n_noise": n}]
        config = dict(first.config)
        config.update(seed=[s for p in parts for s in p.seeds], n_noise=sum(draws), pooled=entries)
        if any("unknown_facts" in p.config for p in parts):
            unknown = {u for p in parts for u in (p.config.get("unknown_facts") or [])}
            config["unknown_facts"] = [f for f in first.fact_ids if f in unknown]
        if any("engine_stats" in p.config for p in parts):
            config["engine_stats"] = [p.config.get("engine_stats") for p in parts]
        return config

    # -- selection ---------------------------------------------------------------------
    def _fact_indices(self, selection: Any) -> list[int]:
        n = self.n_facts
        if isinstance(selection, (int, str)) or (
            isinstance(selection, torch.Tensor) and selection.ndim == 0
        ):
            selection = [selection.item() if isinstance(selection, torch.Tensor) else selection]
        if isinstance(selection, slice):
            return list(range(n))[selection]
        if isinstance(selection, torch.Tensor):
            if selection.dtype == torch.bool:
                if selection.shape != (n,):
                    raise ShapeError(
                        f"boolean fact mask must have shape ({n},), got {_shape(selection)}"
                    )
                return [int(i) for i in torch.nonzero(selection).flatten()]
            selection = selection.tolist()
        out: list[int] = []
        for item in selection:
            item = as_int(item)  # a NumPy integer is an index too
            if isinstance(item, str):
                try:
                    out.append(self.fact_ids.index(item))  # type: ignore[attr-defined]
                except ValueError:
                    ids = list(self.fact_ids)  # type: ignore[attr-defined]
                    raise KeyError(f"no fact with id {item!r}; ids: {ids}") from None
            elif isinstance(item, int) and not isinstance(item, bool):
                if not -n <= item < n:
                    raise IndexError(f"fact index {item} out of range for {n} facts")
                out.append(item % n)
            else:
                raise TypeError(f"select facts by int index or str id, got {item!r}")
        return out

    def select_facts(self: R, selection: Any) -> R:
        """A new result holding only the chosen facts, in the order given.

        Args:
            selection: An int index, a str fact id, a slice, a sequence of ints or ids, or a
                boolean mask ``[fact]``.
        """
        idx = self._fact_indices(selection)
        index = torch.tensor(idx, dtype=torch.long)
        changes: dict[str, Any] = {}
        for name in self._FACT_TENSORS:
            t = getattr(self, name)
            changes[name] = t.index_select(0, index.to(t.device))
        for name in self._FACT_TUPLES + self._EXTRA_FACT_TUPLES:
            value = getattr(self, name)
            changes[name] = tuple(value[i] for i in idx)
        return dataclasses.replace(self, **changes)

    # -- facts the model knows ---------------------------------------------------------
    @property
    def known(self) -> torch.Tensor:
        """``[fact]`` bool: the model knows the fact (its id is not in ``config["unknown_facts"]``).

        The tracers list a fact as unknown when the clean model does not produce its answer
        (TIE: the clean sample; positional: the top-1 first answer token).
        """
        unknown = set(self.config.unknown_facts)  # type: ignore[attr-defined]
        ids = self.fact_ids  # type: ignore[attr-defined]
        return torch.tensor([fid not in unknown for fid in ids], dtype=torch.bool)

    @property
    def n_known(self) -> int:
        """Number of facts the model knows (``int(known.sum())``)."""
        return int(self.known.sum())

    def known_only(self: R) -> R:
        """The result restricted to the facts the model knows: ``select_facts(known)``.

        This is the fact set every average and per-fact analysis of the package uses
        (``mean``, Eq. 5 selection, the analyses, the figures, the AR-versus-diffusion
        comparison). Returns ``self`` when every fact is known; when none is, returns ``self``
        too (all facts) with a warning, so that an analysis still has something to average.
        """
        return self._known_only(stacklevel=3)

    def _known_only(self: R, *, stacklevel: int) -> R:
        keep = self.known
        if bool(keep.all()):
            return self
        if not bool(keep.any()):
            model_id = self.model_id  # type: ignore[attr-defined]
            warnings.warn(
                f"{type(self).__name__} ({model_id!r}): the model does not know any of the "
                f"{self.n_facts} traced facts (config['unknown_facts']): using all of them",
                stacklevel=stacklevel,
            )
            return self
        return self.select_facts(keep)

    # -- save / load / tables -----------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one ``.safetensors`` file, atomically; returns the path.

        Tensors are stored as CPU copies; every other field goes, as JSON, into the
        safetensors header metadata (:func:`tie_tracing.core._io.save_object`, the one serialiser
        of every result type). ``type(self).load(path)`` gives back an equal result.
        """
        return save_object(self, path)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a result written by :meth:`save`.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ResultFileError: the file is truncated or corrupt, or holds another kind of result.
        """
        return load_object(cls, path)

    def to_dataframe(self) -> Any:
        """A long ``pandas.DataFrame`` of ``.values``: one row per cell, one column per axis
        (labels, e.g. fact ids, layers, module names) and ``value``.

        Raises:
            ImportError: pandas is missing (``pip install 'tie_tracing[pandas]'``).
        """
        return to_dataframe(self)


# ----------------------------------------------------------------------------- TIE


@dataclass(frozen=True, eq=False)
class TIEResult(_ResultBase):
    """Diffusion-time causal tracing of a set of facts (SPEC §5).

    Axis order ``[fact, layer, step, module, later_step]``; ``steps`` labels the ``step`` axis
    (the patched denoising steps) while ``later_step`` and the baselines cover all ``T``
    denoising steps ``0 … T-1`` (``T = ie.shape[-1]``).

    Attributes:
        tie: ``[fact, layer, step, module]`` float, Eq. 4.
        ie: ``[fact, layer, step, module, later_step]`` float, Eq. 3 (mean over noise draws),
            NaN where ``later_step < step``.
        lp_clean: ``[fact, later_step]`` ``LP_clean(k)`` in nats.
        lp_corrupt: ``[fact, later_step]`` ``LP_corrupt(k)``, mean over noise draws.
        lp_corrupt_draws: ``[fact, noise, later_step]`` per noise draw.
        clean_tokens: ``[fact, later_step, answer_pos]`` integer; the committed answer tokens
            after each step (the mask id where still masked), ``-1`` padding when facts differ
            in answer length.
        corrupt_tokens: ``[fact, noise, later_step, answer_pos]`` likewise, corrupted runs.
        diverged: ``[fact, layer, step, module]`` float, the share of noise draws whose patch
            run committed differently from the corrupted run at the patched step.
        fact_ids, subjects, questions, answers: one str per fact.
        layers, steps, modules: labels of the ``layer``, ``step``, ``module`` axes.
        config: The typed provenance (:class:`~tie_tracing.core.provenance.TraceProvenance`:
            the trace settings and what the run added; a dict of its fields is converted, a
            missing or unknown field named). ``normalized`` records whether :meth:`normalized`
            produced it.
        seeds: the seeds of the run(s).
        model_id: the traced model's name or path.
        version: the tie_tracing version that produced it.
        target_mask: ``[fact, answer_pos]`` bool, the target positions ``O`` that ``LP`` sums
            over (``config["target"]``; default: every non-padding answer position).
        object_mask: ``[fact, answer_pos]`` bool, the object's tokens (the whole answer for a
            fact without an object).

    Commit maps (SPEC §4) come from the token tensors and ``config["mask_token_id"]``:
    :attr:`clean_commits`, :attr:`corrupt_commits`, :meth:`commit_map`; :attr:`idle_steps`
    marks the steps with no masked target position left, where ``TIE`` is 0 exactly under
    ``lp="frozen"``, and :attr:`object_commit_step` the step that decided the object.

    Example:
        >>> r = TIEResult.synthetic(n_facts=2, n_layers=3, n_steps=4, seed=0)
        >>> r.dims, tuple(r.values.shape), tuple(r.mean().shape)
        (('fact', 'layer', 'step', 'module'), (2, 3, 4, 3), (3, 4, 3))
        >>> r.normalized().config["normalized"]
        True
    """

    tie: torch.Tensor
    ie: torch.Tensor
    lp_clean: torch.Tensor
    lp_corrupt: torch.Tensor
    lp_corrupt_draws: torch.Tensor
    clean_tokens: torch.Tensor
    corrupt_tokens: torch.Tensor
    diverged: torch.Tensor
    fact_ids: tuple[str, ...]
    subjects: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    modules: tuple[str, ...]
    config: TraceProvenance
    seeds: tuple[int, ...]
    model_id: str
    version: str = __version__
    target_mask: torch.Tensor | None = None
    object_mask: torch.Tensor | None = None

    _KIND: ClassVar[str] = "TIEResult"
    _CONFIG: ClassVar[type[Provenance]] = TraceProvenance
    _FACT_TENSORS: ClassVar[tuple[str, ...]] = (
        "tie",
        "ie",
        "lp_clean",
        "lp_corrupt",
        "lp_corrupt_draws",
        "clean_tokens",
        "corrupt_tokens",
        "diverged",
        "target_mask",
        "object_mask",
    )
    dims: ClassVar[tuple[str, ...]] = ("fact", "layer", "step", "module")
    ie_dims: ClassVar[tuple[str, ...]] = ("fact", "layer", "step", "module", "later_step")

    def __post_init__(self) -> None:
        self._normalise_metadata()
        for name in ("tie", "ie", "lp_clean", "lp_corrupt", "lp_corrupt_draws", "diverged"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"TIEResult.{name} must be a float tensor")
        for name in ("clean_tokens", "corrupt_tokens"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"TIEResult.{name} must be an integer tensor")
        if self.tie.ndim != 4:
            raise ShapeError(
                f"tie must be [fact, layer, step, module], got shape {_shape(self.tie)}"
            )
        f, n_l, n_k, n_m = _shape(self.tie)
        if self.ie.ndim != 5 or _shape(self.ie)[:4] != (f, n_l, n_k, n_m):
            raise ShapeError(
                f"ie must be [fact, layer, step, module, later_step] = [{f}, {n_l}, {n_k}, {n_m}, T],"
                f" got {_shape(self.ie)}"
            )
        t_all = self.ie.shape[-1]
        expected = {
            "lp_clean": (f, t_all),
            "lp_corrupt": (f, t_all),
            "diverged": (f, n_l, n_k, n_m),
        }
        for name, shape in expected.items():
            if _shape(getattr(self, name)) != shape:
                raise ShapeError(
                    f"{name} must have shape {shape}, got {_shape(getattr(self, name))}"
                )
        d = self.lp_corrupt_draws
        if d.ndim != 3 or (d.shape[0], d.shape[2]) != (f, t_all):
            raise ShapeError(
                f"lp_corrupt_draws must be [fact={f}, noise, later_step={t_all}], got {_shape(d)}"
            )
        c = self.clean_tokens
        if c.ndim != 3 or _shape(c)[:2] != (f, t_all):
            raise ShapeError(
                f"clean_tokens must be [fact={f}, later_step={t_all}, answer_pos], got {_shape(c)}"
            )
        ct = self.corrupt_tokens
        if ct.ndim != 4 or (ct.shape[0], ct.shape[1], ct.shape[2]) != (f, d.shape[1], t_all):
            raise ShapeError(
                f"corrupt_tokens must be [fact={f}, noise={d.shape[1]}, later_step={t_all}, answer_pos],"
                f" got {_shape(ct)}"
            )
        for name, n in (("layers", n_l), ("steps", n_k), ("modules", n_m)):
            if len(getattr(self, name)) != n:
                raise ShapeError(
                    f"{name} has {len(getattr(self, name))} labels, the tensor axis {n}"
                )
        if any(not 0 <= s < t_all for s in self.steps):
            raise ValueError(f"steps {self.steps} must lie in 0 … {t_all - 1}")
        self._check_fact_tuples(f)
        present = c[:, -1] >= 0  # [fact, answer_pos]: not padding
        for name in ("target_mask", "object_mask"):
            t = getattr(self, name)
            if t is None:
                object.__setattr__(self, name, present.clone())
                continue
            if not isinstance(t, torch.Tensor) or t.dtype != torch.bool:
                raise TypeError(f"TIEResult.{name} must be a bool tensor")
            if _shape(t) != _shape(present):
                raise ShapeError(
                    f"{name} must be [fact, answer_pos] = {_shape(present)}, got {_shape(t)}"
                )

    # -- commit maps -------------------------------------------------------------------
    def _mask(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor)  # filled in by __post_init__
        return value

    def _mask_id(self) -> int:
        if self.config.mask_token_id is None:
            raise KeyError(
                "this TIEResult does not record config['mask_token_id'] (made before commit "
                "maps existed?): commit maps need it"
            )
        return int(self.config.mask_token_id)

    @property
    def clean_commits(self) -> torch.Tensor:
        """``[fact, answer_pos]`` long: the step at which the clean trajectory committed each
        answer position (``-1``: padding or never)."""
        return _commit_steps(self.clean_tokens, self._mask_id())

    @property
    def corrupt_commits(self) -> torch.Tensor:
        """``[fact, noise, answer_pos]`` long: the same for each corrupted trajectory."""
        return _commit_steps(self.corrupt_tokens, self._mask_id())

    @property
    def object_commit_step(self) -> torch.Tensor:
        """``[fact]`` long: the step at which the clean trajectory committed the object's
        first token (``-1`` when it never did)."""
        commits = self.clean_commits
        first = self._mask("object_mask").float().argmax(-1)  # first object position
        return commits.gather(1, first[:, None])[:, 0]

    @property
    def idle_steps(self) -> torch.Tensor:
        """``[fact, step]`` bool over all ``T`` steps: no corrupted trajectory has a masked
        target position in that step's input, so nothing is left to decide there and, under
        ``lp="frozen"``, the step's TIE is 0 exactly."""
        commits = self.corrupt_commits  # [fact, noise, A]
        steps = torch.arange(self.n_later_steps)
        # position i is masked in step k's input iff it was committed at step >= k
        masked = (commits[..., None] >= steps) & self._mask("target_mask")[:, None, :, None]
        return ~masked.any(-2).any(1)

    @property
    def clean_idle_steps(self) -> torch.Tensor:
        """``[fact, step]`` bool: the clean trajectory has no masked target position left."""
        steps = torch.arange(self.n_later_steps)
        masked = (self.clean_commits[..., None] >= steps) & self._mask("target_mask")[..., None]
        return ~masked.any(-2)

    def commit_map(self, fact: int | str = 0, trajectory: str | int = "clean") -> list[dict]:
        """One trajectory's commit map: per answer position its step, token id and role.

        Args:
            fact: Index or id.
            trajectory: ``"clean"`` or the index of a corrupted noise draw.

        Returns:
            ``[{"position", "step", "token", "object", "target"}, …]`` in answer order.
        """
        i = self._fact_indices(fact)[0]
        if trajectory == "clean":
            tokens = self.clean_tokens[i]
        elif isinstance(trajectory, int) and 0 <= trajectory < self.corrupt_tokens.shape[1]:
            tokens = self.corrupt_tokens[i, trajectory]
        else:
            raise ValueError(
                f"trajectory must be 'clean' or a noise draw 0 … "
                f"{self.corrupt_tokens.shape[1] - 1}, got {trajectory!r}"
            )
        steps = _commit_steps(tokens, self._mask_id())
        rows = []
        for pos in range(tokens.shape[-1]):
            if int(tokens[-1, pos]) < 0:
                continue
            rows.append(
                {
                    "position": pos,
                    "step": int(steps[pos]),
                    "token": int(tokens[-1, pos]),
                    "object": bool(self._mask("object_mask")[i, pos]),
                    "target": bool(self._mask("target_mask")[i, pos]),
                }
            )
        return rows

    # -- views -------------------------------------------------------------------------
    @property
    def values(self) -> torch.Tensor:
        """The main tensor, ``tie`` ``[fact, layer, step, module]``."""
        return self.tie

    @property
    def decay(self) -> float:
        """``γ`` of Eq. 4 (``config["decay"]``)."""
        return float(self.config.decay)  # type: ignore[arg-type]

    @property
    def is_normalized(self) -> bool:
        """Whether ``ie``/``tie`` are in normalised units (clean = 1, corrupted = 0)."""
        return bool(self.config.normalized)

    @property
    def n_later_steps(self) -> int:
        """``T``, the number of denoising steps covered by ``later_step`` and the baselines."""
        return int(self.ie.shape[-1])

    def mean(self, *, include_unknown: bool = False) -> torch.Tensor:
        """Mean of ``tie`` over facts, ``[layer, step, module]`` (NaN-aware: ``torch.nanmean``).

        Averages over :meth:`known_only` (facts the model does not know,
        ``config["unknown_facts"]``, warned about by :func:`~tie_tracing.tracing.tie.trace_tie`, are
        left out; when no fact is known all are averaged, with a warning) unless
        ``include_unknown=True``. A cell that is NaN for some facts averages the others; NaN
        for all facts stays NaN.
        """
        if self.n_facts == 0:
            raise ValueError("mean over facts of an empty TIEResult")
        r = self if include_unknown else self._known_only(stacklevel=3)
        return torch.nanmean(r.tie, dim=0)

    def mean_over_facts(self) -> torch.Tensor:
        """Alias of :meth:`mean` (``[layer, step, module]``)."""
        return self.mean()

    def normalized(self, *, min_gap: float = 1e-6, nan_policy: str = "propagate") -> TIEResult:
        """The normalised view: ``IE_{k'} / (LP_clean(k') − LP_corrupt(k'))``, TIE recomputed.

        Clean behaviour is 1 and corrupted behaviour 0 at every later step. ``tie`` is Eq. 4
        applied to the normalised ``ie`` with the same ``decay`` (not ``tie`` divided by one
        number). Baselines, tokens and ``diverged`` are unchanged. Where
        ``|LP_clean(k') − LP_corrupt(k')| < min_gap`` the normalised IE is NaN (with a warning
        naming the fact and steps); with ``nan_policy="propagate"`` (exact Eq. 4) every cell
        whose later steps include such a step becomes NaN too, ``"omit"`` renormalises the
        decay weights over the defined steps instead. Calling it on a normalised result
        returns the result itself.
        """
        if self.is_normalized:
            return self
        gap = (self.lp_clean - self.lp_corrupt).to(self.ie.dtype)  # [fact, later_step]
        bad = gap.abs() < min_gap
        if bad.any():
            lines = [
                f"{self._fact_label(i)} at later steps {torch.nonzero(bad[i]).flatten().tolist()}"
                for i in range(self.n_facts)
                if bad[i].any()
            ]
            warnings.warn(
                "normalized(): |LP_clean - LP_corrupt| < "
                f"{min_gap:g} for fact "
                + "; ".join(lines)
                + " — those normalised IE cells are NaN"
                + (
                    " (and so are the TIE cells that aggregate them; nan_policy='omit' skips them)"
                    if nan_policy == "propagate"
                    else ""
                ),
                RuntimeWarning,
                stacklevel=2,
            )
        denom = torch.where(bad, torch.full_like(gap, math.nan), gap)
        ie = self.ie / denom[:, None, None, None, :]
        tie = tie_from_ie(ie, self.decay, steps=self.steps, nan_policy=nan_policy)
        config = dict(self.config, normalized=True, normalize_nan_policy=nan_policy)
        return dataclasses.replace(self, ie=ie, tie=tie, config=self._CONFIG.from_record(config))

    # -- combination -------------------------------------------------------------------
    _SAME_TO_CONCAT: ClassVar[tuple[str, ...]] = (
        "layers",
        "steps",
        "modules",
        "model_id",
        "version",
    )
    _SAME_TO_POOL: ClassVar[tuple[str, ...]] = (
        "fact_ids",
        "layers",
        "steps",
        "modules",
        "model_id",
    )
    _PAD: ClassVar[dict[str, tuple[int, Any]]] = {
        "clean_tokens": (-1, -1),
        "corrupt_tokens": (-1, -1),
        "target_mask": (-1, False),
        "object_mask": (-1, False),
    }

    def _check_concat(self, first: TIEResult, i: int) -> None:
        if (
            self.ie.shape[-1] != first.ie.shape[-1]
            or self.lp_corrupt_draws.shape[1] != first.lp_corrupt_draws.shape[1]
        ):
            raise ValueError(
                f"cannot concat TIEResults: part {i} has T={self.ie.shape[-1]}, "
                f"n_noise={self.lp_corrupt_draws.shape[1]}; part 0 has T={first.ie.shape[-1]}, "
                f"n_noise={first.lp_corrupt_draws.shape[1]}"
            )

    def _check_pool(self, first: TIEResult, i: int) -> None:
        if self.n_later_steps != first.n_later_steps:
            raise _refuse_pool(i, "T", self.n_later_steps, first.n_later_steps)
        same_clean = (
            self.clean_tokens.shape == first.clean_tokens.shape
            and bool(torch.equal(self.clean_tokens.cpu(), first.clean_tokens.cpu()))
            and bool(torch.equal(self._mask("target_mask").cpu(), first._mask("target_mask").cpu()))
            and bool(torch.equal(self._mask("object_mask").cpu(), first._mask("object_mask").cpu()))
            and bool(
                torch.allclose(
                    self.lp_clean.cpu().double(), first.lp_clean.cpu().double(), atol=1e-5, rtol=0
                )
            )
        )
        if not same_clean:
            raise ValueError(
                f"cannot pool seeds: result {i} has another clean trajectory than result 0 "
                "(clean tokens, LP_clean or target/object masks differ; a sampler with "
                "temperature > 0 makes the clean run depend on the seed)"
            )

    @classmethod
    def pool_seeds(cls, results: Iterable[TIEResult]) -> TIEResult:
        """Pool traces of the same facts under different noise seeds into one result.

        Noise draws are keyed by ``(seed, fact id, draw index)``, so traces of one fact set
        under seeds ``s`` and ``s'`` are independent noise samples of the same quantity;
        pooling them is what tracing with their draws together would average. The pooled
        ``ie``, ``tie``, ``lp_corrupt`` and ``diverged`` are the **draw-weighted** means of
        the parts (a part with ``n`` noise draws has weight ``n``; ``tie`` stays Eq. 4 of the
        pooled ``ie`` because Eq. 4 is linear), ``lp_corrupt_draws`` and ``corrupt_tokens``
        are concatenated along the ``noise`` axis in the order given, ``config["n_noise"]``
        is the total number of draws, ``config["seed"]`` and ``seeds`` list every seed, and
        ``config["pooled"]`` records ``{"seeds", "n_noise"}`` per part (a part that is itself
        pooled contributes its own entries). ``engine_stats`` becomes a list per part and
        ``unknown_facts`` the union. Pooling is order-independent up to the order of the
        draws (and float rounding).

        The parts must be traces of the same experiment: the same fact ids in the same
        order, layers, steps, modules, ``T``, model id, the same config apart from ``seed``,
        ``n_noise``, ``engine_stats`` and ``unknown_facts`` (``lp``, ``target``, ``decay``,
        ``nu``, noise settings, sampler settings…), the same clean trajectory (clean tokens,
        ``LP_clean``, target and object masks: a clean run that depends on the seed, as with
        ``temperature > 0``, cannot be pooled) and pairwise disjoint seeds (a seed twice
        would count its draws twice). Raw traces only: normalising is not linear in the
        draws, so pool raw results and call :meth:`normalized` on the pool.

        Args:
            results: One or more :class:`TIEResult` (one alone is returned as is).

        Returns:
            The pooled :class:`TIEResult`.

        Raises:
            ValueError: naming the first mismatch (facts, labels, ``T``, a config key, the
                clean trajectory, a repeated seed) or a normalised part.
            TypeError: a part is not a :class:`TIEResult`.

        Example:
            >>> a = TIEResult.synthetic(n_facts=2, n_noise=1, seed=0)
            >>> b = dataclasses.replace(a, seeds=(1,), ie=2 * a.ie, tie=2 * a.tie,
            ...                         lp_corrupt_draws=a.lp_corrupt_draws.repeat(1, 3, 1),
            ...                         corrupt_tokens=a.corrupt_tokens.repeat(1, 3, 1, 1))
            >>> p = TIEResult.pool_seeds([a, b])  # weights 1 and 3
            >>> p.seeds, p.config["n_noise"], tuple(p.lp_corrupt_draws.shape)
            ((0, 1), 4, (2, 4, 8))
            >>> torch.allclose(p.tie, 1.75 * a.tie)
            True
        """
        parts = cls._pool_parts(results)
        first = parts[0]
        if len(parts) == 1:
            return first
        draws = [int(p.lp_corrupt_draws.shape[1]) for p in parts]
        device = first.ie.device
        weights = torch.tensor(draws, dtype=torch.float64, device=device) / sum(draws)

        def weighted(name: str) -> torch.Tensor:
            ref = getattr(first, name)
            stacked = torch.stack([getattr(p, name).to(device, torch.float64) for p in parts])
            w = weights.reshape(-1, *([1] * ref.ndim))
            return (stacked * w).sum(0).to(ref.dtype)

        config = cls._pooled_config(parts, draws)
        return dataclasses.replace(
            first,
            ie=weighted("ie"),
            tie=weighted("tie"),
            lp_corrupt=weighted("lp_corrupt"),
            diverged=weighted("diverged"),
            lp_corrupt_draws=torch.cat([p.lp_corrupt_draws.to(device) for p in parts], dim=1),
            corrupt_tokens=torch.cat([p.corrupt_tokens.to(device) for p in parts], dim=1),
            config=cls._CONFIG.from_record(config),
            seeds=tuple(s for p in parts for s in p.seeds),
        )

    @classmethod
    def synthetic(
        cls,
        *,
        n_facts: int = 3,
        n_layers: int = 4,
        n_steps: int = 8,
        modules: Sequence[str] = MODULE_ORDER,
        n_noise: int = 1,
        answer_len: int = 3,
        decay: float = 0.5,
        seed: int = 0,
    ) -> TIEResult:
        """A random but internally consistent TIEResult, for examples, tests and plots.

        ``ie`` is drawn with a bump at a fixed coordinate so that maps have a visible peak;
        ``tie`` is :func:`tie_from_ie` of it; baselines satisfy ``lp_clean > lp_corrupt``.
        Not a trace of any model (``model_id="synthetic"``).
        """
        g = torch.Generator().manual_seed(seed)
        m = len(modules)
        ie = 0.1 * torch.randn(n_facts, n_layers, n_steps, m, n_steps, generator=g)
        ie[:, n_layers // 2, 0, 0, :] += 1.0 + 0.2 * torch.randn(n_facts, 1, generator=g)
        later = torch.arange(n_steps)
        ie = ie.masked_fill((later[None, :] < torch.arange(n_steps)[:, None])[:, None, :], math.nan)
        lp_clean = -0.1 - 0.5 * torch.rand(n_facts, n_steps, generator=g)
        draws = lp_clean[:, None, :] - 2.0 - torch.rand(n_facts, n_noise, n_steps, generator=g)
        tokens = torch.randint(5, 50, (n_facts, 1, answer_len), generator=g).repeat(1, n_steps, 1)
        mask_id = 3  # answer position i is committed at step i·T / answer_len
        when = torch.arange(answer_len) * n_steps // answer_len
        tokens = tokens.masked_fill(torch.arange(n_steps)[:, None] < when[None, :], mask_id)
        return cls(
            tie=tie_from_ie(ie, decay),
            ie=ie,
            lp_clean=lp_clean,
            lp_corrupt=draws.mean(1),
            lp_corrupt_draws=draws,
            clean_tokens=tokens,
            corrupt_tokens=tokens[:, None].repeat(1, n_noise, 1, 1),
            diverged=torch.rand(n_facts, n_layers, n_steps, m, generator=g).round(),
            fact_ids=tuple(f"f{i}" for i in range(n_facts)),
            subjects=tuple(f"Subject {i}" for i in range(n_facts)),
            questions=tuple(f"Where was Subject {i} born?" for i in range(n_facts)),
            answers=tuple(f"City {i}" for i in range(n_facts)),
            layers=tuple(range(n_layers)),
            steps=tuple(range(n_steps)),
            modules=tuple(modules),
            config=TraceProvenance.from_record(
                {
                    "modules": list(modules),
                    "layers": None,
                    "noise_scale": 3.0,
                    "nu": None,
                    "replace": False,
                    "n_noise": n_noise,
                    "seed": seed,
                    "steps": n_steps,
                    "decay": decay,
                    "temperature": 0.0,
                    "block_length": None,
                    "lp": "frozen",
                    "target": "answer",
                    "mask_token_id": mask_id,
                }
            ),
            seeds=(seed,),
            model_id="synthetic",
        )

    def __repr__(self) -> str:
        view = "normalised (clean = 1, corrupted = 0)" if self.is_normalized else "in nats"
        ids = list(self.fact_ids[:4]) + (["…"] if self.n_facts > 4 else [])
        reading = ", ".join(
            f"{k}={self.config[k]}" for k in ("lp", "target", "mode") if k in self.config
        )
        return (
            f"TIEResult(tie{_fmt_shape(self.tie, self.dims)} {view}, T={self.n_later_steps}, "
            + (f"{reading}, " if reading else "")
            + f"n_facts={self.n_facts}, modules={self.modules}, decay={self.config.get('decay')}, "
            f"n_noise={self.lp_corrupt_draws.shape[1]}, model_id={self.model_id!r}, "
            f"facts={ids}, seeds={self.seeds}, version={self.version!r})"
        )


#: Settings two traces must share for their effects to be compared (Eq. 5 with β > 0), with
#: the words an error uses for them.
_COMPARABLE_CONFIG: dict[str, str] = {
    "nu": "noise level ν",
    "steps": "steps T",
    "sampler": "sampler",
    "lp": "lp",
    "target": "target",
    "decay": "decay γ",
    "mode": "mode",
    "horizon": "horizon",
    "replace": "replace",
    "mentions": "mentions",
}


def comparability_problems(a: TIEResult, b: TIEResult) -> list[str]:
    """What differs between two traces whose effects are to be compared (Eq. 5's forget and
    neighbour maps): model, noise level ν, steps, sampler, ``lp``, ``target``, γ, mode,
    horizon, corruption, and the layer/step/module labels; ``[]`` when nothing does.
    Settings a result does not record are not compared."""
    out = []
    if a.model_id != b.model_id:
        out.append(f"model {a.model_id!r} vs {b.model_id!r}")
    for key, words in _COMPARABLE_CONFIG.items():
        if key not in a.config or key not in b.config:
            continue
        x, y = a.config[key], b.config[key]
        same = (
            math.isclose(x, y, rel_tol=1e-6)
            if isinstance(x, float) and isinstance(y, float)
            else x == y
        )
        if not same:
            if isinstance(x, dict) and isinstance(y, dict):  # a sampler: name the settings
                keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                x = {k: x.get(k) for k in keys}
                y = {k: y.get(k) for k in keys}
            out.append(f"{words} {x!r} vs {y!r}")
    for label in ("layers", "steps", "modules"):
        if getattr(a, label) != getattr(b, label):
            out.append(f"{label} {list(getattr(a, label))} vs {list(getattr(b, label))}")
    return out


@dataclass(frozen=True, eq=False)
class TIEPair:
    """The forget and neighbour traces of Eq. 5 (SPEC §7), traced together: what
    ``select_coordinate(pair, beta=...)`` needs for ``β > 0``.

    ``tt.trace_tie(model, facts, neighbours=keep)`` returns one (both sets under one ``ν``
    and the same settings). Built by hand, the two results must agree on the model, ``ν``,
    steps, sampler, ``lp``, ``target``, γ, mode and labels: a difference is a ``ValueError``
    that names it. It reads like the mapping ``{"forget": ..., "neighbours": ...}``.

    Attributes:
        forget: :class:`TIEResult` of the facts to forget (Eq. 5's ``V``).
        neighbours: :class:`TIEResult` of the facts to keep (``N``).

    Example:
        >>> pair = TIEPair(TIEResult.synthetic(n_facts=2), TIEResult.synthetic(n_facts=3))
        >>> sorted(pair), pair["neighbours"].n_facts
        (['forget', 'neighbours'], 3)
    """

    forget: TIEResult
    neighbours: TIEResult

    def __post_init__(self) -> None:
        for name in ("forget", "neighbours"):
            value = getattr(self, name)
            if not isinstance(value, TIEResult):
                raise TypeError(f"TIEPair.{name} must be a TIEResult, got {type(value).__name__}")
        problems = comparability_problems(self.forget, self.neighbours)
        if problems:
            raise ValueError(
                "the forget and neighbour traces were made differently ("
                + "; ".join(problems)
                + "): their effects are not comparable. Trace them together with "
                "tt.trace_tie(model, facts, neighbours=...), or with the same settings and nu="
            )

    def keys(self) -> tuple[str, str]:
        return ("forget", "neighbours")

    def __getitem__(self, key: str) -> TIEResult:
        if key not in self.keys():
            raise KeyError(f"a TIEPair holds 'forget' and 'neighbours', not {key!r}")
        return getattr(self, key)

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return 2

    def __repr__(self) -> str:
        return f"TIEPair(forget={self.forget!r}, neighbours={self.neighbours!r})"


# ----------------------------------------------------------------------------- positional


@dataclass(frozen=True, eq=False)
class PositionalResult(_ResultBase):
    """ROME-style positional causal tracing (SPEC §6), ``[fact, layer, position, module]``.

    Each cell holds what the answer's first token scores at the prediction position when the
    clean output of ``module`` in ``layer`` (± the ``window``) is restored at ``position`` in
    the corrupted run: its probability (``prob``) and log-probability (``lp``). Like every
    result's, ``.values`` is the **effect**: ``effect()``, the restored score minus the
    corrupted baseline (in ``metric`` units); the restored score itself is ``.restored``.
    Facts are NaN-padded to the longest prompt; ``tokens[f]`` has the fact's true length.

    Attributes:
        prob: ``[fact, layer, position, module]`` restored probability.
        lp: ``[fact, layer, position, module]`` restored log-probability (nats).
        lp_clean: ``[fact]`` clean log-probability of the answer's first token.
        lp_corrupt: ``[fact]`` corrupted log-probability (mean over noise draws).
        tokens: per fact, the prompt's token strings.
        subject_positions: per fact, the subject's token positions.
        prediction_position: per fact, the position where the answer is read.
        window: number of layers restored together (1, or ROME's 10).
        fact_ids, subjects, questions, answers, layers, modules, config, seeds, model_id,
        version: as in :class:`TIEResult`.
        metric: ``"prob"`` (default, ROME's) or ``"lp"``: the units of ``.values`` (the
            effect) and ``.restored``.

    Example:
        >>> r = PositionalResult.synthetic(n_facts=2, n_layers=3, seed=0)
        >>> r.dims, r.values.shape[:2], r.subject_positions[0]
        (('fact', 'layer', 'position', 'module'), torch.Size([2, 3]), (1, 2))
    """

    prob: torch.Tensor
    lp: torch.Tensor
    lp_clean: torch.Tensor
    lp_corrupt: torch.Tensor
    tokens: tuple[tuple[str, ...], ...]
    subject_positions: tuple[tuple[int, ...], ...]
    prediction_position: tuple[int, ...]
    window: int
    fact_ids: tuple[str, ...]
    subjects: tuple[str, ...]
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    layers: tuple[int, ...]
    modules: tuple[str, ...]
    config: PositionalProvenance
    seeds: tuple[int, ...]
    model_id: str
    version: str = __version__
    metric: str = "prob"

    _KIND: ClassVar[str] = "PositionalResult"
    _CONFIG: ClassVar[type[Provenance]] = PositionalProvenance
    _FACT_TENSORS: ClassVar[tuple[str, ...]] = ("prob", "lp", "lp_clean", "lp_corrupt")
    dims: ClassVar[tuple[str, ...]] = ("fact", "layer", "position", "module")

    _EXTRA_FACT_TUPLES: ClassVar[tuple[str, ...]] = (
        "tokens",
        "subject_positions",
        "prediction_position",
    )

    def __post_init__(self) -> None:
        self._normalise_metadata()
        if self.metric not in ("prob", "lp"):
            raise ValueError(f"metric must be 'prob' or 'lp', got {self.metric!r}")
        for name in ("prob", "lp", "lp_clean", "lp_corrupt"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"PositionalResult.{name} must be a float tensor")
        if self.prob.ndim != 4:
            raise ShapeError(
                f"prob must be [fact, layer, position, module], got {_shape(self.prob)}"
            )
        f, n_l, n_p, n_m = _shape(self.prob)
        if _shape(self.lp) != (f, n_l, n_p, n_m):
            raise ShapeError(
                f"lp must have the shape of prob {(f, n_l, n_p, n_m)}, got {_shape(self.lp)}"
            )
        for name in ("lp_clean", "lp_corrupt"):
            if _shape(getattr(self, name)) != (f,):
                raise ShapeError(f"{name} must be [fact={f}], got {_shape(getattr(self, name))}")
        if len(self.layers) != n_l or len(self.modules) != n_m:
            raise ShapeError(
                f"labels: {len(self.layers)} layers / {len(self.modules)} modules for axes {n_l} / {n_m}"
            )
        self._check_fact_tuples(f)
        for name in self._EXTRA_FACT_TUPLES:
            if len(getattr(self, name)) != f:
                raise ShapeError(f"{name} has {len(getattr(self, name))} entries for {f} facts")
        for i in range(f):
            n_tok = len(self.tokens[i])
            if n_tok > n_p:
                raise ShapeError(
                    f"fact {self._fact_label(i)} has {n_tok} tokens but position axis {n_p}"
                )
            if any(not 0 <= p < n_tok for p in self.subject_positions[i]):
                raise ValueError(
                    f"fact {self._fact_label(i)}: subject positions {self.subject_positions[i]} "
                    f"outside its {n_tok} tokens"
                )
            if self.prediction_position[i] < 0:
                raise ValueError(f"fact {self._fact_label(i)}: negative prediction position")

    @property
    def values(self) -> torch.Tensor:
        """The indirect effect ``effect()`` ``[fact, layer, position, module]`` (``metric``
        units), as ``.values`` is the effect of every result type."""
        return self.effect()

    @property
    def restored(self) -> torch.Tensor:
        """The restored score: ``prob`` or ``lp`` (by ``metric``), ``[fact, layer, position,
        module]``."""
        return self.prob if self.metric == "prob" else self.lp

    @property
    def positions(self) -> tuple[int, ...]:
        """Labels of the ``position`` axis (``0 … P-1``)."""
        return tuple(range(self.prob.shape[2]))

    @property
    def last_subject_position(self) -> tuple[int, ...]:
        """Per fact, the last subject token's position."""
        return tuple(max(p) if p else -1 for p in self.subject_positions)

    def with_metric(self, metric: str) -> PositionalResult:
        """The same result with ``.values``/``.restored`` in ``"prob"`` or ``"lp"`` units."""
        return dataclasses.replace(self, metric=metric)

    def effect(self, *, normalized: bool = False) -> torch.Tensor:
        """Indirect effect ``restored − corrupted baseline``, ``[fact, layer, position, module]``.

        For ``metric="prob"`` the baseline is ``exp(lp_corrupt)``, for ``"lp"`` it is
        ``lp_corrupt``. ``normalized=True`` divides by the clean − corrupted gap (clean = 1,
        corrupted = 0). Padding stays NaN.
        """
        if self.metric == "prob":
            clean, corrupt = self.lp_clean.exp(), self.lp_corrupt.exp()
        else:
            clean, corrupt = self.lp_clean, self.lp_corrupt
        eff = self.restored - corrupt[:, None, None, None]
        if normalized:
            eff = eff / (clean - corrupt)[:, None, None, None]
        return eff

    def mean(self, *, include_unknown: bool = False) -> torch.Tensor:
        """NaN-aware mean over facts of the effect ``.values``, ``[layer, position, module]``.

        Like :meth:`TIEResult.mean`, averages over :meth:`known_only` (facts whose first
        answer token the clean model does not predict, ``config["unknown_facts"]``, are left
        out; all facts, with a warning, when none is known) unless ``include_unknown=True``.
        Positions are absolute, so facts whose prompts differ in length or subject position
        are not aligned; prefer per-fact maps (or ``compare.aligned_positional``) then.
        """
        if self.n_facts == 0:
            raise ValueError("mean over facts of an empty PositionalResult")
        r = self if include_unknown else self._known_only(stacklevel=3)
        return torch.nanmean(r.values, dim=0)

    def mean_over_facts(self) -> torch.Tensor:
        """Alias of :meth:`mean`."""
        return self.mean()

    # -- combination -------------------------------------------------------------------
    _SAME_TO_CONCAT: ClassVar[tuple[str, ...]] = (
        "layers", "modules", "window", "model_id", "version", "metric",
    )  # fmt: skip
    _SAME_TO_POOL: ClassVar[tuple[str, ...]] = (
        "fact_ids", "layers", "modules", "window", "model_id", "metric", "tokens",
        "subject_positions", "prediction_position",
    )  # fmt: skip
    _PAD: ClassVar[dict[str, tuple[int, Any]]] = {"prob": (2, math.nan), "lp": (2, math.nan)}

    def _check_pool(self, first: PositionalResult, i: int) -> None:
        if not torch.allclose(self.lp_clean.double(), first.lp_clean.double(), atol=1e-5):
            raise ValueError(f"cannot pool seeds: result {i} has another clean baseline")

    @classmethod
    def pool_seeds(cls, results: Iterable[PositionalResult]) -> PositionalResult:
        """Pool positional traces of the same facts under different noise seeds.

        Like :meth:`TIEResult.pool_seeds`: the parts are independent noise samples of the
        same quantity (draws are keyed by ``(seed, fact id, draw)``), so the pooled ``prob``
        and corrupted probability are the **draw-weighted** means of the parts' (ROME
        averages probabilities over draws), ``lp`` and ``lp_corrupt`` their logs,
        ``config["n_noise"]`` the total number of draws, ``seeds`` / ``config["seed"]`` every
        seed and ``config["pooled"]`` one ``{"seeds", "n_noise"}`` entry per part.

        Raises:
            ValueError: the parts differ in facts, labels, tokens, subject or prediction
                positions, window, model, clean baseline or any other setting, or share a seed.
            TypeError: a part is not a :class:`PositionalResult`.

        Example:
            >>> a = PositionalResult.synthetic(n_facts=2, seed=0)
            >>> b = dataclasses.replace(a, seeds=(1,))
            >>> p = PositionalResult.pool_seeds([a, b])
            >>> p.seeds, p.config["n_noise"]
            ((0, 1), 2)
        """
        parts = cls._pool_parts(results)
        first = parts[0]
        if len(parts) == 1:
            return first
        draws = [int(p.config.n_noise) for p in parts]
        w = torch.tensor(draws, dtype=torch.float64) / sum(draws)

        def mean_prob(name: str) -> torch.Tensor:
            stacked = torch.stack([getattr(p, name).cpu().double().exp() for p in parts])
            return (stacked * w.reshape(-1, *([1] * (stacked.ndim - 1)))).sum(0)

        prob = mean_prob("lp")
        config = cls._pooled_config(parts, draws)
        dtype = first.lp.dtype
        return dataclasses.replace(
            first,
            prob=prob.to(dtype),
            lp=prob.log().to(dtype),
            lp_corrupt=mean_prob("lp_corrupt").log().to(first.lp_corrupt.dtype),
            config=cls._CONFIG.from_record(config),
            seeds=tuple(s for p in parts for s in p.seeds),
        )

    @classmethod
    def synthetic(
        cls,
        *,
        n_facts: int = 3,
        n_layers: int = 4,
        modules: Sequence[str] = MODULE_ORDER,
        seed: int = 0,
    ) -> PositionalResult:
        """A random, consistent PositionalResult (prompts of 5 + i tokens, subject at 1–2)."""
        g = torch.Generator().manual_seed(seed)
        lengths = [5 + i for i in range(n_facts)]
        width = max(lengths) if lengths else 0
        lp = -3.0 + 0.5 * torch.randn(n_facts, n_layers, width, len(modules), generator=g)
        lp[:, : max(n_layers // 2, 1), 2, 0] += 2.0  # last subject token, early resid
        for i, n in enumerate(lengths):
            lp[i, :, n:, :] = math.nan
        lp = lp.clamp(max=0.0)
        tokens = tuple(tuple(["Where", "Ada", "Vell"] + ["tok"] * (n - 4) + ["?"]) for n in lengths)
        return cls(
            prob=lp.exp(),
            lp=lp,
            lp_clean=torch.full((n_facts,), -0.2),
            lp_corrupt=torch.full((n_facts,), -3.0),
            tokens=tokens,
            subject_positions=tuple((1, 2) for _ in lengths),
            prediction_position=tuple(n - 1 for n in lengths),
            window=1,
            fact_ids=tuple(f"f{i}" for i in range(n_facts)),
            subjects=tuple("Ada Vell" for _ in lengths),
            questions=tuple(" ".join(t) for t in tokens),
            answers=tuple("Lisbon" for _ in lengths),
            layers=tuple(range(n_layers)),
            modules=tuple(modules),
            config=PositionalProvenance.from_record(
                {
                    "modules": list(modules),
                    "layers": None,
                    "noise_scale": 3.0,
                    "nu": None,
                    "replace": False,
                    "n_noise": 1,
                    "seed": seed,
                    "window": 1,
                    "causal": True,  # prediction at the last prompt token, object after it
                    "shifted": True,
                }
            ),
            seeds=(seed,),
            model_id="synthetic",
        )

    def __repr__(self) -> str:
        ids = list(self.fact_ids[:4]) + (["…"] if self.n_facts > 4 else [])
        return (
            f"PositionalResult({self.metric}{_fmt_shape(self.values, self.dims)}, "
            f"n_facts={self.n_facts}, modules={self.modules}, window={self.window}, "
            f"model_id={self.model_id!r}, facts={ids}, seeds={self.seeds}, version={self.version!r})"
        )


# ----------------------------------------------------------------------------- coordinate


@dataclass(frozen=True, eq=False)
class Coordinate(Saveable):
    """A selected intervention coordinate and the score landscape it won (SPEC §7, Eq. 5).

    Attributes:
        layer, step, module: labels of the winning cell (layer number, denoising step,
            module name), not indices; :attr:`index` gives the indices.
        score: the winning score.
        scores: ``[layer, step, module]`` score of every cell; NaN marks cells excluded by
            the ``modules=`` / ``steps=`` restriction.
        beta: the β used.
        layers, steps, modules: axis labels of ``scores``.

    Example:
        >>> s = torch.zeros(2, 3, 1); s[1, 2, 0] = 5.0
        >>> c = Coordinate(layer=1, step=2, module="resid", score=5.0, scores=s, beta=0.0,
        ...                layers=(0, 1), steps=(0, 1, 2), modules=("resid",))
        >>> c.index
        (1, 2, 0)
    """

    layer: int
    step: int
    module: str
    score: float
    scores: torch.Tensor
    beta: float
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    modules: tuple[str, ...]

    dims: ClassVar[tuple[str, ...]] = ("layer", "step", "module")

    def __post_init__(self) -> None:
        for name in ("layers", "steps", "modules"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        shape = (len(self.layers), len(self.steps), len(self.modules))
        if _shape(self.scores) != shape:
            raise ShapeError(
                f"scores must be [layer, step, module] = {shape}, got {_shape(self.scores)}"
            )
        if (
            self.layer not in self.layers
            or self.step not in self.steps
            or self.module not in self.modules
        ):
            raise ValueError(
                f"coordinate ({self.layer}, {self.step}, {self.module!r}) is not among the labels"
            )

    @property
    def values(self) -> torch.Tensor:
        """The score landscape ``[layer, step, module]``."""
        return self.scores

    @property
    def index(self) -> tuple[int, int, int]:
        """Indices of the winning cell into ``scores``."""
        return (
            self.layers.index(self.layer),
            self.steps.index(self.step),
            self.modules.index(self.module),
        )

    def to_dataframe(self) -> Any:
        """The score landscape as a long ``pandas.DataFrame`` (``layer, step, module, value``)."""
        return to_dataframe(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the score tensor)."""
        return {
            "layer": self.layer,
            "step": self.step,
            "module": self.module,
            "score": self.score,
            "beta": self.beta,
        }

    def __repr__(self) -> str:
        return (
            f"Coordinate(layer={self.layer}, step={self.step}, module={self.module!r}, "
            f"score={self.score:.4g}, beta={self.beta:g}, scores{_fmt_shape(self.scores, self.dims)})"
        )
