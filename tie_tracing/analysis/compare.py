"""Autoregressive versus diffusion tracing on the same facts (SPEC §6, §10.3).

Three maps of the same facts meet here: ROME's positional trace of the AR twin
(``[fact, layer, position, module]``), the same positional trace of the MDLM (one forward, all
answer slots masked), and the MDLM's diffusion-time TIE (``[fact, layer, step, module]``).

* :func:`aligned_positional` — positions differ from fact to fact, so positional maps are
  averaged over facts through ROME's token categories (first / middle / last subject token,
  first subsequent token, further tokens, last prompt token), plus the tokens before the
  subject and the answer positions: for AR traces the teacher-forced answer prefix before
  the object (its last token, the prediction position, apart), for MDLM traces the masked
  slots before the object, the object's first slot and the later slots (see
  :func:`token_categories`).
* :func:`localisation_summary` — how concentrated a map is: the peak (of the fact-mean map),
  the share of total ``|effect|`` in the top-1/3/5 cells and the normalised entropy (each
  computed per fact with :func:`~tie_tracing.analysis.localisation_stats`, then averaged), and
  for positional maps where each fact's peak lies relative to its last subject token and the
  shares of ``|effect|`` at the last subject token, the last prompt token and the prediction
  position (the same token for an AR trace of a fact without an object, not when the AR
  query carries an answer prefix).
* :func:`compare_paradigms` — the three summaries as table rows (the three maps side by side:
  :func:`tie_tracing.figures.plot_ar_vs_diffusion`).
* :func:`pick_layers` — the three installation layers of SPEC §10.3: the TIE layer, the
  AR-positional layer and a random layer (the edit memory installed at each:
  :func:`tie_tracing.editing.edit_efficacy`).

The toolkit takes no side in the AR-versus-diffusion debate (the paper: the AR positional
hot-spot disappears in MDLMs; Park & Jo 2026: an early-to-mid-layer MLP hot-spot at the last
subject token in LLaDA and Dream): these functions measure.

**Positions.** A positional trace scores the object's first token at its prediction position
(SPEC §6, :mod:`~tie_tracing.tracing.positional`): the AR query is the question followed by the
answer's tokens before the object, so its prediction position is the last answer-prefix
token, not the last prompt token; an MDLM reads at the object's first masked slot, which is
the first answer slot only when the object starts the answer. Each fact's prompt length
comes from ``result.config["prompt_length"]`` (older results without it: the prediction
position + 1 for shifted/causal models, itself for unshifted ones), its object slot is
``prediction_position + shifted``. The subject positions are those of the question's
mention, the only one corrupted; a mention of the subject in an AR answer prefix counts as
an answer-prefix token.

Facts the model does not know (``config["unknown_facts"]``, listed by both tracers) measure
nothing: every summary, peak and panel here uses ``result.known_only()`` of each result (all
facts, with a warning, when the model knows none), so each paradigm is summarised over the
facts *its* model knows; :class:`LocalisationSummary` reports ``n_facts`` used of ``n_traced``.
:func:`aligned_positional` and :func:`category_support` themselves keep every fact.

Limits: statistics are over facts as given (no noise-draw resampling); the positional effect is
the one of ``result.metric`` (probability by default, as ROME), the TIE effect is Eq. 4 in nats
(or both normalised with ``normalized=True``), so compare shapes and shares, not magnitudes.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..core._guards import as_int
from ..core._io import Saveable
from ..core.results import PositionalResult, TIEResult
from .selection import _analysis_tensor
from .stats import LocalisationStats, localisation_stats

__all__ = [
    "CATEGORIES",
    "LocalisationSummary",
    "aligned_positional",
    "category_support",
    "Rows",
    "compare_paradigms",
    "localisation_summary",
    "pick_layers",
    "token_categories",
]

#: Token categories of an aligned positional map, in display order.
CATEGORIES: tuple[str, ...] = (
    "before subject",
    "first subject",
    "middle subject",
    "last subject",
    "first subsequent",
    "further tokens",
    "last prompt",
    "answer prefix",
    "last prefix",
    "[MASK]s before object",
    "object [MASK]",
    "later [MASK]s",
)


def _object_position(result: PositionalResult, f: int) -> int:
    """Position of fact ``f``'s object's first token: the prediction position, + 1 when the
    model is shifted or causal (``config.shifted``, which every positional result records)."""
    shifted = bool(result.config.shifted)
    return int(result.prediction_position[f]) + int(shifted)


def _prompt_length(result: PositionalResult, f: int) -> int:
    """Prompt length of fact ``f``: ``config["prompt_length"][fact_id]``, as
    :func:`~tie_tracing.tracing.positional.trace_positional` records it; for results without it
    (older traces, hand-made results) the object's position, i.e. the object is taken to
    start the answer (the only layout those traces had)."""
    lengths = result.config.prompt_length
    fid = result.fact_ids[f]
    if isinstance(lengths, Mapping) and fid in lengths:
        return int(lengths[fid])
    return _object_position(result, f)


def _require(result: Any, kinds: tuple[type, ...], fn: str) -> None:
    """A clear TypeError when a comparison is handed something else than a trace result."""
    if not isinstance(result, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{fn} needs a {names}, got {type(result).__name__}")


def token_categories(result: PositionalResult, fact: int = 0) -> tuple[str, ...]:
    """The :data:`CATEGORIES` label of each traced position of one fact.

    Prompt positions get ROME's categories; precedence: the subject (a one-token subject is
    its *last* token; only the question's mention, the corrupted one), then the last prompt
    token, then the others by their place relative to the subject. Answer positions (from
    the fact's prompt length on):

    * when the object's first slot is among the traced positions (an MDLM trace: every slot
      is traced) — ``"[MASK]s before object"``, ``"object [MASK]"`` (the object's first slot,
      where an unshifted MDLM reads; the first slot for a fact without an object) and
      ``"later [MASK]s"``;
    * otherwise (an AR trace, which stops at the prediction position) — ``"answer prefix"``
      for the teacher-forced answer tokens before the object and ``"last prefix"`` for the
      last of them, the prediction position (ROME's "last token"). An AR trace of a fact
      without an object has no answer positions: its prediction position is the last prompt
      token.

    Example:
        >>> r = PositionalResult.synthetic(n_facts=1)
        >>> token_categories(r, 0)
        ('before subject', 'first subject', 'last subject', 'first subsequent', 'last prompt')
    """
    _require(result, (PositionalResult,), "token_categories")
    n_tok = len(result.tokens[fact])
    subj = sorted(result.subject_positions[fact])
    s0, s1 = subj[0], subj[-1]
    n_prompt = min(_prompt_length(result, fact), n_tok)
    pred = int(result.prediction_position[fact])
    obj = _object_position(result, fact)
    masked = obj < n_tok  # the object's slot is traced: an MDLM's masked answer span
    out = []
    for i in range(n_tok):
        if i >= n_prompt and masked:
            out.append(
                "object [MASK]"
                if i == obj
                else ("[MASK]s before object" if i < obj else "later [MASK]s")
            )
        elif i >= n_prompt:
            out.append("last prefix" if i == pred else "answer prefix")
        elif i == s1:
            out.append("last subject")
        elif i == s0:
            out.append("first subject")
        elif s0 < i < s1:
            out.append("middle subject")
        elif i == n_prompt - 1:
            out.append("last prompt")
        elif i < s0:
            out.append("before subject")
        elif i == s1 + 1:
            out.append("first subsequent")
        else:
            out.append("further tokens")
    return tuple(out)


def aligned_positional(result: PositionalResult, *, normalized: bool = False) -> torch.Tensor:
    """Effect averaged within token categories: ``[fact, layer, category, module]``.

    The category axis follows :data:`CATEGORIES` (see :func:`token_categories`); a category a
    fact lacks is NaN (e.g. the mask categories of an AR trace, the answer-prefix categories
    of an MDLM trace or of a fact without an object). Take ``torch.nanmean(x, 0)`` for the
    fact-mean map.

    Example:
        >>> x = aligned_positional(PositionalResult.synthetic(n_facts=2, n_layers=3))
        >>> tuple(x.shape), bool(torch.isnan(x[:, :, CATEGORIES.index("object [MASK]")]).all())
        ((2, 3, 12, 3), True)
    """
    _require(result, (PositionalResult,), "aligned_positional")
    eff = _analysis_tensor(result.effect(normalized=normalized))  # CPU, float32 for bf16/fp16
    n_f, n_l, _, n_m = eff.shape
    out = torch.full((n_f, n_l, len(CATEGORIES), n_m), math.nan, dtype=eff.dtype)
    for f in range(n_f):
        cats = token_categories(result, f)
        for c, name in enumerate(CATEGORIES):
            pos = [i for i, x in enumerate(cats) if x == name]
            if pos:
                out[f, :, c] = eff[f, :, pos].mean(dim=1)
    return out


def category_support(result: PositionalResult) -> torch.Tensor:
    """``[category]`` number of facts that have each of :data:`CATEGORIES`.

    Example:
        >>> category_support(PositionalResult.synthetic(n_facts=2)).tolist()
        [2, 2, 0, 2, 2, 1, 2, 0, 0, 0, 0, 0]
    """
    _require(result, (PositionalResult,), "category_support")
    counts = torch.zeros(len(CATEGORIES), dtype=torch.long)
    for f in range(result.n_facts):
        for name in set(token_categories(result, f)):
            counts[CATEGORIES.index(name)] += 1
    return counts


def _aligned_mean(
    result: PositionalResult, normalized: bool, mi: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fact-mean aligned map ``[layer, category, module']`` over well-supported categories.

    A category that fewer than a quarter of the facts have (e.g. "further tokens" of one long
    question) would let one fact decide the peak; it is NaN here. Also returns the support.
    Averages every fact of ``result``: callers pass ``result.known_only()``.
    """
    support = category_support(result)
    mean = torch.nanmean(aligned_positional(result, normalized=normalized)[..., mi], 0)
    rare = support < max(1, math.ceil(result.n_facts / 4))
    mean[:, rare] = math.nan
    return mean, support


@dataclass(frozen=True, eq=False)
class Rows(Saveable):
    """Table rows that a comparison returns: a read-only sequence of dicts that also saves,
    loads (the package's one serialiser) and becomes a ``pandas.DataFrame``.

    It behaves like the list of dicts it holds (``len``, indexing, iteration, ``==`` with a
    list), so ``rows[0]["peak_at"]`` and ``pandas.DataFrame(rows)`` work as before.

    Attributes:
        rows: The rows, one dict each.
        kind: What produced them (``"compare_paradigms"``, ``"edit_efficacy"``).
    """

    rows: tuple[dict[str, Any], ...]
    kind: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(dict(r) for r in self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return self.rows == other.rows and self.kind == other.kind
        if isinstance(other, (list, tuple)):
            return list(self.rows) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def table(self) -> list[dict[str, Any]]:
        """The rows as a list of dicts."""
        return [dict(r) for r in self.rows]

    def __repr__(self) -> str:
        return f"Rows(kind={self.kind!r}, n={len(self.rows)}, rows={list(self.rows)!r})"


@dataclass(frozen=True)
class LocalisationSummary(Saveable):
    """How concentrated one paradigm's effect maps are (see :func:`localisation_summary`).

    Attributes:
        paradigm: ``"positional"`` or ``"diffusion-time"``.
        model_id: The traced model.
        n_facts: Facts summarised: those the model knows (all, when it knows none).
        module: The module summarised (``None``: all modules of the result).
        peak: Peak cell of the fact-mean map: ``{layer, category|step, module}``.
        peak_value: The signed fact-mean effect there.
        top_share: ``{k: mean over facts of the share of Σ|effect| in the k largest cells}``.
        entropy: Mean over facts of the normalised entropy of ``|effect|`` (0 = one cell).
        peak_relative_position: Positional only: per fact, peak position − last subject position.
        frac_peak_at_last_subject: Positional only: share of facts whose peak is there.
        share_last_subject, share_last_prompt, share_prediction: Positional only: mean over facts
            of the share of Σ|effect| at that position (all layers and modules of the map):
            the question's last subject token, the last prompt token, the prediction position
            (where the object's first token is scored).
        clean_baseline, corrupt_baseline: Mean clean / corrupted baseline: ``p`` of the
            object's first token (positional) or ``LP`` at step 0 in nats (TIE).
        n_traced: Facts in the result, known or not (``None``: not recorded).
    """

    paradigm: str
    model_id: str
    n_facts: int
    module: str | None
    peak: dict
    peak_value: float
    top_share: dict
    entropy: float
    peak_relative_position: tuple[int, ...] | None = None
    frac_peak_at_last_subject: float | None = None
    share_last_subject: float | None = None
    share_last_prompt: float | None = None
    share_prediction: float | None = None
    clean_baseline: float | None = None
    corrupt_baseline: float | None = None
    n_traced: int | None = None

    def as_row(self, label: str | None = None) -> dict[str, Any]:
        """A flat dict for a table (one row per paradigm)."""
        d = asdict(self)
        peak = d.pop("peak")
        row: dict[str, Any] = {"paradigm": label or self.paradigm}
        row.update({k: d[k] for k in ("model_id", "n_facts", "n_traced", "module")})
        row["peak_layer"] = peak.get("layer")
        row["peak_at"] = peak.get("category", peak.get("step"))
        row["peak_module"] = peak.get("module", self.module)
        row["peak_value"] = self.peak_value
        for k, v in self.top_share.items():
            row[f"top{k}_share"] = v
        row["entropy"] = self.entropy
        rel = self.peak_relative_position
        row["peak_rel_last_subject_median"] = None if rel is None else float(statistics.median(rel))
        for k in (
            "frac_peak_at_last_subject",
            "share_last_subject",
            "share_last_prompt",
            "share_prediction",
            "clean_baseline",
            "corrupt_baseline",
        ):
            row[k] = d[k]
        return row


def _module_slice(modules: Sequence[str], module: str | None) -> list[int]:
    if module is None:
        return list(range(len(modules)))
    if module not in modules:
        raise ValueError(f"module {module!r} is not in the result's modules {tuple(modules)}")
    return [list(modules).index(module)]


def _stats(x: torch.Tensor, dims: tuple[str, ...], **kw: Any) -> LocalisationStats:
    """``localisation_stats`` of one map (a tensor gives one stats object)."""
    st = localisation_stats(x, dims, **kw)
    assert isinstance(st, LocalisationStats)
    return st


def _share(a: torch.Tensor, pos: int) -> float:
    total = float(torch.nansum(a))
    return float(torch.nansum(a[:, pos])) / total if total > 0 else math.nan


def _peak(mean_map: torch.Tensor, labels: dict[str, Sequence[Any]]) -> tuple[dict, float]:
    x = mean_map.to(torch.float64)
    a = torch.where(torch.isnan(x), -1.0, x.abs())
    idx = np.unravel_index(int(a.argmax()), tuple(x.shape))
    names = list(labels)
    return {d: labels[d][int(i)] for d, i in zip(names, idx)}, float(x[tuple(int(i) for i in idx)])


def localisation_summary(
    result: PositionalResult | TIEResult,
    *,
    module: str | None = None,
    normalized: bool = False,
    top_k: Sequence[int] = (1, 3, 5),
) -> LocalisationSummary:
    """Localisation statistics of a positional or a TIE result.

    Per-fact statistics (top-k shares, entropy, peak position, shares at given positions)
    come from :func:`~tie_tracing.analysis.localisation_stats` on each fact's own map (a
    positional map cropped to the fact's tokens) and are averaged over facts; the peak is the
    one of the fact-mean map (category-aligned for positional results, see
    :func:`aligned_positional`; categories fewer than a quarter of the facts have are left
    out of the peak, so one long question cannot decide it). Only the facts the model knows
    are summarised (``result.known_only()``; all, with a warning, when it knows none).

    Args:
        result: A :class:`PositionalResult` (effect of its ``metric``) or a :class:`TIEResult`.
        module: Restrict to one module (default: every module of the result).
        normalized: Use the normalised view (clean = 1, corrupted = 0).
        top_k: The ``k`` of the top-k shares.

    Example:
        >>> s = localisation_summary(PositionalResult.synthetic(n_facts=2), module="resid")
        >>> s.paradigm, s.peak["category"], s.peak_relative_position
        ('positional', 'last subject', (0, 0))
    """
    _require(result, (PositionalResult, TIEResult), "localisation_summary")
    n_traced = result.n_facts
    if isinstance(result, TIEResult):
        known = result.known_only()
        view = known.normalized() if normalized else known
        mi = _module_slice(view.modules, module)
        tie = _analysis_tensor(view.tie[..., mi])  # [fact, layer, step, module'], CPU
        mods = tuple(view.modules[i] for i in mi)
        per = [
            _stats(tie[f], ("layer", "step", "module"), top_k=top_k) for f in range(view.n_facts)
        ]
        peak, value = _peak(
            torch.nanmean(tie, 0), {"layer": view.layers, "step": view.steps, "module": mods}
        )
        return LocalisationSummary(
            paradigm="diffusion-time",
            model_id=view.model_id,
            n_facts=view.n_facts,
            module=module,
            peak=peak,
            peak_value=value,
            top_share={
                int(k): float(np.nanmean([s.top_share[int(k)] for s in per])) for k in top_k
            },
            entropy=float(np.nanmean([s.entropy for s in per])),
            clean_baseline=float(known.lp_clean[:, 0].float().mean()),
            corrupt_baseline=float(known.lp_corrupt[:, 0].float().mean()),
            n_traced=n_traced,
        )
    if not isinstance(result, PositionalResult):
        raise TypeError(f"expected a PositionalResult or a TIEResult, got {type(result).__name__}")
    result = result.known_only()
    mi = _module_slice(result.modules, module)
    mods = tuple(result.modules[i] for i in mi)
    eff = _analysis_tensor(result.effect(normalized=normalized)[..., mi])
    per, rel, s_subj, s_prompt, s_pred = [], [], [], [], []
    for f in range(result.n_facts):
        n_tok = len(result.tokens[f])
        last_subj = result.last_subject_position[f]
        st = _stats(
            eff[f, :, :n_tok],
            ("layer", "position", "module"),
            last_subject_position=last_subj,
            top_k=top_k,
        )
        per.append(st)
        rel.append(int(st.peak_relative_position or 0))
        a = eff[f, :, :n_tok].abs().to(torch.float64)
        s_subj.append(_share(a, last_subj))
        s_prompt.append(_share(a, min(_prompt_length(result, f), n_tok) - 1))
        s_pred.append(_share(a, min(int(result.prediction_position[f]), n_tok - 1)))
    aligned, _ = _aligned_mean(result, normalized, mi)
    peak, value = _peak(aligned, {"layer": result.layers, "category": CATEGORIES, "module": mods})
    probs = result.metric == "prob"
    return LocalisationSummary(
        paradigm="positional",
        model_id=result.model_id,
        n_facts=result.n_facts,
        module=module,
        peak=peak,
        peak_value=value,
        top_share={int(k): float(np.nanmean([s.top_share[int(k)] for s in per])) for k in top_k},
        entropy=float(np.nanmean([s.entropy for s in per])),
        peak_relative_position=tuple(rel),
        frac_peak_at_last_subject=float(np.mean([r == 0 for r in rel])),
        share_last_subject=float(np.nanmean(s_subj)),
        share_last_prompt=float(np.nanmean(s_prompt)),
        share_prediction=float(np.nanmean(s_pred)),
        clean_baseline=float((result.lp_clean.exp() if probs else result.lp_clean).float().mean()),
        corrupt_baseline=float(
            (result.lp_corrupt.exp() if probs else result.lp_corrupt).float().mean()
        ),
        n_traced=n_traced,
    )


def _check_same_facts(*results) -> None:
    for i, r in enumerate(results):
        _require(r, (TIEResult,) if i == 2 else (PositionalResult,), "compare_paradigms")
    ids = [set(r.fact_ids) for r in results]
    if any(i != ids[0] for i in ids[1:]):
        names = ("ar_positional", "mdlm_positional", "mdlm_tie")
        diff = "; ".join(
            f"{names[k]} lacks {sorted(ids[0] - i)[:5]} and adds {sorted(i - ids[0])[:5]}"
            for k, i in enumerate(ids)
            if k and i != ids[0]
        )
        raise ValueError(
            f"the three results must trace the same facts (compared with ar_positional): {diff}"
        )


def compare_paradigms(
    ar_positional: PositionalResult,
    mdlm_positional: PositionalResult,
    mdlm_tie: TIEResult,
    *,
    module: str | None = None,
    normalized: bool = False,
) -> Rows:
    """The three localisation summaries of the same facts as table rows.

    Rows (in order): ``"AR positional"``, ``"MDLM positional"``, ``"MDLM TIE"``; columns from
    :meth:`LocalisationSummary.as_row` (``pandas.DataFrame(rows)`` makes a table).

    Raises:
        ValueError: the results trace different facts.

    Example:
        >>> rows = compare_paradigms(PositionalResult.synthetic(), PositionalResult.synthetic(),
        ...                          TIEResult.synthetic(n_facts=3), module="resid")  # doctest: +SKIP
    """
    _check_same_facts(ar_positional, mdlm_positional, mdlm_tie)
    rows = [
        localisation_summary(ar_positional, module=module, normalized=normalized).as_row(
            "AR positional"
        ),
        localisation_summary(mdlm_positional, module=module, normalized=normalized).as_row(
            "MDLM positional"
        ),
        localisation_summary(mdlm_tie, module=module, normalized=normalized).as_row("MDLM TIE"),
    ]
    return Rows(tuple(rows), kind="compare_paradigms")


# ----------------------------------------------------------------------------- installation layers


def pick_layers(
    ar_positional: PositionalResult,
    mdlm_tie: TIEResult,
    num_layers: int,
    *,
    module: str = "resid",
    seed: int = 0,
) -> dict[str, int]:
    """The three installation layers of SPEC §10.3.

    * ``"tie"`` — the layer of Eq. 5's choice on ``mdlm_tie`` restricted to ``module``
      (β = 0, all steps: the paper's headline setting);
    * ``"ar_positional"`` — the layer of the peak of the AR trace's fact-mean, category-aligned
      ``|effect|`` map of ``module`` (``resid`` by default, where the memory is installed);
    * ``"random"`` — a seeded uniform draw among the other layers (any layer if none is left).

    Both traces contribute the facts their model knows (``known_only()``).

    Example:
        >>> pick_layers(PositionalResult.synthetic(n_layers=4), TIEResult.synthetic(n_layers=4), 4)  # doctest: +SKIP
    """
    from .selection import select_coordinate

    _require(ar_positional, (PositionalResult,), "pick_layers (ar_positional)")
    _require(mdlm_tie, (TIEResult,), "pick_layers (mdlm_tie)")
    num_layers = as_int(num_layers)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer ≥ 1 (the model's), got {num_layers!r}")
    tie_layer = int(select_coordinate(mdlm_tie, modules=module).layer)  # known facts (Eq. 5)
    ar = ar_positional.known_only()
    mi = _module_slice(ar.modules, module)[0]
    m, _ = _aligned_mean(ar, False, [mi])
    peak, _ = _peak(m[..., 0], {"layer": ar.layers, "category": CATEGORIES})
    ar_layer = int(peak["layer"])
    others = [layer for layer in range(num_layers) if layer not in (tie_layer, ar_layer)]
    rand = random.Random(seed).choice(others or list(range(num_layers)))
    return {"tie": tie_layer, "ar_positional": ar_layer, "random": int(rand)}
