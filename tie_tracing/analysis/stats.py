"""Analyses of tracing results and of the coordinate choice (SPEC §9 statistics, §10.2–3).

* :func:`bootstrap_ci` — percentile bootstrap CI over facts, per cell (scipy, vectorised).
  :func:`mean_ci` — the same for a 1-D sample (facts or seeds): ``(mean, low, high)``;
  :func:`cluster_mean_ci` — the same resampling whole clusters (the facts of one person).
* :func:`score_landscape`, :func:`beta_tradeoff`, :func:`selection_stability`,
  :func:`per_fact_optima` — study the Eq. 5 choice: the whole landscape, how β trades forget
  strength for neighbour damage, how often each cell wins when facts are resampled, and
  whether facts agree on their own best coordinate.
* :func:`seed_stability` — whether a Figure 2 survives a change of noise seed: traces of
  the same facts under different seeds, the seed-to-seed Pearson correlation of their mean
  maps and whether every seed selects the same Eq. 5 cell as the pooled trace
  (:meth:`~tie_tracing.core.results.TIEResult.pool_seeds`).
* :func:`localisation_stats` — how concentrated an effect map is (peak, top-k share,
  normalised entropy), and for positional maps where the peak sits relative to the subject.

Everything is plain tensor arithmetic on ``[fact, layer, step, module]`` heatmaps (tensors
or :class:`~tie_tracing.core.results.TIEResult`); nothing here runs a model. Limits: bootstrap
CIs resample facts only (the noise draws of a trace are taken as given; ``selection_stability``
can resample noise seeds too, from per-seed traces, and ``seed_stability`` compares seeds);
with a handful of facts the percentile CI is narrow and optimistic, and with one fact it
collapses to the value itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..core._guards import as_int
from ..core._io import Saveable
from ..core.errors import ShapeError
from ..core.results import Coordinate, PositionalResult, TIEPair, TIEResult
from .selection import (
    _as_heatmaps,
    _check_finite,
    _restriction_mask,
    select_coordinate,
    split_pair,
)

__all__ = [
    "BetaTradeoff",
    "LocalisationStats",
    "PerFactOptima",
    "SeedStability",
    "SelectionStability",
    "beta_tradeoff",
    "bootstrap_ci",
    "cluster_mean_ci",
    "localisation_stats",
    "mean_ci",
    "per_fact_optima",
    "score_landscape",
    "seed_stability",
    "selection_stability",
]


def _np(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of any tensor: detached, on the CPU (CUDA, bf16 and fp16 work)."""
    return t.detach().to("cpu", torch.float64).numpy()


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    per_fact: torch.Tensor,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap confidence interval of the mean over facts, per cell.

    Resamples the leading ``fact`` axis with replacement (``scipy.stats.bootstrap``,
    vectorised over all cells, ``method="percentile"``; needs SciPy >= 1.15 for its ``rng=``
    argument). The statistic is the NaN-aware mean (a fact's NaN cell is left out of that
    cell's mean, as in ``TIEResult.mean``); an all-NaN cell gets a NaN interval, and a cell
    whose facts all hold the same value gets exactly ``(value, value)``.

    **One fact.** A single fact has no spread to resample: the interval is degenerate,
    ``low == high == per_fact[0]`` (no error, no warning, no SciPy call). Callers that report
    intervals should say that ``n = 1`` (the interval then carries no uncertainty).

    Args:
        per_fact: ``[fact, ...]`` float tensor.
        n_resamples: bootstrap resamples (SPEC §9: 2000).
        confidence: confidence level in ``(0, 1)``.
        seed: seed of the resampling generator.

    Returns:
        ``(low, high)``, each ``per_fact.shape[1:]``, dtype of ``per_fact`` (float64 for an
        integer input), on the CPU; ``(per_fact[0], per_fact[0].clone())`` for one fact.

    Raises:
        ShapeError: ``per_fact`` is not a tensor with a leading fact axis.
        ValueError: no facts, or ``confidence`` outside ``(0, 1)``.

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
        >>> low, high = bootstrap_ci(x, n_resamples=500)
        >>> bool(low[0] < 1.5 < high[0]), float(low[1]), float(high[1])
        (True, 1.0, 1.0)
    """
    from scipy import stats

    if not isinstance(per_fact, torch.Tensor) or per_fact.ndim < 1:
        raise ShapeError("per_fact must be a tensor with a leading fact axis")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if per_fact.shape[0] == 0:
        raise ValueError("bootstrap_ci over an empty fact axis")
    dtype = per_fact.dtype if per_fact.is_floating_point() else torch.float64
    data = _np(per_fact)
    cell_shape = data.shape[1:]
    if data.shape[0] == 1:
        value = torch.as_tensor(np.array(data[0], copy=True)).to(dtype)
        return value, value.clone()
    flat = data.reshape(data.shape[0], -1)

    def statistic(sample: np.ndarray, axis: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
            return np.nanmean(sample, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) cells: the CI is the constant
        res = stats.bootstrap(
            (flat,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            axis=0,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low = np.asarray(res.confidence_interval.low).reshape(cell_shape)
    high = np.asarray(res.confidence_interval.high).reshape(cell_shape)
    # Constant cells: the percentile of identical values is that value (guard float fuzz).
    const = np.all(flat == flat[:1], axis=0).reshape(cell_shape)
    low = np.where(const, data[0], low)
    high = np.where(const, data[0], high)
    return torch.from_numpy(low).to(dtype), torch.from_numpy(high).to(dtype)


# ----------------------------------------------------------------------------- 1-D samples


def _as_float64(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _finite(x) -> torch.Tensor:
    t = _as_float64(x).reshape(-1)
    return t[torch.isfinite(t)]


def mean_ci(
    values, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a 1-D sample and its percentile-bootstrap confidence interval.

    A thin 1-D wrapper around :func:`tie_tracing.analysis.bootstrap_ci` (resampling the
    values — facts or seeds — with replacement ``n_resamples`` times, percentile method,
    fixed ``seed``), so both helpers give the same interval for the same sample. Non-finite
    values are dropped first. As in ``bootstrap_ci``, a single value gives ``(v, v, v)``
    (the bootstrap of one value has no spread), and so does a constant sample; an empty (or
    all non-finite) sample gives ``(nan, nan, nan)``.

    Args:
        values: ``[n]`` numbers.
        n_resamples: Bootstrap resamples (SPEC §9: 2000).
        confidence: Confidence level in ``(0, 1)``.
        seed: Seed of the resampling generator.

    Returns:
        ``(mean, low, high)``.

    Example:
        >>> m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
        >>> m, lo <= m <= hi
        (2.5, True)
        >>> mean_ci([3.0])
        (3.0, 3.0, 3.0)
    """
    x = _finite(values)
    if x.numel() == 0:
        return math.nan, math.nan, math.nan
    # One cell ([n, 1]): bootstrap_ci's bookkeeping assumes a cell axis.
    low, high = bootstrap_ci(x[:, None], n_resamples=n_resamples, confidence=confidence, seed=seed)
    return float(x.mean()), float(low[0]), float(high[0])


def cluster_mean_ci(
    values,
    clusters: Sequence,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of a 1-D sample and its percentile-bootstrap CI, resampling whole clusters.

    Facts that share a cluster (the facts of one person) are not independent draws: the
    bootstrap resamples the ``C`` clusters with replacement (``n_resamples`` times, fixed
    ``seed``) and each resample's statistic is the mean over every fact of the drawn clusters
    (``Σ cluster sums / Σ cluster sizes``, so the point estimate is the plain fact mean).
    Non-finite values are dropped first (with their cluster labels). One cluster gives the
    degenerate ``(m, m, m)``, as one fact does in :func:`mean_ci`; with singleton clusters the
    interval is :func:`mean_ci`'s resampling scheme (its draws differ: numpy, not scipy).

    Args:
        values: ``[n]`` numbers.
        clusters: ``n`` hashable labels (e.g. person ids), aligned with ``values``.
        n_resamples: Bootstrap resamples (SPEC §9: 2000).
        confidence: Confidence level in ``(0, 1)``.
        seed: Seed of the resampling generator.

    Returns:
        ``(mean, low, high)``; ``(nan, nan, nan)`` for an empty (or all non-finite) sample.

    Raises:
        ValueError: ``clusters`` of another length than ``values``; ``confidence`` outside
            ``(0, 1)``.

    Example:
        >>> m, lo, hi = cluster_mean_ci([1.0, 1.0, 3.0, 3.0], ["a", "a", "b", "b"])
        >>> m, lo, hi
        (2.0, 1.0, 3.0)
    """
    x = _as_float64(values).reshape(-1)
    labels = list(clusters)
    if len(labels) != x.numel():
        raise ValueError(f"{len(labels)} cluster labels for {x.numel()} values: give one per value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    keep = torch.isfinite(x)
    x = x[keep]
    labels = [c for c, k in zip(labels, keep.tolist()) if k]
    if x.numel() == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    index: dict[Any, int] = {}
    ids = np.array([index.setdefault(c, len(index)) for c in labels])
    n_clusters = len(index)
    if n_clusters == 1:
        return mean, mean, mean
    data = x.numpy()
    sums = np.bincount(ids, weights=data, minlength=n_clusters)
    sizes = np.bincount(ids, minlength=n_clusters).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_resamples, n_clusters))
    stats_ = sums[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(stats_, [tail, 100.0 - tail])
    if np.all(data == data[0]):  # a constant sample: the interval is the constant
        low = high = data[0]
    return mean, float(low), float(high)


# ----------------------------------------------------------------------------- selection studies


def score_landscape(
    heatmaps: TIEResult | TIEPair | Mapping[str, TIEResult] | torch.Tensor,
    *,
    beta: float = 0.0,
    neighbours: TIEResult | torch.Tensor | None = None,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> torch.Tensor:
    """The Eq. 5 score of every cell, ``[layer, step, module]`` (NaN where restricted).

    A thin wrapper: ``select_coordinate(...).scores``.

    Example:
        >>> score_landscape(torch.ones(2, 3, 4, 3)).shape
        torch.Size([3, 4, 3])
    """
    return select_coordinate(
        heatmaps, beta=beta, neighbours=neighbours, modules=modules, steps=steps
    ).scores


@dataclass(frozen=True, eq=False)
class BetaTradeoff(Saveable):
    """Eq. 5 selection over a grid of β.

    Attributes:
        betas: ``[beta]``.
        coordinates: the coordinate chosen at each β.
        forget: ``[beta]`` mean over forget facts of ``|TIE|`` at the chosen coordinate.
        neighbour: ``[beta]`` mean over neighbour facts of ``|TIE|`` there.
    """

    betas: torch.Tensor
    coordinates: tuple[Coordinate, ...]
    forget: torch.Tensor
    neighbour: torch.Tensor

    dims: ClassVar[tuple[str, ...]] = ("beta", "set")
    sets: ClassVar[tuple[str, ...]] = ("forget", "neighbour")

    @property
    def values(self) -> torch.Tensor:
        """``[beta, set]`` with sets ``("forget", "neighbour")``."""
        return torch.stack([self.forget, self.neighbour], dim=-1)

    @property
    def selectivity(self) -> torch.Tensor:
        """``[beta]`` forget effect divided by neighbour effect (inf where the latter is 0)."""
        return self.forget / self.neighbour

    def __repr__(self) -> str:
        rows = ", ".join(
            f"β={float(b):g}→({c.layer},{c.step},{c.module})"
            for b, c in zip(self.betas, self.coordinates)
        )
        return f"BetaTradeoff({rows})"


def beta_tradeoff(
    forget: TIEResult | TIEPair | Mapping[str, TIEResult] | torch.Tensor,
    neighbours: TIEResult | torch.Tensor | None = None,
    betas: Sequence[float] | torch.Tensor = (),
    *,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> BetaTradeoff:
    """For each β, the chosen coordinate and the mean ``|TIE|`` of both fact sets there.

    Args:
        forget: per-fact TIE of the forget facts ``[fact, layer, step, module]``, or a
            :class:`~tie_tracing.core.results.TIEPair` (``beta_tradeoff(pair, betas=[...])``).
        neighbours: per-fact TIE of the neighbour facts, same cell shape (not with a pair).
        betas: the β grid (each ``≥ 0``).
        modules, steps: restriction, as in :func:`~tie_tracing.analysis.selection.select_coordinate`.

    Example:
        >>> f = torch.zeros(2, 2, 1, 1); f[:, 0] = 2.0; f[:, 1] = 1.0
        >>> g = torch.zeros(3, 2, 1, 1); g[:, 0] = 3.0
        >>> t = beta_tradeoff(f, g, [0.0, 1.0])
        >>> [c.layer for c in t.coordinates], t.neighbour.tolist()
        ([0, 1], [3.0, 0.0])
    """
    forget, neighbours = split_pair(forget, neighbours, "beta_tradeoff")
    if neighbours is None:
        raise ValueError(
            "beta_tradeoff needs the neighbour maps: a TIEPair from tt.trace_tie(model, facts, "
            "neighbours=keep), or neighbours="
        )
    beta_list = [float(b) for b in (betas.tolist() if isinstance(betas, torch.Tensor) else betas)]
    if not beta_list:
        raise ValueError("betas is empty")
    fx = _as_heatmaps(forget, "forget")[0]
    nx = _as_heatmaps(neighbours, "neighbours")[0]
    coords, f_eff, n_eff = [], [], []
    for b in beta_list:
        c = select_coordinate(forget, beta=b, neighbours=neighbours, modules=modules, steps=steps)
        li, si, mi = c.index
        coords.append(c)
        f_eff.append(float(fx[:, li, si, mi].abs().mean()))
        n_eff.append(float(nx[:, li, si, mi].abs().mean()) if nx.shape[0] else math.nan)
    return BetaTradeoff(
        betas=torch.tensor(beta_list, dtype=torch.float64),
        coordinates=tuple(coords),
        forget=torch.tensor(f_eff, dtype=torch.float64),
        neighbour=torch.tensor(n_eff, dtype=torch.float64),
    )


@dataclass(frozen=True, eq=False)
class SelectionStability(Saveable):
    """How often each cell wins Eq. 5 when facts (and optionally noise seeds) are resampled.

    Attributes:
        frequencies: ``[layer, step, module]`` share of bootstrap resamples each cell won
            (sums to 1; restricted cells are 0).
        coordinate: the choice on the full fact set.
        top: up to 5 ``(layer, step, module, frequency)`` label tuples, most frequent first.
        n_boot: number of resamples.
        layers, steps, modules: labels of ``frequencies``.
        n_seeds: number of per-seed traces resampled along with the facts (1: facts only,
            the traces' noise taken as given).
    """

    frequencies: torch.Tensor
    coordinate: Coordinate
    top: tuple[tuple[int, int, str, float], ...]
    n_boot: int
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    modules: tuple[str, ...]
    n_seeds: int = 1

    dims: ClassVar[tuple[str, ...]] = ("layer", "step", "module")

    @property
    def values(self) -> torch.Tensor:
        """``frequencies`` ``[layer, step, module]``."""
        return self.frequencies

    @property
    def agreement(self) -> float:
        """Share of resamples that chose the full-set coordinate."""
        return float(self.frequencies[self.coordinate.index])

    def __repr__(self) -> str:
        top = ", ".join(f"({la},{k},{m}):{p:.2f}" for la, k, m, p in self.top)
        seeds = f", n_seeds={self.n_seeds}" if self.n_seeds > 1 else ""
        return (
            f"SelectionStability(n_boot={self.n_boot}{seeds}, agreement={self.agreement:.2f}, "
            f"top=[{top}])"
        )


def _seed_maps(
    seeds: Sequence[TIEResult | torch.Tensor],
    heatmaps: TIEResult | torch.Tensor,
    shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([seed, fact, layer, step, module] float64, [seed] draw weights)`` of per-seed traces.

    TIEResults are checked to be traces of one experiment under different seeds
    (:meth:`TIEResult.pool_seeds` raises otherwise) and of ``heatmaps``' facts; each weighs
    its number of noise draws, as in the pool. Tensors weigh 1 each and must have ``shape``.
    """
    parts = list(seeds)
    if not parts:
        raise ValueError("seeds= is empty: pass per-seed traces of the heatmaps' facts")
    if all(isinstance(p, TIEResult) for p in parts):
        results = [p for p in parts if isinstance(p, TIEResult)]
        TIEResult.pool_seeds(results)  # validates: same facts and settings, distinct seeds
        if isinstance(heatmaps, TIEResult):
            for name in ("fact_ids", "layers", "steps", "modules"):
                if getattr(results[0], name) != getattr(heatmaps, name):
                    raise ValueError(
                        f"seeds= are traces of other {name} than heatmaps: "
                        f"{getattr(results[0], name)!r} versus {getattr(heatmaps, name)!r}"
                    )
        weights = [float(r.lp_corrupt_draws.shape[1]) for r in results]
    elif all(isinstance(p, torch.Tensor) for p in parts):
        weights = [1.0] * len(parts)
    else:
        raise TypeError("seeds= must be all TIEResults or all tensors [fact, layer, step, module]")
    maps = []
    for i, p in enumerate(parts):
        t = _as_heatmaps(p, f"seeds[{i}]")[0]
        if tuple(t.shape) != shape:
            raise ShapeError(
                f"seeds[{i}] has per-fact maps of shape {tuple(t.shape)}, heatmaps {shape} "
                "(the same facts, known to the model, are needed)"
            )
        maps.append(t.to(torch.float64))
    return torch.stack(maps), torch.tensor(weights, dtype=torch.float64)


def selection_stability(
    heatmaps: TIEResult | TIEPair | Mapping[str, TIEResult] | torch.Tensor,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    beta: float = 0.0,
    neighbours: TIEResult | torch.Tensor | None = None,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
    seeds: Sequence[TIEResult | torch.Tensor] | None = None,
) -> SelectionStability:
    """Bootstrap stability of the Eq. 5 choice.

    Each resample draws the forget facts (and, independently, the neighbour facts) with
    replacement, recomputes the score of every cell and records the argmax (first cell on
    ties, as in ``select_coordinate``). Vectorised: one ``[n_boot, fact] @ [fact, cells]``
    product per fact set.

    **Noise seeds too** (``seeds=``): given per-seed traces of the same facts (e.g. the parts
    that :meth:`~tie_tracing.core.results.TIEResult.pool_seeds` pooled into ``heatmaps``), each
    resample also draws the seeds with replacement: per fact, the resampled seeds' TIE maps
    are pooled (draw-weighted mean, as ``pool_seeds`` does; a seed drawn twice counts twice)
    and Eq. 5 scores the mean over the resampled facts of ``|pooled TIE|``. The frequencies
    then reflect the variability of the noise as well as of the fact sample; with very few
    seeds (2–3) the seed part of the resampling is coarse. Neighbours are still resampled
    over facts only. ``coordinate`` stays the choice on ``heatmaps``, so pass the pooled
    trace there.

    Args:
        heatmaps, beta, neighbours, modules, steps: as in
            :func:`~tie_tracing.analysis.selection.select_coordinate`.
        n_boot: number of resamples.
        seed: seed of the resampling generator.
        seeds: optional per-seed traces of ``heatmaps``' facts: TIEResults of one experiment
            under different noise seeds (each weighted by its noise draws), or tensors
            ``[fact, layer, step, module]`` shaped like ``heatmaps`` (equal weights).
            ``None`` (default): resample facts only.

    Raises:
        ValueError: ``n_boot < 1``; ``seeds`` empty, of other facts or settings than
            ``heatmaps``, or repeating a seed.
        ShapeError: a per-seed map does not match ``heatmaps``.

    Example:
        >>> tie = torch.zeros(4, 2, 2, 1); tie[:, 1, 1, 0] = 1.0
        >>> s = selection_stability(tie, n_boot=50)
        >>> s.agreement, float(s.frequencies.sum())
        (1.0, 1.0)
        >>> other = torch.zeros(4, 2, 2, 1); other[:, 0, 0, 0] = 3.0  # a seed that disagrees
        >>> both = selection_stability((tie + other) / 2, n_boot=400, seeds=[tie, other])
        >>> 0.5 < float(both.frequencies[0, 0, 0]) < 1.0 and both.n_seeds
        2
    """
    forget_maps: TIEResult | torch.Tensor
    forget_maps, neighbours = split_pair(heatmaps, neighbours, "selection_stability")
    n_boot, seed = as_int(n_boot), as_int(seed)
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    coord = select_coordinate(
        forget_maps, beta=beta, neighbours=neighbours, modules=modules, steps=steps
    )
    x, layers, step_labels, module_labels = _as_heatmaps(forget_maps, "heatmaps")
    cell_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    allowed = _restriction_mask(cell_shape, step_labels, module_labels, modules, steps)
    per_seed = weights = None
    if seeds is not None:
        per_seed, weights = _seed_maps(seeds, forget_maps, tuple(x.shape))
        for i in range(per_seed.shape[0]):
            _check_finite(per_seed[i], allowed, f"seeds[{i}]")
    allowed = allowed.flatten()
    gen = torch.Generator().manual_seed(seed)

    def resampled_mean(t: torch.Tensor) -> torch.Tensor:  # [n_boot, cells]
        n = t.shape[0]
        idx = torch.randint(0, n, (n_boot, n), generator=gen)
        counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(n_boot, n, dtype=torch.float64)
        )
        return counts @ t.abs().reshape(n, -1).to(torch.float64) / n

    if per_seed is None or weights is None:
        score = resampled_mean(x)
    else:
        score = _resampled_seed_score(per_seed, weights, n_boot, gen)
    if neighbours is not None and beta > 0:
        score = score - beta * resampled_mean(_as_heatmaps(neighbours, "neighbours")[0])
    score = score.masked_fill(~allowed, -math.inf)
    winners = score.argmax(dim=1)
    freq = torch.bincount(winners, minlength=allowed.numel()).to(torch.float64) / n_boot
    freq = freq.reshape(cell_shape)
    order = torch.argsort(freq.flatten(), descending=True, stable=True)
    top = []
    for flat in order[:5].tolist():
        p = float(freq.flatten()[flat])
        if p == 0:
            break
        li, rest = divmod(flat, cell_shape[1] * cell_shape[2])
        si, mi = divmod(rest, cell_shape[2])
        top.append((layers[li], step_labels[si], module_labels[mi], p))
    return SelectionStability(
        frequencies=freq,
        coordinate=coord,
        top=tuple(top),
        n_boot=n_boot,
        layers=layers,
        steps=step_labels,
        modules=module_labels,
        n_seeds=1 if per_seed is None else int(per_seed.shape[0]),
    )


def _resampled_seed_score(
    per_seed: torch.Tensor, weights: torch.Tensor, n_boot: int, gen: torch.Generator
) -> torch.Tensor:
    """``[n_boot, cells]`` Eq. 5 scores with seeds and facts resampled with replacement.

    ``per_seed`` is ``[seed, fact, layer, step, module]``; a resample pools its drawn seeds
    per fact (weights × multiplicity, normalised) and averages ``|pooled|`` over its drawn
    facts. Worked in chunks of resamples so that ``[chunk, fact, cells]`` stays small.
    """
    n_s, n_f = int(per_seed.shape[0]), int(per_seed.shape[1])
    flat = per_seed.reshape(n_s, n_f, -1)
    n_cells = int(flat.shape[-1])

    def counts(n: int) -> torch.Tensor:
        idx = torch.randint(0, n, (n_boot, n), generator=gen)
        return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(n_boot, n, dtype=torch.float64)
        )

    fact_w = counts(n_f) / n_f  # [n_boot, fact]; drawn first, as in the facts-only bootstrap
    seed_w = counts(n_s) * weights[None, :]
    seed_w = seed_w / seed_w.sum(1, keepdim=True)  # [n_boot, seed]
    score = torch.empty(n_boot, n_cells, dtype=torch.float64)
    chunk = max(1, (1 << 22) // max(1, n_f * n_cells))
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        pooled = torch.einsum("bs,sfc->bfc", seed_w[lo:hi], flat)
        score[lo:hi] = torch.einsum("bf,bfc->bc", fact_w[lo:hi], pooled.abs())
    return score


@dataclass(frozen=True, eq=False)
class PerFactOptima(Saveable):
    """Each fact's own best coordinate (argmax of its ``|TIE|``) versus the global choice.

    Attributes:
        global_coordinate: Eq. 5 with β = 0 on all facts.
        indices: ``[fact, 3]`` long, each fact's optimum as (layer, step, module) indices.
        coordinates: each fact's optimum as ``(layer, step, module)`` labels.
        at_own: ``[fact]`` ``|TIE_f|`` at the fact's own optimum.
        at_global: ``[fact]`` ``|TIE_f|`` at the global coordinate.
        fact_ids: the facts' ids (``"0", "1", …`` for a bare tensor).
    """

    global_coordinate: Coordinate
    indices: torch.Tensor
    coordinates: tuple[tuple[int, int, str], ...]
    at_own: torch.Tensor
    at_global: torch.Tensor
    fact_ids: tuple[str, ...]

    dims: ClassVar[tuple[str, ...]] = ("fact", "where")

    @property
    def values(self) -> torch.Tensor:
        """``[fact, where]`` with ``where = ("own", "global")``."""
        return torch.stack([self.at_own, self.at_global], dim=-1)

    @property
    def agreement_rate(self) -> float:
        """Share of facts whose own optimum is the global coordinate."""
        g = torch.tensor(self.global_coordinate.index)
        return float((self.indices == g).all(dim=1).double().mean())

    @property
    def layer_agreement_rate(self) -> float:
        """Share of facts whose own optimum is at the global coordinate's layer."""
        return float((self.indices[:, 0] == self.global_coordinate.index[0]).double().mean())

    @property
    def retained(self) -> torch.Tensor:
        """``[fact]`` ``at_global / at_own``: how much of its best effect each fact keeps."""
        return self.at_global / self.at_own

    def __repr__(self) -> str:
        g = self.global_coordinate
        return (
            f"PerFactOptima(n_facts={len(self.fact_ids)}, global=({g.layer},{g.step},{g.module}), "
            f"agreement_rate={self.agreement_rate:.2f}, layer_agreement_rate={self.layer_agreement_rate:.2f})"
        )


def per_fact_optima(
    heatmaps: TIEResult | torch.Tensor,
    *,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> PerFactOptima:
    """Per-fact coordinate selection (SPEC §11, paper §VI.4) against the global choice.

    For a :class:`~tie_tracing.core.results.TIEResult` only the facts the model knows are
    analysed (:meth:`~tie_tracing.core.results.TIEResult.known_only`, as in Eq. 5 selection);
    ``fact_ids`` names them, one per row of ``indices``.

    Example:
        >>> tie = torch.zeros(3, 2, 2, 1); tie[:2, 0, 0, 0] = 1.0; tie[2, 1, 1, 0] = 2.0
        >>> o = per_fact_optima(tie)
        >>> o.coordinates[2], round(o.agreement_rate, 2), o.at_global.tolist()
        ((1, 1, 'm0'), 0.67, [1.0, 1.0, 0.0])
    """
    glob = select_coordinate(heatmaps, modules=modules, steps=steps)
    x, layers, step_labels, module_labels = _as_heatmaps(heatmaps, "heatmaps")
    cell_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    allowed = _restriction_mask(cell_shape, step_labels, module_labels, modules, steps)
    a = x.abs()
    flat = a.masked_fill(~allowed, -math.inf).reshape(a.shape[0], -1)
    best = flat.argmax(dim=1)
    li = best // (cell_shape[1] * cell_shape[2])
    si = (best // cell_shape[2]) % cell_shape[1]
    mi = best % cell_shape[2]
    indices = torch.stack([li, si, mi], dim=1)
    g = glob.index
    # the facts of ``x``: a TIEResult contributes its known facts only (as _as_heatmaps does)
    ids = (
        heatmaps.known_only().fact_ids
        if isinstance(heatmaps, TIEResult)
        else tuple(str(i) for i in range(a.shape[0]))
    )
    if len(ids) != a.shape[0]:  # pragma: no cover - guards the invariant above
        raise ShapeError(f"{len(ids)} fact ids for {a.shape[0]} per-fact maps")
    return PerFactOptima(
        global_coordinate=glob,
        indices=indices,
        coordinates=tuple(
            (layers[int(r[0])], step_labels[int(r[1])], module_labels[int(r[2])]) for r in indices
        ),
        at_own=flat.gather(1, best[:, None]).squeeze(1),
        at_global=a[:, g[0], g[1], g[2]],
        fact_ids=tuple(ids),
    )


# ----------------------------------------------------------------------------- seed stability


def _pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Pearson correlation of two maps over their informative cells, and how many there were.

    A cell counts when it is finite in both maps and non-zero in at least one: cells that
    are exactly 0 in both (steps with nothing left to decide under ``lp="frozen"``) agree
    by construction and would inflate ``r``. NaN when fewer than 2 cells count or a map
    is constant over them.
    """
    x, y = (
        a.detach().to("cpu", torch.float64).flatten(),
        b.detach().to("cpu", torch.float64).flatten(),
    )
    keep = torch.isfinite(x) & torch.isfinite(y) & ((x != 0) | (y != 0))
    n = int(keep.sum())
    if n < 2:
        return math.nan, n
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    denom = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    if denom == 0.0:
        return math.nan, n
    return max(-1.0, min(1.0, float((x * y).sum()) / denom)), n


def _correlation_matrix(maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([seed, seed] Pearson r, [seed, seed] cells used)``; the diagonal is 1 by definition."""
    n = len(maps)
    r = torch.eye(n, dtype=torch.float64)
    cells = torch.zeros(n, n, dtype=torch.long)
    for i in range(n):
        for j in range(i, n):
            value, used = _pearson(maps[i], maps[j])
            if i != j:
                r[i, j] = r[j, i] = value
            cells[i, j] = cells[j, i] = used
    return r, cells


def _off_diagonal_mean(m: torch.Tensor) -> float:
    n = m.shape[0]
    off = m[~torch.eye(n, dtype=torch.bool)]
    off = off[~torch.isnan(off)]
    return float(off.mean()) if off.numel() else math.nan


def _cell(c: Coordinate) -> tuple[int, int, str]:
    return (c.layer, c.step, c.module)


@dataclass(frozen=True, eq=False)
class SeedStability(Saveable):
    """Does a trace survive a change of noise seed? (see :func:`seed_stability`)

    Compares traces of the same facts under different noise seeds: how well their mean TIE
    maps (``TIEResult.mean()``, ``[layer, step, module]``) correlate, and whether each seed
    picks the same Eq. 5 coordinate as the pooled trace (all seeds' draws together).

    Attributes:
        correlation: ``[seed, other_seed]`` Pearson ``r`` between the seeds' mean maps on
            ``module`` (flattened ``[layer, step]``; all modules when ``module`` is None);
            the diagonal is 1, an undefined pair (see :func:`seed_stability`) NaN.
        correlation_all: ``[seed, other_seed]`` the same over all modules.
        n_cells: ``[seed, other_seed]`` cells each ``correlation`` used (finite, and non-zero
            in at least one map: cells that are exactly 0 in both agree by construction).
        coordinates: each seed's Eq. 5 choice (β = 0) restricted to ``module``.
        pooled: the pooled trace's choice restricted to ``module``.
        coordinates_all: each seed's Eq. 5 choice over all modules.
        pooled_all: the pooled trace's choice over all modules.
        seeds: per trace, its seeds (a trace may itself be a pool).
        n_noise: per trace, its number of noise draws.
        module: the module of ``correlation`` and ``coordinates`` (None: all).
        fact_ids: the traced facts.
    """

    correlation: torch.Tensor
    correlation_all: torch.Tensor
    n_cells: torch.Tensor
    coordinates: tuple[Coordinate, ...]
    pooled: Coordinate
    coordinates_all: tuple[Coordinate, ...]
    pooled_all: Coordinate
    seeds: tuple[tuple[int, ...], ...]
    n_noise: tuple[int, ...]
    module: str | None
    fact_ids: tuple[str, ...]

    dims: ClassVar[tuple[str, ...]] = ("seed", "other_seed")

    @property
    def values(self) -> torch.Tensor:
        """``correlation`` ``[seed, other_seed]``."""
        return self.correlation

    @property
    def n_seeds(self) -> int:
        """Number of traces compared."""
        return len(self.seeds)

    @property
    def mean_correlation(self) -> float:
        """Mean of the off-diagonal ``correlation`` (NaN pairs left out)."""
        return _off_diagonal_mean(self.correlation)

    @property
    def mean_correlation_all(self) -> float:
        """Mean of the off-diagonal ``correlation_all``."""
        return _off_diagonal_mean(self.correlation_all)

    @property
    def same_cell(self) -> tuple[bool, ...]:
        """Per seed: does it select the pooled coordinate (restricted to ``module``)?"""
        return tuple(_cell(c) == _cell(self.pooled) for c in self.coordinates)

    @property
    def same_cell_all(self) -> tuple[bool, ...]:
        """Per seed: does it select the pooled coordinate over all modules?"""
        return tuple(_cell(c) == _cell(self.pooled_all) for c in self.coordinates_all)

    @property
    def agreement(self) -> float:
        """Share of seeds that select the pooled coordinate (restricted to ``module``)."""
        return sum(self.same_cell) / len(self.same_cell)

    @property
    def agreement_all(self) -> float:
        """Share of seeds that select the pooled coordinate over all modules."""
        return sum(self.same_cell_all) / len(self.same_cell_all)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN correlations become ``None``)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        def matrix(m: torch.Tensor) -> list[list[float | None]]:
            return [[num(float(v)) for v in row] for row in m]

        return {
            "module": self.module,
            "seeds": [list(s) for s in self.seeds],
            "n_noise": list(self.n_noise),
            "n_facts": len(self.fact_ids),
            "correlation": matrix(self.correlation),
            "mean_correlation": num(self.mean_correlation),
            "correlation_all_modules": matrix(self.correlation_all),
            "mean_correlation_all_modules": num(self.mean_correlation_all),
            "n_cells": self.n_cells.tolist(),
            "coordinates": [c.to_dict() for c in self.coordinates],
            "pooled": self.pooled.to_dict(),
            "same_cell": list(self.same_cell),
            "agreement": self.agreement,
            "coordinates_all_modules": [c.to_dict() for c in self.coordinates_all],
            "pooled_all_modules": self.pooled_all.to_dict(),
            "same_cell_all_modules": list(self.same_cell_all),
            "agreement_all_modules": self.agreement_all,
        }

    def __repr__(self) -> str:
        where = self.module or "all modules"
        seeds = ", ".join(str(s[0]) if len(s) == 1 else str(s) for s in self.seeds)
        cells = ", ".join(f"({c.layer},{c.step},{c.module})" for c in self.coordinates)
        p = self.pooled
        return (
            f"SeedStability(seeds=[{seeds}], n_noise={list(self.n_noise)}, "
            f"n_facts={len(self.fact_ids)}, r[{where}]={self.mean_correlation:.3f}, "
            f"r[all]={self.mean_correlation_all:.3f}, cells[{where}]=[{cells}], "
            f"pooled=({p.layer},{p.step},{p.module}), agreement={self.agreement:.2f})"
        )


def seed_stability(results: Sequence[TIEResult], *, module: str | None = "resid") -> SeedStability:
    """Compare traces of the same facts under different noise seeds (a Figure 2 robustness check).

    Noise draws are keyed by ``(seed, fact id, draw index)``, so ``trace_tie(..., seed=s)``
    and ``trace_tie(..., seed=s')`` are independent noise samples over the same facts. A map
    worth reporting should not depend on which sample was drawn: this computes the pairwise
    Pearson correlation of the traces' mean maps (``TIEResult.mean()``, the facts the model
    knows) on ``module`` and over all modules, each trace's Eq. 5 coordinate
    (:func:`~tie_tracing.analysis.selection.select_coordinate`, β = 0) and whether it matches the
    coordinate of the pooled trace (:meth:`~tie_tracing.core.results.TIEResult.pool_seeds`).

    Cells that are exactly 0 in both maps of a pair are left out of its correlation (under
    ``lp="frozen"`` the steps with nothing left to decide are 0 by construction, whatever the
    seed, and would inflate ``r``); a pair with a constant map, or fewer than 2 cells, has
    ``r = NaN``. ``r`` says whether the *shape* of the map is reproducible, not its scale.

    Args:
        results: At least two traces of the same facts and settings under different seeds
            (checked as in ``pool_seeds``: same fact ids and order, labels, ``T``, ``lp``,
            ``target``, ``decay`` and other settings, disjoint seeds).
        module: The module the headline correlation and selection are restricted to
            (default ``"resid"``, where the paper installs the edit); None for all modules.

    Returns:
        A :class:`SeedStability`.

    Raises:
        ValueError: fewer than two traces; traces of different facts or settings, or a seed
            repeated (as ``pool_seeds``); a ``module`` the traces do not hold.

    Example:
        >>> import dataclasses
        >>> a = TIEResult.synthetic(n_facts=3, seed=0)
        >>> b = dataclasses.replace(a, seeds=(1,), ie=2 * a.ie, tie=2 * a.tie)  # same shape
        >>> s = seed_stability([a, b])
        >>> round(s.mean_correlation, 6), s.same_cell, s.agreement
        (1.0, (True, True), 1.0)
    """
    traces = list(results)
    if len(traces) < 2:
        raise ValueError(f"seed_stability needs traces under at least 2 seeds, got {len(traces)}")
    pooled = TIEResult.pool_seeds(traces)  # validates facts, settings and seeds
    if module is not None and module not in pooled.modules:
        raise ValueError(f"module {module!r} is not traced; the traces hold {list(pooled.modules)}")
    maps = [t.mean() for t in traces]
    on_module = maps if module is None else [m[..., pooled.modules.index(module)] for m in maps]
    correlation, cells = _correlation_matrix(on_module)
    correlation_all, _ = _correlation_matrix(maps)
    return SeedStability(
        correlation=correlation,
        correlation_all=correlation_all,
        n_cells=cells,
        coordinates=tuple(select_coordinate(t, modules=module) for t in traces),
        pooled=select_coordinate(pooled, modules=module),
        coordinates_all=tuple(select_coordinate(t) for t in traces),
        pooled_all=select_coordinate(pooled),
        seeds=tuple(tuple(t.seeds) for t in traces),
        n_noise=tuple(int(t.lp_corrupt_draws.shape[1]) for t in traces),
        module=module,
        fact_ids=tuple(pooled.fact_ids),
    )


# ----------------------------------------------------------------------------- localisation


@dataclass(frozen=True)
class LocalisationStats(Saveable):
    """How concentrated one effect map is.

    Attributes:
        dims: axis names of the map.
        peak: label (or index) along each axis of the cell with the largest ``|effect|``.
        peak_value: the signed effect there.
        top_share: ``{k: share of total |effect| in the k largest cells}``.
        entropy: Shannon entropy of ``|effect| / Σ|effect|`` divided by ``log(n cells)``:
            0 = all in one cell, 1 = spread evenly. NaN cells are left out.
        n_cells: number of finite cells.
        peak_relative_position: for positional maps, peak position minus the last subject
            token's position (0 = at the last subject token), else ``None``.
    """

    dims: tuple[str, ...]
    peak: dict[str, Any]
    peak_value: float
    top_share: dict[int, float]
    entropy: float
    n_cells: int
    peak_relative_position: int | None = None


def localisation_stats(
    values: torch.Tensor | TIEResult | PositionalResult,
    dims: Sequence[str] | None = None,
    *,
    labels: Mapping[str, Sequence[Any]] | None = None,
    last_subject_position: int | None = None,
    top_k: Sequence[int] = (1, 3, 5),
) -> LocalisationStats | tuple[LocalisationStats, ...]:
    """Peak, top-k share and normalised entropy of ``|effect|`` over one map.

    Args:
        values: one effect map without a fact axis (e.g. ``result.mean()``,
            ``[layer, step, module]``, or ``positional.effect()[f]``), with ``dims``; or a
            :class:`TIEResult` (its fact-mean TIE map, labels from the result), or a
            :class:`PositionalResult` (one stats object per fact, on ``effect()[f]``
            cropped to the fact's own tokens, with the peak position relative to its last
            subject token).
        dims: axis names of a tensor map (ignored for results).
        labels: optional ``{dim: labels}`` used to report the peak (default: indices).
        last_subject_position: for a map with a ``"position"`` axis, the last subject
            token's position, to report ``peak_relative_position``.
        top_k: the ``k`` of the top-k shares.

    Returns:
        A :class:`LocalisationStats`, or a tuple of them (one per fact) for a PositionalResult.

    Example:
        >>> m = torch.zeros(4, 3); m[2, 1] = 3.0; m[0, 0] = -1.0
        >>> s = localisation_stats(m, ("layer", "position"), last_subject_position=2)
        >>> s.peak, s.top_share[1], s.peak_relative_position
        ({'layer': 2, 'position': 1}, 0.75, -1)
    """
    if isinstance(values, TIEResult):
        lab = {"layer": values.layers, "step": values.steps, "module": values.modules}
        return localisation_stats(values.mean(), values.dims[1:], labels=lab, top_k=top_k)
    if isinstance(values, PositionalResult):
        eff = values.effect()
        out: list[Any] = []
        for f in range(values.n_facts):
            n_tok = len(values.tokens[f])
            lab = {
                "layer": values.layers,
                "position": tuple(range(n_tok)),
                "module": values.modules,
            }
            out.append(
                localisation_stats(
                    eff[f, :, :n_tok],
                    values.dims[1:],
                    labels=lab,
                    last_subject_position=values.last_subject_position[f],
                    top_k=top_k,
                )
            )
        return tuple(out)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a tensor or a result, got {type(values).__name__}")
    if dims is None:
        raise ValueError("dims= is required for a tensor map")
    dims = tuple(dims)
    if values.ndim != len(dims):
        raise ShapeError(f"map has {values.ndim} axes {tuple(values.shape)} but dims={dims}")
    if "fact" in dims:
        raise ShapeError("localisation_stats takes one map: average or index the fact axis first")
    x = values.detach().to("cpu", torch.float64)
    a = x.abs().flatten()
    finite = ~torch.isnan(a)
    n = int(finite.sum())
    if n == 0:
        raise ValueError("the map holds no finite cell")
    a_f = torch.where(finite, a, 0.0)
    total = float(a_f.sum())
    flat_peak = int(torch.argmax(torch.where(finite, a, -1.0)))
    coords = np.unravel_index(flat_peak, tuple(x.shape))
    labels = labels or {}
    peak = {d: (labels[d][int(i)] if d in labels else int(i)) for d, i in zip(dims, coords)}
    ranked = torch.sort(a_f, descending=True).values
    if total > 0:
        shares = {int(k): float(ranked[: int(k)].sum()) / total for k in top_k}
        p = a_f[finite] / total
        nz = p[p > 0]
        ent = float(-(nz * nz.log()).sum()) / math.log(n) if n > 1 else 0.0
    else:
        shares = {int(k): math.nan for k in top_k}
        ent = math.nan
    rel = None
    if "position" in dims and last_subject_position is not None:
        rel = int(coords[dims.index("position")]) - int(last_subject_position)
    return LocalisationStats(
        dims=dims,
        peak=peak,
        peak_value=float(x.flatten()[flat_peak]),
        top_share=shares,
        entropy=ent,
        n_cells=n,
        peak_relative_position=rel,
    )
