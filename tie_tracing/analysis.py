"""Analyses of tracing results and of the coordinate choice (SPEC §9 statistics, §10.2–3).

* :func:`bootstrap_ci` — percentile bootstrap CI over facts, per cell (scipy, vectorised).
* :func:`score_landscape`, :func:`beta_tradeoff`, :func:`selection_stability`,
  :func:`per_fact_optima` — study the Eq. 5 choice: the whole landscape, how β trades forget
  strength for neighbour damage, how often each cell wins when facts are resampled, and
  whether facts agree on their own best coordinate.
* :func:`localisation_stats` — how concentrated an effect map is (peak, top-k share,
  normalised entropy), and for positional maps where the peak sits relative to the subject.

Everything is plain tensor arithmetic on ``[fact, layer, step, module]`` heatmaps (tensors
or :class:`~tie_tracing.results.TIEResult`); nothing here runs a model. Limits: bootstrap
resamples facts only (noise draws and seeds are taken as given); with a handful of facts the
percentile CI is narrow and optimistic, and with one fact it collapses to the value itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .errors import ShapeError
from .results import Coordinate, PositionalResult, TIEResult
from .selection import _as_heatmaps, _restriction_mask, select_coordinate

__all__ = [
    "BetaTradeoff",
    "LocalisationStats",
    "PerFactOptima",
    "SelectionStability",
    "beta_tradeoff",
    "bootstrap_ci",
    "localisation_stats",
    "per_fact_optima",
    "score_landscape",
    "selection_stability",
]


def _np(t: torch.Tensor) -> np.ndarray:
    """A float64 NumPy copy of any tensor: detached, on the CPU (CUDA, bf16 and fp16 work)."""
    return t.detach().to("cpu", torch.float64).numpy()


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    per_fact: torch.Tensor,
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


# ----------------------------------------------------------------------------- selection studies


def score_landscape(
    heatmaps: TIEResult | torch.Tensor,
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
class BetaTradeoff:
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
    forget: TIEResult | torch.Tensor,
    neighbours: TIEResult | torch.Tensor,
    betas: Sequence[float] | torch.Tensor,
    *,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> BetaTradeoff:
    """For each β, the chosen coordinate and the mean ``|TIE|`` of both fact sets there.

    Args:
        forget: per-fact TIE of the forget facts ``[fact, layer, step, module]``.
        neighbours: per-fact TIE of the neighbour facts, same cell shape.
        betas: the β grid (each ``≥ 0``).
        modules, steps: restriction, as in :func:`~tie_tracing.selection.select_coordinate`.

    Example:
        >>> f = torch.zeros(2, 2, 1, 1); f[:, 0] = 2.0; f[:, 1] = 1.0
        >>> g = torch.zeros(3, 2, 1, 1); g[:, 0] = 3.0
        >>> t = beta_tradeoff(f, g, [0.0, 1.0])
        >>> [c.layer for c in t.coordinates], t.neighbour.tolist()
        ([0, 1], [3.0, 0.0])
    """
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
class SelectionStability:
    """How often each cell wins Eq. 5 when facts are resampled with replacement.

    Attributes:
        frequencies: ``[layer, step, module]`` share of bootstrap resamples each cell won
            (sums to 1; restricted cells are 0).
        coordinate: the choice on the full fact set.
        top: up to 5 ``(layer, step, module, frequency)`` label tuples, most frequent first.
        n_boot: number of resamples.
        layers, steps, modules: labels of ``frequencies``.
    """

    frequencies: torch.Tensor
    coordinate: Coordinate
    top: tuple[tuple[int, int, str, float], ...]
    n_boot: int
    layers: tuple[int, ...]
    steps: tuple[int, ...]
    modules: tuple[str, ...]

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
        return (
            f"SelectionStability(n_boot={self.n_boot}, agreement={self.agreement:.2f}, top=[{top}])"
        )


def selection_stability(
    heatmaps: TIEResult | torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    beta: float = 0.0,
    neighbours: TIEResult | torch.Tensor | None = None,
    *,
    modules: Sequence[str] | str | None = None,
    steps: Sequence[int] | int | None = None,
) -> SelectionStability:
    """Bootstrap stability of the Eq. 5 choice.

    Each resample draws the forget facts (and, independently, the neighbour facts) with
    replacement, recomputes the score of every cell and records the argmax (first cell on
    ties, as in ``select_coordinate``). Vectorised: one ``[n_boot, fact] @ [fact, cells]``
    product per fact set.

    Args:
        heatmaps, beta, neighbours, modules, steps: as in
            :func:`~tie_tracing.selection.select_coordinate`.
        n_boot: number of resamples.
        seed: seed of the resampling generator.

    Example:
        >>> tie = torch.zeros(4, 2, 2, 1); tie[:, 1, 1, 0] = 1.0
        >>> s = selection_stability(tie, n_boot=50)
        >>> s.agreement, float(s.frequencies.sum())
        (1.0, 1.0)
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    coord = select_coordinate(
        heatmaps, beta=beta, neighbours=neighbours, modules=modules, steps=steps
    )
    x, layers, step_labels, module_labels = _as_heatmaps(heatmaps, "heatmaps")
    cell_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    allowed = _restriction_mask(cell_shape, step_labels, module_labels, modules, steps).flatten()
    gen = torch.Generator().manual_seed(seed)

    def resampled_mean(t: torch.Tensor) -> torch.Tensor:  # [n_boot, cells]
        n = t.shape[0]
        idx = torch.randint(0, n, (n_boot, n), generator=gen)
        counts = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(n_boot, n, dtype=torch.float64)
        )
        return counts @ t.abs().reshape(n, -1).to(torch.float64) / n

    score = resampled_mean(x)
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
    )


@dataclass(frozen=True, eq=False)
class PerFactOptima:
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

    For a :class:`~tie_tracing.results.TIEResult` only the facts the model knows are
    analysed (:meth:`~tie_tracing.results.TIEResult.known_only`, as in Eq. 5 selection);
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


# ----------------------------------------------------------------------------- localisation


@dataclass(frozen=True)
class LocalisationStats:
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
