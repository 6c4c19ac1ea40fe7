"""Evaluation of a (possibly edited) model on fact sets: SPEC §9.

The metrics are pure functions on tensors and strings, so each can be checked by hand:

* ``log p(answer | question)`` per fact comes from :func:`tie_tracing.answer_logprob` (nats;
  estimator ``"masked"`` or ``"elbo"`` on an MDLM, teacher forcing on an AR model). Its
  mean over a split is TOFU's ForgetLP / RetainLP / RealAuth / WorldFact.
* :func:`truth_ratio` (TOFU): ``R = mean_j P(â_j)^{1/|â_j|} / P(ã)^{1/|ã|}`` over the
  perturbed answers ``â_j`` and the paraphrased answer ``ã``, computed in log space;
  :func:`forget_tr_score` ``mean(min(R, 1/R))`` and :func:`retain_tr_score`
  ``mean(max(0, 1 - R))``.
* :func:`forget_quality`: KS-test p-value between two samples of truth ratios (edited model
  versus the retain-only model on the forget set).
* :func:`exact_match` and :func:`rouge_l_recall` on sampled answers.
* :func:`model_utility` (open-unlearning's harmonic mean, as the embedded world allows it);
* :func:`paired_ttest`; the bootstrap CIs of the metrics come from
  :func:`tie_tracing.analysis.mean_ci` (re-exported here).

:func:`evaluate` runs all of them on a dict of named splits and returns an
:class:`Evaluation` (frozen; ``.table()``, ``.compare(baseline)``, ``save``/``load``).

Limits: the truth ratio needs one ``answer_logprob`` per alternative answer (6 per TOFU
forget fact), so on a real 7-8B model with ``mc=128`` it is the expensive part; lower ``mc``
or pass ``truth_ratios=False``. ``R`` is computed with the *original* question for the
paraphrased and perturbed answers (as TOFU does); facts without a paraphrased answer (TOFU
real_authors / world_facts) use their own answer as the denominator (as TOFU does).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from .._version import __version__
from ..analysis.stats import _as_float64, _finite, mean_ci
from ..core._guards import require_model
from ..core._io import Saveable, load_object, save_object
from ..core.defaults import BATCH_SIZE, PROGRESS
from ..core.facts import Fact
from ..core.samplers import make_sampler
from ..tracing.patching import fact_key

__all__ = [
    "Evaluation",
    "Metric",
    "PairedTest",
    "evaluate",
    "exact_match",
    "forget_quality",
    "forget_tr_score",
    "harmonic_mean",
    "mean_ci",
    "model_utility",
    "normalize_answer",
    "paired_ttest",
    "retain_tr_score",
    "rouge_l_recall",
    "significance_marker",
    "truth_ratio",
]


# ---------------------------------------------------------------------------------------
# Truth ratio and its scores
# ---------------------------------------------------------------------------------------


def truth_ratio(lp_perturbed, len_perturbed, lp_paraphrased, len_paraphrased) -> torch.Tensor:
    """TOFU truth ratio per fact, as open-unlearning and TOFU's code compute it (SPEC §9).

    With ``p̄(a) = P(a)^{1/|a|}`` the per-token geometric-mean probability of an answer,
    ``R = (Π_j p̄(â_j))^{1/n} / p̄(ã)``: the geometric mean over the perturbed answers ``â_j``,
    over the paraphrased answer ``ã``. In log space ``log R = mean_j(lp_j / len_j) − lp_ã /
    len_ã``. (The TOFU paper writes an arithmetic mean over ``j``; the codebases use the
    geometric one, and results are compared with theirs.) ``R < 1`` means the model prefers
    the (paraphrased) true answer over the perturbed ones.

    Args:
        lp_perturbed: ``[fact, n_perturbed]`` total log-probabilities (nats) of the
            perturbed answers. ``NaN`` marks a missing entry (ragged counts).
        len_perturbed: ``[fact, n_perturbed]`` their token counts.
        lp_paraphrased: ``[fact]`` log-probability of the paraphrased answer.
        len_paraphrased: ``[fact]`` its token count.

    Returns:
        ``[fact]`` float64 tensor of ratios (``NaN`` for a fact with no perturbed answer).

    Example:
        >>> import math
        >>> r = truth_ratio([[math.log(0.25) * 2]], [[2]], [math.log(0.5)], [1])
        >>> round(float(r[0]), 6)  # 0.25 / 0.5
        0.5
        >>> r = truth_ratio([[math.log(0.1), math.log(0.4)]], [[1, 1]], [math.log(0.5)], [1])
        >>> round(float(r[0]), 6)  # sqrt(0.1 · 0.4) / 0.5
        0.4
    """
    lp_p = _as_float64(lp_perturbed)
    len_p = _as_float64(len_perturbed)
    lp_a = _as_float64(lp_paraphrased)
    len_a = _as_float64(len_paraphrased)
    if lp_p.ndim != 2 or lp_p.shape != len_p.shape:
        raise ValueError(
            f"lp_perturbed and len_perturbed must both be [fact, n_perturbed], got "
            f"{tuple(lp_p.shape)} and {tuple(len_p.shape)}"
        )
    if lp_a.shape != (lp_p.shape[0],) or len_a.shape != lp_a.shape:
        raise ValueError(
            f"lp_paraphrased and len_paraphrased must be [fact={lp_p.shape[0]}], got "
            f"{tuple(lp_a.shape)} and {tuple(len_a.shape)}"
        )
    per_token = lp_p / len_p
    present = ~torch.isnan(per_token)
    filled = torch.where(present, per_token, torch.zeros_like(per_token))
    count = present.sum(dim=1).to(torch.float64)
    log_num = filled.sum(dim=1) / count.clamp_min(1)
    log_r = log_num - lp_a / len_a
    return torch.where(count > 0, torch.exp(log_r), torch.full_like(log_r, math.nan))


def forget_tr_score(ratios, *, reduce: bool = True):
    """Forget-side truth-ratio score ``mean(min(R, 1/R))`` (1: indifferent, 0: decided).

    Args:
        ratios: ``[fact]`` truth ratios (non-finite entries are skipped when reducing).
        reduce: ``False`` returns the per-fact values ``[fact]`` instead of the mean.

    Example:
        >>> forget_tr_score([0.5, 2.0, 1.0])
        0.6666666666666666
    """
    r = _as_float64(ratios)
    per_fact = torch.minimum(r, 1.0 / r)
    return float(_finite(per_fact).mean()) if reduce else per_fact


def retain_tr_score(ratios, *, reduce: bool = True):
    """Retain-side truth-ratio score ``mean(max(0, 1 - R))`` (high: prefers the truth).

    Example:
        >>> retain_tr_score([0.25, 2.0])
        0.375
    """
    r = _as_float64(ratios)
    per_fact = torch.clamp(1.0 - r, min=0.0)
    return float(_finite(per_fact).mean()) if reduce else per_fact


def forget_quality(tr_edited, tr_reference) -> float:
    """KS-test p-value between two samples of truth ratios (TOFU forget quality).

    High (near 1) means the edited model's forget-set truth ratios are distributed like
    those of the model never trained on the forget set. Non-finite values are dropped.

    Example:
        >>> forget_quality([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
        1.0
    """
    a, b = _finite(tr_edited).numpy(), _finite(tr_reference).numpy()
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"forget_quality needs finite values, got {len(a)} and {len(b)}")
    return float(stats.ks_2samp(a, b).pvalue)


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def significance_marker(p: float) -> str:
    """``"***"`` (p < .001), ``"**"`` (< .01), ``"*"`` (< .05), else ``""``.

    Example:
        >>> significance_marker(0.004)
        '**'
    """
    if not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


@dataclass(frozen=True)
class PairedTest(Saveable):
    """A paired t-test of ``a`` against ``b``: ``mean_diff = mean(a - b)``."""

    mean_diff: float
    statistic: float
    pvalue: float
    n: int

    @property
    def marker(self) -> str:
        """Significance marker of :attr:`pvalue` (see :func:`significance_marker`)."""
        return significance_marker(self.pvalue)


def paired_ttest(a, b) -> PairedTest:
    """Paired t-test (``scipy.stats.ttest_rel``) of ``a`` versus ``b`` on shared facts/seeds.

    Pairs where either value is non-finite are dropped. The statistic is positive when
    ``a`` tends to exceed ``b``; identical samples give ``pvalue = nan`` (no marker).

    Args:
        a: ``[n]`` values (e.g. per-fact RetainLP after the edit).
        b: ``[n]`` values of the baseline on the same facts.

    Example:
        >>> t = paired_ttest([2.0, 3.1, 4.0, 5.2], [1.0, 2.0, 3.1, 4.0])
        >>> t.statistic > 0, t.marker
        (True, '***')
    """
    ta, tb = _as_float64(a).reshape(-1), _as_float64(b).reshape(-1)
    if ta.shape != tb.shape:
        raise ValueError(f"paired_ttest needs equal lengths, got {ta.numel()} and {tb.numel()}")
    keep = torch.isfinite(ta) & torch.isfinite(tb)
    x, y = ta[keep].numpy(), tb[keep].numpy()
    n = len(x)
    diff = float((x - y).mean()) if n else math.nan
    if n < 2 or np.all(x - y == (x - y)[0]):
        return PairedTest(diff, math.nan, math.nan, n)
    res = stats.ttest_rel(x, y)
    return PairedTest(diff, float(res.statistic), float(res.pvalue), n)


# ---------------------------------------------------------------------------------------
# Generation metrics
# ---------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Strip, casefold, collapse whitespace and drop trailing punctuation.

    Example:
        >>> normalize_answer("  The  Lisbon Tower.! ")
        'the lisbon tower'
    """
    if not isinstance(text, str):
        raise TypeError(f"answers must be strings, got {type(text).__name__} {text!r}")
    text = re.sub(r"\s+", " ", text.strip().casefold())
    return re.sub(r"[\s.,;:!?\"'’”)]+$", "", text)


def exact_match(pred: str, ref: str) -> bool:
    """Whether two answers are equal after :func:`normalize_answer`.

    Example:
        >>> exact_match(" lisbon. ", "Lisbon")
        True
    """
    return normalize_answer(pred) == normalize_answer(ref)


def _rouge_tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def rouge_l_recall(pred: str, ref: str) -> float:
    """ROUGE-L recall: length of the longest common token subsequence / tokens in ``ref``.

    Tokens are casefolded runs of word characters (punctuation dropped, no stemming).

    Example:
        >>> rouge_l_recall("Ada was born in sunny Lisbon", "Ada Vell was born in Lisbon")
        0.8333333333333334
    """
    p, r = _rouge_tokens(pred), _rouge_tokens(ref)
    if not r:
        return 0.0
    prev = [0] * (len(p) + 1)
    for rt in r:
        cur = [0] * (len(p) + 1)
        for j, pt in enumerate(p, start=1):
            cur[j] = prev[j - 1] + 1 if rt == pt else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1] / len(r)


# ---------------------------------------------------------------------------------------
# Result objects
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Metric(Saveable):
    """One metric on one split: point value, bootstrap CI and the per-fact values.

    Attributes:
        value: The mean over facts with a finite value (or a scalar such as forget quality).
        low, high: The bootstrap confidence interval (``nan`` when not defined).
        n: Number of finite per-fact values (0 for scalar metrics).
        per_fact: ``[fact]`` float64 values aligned with the split's fact ids (``NaN`` where
            the metric does not apply), or ``None`` for a scalar metric.
    """

    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    per_fact: torch.Tensor | None = None

    @classmethod
    def from_values(cls, values, *, n_resamples: int = 2000, seed: int = 0) -> Metric:
        """Mean with a bootstrap CI of ``[fact]`` values."""
        t = _as_float64(values).reshape(-1)
        mean, low, high = mean_ci(t, n_resamples=n_resamples, seed=seed)
        return cls(mean, low, high, int(torch.isfinite(t).sum()), t)

    def __repr__(self) -> str:
        return f"Metric({self.value:.4g} [{self.low:.4g}, {self.high:.4g}], n={self.n})"


def _jsonable_float(x: float):
    return x if math.isfinite(x) else repr(x)  # "nan" / "inf" / "-inf" as strings


def _from_json_float(x) -> float:
    return float(x)


@dataclass(frozen=True, eq=False)
class Evaluation(Saveable):
    """SPEC §9 metrics of one model on named splits.

    Attributes:
        metrics: ``split -> metric name -> Metric``. Metric names: ``logprob`` (mean
            ``log p(answer|question)``, nats), ``logprob_per_token``, ``exact_match``,
            ``rouge_l_recall`` (when generating), ``truth_ratio``, ``tr_forget_score``,
            ``tr_retain_score`` (when facts carry perturbed answers), ``forget_quality``
            (on the forget split, when a reference model was given).
        fact_ids: ``split -> fact keys`` (each fact's id, or its question when it has no id:
            :func:`tie_tracing.tracing.patching.fact_key`) aligned with every ``per_fact`` tensor of
            that split; :meth:`compare` refuses splits whose keys differ.
        answers: ``split -> sampled answers`` (empty when not generating).
        config: Estimator, steps, seed, mc, model label, package version.

    Equality is :meth:`equals` (exact, NaN-aware); ``==`` is identity because the fields
    hold tensors.
    """

    metrics: dict[str, dict[str, Metric]]
    fact_ids: dict[str, tuple[str, ...]]
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    # -- views ----------------------------------------------------------------------------
    @property
    def splits(self) -> tuple[str, ...]:
        """Split names in insertion order."""
        return tuple(self.metrics)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric name that occurs in some split (first-seen order)."""
        names: dict[str, None] = {}
        for per_split in self.metrics.values():
            names.update(dict.fromkeys(per_split))
        return tuple(names)

    @property
    def dims(self) -> tuple[str, str]:
        """Axis names of :attr:`values`."""
        return ("split", "metric")

    @property
    def values(self) -> torch.Tensor:
        """``[split, metric]`` float64 point values (``NaN`` where a metric is absent)."""
        out = torch.full((len(self.splits), len(self.metric_names)), math.nan, dtype=torch.float64)
        for i, s in enumerate(self.splits):
            for j, m in enumerate(self.metric_names):
                if m in self.metrics[s]:
                    out[i, j] = self.metrics[s][m].value
        return out

    def __getitem__(self, split: str) -> dict[str, Metric]:
        return self.metrics[split]

    def table(self) -> list[dict[str, Any]]:
        """One row per ``(split, metric)``: ``split, metric, value, low, high, n``."""
        return [
            {"split": s, "metric": m, "value": v.value, "low": v.low, "high": v.high, "n": v.n}
            for s, per in self.metrics.items()
            for m, v in per.items()
        ]

    def __str__(self) -> str:
        lines = [
            f"Evaluation({self.config.get('model', '?')}, estimator={self.config.get('estimator')})"
        ]
        for row in self.table():
            ci = "" if math.isnan(row["low"]) else f"  [{row['low']:.4g}, {row['high']:.4g}]"
            lines.append(
                f"  {row['split']:<16} {row['metric']:<18} {row['value']:>10.4g}{ci}  n={row['n']}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Evaluation(splits={list(self.splits)}, metrics={list(self.metric_names)}, "
            f"config={self.config})"
        )

    def compare(self, baseline: Evaluation) -> list[dict[str, Any]]:
        """Deltas against a baseline (e.g. ``no_edit``) with paired t-tests over facts.

        For each ``(split, metric)`` present in both, returns a row with ``value``,
        ``baseline``, ``delta = value - baseline``, and, when both carry per-fact values on
        the same fact ids, the paired t-test's ``t``, ``p``, ``marker`` and ``n``.

        Raises:
            ValueError: A shared split lists different fact ids in the two evaluations.
        """
        rows = []
        for s, per in self.metrics.items():
            if s not in baseline.metrics:
                continue
            if self.fact_ids.get(s) != baseline.fact_ids.get(s):
                raise ValueError(
                    f"split {s!r}: the evaluations cover different facts; compare on the same facts"
                )
            for m, v in per.items():
                if m not in baseline.metrics[s]:
                    continue
                b = baseline.metrics[s][m]
                row = {
                    "split": s,
                    "metric": m,
                    "value": v.value,
                    "baseline": b.value,
                    "delta": v.value - b.value,
                    "t": math.nan,
                    "p": math.nan,
                    "marker": "",
                    "n": 0,
                }
                if v.per_fact is not None and b.per_fact is not None:
                    test = paired_ttest(v.per_fact, b.per_fact)
                    row.update(t=test.statistic, p=test.pvalue, marker=test.marker, n=test.n)
                rows.append(row)
        return rows

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats written as strings)."""
        metrics = {
            s: {
                m: {
                    "value": _jsonable_float(v.value),
                    "low": _jsonable_float(v.low),
                    "high": _jsonable_float(v.high),
                    "n": v.n,
                    "per_fact": None
                    if v.per_fact is None
                    else [_jsonable_float(float(x)) for x in v.per_fact.tolist()],
                }
                for m, v in per.items()
            }
            for s, per in self.metrics.items()
        }
        return {
            "format": "tie_tracing.Evaluation/1",
            "metrics": metrics,
            "fact_ids": {s: list(ids) for s, ids in self.fact_ids.items()},
            "answers": {s: list(a) for s, a in self.answers.items()},
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evaluation:
        """Inverse of :meth:`to_dict`."""
        metrics = {
            s: {
                m: Metric(
                    _from_json_float(d["value"]),
                    _from_json_float(d["low"]),
                    _from_json_float(d["high"]),
                    int(d["n"]),
                    None
                    if d["per_fact"] is None
                    else torch.tensor([float(x) for x in d["per_fact"]], dtype=torch.float64),
                )
                for m, d in per.items()
            }
            for s, per in data["metrics"].items()
        }
        return cls(
            metrics=metrics,
            fact_ids={s: tuple(ids) for s, ids in data["fact_ids"].items()},
            answers={s: tuple(a) for s, a in data.get("answers", {}).items()},
            config=dict(data.get("config", {})),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file atomically, through the package's one serialiser
        (:func:`tie_tracing.core._io.save_object`: per-fact tensors as tensors, the rest as JSON);
        :meth:`load` round-trips exactly (:meth:`equals`)."""
        return save_object(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Evaluation:
        """Read an evaluation written by :meth:`save` (or the JSON of :meth:`to_dict`, the
        format of earlier releases)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (UnicodeDecodeError, ValueError):
            data = None
        if isinstance(data, dict):
            if data.get("format") != "tie_tracing.Evaluation/1":
                raise ValueError(f"{path}: not a saved tie_tracing Evaluation")
            return cls.from_dict(data)
        return load_object(cls, path)

    def equals(self, other: Evaluation) -> bool:
        """Exact equality, NaN-aware (``==`` on tensors is elementwise, so not used)."""
        if (self.fact_ids, self.answers, self.config) != (
            other.fact_ids,
            other.answers,
            other.config,
        ):
            return False
        if {s: set(p) for s, p in self.metrics.items()} != {
            s: set(p) for s, p in other.metrics.items()
        }:
            return False
        for s, per in self.metrics.items():
            for m, a in per.items():
                b = other.metrics[s][m]
                same = lambda x, y: x == y or (math.isnan(x) and math.isnan(y))  # noqa: E731
                if not (same(a.value, b.value) and same(a.low, b.low) and same(a.high, b.high)):
                    return False
                if a.n != b.n or (a.per_fact is None) != (b.per_fact is None):
                    return False
                if a.per_fact is not None and b.per_fact is not None:
                    pa, pb = a.per_fact, b.per_fact
                    if pa.shape != pb.shape or not bool(
                        ((pa == pb) | (torch.isnan(pa) & torch.isnan(pb))).all()
                    ):
                        return False
        return True


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------


def _api(name: str):
    """The core's compute function, looked up at call time (so tests can substitute it)."""
    module = {"answer_logprob": "likelihood", "diffuse": "sampler"}[name]
    return getattr(importlib.import_module(f"..core.{module}", __package__), name)


def _n_tokens(model, answer: str) -> int:
    from ..core.prompting import encode_answer

    return len(encode_answer(model.tokenizer, answer))


def _truth_ratios(
    model, facts: Sequence[Fact], *, estimator: str, mc: int, seed: int, **rows: Any
) -> torch.Tensor:
    """``[fact]`` truth ratios (``NaN`` for facts without perturbed answers)."""
    idx = [i for i, f in enumerate(facts) if f.perturbed_answers]
    ratios = torch.full((len(facts),), math.nan, dtype=torch.float64)
    if not idx:
        return ratios
    width = max(len(facts[i].perturbed_answers) for i in idx)
    alts: list[Fact] = []
    for i in idx:
        f = facts[i]
        alts.append(dataclasses.replace(f, answer=f.paraphrased_answer or f.answer, object=None))
        alts.extend(dataclasses.replace(f, answer=a, object=None) for a in f.perturbed_answers)
    lp = _as_float64(
        _api("answer_logprob")(model, alts, estimator=estimator, mc=mc, seed=seed, **rows)
    )
    lens = torch.tensor([_n_tokens(model, f.answer) for f in alts], dtype=torch.float64)
    lp_p = torch.full((len(idx), width), math.nan, dtype=torch.float64)
    len_p = torch.ones((len(idx), width), dtype=torch.float64)
    lp_a = torch.empty(len(idx), dtype=torch.float64)
    len_a = torch.empty(len(idx), dtype=torch.float64)
    k = 0
    for row, i in enumerate(idx):
        n = len(facts[i].perturbed_answers)
        lp_a[row], len_a[row] = lp[k], lens[k]
        lp_p[row, :n], len_p[row, :n] = lp[k + 1 : k + 1 + n], lens[k + 1 : k + 1 + n]
        k += 1 + n
    ratios[idx] = truth_ratio(lp_p, len_p, lp_a, len_a)
    return ratios


def _model_label(model) -> str:
    for attr in ("name_or_path", "name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def evaluate(
    model,
    splits: Mapping[str, Sequence[Fact]],
    *,
    estimator: str = "masked",
    reference=None,
    generate: bool | None = None,
    truth_ratios: bool = True,
    steps: int = 8,
    seed: int = 0,
    mc: int = 128,
    forget_split: str = "forget",
    n_resamples: int = 2000,
    batch_size: int = BATCH_SIZE,
    progress: bool = PROGRESS,
    sampler=None,
) -> Evaluation:
    """SPEC §9 metrics of ``model`` on each named fact set, with bootstrap CIs over facts.

    Per split: ``logprob`` (mean ``log p(answer | question)`` in nats, i.e. ForgetLP /
    RetainLP / RealAuth / WorldFact depending on the split) and ``logprob_per_token``;
    when ``generate``, the answers sampled by :func:`tie_tracing.diffuse` (greedy,
    ``steps`` denoising steps) scored by ``exact_match`` and ``rouge_l_recall``; when the
    facts carry perturbed answers and ``truth_ratios``, ``truth_ratio`` (per-fact ``R``),
    ``tr_forget_score`` (``min(R, 1/R)``) and ``tr_retain_score`` (``max(0, 1 - R)``).
    When ``reference`` (the retain-only model) is given, the split named ``forget_split``
    also gets ``forget_quality`` (KS p-value of the two models' truth ratios).

    Args:
        model: A loaded model (``tt.load_model``); its ``tokenizer`` counts answer tokens.
        splits: ``name -> facts``, e.g. ``{"forget": forget01, "retain": retain}``.
        estimator: ``"masked"`` or ``"elbo"`` (passed to ``answer_logprob``).
        reference: Optional retain-only model for forget quality.
        generate: Sample answers and score them. ``None`` (default): when the model is an
            MDLM (``diffuse`` does not sample from causal models).
        truth_ratios: Compute truth ratios (one extra ``answer_logprob`` per alternative).
        steps: Denoising steps for sampling.
        seed: Seed for the estimator, the sampler and the bootstrap.
        mc: Monte-Carlo samples of the likelihood estimator.
        forget_split: Which split forget quality is computed on.
        n_resamples: Bootstrap resamples per CI.
        batch_size: Rows per forward (passed to ``answer_logprob`` and ``diffuse``).
        progress: Show progress bars.
        sampler: The sampler config of the sampled answers (see :mod:`tie_tracing.core.samplers`;
            default: the package's greedy LLaDA sampler), recorded in ``config``.

    Returns:
        An :class:`Evaluation`.

    Raises:
        TypeError: ``splits`` is not a mapping of names to facts (a bare list of facts
            included: wrap it, ``{"forget": facts}``), or a split holds something else.
        ValueError: no split, an empty split, or a reference model without its split.

    Example:
        >>> ev = evaluate(model, {"forget": tt.load_facts(split="forget01")})  # doctest: +SKIP
        >>> print(ev)  # doctest: +SKIP
    """
    require_model(model, "evaluate")
    if not isinstance(splits, Mapping):
        raise TypeError(
            f"splits must map split names to facts, e.g. {{'forget': facts}}; got "
            f"{type(splits).__name__}"
        )
    if not splits:
        raise ValueError(
            "evaluate needs at least one split: pass {name: facts}, e.g. {'forget': facts}"
        )
    for name, facts in splits.items():
        if isinstance(facts, (Fact, str)) or not all(isinstance(f, Fact) for f in facts):
            raise TypeError(
                f"split {name!r} must be a sequence of tie_tracing Facts, got "
                f"{type(facts).__name__}"
            )
    if reference is not None and forget_split not in splits:
        raise ValueError(
            f"a reference model was given but there is no split named {forget_split!r} "
            f"(splits: {list(splits)}); pass forget_split="
        )
    if generate is None:
        generate = not getattr(model, "is_causal", False)
    answer_logprob = _api("answer_logprob")
    rows = {"batch_size": batch_size, "progress": progress}
    metrics: dict[str, dict[str, Metric]] = {}
    answers: dict[str, tuple[str, ...]] = {}
    fact_ids: dict[str, tuple[str, ...]] = {}
    for name, facts in splits.items():
        facts = list(facts)
        if not facts:
            raise ValueError(f"split {name!r} has no facts")
        fact_ids[name] = tuple(fact_key(f) for f in facts)
        per: dict[str, Metric] = {}
        lp = _as_float64(
            answer_logprob(model, facts, estimator=estimator, mc=mc, seed=seed, **rows)
        )
        if lp.shape != (len(facts),):
            raise ValueError(f"answer_logprob returned {tuple(lp.shape)} for {len(facts)} facts")
        lens = torch.tensor([_n_tokens(model, f.answer) for f in facts], dtype=torch.float64)
        per["logprob"] = Metric.from_values(lp, n_resamples=n_resamples, seed=seed)
        per["logprob_per_token"] = Metric.from_values(lp / lens, n_resamples=n_resamples, seed=seed)
        if generate:
            sampled = tuple(
                _api("diffuse")(
                    model, facts, steps=steps, seed=seed, sampler=sampler, **rows
                ).answers
            )
            answers[name] = sampled
            em = [float(exact_match(a, f.answer)) for a, f in zip(sampled, facts)]
            rl = [rouge_l_recall(a, f.answer) for a, f in zip(sampled, facts)]
            per["exact_match"] = Metric.from_values(em, n_resamples=n_resamples, seed=seed)
            per["rouge_l_recall"] = Metric.from_values(rl, n_resamples=n_resamples, seed=seed)
        if truth_ratios and any(f.perturbed_answers for f in facts):
            r = _truth_ratios(model, facts, estimator=estimator, mc=mc, seed=seed, **rows)
            per["truth_ratio"] = Metric.from_values(r, n_resamples=n_resamples, seed=seed)
            per["tr_forget_score"] = Metric.from_values(
                forget_tr_score(r, reduce=False), n_resamples=n_resamples, seed=seed
            )
            per["tr_retain_score"] = Metric.from_values(
                retain_tr_score(r, reduce=False), n_resamples=n_resamples, seed=seed
            )
            if reference is not None and name == forget_split:
                r_ref = _truth_ratios(
                    reference, facts, estimator=estimator, mc=mc, seed=seed, **rows
                )
                per["forget_quality"] = Metric(forget_quality(r, r_ref))
        elif reference is not None and name == forget_split:
            raise ValueError(
                f"forget quality needs truth ratios: the facts of split {name!r} need "
                f"perturbed answers and truth_ratios=True"
            )
        metrics[name] = per
    config = {
        "model": _model_label(model),
        "reference": None if reference is None else _model_label(reference),
        "estimator": estimator,
        "steps": steps,
        "sampler": None if sampler is None else make_sampler(sampler).to_dict(),
        "seed": seed,
        "mc": mc,
        "generate": generate,
        "n_resamples": n_resamples,
        "version": __version__,
    }
    return Evaluation(metrics=metrics, fact_ids=fact_ids, answers=answers, config=config)


# ---------------------------------------------------------------------------------------
# model utility
# ---------------------------------------------------------------------------------------


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean: 0 when any value is ≤ 0, NaN when any is NaN or there is none.

    Example:
        >>> harmonic_mean([0.5, 1.0])
        0.6666666666666666
    """
    vals = [float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def _normalised_probability(model, facts: Sequence[Fact], **rows: Any) -> torch.Tensor:
    """``[fact]`` ``p̄(a) / (p̄(a) + Σ_j p̄(â_j))`` with ``p̄`` the per-token geometric-mean
    probability (masked estimator), over the fact's answer and its perturbed answers."""
    alts, owner = [], []
    for i, f in enumerate(facts):
        for a in (f.answer, *f.perturbed_answers):
            alts.append(dataclasses.replace(f, answer=a, object=None))
            owner.append(i)
    lp = _as_float64(_api("answer_logprob")(model, alts, estimator="masked", **rows))
    lens = torch.tensor([_n_tokens(model, f.answer) for f in alts], dtype=torch.float64)
    p = (lp / lens).exp()
    out = torch.empty(len(facts), dtype=torch.float64)
    k = 0
    for i, f in enumerate(facts):
        n = 1 + len(f.perturbed_answers)
        out[i] = p[k] / p[k : k + n].sum()
        k += n
    return out


def model_utility(
    model,
    retain: Sequence[Fact],
    world: Sequence[Fact],
    *,
    steps: int = 8,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    sampler=None,
) -> tuple[float, dict[str, float]]:
    """Model utility (open-unlearning's definition, as the embedded world allows it).

    The harmonic mean of six parts: on ``retain`` the mean per-token probability
    ``exp(log p(answer)/|answer|)``, the ROUGE-L recall of the sampled answer and the
    retain-side truth-ratio score ``mean(max(0, 1 − R))``; on ``world`` the probability of
    the answer normalised over it and its perturbed answers, ROUGE-L recall and the same
    truth-ratio score (the embedded world has no real-authors set). Masked estimator;
    answers sampled by :func:`tie_tracing.diffuse` (``steps``, ``sampler``). Parts that a
    split cannot give (no perturbed answers) are left out of the mean.

    Returns:
        ``(utility, parts)`` with ``parts`` naming each of the six values.
    """
    ev = evaluate(
        model,
        {"retain": list(retain), "world": list(world)},
        generate=True,
        truth_ratios=True,
        steps=steps,
        seed=seed,
        n_resamples=100,
        batch_size=batch_size,
        sampler=sampler,
    )
    r, w = ev["retain"], ev["world"]
    rows = {"batch_size": batch_size}
    norm = (
        _normalised_probability(model, list(world), **rows)
        if any(f.perturbed_answers for f in world)
        else None
    )
    r_lp = r["logprob_per_token"].per_fact
    parts = {
        "retain_probability": float(r_lp.exp().mean()) if r_lp is not None else math.nan,
        "retain_rouge_l": r["rouge_l_recall"].value,
        "retain_truth_ratio": r["tr_retain_score"].value if "tr_retain_score" in r else math.nan,
        "world_probability": float(norm.mean()) if norm is not None else math.nan,
        "world_rouge_l": w["rouge_l_recall"].value,
        "world_truth_ratio": w["tr_retain_score"].value if "tr_retain_score" in w else math.nan,
    }
    present = [v for v in parts.values() if not math.isnan(v)]
    return harmonic_mean(present), parts
