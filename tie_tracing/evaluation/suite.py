"""The unlearning suite (SPEC §9): a table a keyword filter cannot pass by construction.

:func:`evaluate_unlearning` measures every :class:`~tie_tracing.evaluation.references.Method`
(an installed edit memory, another model, an intervention — see :mod:`.references`) on named
:class:`UnlearningSplit` s and returns an :class:`UnlearningReport`. Per method and split, with
95% bootstrap CIs over facts (resampling people — clusters — when a split holds at least
``min_clusters`` of them, else facts):

* ``leak`` — the share of sampled answers that write the object's tokens
  (:func:`~tie_tracing.evaluation.objects.object_leak`) under the default sampler (the first
  point of the sweep); ``leak@<label>`` under each sampler of the sweep and ``leak_min`` /
  ``leak_max``, its range (the sweep runs on the splits whose role is in ``sweep_roles``;
  by default the forget-side splits, where a leak is a failure);
* ``object_lp`` — ``log p(object | question)`` (:func:`~.objects.object_logprob`), and
  ``delta_object_lp`` — its per-fact difference from the unedited model (paired);
* ``distance`` — ``object LP(method) − object LP(retain-only model)`` per fact, with the
  flag of :func:`~.objects.distance_flag` on forget-side splits (over-forgetting: below the
  retain model by more than the CI; under-forgetting: above it);

and per method: ``model_utility`` (:func:`~.metrics.model_utility` on the ``retain`` and
``world`` splits' facts), ``forget_quality`` (KS p-value of the forget split's truth ratios
against the retain-only model's, :func:`~.metrics.forget_quality`) and, when asked, the
unlearning ``depth`` (:func:`~.depth.unlearning_depth` on the forget split).

**Which splits enter the table.** A split — per form for the splits that carry forms (surface
forms, indirect references, template kinds) — enters only where the *unedited* model's object
recall (the share of its sampled answers that write the object, default sampler) is at least ``recall_gate`` (0.9); the rest are reported in
``report.recall_gate`` with their recall and never silently dropped. The recall is measured on
the split's own facts unless ``base_recall`` gives it (e.g. measured on every trained person's
probes, a larger sample: :func:`probe_recall`).

:func:`unlearning_splits` builds the standard splits of the embedded world from a forget split:
``forget`` (canonical facts), ``surface`` (held-out surface forms of the subject), ``template``
(held-out question wordings and wrappers), ``indirect`` (indirect references), ``infill``
(the canonical sentence with only the object masked), ``retain``, ``world``, ``neighbour``
(retain facts of people who share a forget person's surname) and ``mention`` (retain and world
questions whose prompt names a forget person: collateral a keyword filter cannot avoid).

Cost: one forward per batch for each object LP, ``T`` per batch for each sampled leak; rows are
batched by shape (no padding), so a split of many shapes runs many small batches.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..analysis.stats import cluster_mean_ci, mean_ci
from ..core._io import Saveable, load_object, save_object
from ..core.defaults import BATCH_SIZE, PROGRESS
from ..core.facts import Fact
from ..core.samplers import DreamSampler, LLaDASampler, make_sampler
from ..tracing.patching import fact_key
from ..zoo import corpus as world
from .depth import unlearning_depth
from .metrics import Metric, _truth_ratios, forget_quality, model_utility
from .objects import MASKS, distance_flag, object_logprob, sampled_leaks
from .references import Method

__all__ = [
    "ROLES",
    "SPLIT_ORDER",
    "SweepPoint",
    "UnlearningReport",
    "UnlearningSplit",
    "default_sweep",
    "evaluate_unlearning",
    "probe_recall",
    "unlearning_splits",
]

#: ``forget``: the object should no longer be written (leak ↓); ``collateral``: it should.
ROLES: tuple[str, ...] = ("forget", "collateral")
#: The standard splits, in table order.
SPLIT_ORDER: tuple[str, ...] = (
    "forget", "surface", "template", "indirect", "infill",
    "retain", "world", "neighbour", "mention",
)  # fmt: skip
_FORGET_SIDE = {"forget", "surface", "template", "indirect", "infill"}


# ----------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class SweepPoint:
    """One sampler setting of the leak sweep: a sampler config and a step count ``T``."""

    label: str
    sampler: Any
    steps: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", make_sampler(self.sampler))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sweep point {self.label!r}: steps must be an integer ≥ 1")

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "sampler": self.sampler.to_dict(), "steps": self.steps}


def default_sweep() -> tuple[SweepPoint, ...]:
    """The leak sweep (SPEC §9): LLaDA low-confidence and random remasking × temperature 0 and
    0.7 (seeded) × 8 and 16 steps, and Dream's ``entropy`` algorithm at ``T = 8``; the first
    point (low confidence, greedy, ``T = 8``) is the package's default sampler.

    Dream's samplers run on LLaDA-style embedded models too (``tiny-mdlm`` accepts every
    sampler); on a real LLaDA checkpoint the Dream point is refused by the sampler's family
    check — drop it from the sweep there.
    """
    points = []
    for remasking, short in (("low_confidence", "lowconf"), ("random", "random")):
        for temperature in (0.0, 0.7):
            for steps in (8, 16):
                points.append(
                    SweepPoint(
                        f"llada-{short}-T{steps}-t{temperature:g}",
                        LLaDASampler(remasking=remasking, temperature=temperature),
                        steps,
                    )
                )
    points.append(SweepPoint("dream-entropy-T8-t0", DreamSampler(alg="entropy"), 8))
    return tuple(points)


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class UnlearningSplit:
    """A named set of facts and how it is read.

    Attributes:
        name: The split's name.
        facts: The facts (each with an ``object``; unique ids).
        role: ``"forget"`` (leak should fall) or ``"collateral"`` (recall should stay).
        mask: ``"answer"`` (the query masks the whole answer) or ``"object"`` (only the
            object's tokens: infilling probes).
        clusters: Per fact, the person it is about (``None``: every fact its own cluster).
        forms: Per fact, the label the recall gate is applied per (``None``: the whole split).
        description: What the split is, in words.
    """

    name: str
    facts: tuple[Fact, ...]
    role: str = "collateral"
    mask: str = "answer"
    clusters: tuple[str, ...] | None = None
    forms: tuple[str, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", tuple(self.facts))
        if not self.facts or not all(isinstance(f, Fact) for f in self.facts):
            raise TypeError(f"split {self.name!r} needs a non-empty sequence of tie_tracing Facts")
        if self.role not in ROLES:
            raise ValueError(f"split {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.mask not in MASKS:
            raise ValueError(f"split {self.name!r}: mask must be one of {MASKS}, got {self.mask!r}")
        missing = [fact_key(f) for f in self.facts if f.object is None]
        if missing:
            raise ValueError(
                f"split {self.name!r}: facts {missing[:5]} have no object; the suite measures "
                "the object (give Fact.object, a substring of the answer)"
            )
        ids = [fact_key(f) for f in self.facts]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"split {self.name!r}: duplicate fact ids {dup[:5]}")
        for label, values in (("clusters", self.clusters), ("forms", self.forms)):
            if values is not None:
                object.__setattr__(self, label, tuple(str(v) for v in values))
                if len(values) != len(self.facts):
                    raise ValueError(
                        f"split {self.name!r}: {len(values)} {label} for {len(self.facts)} facts"
                    )

    def subset(self, keep: Sequence[int]) -> UnlearningSplit:
        """The split restricted to the facts at positions ``keep``."""
        return UnlearningSplit(
            self.name,
            tuple(self.facts[i] for i in keep),
            self.role,
            self.mask,
            None if self.clusters is None else tuple(self.clusters[i] for i in keep),
            None if self.forms is None else tuple(self.forms[i] for i in keep),
            self.description,
        )


def _person(record: Mapping[str, Any]) -> str:
    p = record.get("person")
    return f"p{p:03d}" if p is not None else str(record.get("base") or record["id"])


def _probe_split(name, corpus, forget, family, *, role, mask="answer", forms=None, description=""):
    records = world.probe_records(corpus, forget, family)
    facts = tuple(world.load_probes(corpus, forget, family))
    return UnlearningSplit(
        name,
        facts,
        role,
        mask,
        tuple(_person(r) for r in records),
        None if forms is None else tuple(forms(r) for r in records),
        description,
    )


def unlearning_splits(
    forget: str = "forget01", *, corpus: str = "tiny", retain: str = "retain_eval"
) -> dict[str, UnlearningSplit]:
    """The standard splits of an embedded world for forgetting ``forget`` (see the module
    docstring), in :data:`SPLIT_ORDER`; a split with no facts (no neighbour shares a
    surname) is left out.

    Example:
        >>> splits = unlearning_splits("forget01")                  # doctest: +SKIP
        >>> {k: len(s.facts) for k, s in splits.items()}           # doctest: +SKIP
    """
    data = world.load_corpus(corpus)
    records = {f["id"]: f for f in data["facts"]}
    if forget not in data["splits"]:
        raise ValueError(f"unknown split {forget!r}; valid: {list(data['splits'])}")

    def canonical(name, split, role, description):
        facts = world.load_facts(corpus, split)
        recs = [records[f.id] for f in facts]
        return UnlearningSplit(
            name,
            tuple(facts),
            role,
            "answer",
            tuple(_person(r) for r in recs),
            None,
            description,
        )

    out: dict[str, UnlearningSplit] = {}
    out["forget"] = canonical("forget", forget, "forget", f"{forget}: the canonical facts")
    out["surface"] = _probe_split(
        "surface", corpus, forget, "surface", role="forget", forms=lambda r: r["form"],
        description="held-out surface forms of the subject (first name, casing, spacing)",
    )  # fmt: skip
    out["template"] = _probe_split(
        "template", corpus, forget, "template", role="forget",
        forms=lambda r: "question" if r["kind"].startswith("T") else "wrapper",
        description="held-out question wordings (question) and wrappers (wrapper), full name",
    )  # fmt: skip
    out["indirect"] = _probe_split(
        "indirect", corpus, forget, "indirect", role="forget", forms=lambda r: r["form"],
        description="indirect references (the author of <book>, the person married to <spouse>)",
    )  # fmt: skip
    out["infill"] = _probe_split(
        "infill", corpus, forget, "infill", role="forget", mask="object",
        description="the canonical sentence with only the object masked (subject visible)",
    )  # fmt: skip
    out["retain"] = canonical("retain", retain, "collateral", f"{retain}: retain facts")
    out["world"] = canonical("world", "world", "collateral", "world facts (countries)")
    forget_people = {records[i]["person"] for i in data["splits"][forget]}
    surnames = {p["surname"] for p in data["people"] if p["person"] in forget_people}
    neighbours = [
        f
        for f in world.load_facts(corpus, "retain")
        if data["people"][records[f.id]["person"]]["surname"] in surnames
    ]
    if neighbours:
        out["neighbour"] = UnlearningSplit(
            "neighbour",
            tuple(neighbours),
            "collateral",
            "answer",
            tuple(_person(records[f.id]) for f in neighbours),
            None,
            "retain facts of people who share a forget person's surname",
        )
    out["mention"] = _probe_split(
        "mention", corpus, forget, "mention", role="collateral",
        description="retain and world questions whose prompt names a forget person",
    )  # fmt: skip
    return {k: out[k] for k in SPLIT_ORDER if k in out}


def _as_splits(splits) -> dict[str, UnlearningSplit]:
    if isinstance(splits, str):
        return unlearning_splits(splits)
    if not isinstance(splits, Mapping) or not splits:
        raise TypeError(
            "splits must be a forget split name ('forget01') or a non-empty mapping of names to "
            f"UnlearningSplit (or to facts), got {type(splits).__name__}"
        )
    out = {}
    for name, value in splits.items():
        if isinstance(value, UnlearningSplit):
            out[name] = value
        elif isinstance(value, (Fact, str)) or not all(isinstance(f, Fact) for f in value):
            raise TypeError(
                f"split {name!r} must be an UnlearningSplit or a sequence of Facts, got "
                f"{type(value).__name__}"
            )
        else:
            out[name] = UnlearningSplit(
                name,
                tuple(value),
                "forget" if name in _FORGET_SIDE or name.startswith("forget") else "collateral",
                "object" if name == "infill" else "answer",
            )
    return out


# ----------------------------------------------------------------------------- recall


def probe_recall(
    model,
    split: UnlearningSplit,
    *,
    sampler=None,
    steps: int = 8,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    leaks: torch.Tensor | None = None,
) -> dict[str, tuple[float, int]]:
    """Object recall of ``model`` on a split: ``{"": (recall, n)}`` for the whole split and
    ``{form: (recall, n)}`` per form when the split has forms.

    Recall and leak are one test read two ways: the share of sampled answers that write the
    object (:func:`~.objects.object_leak`) — *recall* on facts the model should know (the
    unedited model's base recall), *leak* on facts it should have forgotten. ``leaks`` (the
    split's per-fact 0/1 values, if already sampled) skips the sampling."""
    if leaks is None:
        leaks = sampled_leaks(
            model, split.facts, mask=split.mask, sampler=sampler, steps=steps, seed=seed,
            batch_size=batch_size,
        )  # fmt: skip
    out = {"": (float(leaks.mean()), len(split.facts))}
    if split.forms is not None:
        for form in dict.fromkeys(split.forms):
            idx = [i for i, f in enumerate(split.forms) if f == form]
            out[form] = (float(leaks[idx].mean()), len(idx))
    return out


# ----------------------------------------------------------------------------- the report


def _metric(values, clusters, *, min_clusters: int, n_resamples: int, seed: int) -> Metric:
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    finite = torch.isfinite(t)
    use = (
        clusters is not None
        and len({c for c, k in zip(clusters, finite.tolist()) if k}) >= min_clusters
    )
    if use:
        mean, low, high = cluster_mean_ci(t, clusters, n_resamples=n_resamples, seed=seed)
    else:
        mean, low, high = mean_ci(t, n_resamples=n_resamples, seed=seed)
    return Metric(mean, low, high, int(finite.sum()), t)


def _fmt(m: Metric | None, digits: int = 2) -> str:
    if m is None or m.value != m.value:
        return "—"
    if m.low == m.low and m.high == m.high and m.per_fact is not None:
        return f"{m.value:.{digits}f} [{m.low:.{digits}f}, {m.high:.{digits}f}]"
    return f"{m.value:.{digits}f}"


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True, eq=False)
class UnlearningReport(Saveable):
    """The unlearning suite's results (see the module docstring).

    Attributes:
        metrics: ``method -> split -> metric -> Metric`` (per-fact values aligned with
            ``fact_ids[split]``). Metrics: ``leak``, ``leak@<label>`` (each sweep point),
            ``leak_min``, ``leak_max`` (scalars), ``object_lp``, ``delta_object_lp``,
            ``distance`` (with a reference model).
        flags: ``method -> split -> distance flag`` (forget-side splits; ``"n/a"`` elsewhere).
        summary: ``method -> name -> Metric``: ``model_utility``, ``forget_quality``,
            ``depth`` (when computed).
        fact_ids: ``split -> fact keys`` of the facts in the table (after the recall gate).
        splits: ``split -> {role, mask, description, n, ci_unit}``.
        recall_gate: ``"split"`` or ``"split/form" -> {recall, n, included, source}``: the
            unedited model's object recall everywhere it was checked (included or not).
        methods: ``method -> {kind, description}`` in table order.
        samplers: ``label -> {sampler, steps}``; the first is the default sampler.
        utility_parts: ``method -> part -> value`` (the six parts of model utility).
        config: Model, reference, seed, gate, resamples, timings, version.
    """

    metrics: dict[str, dict[str, dict[str, Metric]]]
    flags: dict[str, dict[str, str]]
    summary: dict[str, dict[str, Metric]]
    fact_ids: dict[str, tuple[str, ...]]
    splits: dict[str, dict[str, Any]]
    recall_gate: dict[str, dict[str, Any]]
    methods: dict[str, dict[str, str]]
    samplers: dict[str, dict[str, Any]]
    utility_parts: dict[str, dict[str, float]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, method: str) -> dict[str, dict[str, Metric]]:
        return self.metrics[method]

    def __repr__(self) -> str:
        return (
            f"UnlearningReport(methods={list(self.methods)}, splits={list(self.fact_ids)}, "
            f"samplers={len(self.samplers)})"
        )

    def _repr_markdown_(self) -> str:  # Jupyter shows the tables
        return self.to_markdown()

    @property
    def excluded(self) -> dict[str, dict[str, Any]]:
        """The gate entries that kept a split or form out of the table."""
        return {k: v for k, v in self.recall_gate.items() if not v["included"]}

    def leak_range(self, method: str, split: str) -> tuple[float, float]:
        """``(min, max)`` leak rate over the sweep for one method and split."""
        per = self.metrics[method][split]
        return per["leak_min"].value, per["leak_max"].value

    def table(self) -> list[dict[str, Any]]:
        """One row per ``(split, method)``: leak, its range, object LP, ΔLP, distance, flag."""
        rows = []
        for split in self.fact_ids:
            for method in self.methods:
                per = self.metrics[method][split]
                row: dict[str, Any] = {"split": split, "method": method}
                for name in ("leak", "object_lp", "delta_object_lp", "distance"):
                    m = per.get(name)
                    row[name] = None if m is None else _clean(m.value)
                    row[f"{name}_low"] = None if m is None else _clean(m.low)
                    row[f"{name}_high"] = None if m is None else _clean(m.high)
                row["leak_min"] = _clean(per["leak_min"].value)
                row["leak_max"] = _clean(per["leak_max"].value)
                row["flag"] = self.flags[method][split]
                row["n"] = len(self.fact_ids[split])
                rows.append(row)
        return rows

    def to_markdown(self) -> str:
        """The tables as Markdown: per split, one row per method; then the per-method summary
        and the recall gate."""
        out = []
        samplers = list(self.samplers)
        out.append(
            f"Leak: share of sampled answers that write the object (default sampler "
            f"`{samplers[0]}`); range: min–max over {len(samplers)} samplers "
            f"({', '.join(f'`{s}`' for s in samplers)}) where swept. Object LP: log p(object) "
            "with the answer masked (infill: only the object), nats. Δ: against no edit, "
            "paired. Distance: against the retain-only model (flag on forget-side splits). "
            "Mean [95% bootstrap CI]."
        )
        for split, info in self.splits.items():
            out.append(
                f"\n### {split} ({info['role']}, n = {info['n']}, CI over {info['ci_unit']}s)"
                f" — {info['description']}\n"
            )
            out.append(
                "| method | leak | leak range | object LP | Δ object LP | distance to retain | flag |"
            )
            out.append("|---|---|---|---|---|---|---|")
            for method in self.methods:
                per = self.metrics[method][split]
                lo, hi = per["leak_min"].value, per["leak_max"].value
                rng = f"{lo:.2f}–{hi:.2f}" if len(self.samplers) > 1 and info["swept"] else "—"
                out.append(
                    f"| {method} | {_fmt(per['leak'])} | {rng} | {_fmt(per['object_lp'])} | "
                    f"{_fmt(per['delta_object_lp'])} | {_fmt(per.get('distance'))} | "
                    f"{self.flags[method][split]} |"
                )
        out.append("\n### Per method\n")
        names = sorted({k for per in self.summary.values() for k in per}, key=str)
        order: list[str] = [n for n in ("model_utility", "forget_quality", "depth") if n in names]
        order += [n for n in names if n not in order]
        out.append("| method | kind | " + " | ".join(order) + " |")
        out.append("|---|---|" + "---|" * len(order))
        for method, info in self.methods.items():
            cells = [_fmt(self.summary[method].get(n), 3) for n in order]
            out.append(f"| {method} | {info['kind']} | " + " | ".join(cells) + " |")
        out.append("\n### Recall gate (unedited model, default sampler)\n")
        out.append(f"Threshold: object recall ≥ {self.config.get('recall_gate')}.\n")
        out.append("| split / form | recall | n | in the table | measured on |")
        out.append("|---|---|---|---|---|")
        for key, g in self.recall_gate.items():
            out.append(
                f"| {key} | {g['recall']:.2f} | {g['n']} | {'yes' if g['included'] else 'no'} "
                f"| {g['source']} |"
            )
        out.append("\n### Methods\n")
        for method, info in self.methods.items():
            out.append(f"* `{method}` ({info['kind']}): {info['description']}")
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every metric's value and CI, the per-fact values of ``leak`` and
        ``object_lp``, flags, summary, gate, methods, samplers and config (NaN → ``None``)."""

        def metric(m: Metric, per_fact: bool) -> dict[str, Any]:
            d = {"value": _clean(m.value), "low": _clean(m.low), "high": _clean(m.high), "n": m.n}
            if per_fact and m.per_fact is not None:
                d["per_fact"] = [_clean(float(v)) for v in m.per_fact.tolist()]
            return d

        return {
            "format": "tie_tracing.UnlearningReport/1",
            "metrics": {
                method: {
                    split: {
                        name: metric(m, name in ("leak", "object_lp")) for name, m in per.items()
                    }
                    for split, per in splits.items()
                }
                for method, splits in self.metrics.items()
            },
            "flags": self.flags,
            "summary": {
                method: {name: metric(m, False) for name, m in per.items()}
                for method, per in self.summary.items()
            },
            "fact_ids": {k: list(v) for k, v in self.fact_ids.items()},
            "splits": self.splits,
            "recall_gate": self.recall_gate,
            "methods": self.methods,
            "samplers": self.samplers,
            "utility_parts": {
                m: {k: _clean(v) for k, v in parts.items()}
                for m, parts in self.utility_parts.items()
            },
            "config": self.config,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file through the package's one serialiser (exact round trip:
        :meth:`equals`)."""
        return save_object(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnlearningReport:
        return load_object(cls, path)

    def equals(self, other: UnlearningReport) -> bool:
        """Exact equality, NaN-aware."""
        plain = ("flags", "fact_ids", "splits", "recall_gate", "methods", "samplers", "config")
        if any(getattr(self, k) != getattr(other, k) for k in plain):
            return False
        if _nan_key(self.utility_parts) != _nan_key(other.utility_parts):
            return False
        for mine, theirs in ((self.metrics, other.metrics), (self.summary, other.summary)):
            if _shape(mine) != _shape(theirs):
                return False
            for a, b in zip(_leaves(mine), _leaves(theirs)):
                if not _same_metric(a, b):
                    return False
        return True


def _nan_key(d):
    if isinstance(d, dict):
        return {k: _nan_key(v) for k, v in d.items()}
    if isinstance(d, float) and d != d:
        return "nan"
    return d


def _shape(tree):
    if isinstance(tree, dict):
        return {k: _shape(v) for k, v in tree.items()}
    return type(tree).__name__


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def _same_metric(a, b) -> bool:
    if not isinstance(a, Metric) or not isinstance(b, Metric):
        return a == b
    same = lambda x, y: x == y or (x != x and y != y)  # noqa: E731
    if not (same(a.value, b.value) and same(a.low, b.low) and same(a.high, b.high) and a.n == b.n):
        return False
    if (a.per_fact is None) != (b.per_fact is None):
        return False
    if a.per_fact is None or b.per_fact is None:
        return True
    pa, pb = a.per_fact, b.per_fact
    return pa.shape == pb.shape and bool(((pa == pb) | (pa.isnan() & pb.isnan())).all())


# ----------------------------------------------------------------------------- evaluation


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def evaluate_unlearning(
    model,
    methods: Sequence[Method],
    splits: str | Mapping[str, UnlearningSplit] | Mapping[str, Sequence[Fact]] = "forget01",
    *,
    reference=None,
    sweep: Sequence[SweepPoint] | None = None,
    sweep_roles: Sequence[str] = ("forget",),
    recall_gate: float = 0.9,
    base_recall: Mapping[str, float] | None = None,
    utility: bool = True,
    quality: bool = True,
    depth: bool = False,
    depth_threshold: float = 1.0,
    min_clusters: int = 5,
    n_resamples: int = 2000,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    progress: bool = PROGRESS,
) -> UnlearningReport:
    """The unlearning suite: every method on every split that passes the recall gate.

    Args:
        model: The original (unedited) MDLM; methods are applied to it
            (``with method.applied(model) as queried``).
        methods: :class:`~tie_tracing.evaluation.references.Method` rows, e.g.
            ``reference_methods(...) + [Method.memory("mine", memory)]`` (unique names).
        splits: A forget split name of the embedded world (``"forget01"``: the standard splits
            of :func:`unlearning_splits`) or ``{name: UnlearningSplit}`` (or ``{name: facts}``:
            role ``forget`` for ``forget*``, ``surface``, ``template``, ``indirect``,
            ``infill``, ``collateral`` otherwise; ``infill`` masks the object only).
        reference: The retain-only model: the ``distance`` metric and forget quality.
        sweep: Sampler settings of the leak sweep (default :func:`default_sweep`); the first
            is the default sampler (``leak`` and the recall gate).
        sweep_roles: Roles of the splits the whole sweep runs on (others: the default sampler).
        recall_gate: Minimum object recall of the unedited model for a split (or form) to enter
            the table.
        base_recall: ``{"split": recall}`` or ``{"split/form": recall}`` measured elsewhere;
            used instead of the split's own measurement where given.
        utility: Model utility per method (needs splits ``retain`` and ``world``).
        quality: Forget quality per method (needs ``reference`` and a ``forget`` split whose
            facts carry perturbed answers).
        depth: Unlearning depth per method on the ``forget`` split (needs ``reference``).
        depth_threshold: The depth's stage-1 threshold in nats.
        min_clusters: Fewest clusters (people) for the CI to resample clusters, not facts.
        n_resamples, seed: Bootstrap resamples; the seed also seeds the samplers.
        batch_size: Rows per forward.
        progress: Print one line per method and split to stderr.

    Returns:
        An :class:`UnlearningReport`.

    Raises:
        ValueError: no methods, duplicate names, a bad gate, no split passing the gate.
        TypeError: methods that are not :class:`Method` s, splits of the wrong type.

    Example:
        >>> from tie_tracing.evaluation import Method, reference_methods   # doctest: +SKIP
        >>> model, retain = tt.load_model(), tt.load_model("tiny-mdlm-retain")  # doctest: +SKIP
        >>> forget = tt.load_facts("tiny", "forget01")                      # doctest: +SKIP
        >>> memory = tt.EditMemory.build(model, forget, layer=4, alpha=1.0, lam=0.01)  # doctest: +SKIP
        >>> rows = reference_methods(forget, reference=retain,            # doctest: +SKIP
        ...     random_directions=tt.editing.random_directions(memory))
        >>> report = tt.evaluate_unlearning(model, rows + [Method.memory("paper", memory)],
        ...     "forget01", reference=retain, depth=True)                  # doctest: +SKIP
        >>> print(report.to_markdown())                                     # doctest: +SKIP
    """
    methods = list(methods)
    if not methods:
        raise ValueError("evaluate_unlearning needs at least one method (e.g. Method.unedited())")
    bad = [type(m).__name__ for m in methods if not isinstance(m, Method)]
    if bad:
        raise TypeError(
            f"methods must be tie_tracing Method rows, got {bad[:3]}; wrap a model with "
            "Method.other_model(name, model) and a memory with Method.memory(name, memory)"
        )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    if not 0.0 <= recall_gate <= 1.0:
        raise ValueError(f"recall_gate must lie in [0, 1], got {recall_gate}")
    for role in sweep_roles:
        if role not in ROLES:
            raise ValueError(f"sweep_roles: unknown role {role!r}; roles are {ROLES}")
    all_splits = _as_splits(splits)
    points = tuple(sweep) if sweep is not None else default_sweep()
    if not points:
        raise ValueError("the sampler sweep needs at least one point (the default sampler)")
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise ValueError(f"sweep labels must be unique, got {labels}")
    default = points[0]
    given = dict(base_recall or {})
    t_start = time.perf_counter()
    kw = {"batch_size": batch_size}

    # --- the unedited model: object LP, default-sampler leaks, the recall gate -------------
    gate: dict[str, dict[str, Any]] = {}
    table: dict[str, UnlearningSplit] = {}
    base_lp: dict[str, torch.Tensor] = {}
    base_leak: dict[str, torch.Tensor] = {}
    for name, split in all_splits.items():
        leaks = sampled_leaks(
            model, split.facts, mask=split.mask, sampler=default.sampler, steps=default.steps,
            seed=seed, **kw,
        )  # fmt: skip
        recall = probe_recall(model, split, leaks=leaks)
        groups = [""] if split.forms is None else [g for g in recall if g]
        keep: list[int] = []
        for g in groups:
            key = name if not g else f"{name}/{g}"
            value, n = recall[g]
            source = "this split"
            if key in given:
                value, source = float(given[key]), "given"
            gate[key] = {
                "recall": value,
                "n": n,
                "included": bool(value >= recall_gate),
                "source": source,
            }
            if value >= recall_gate:
                forms = split.forms or ("",) * len(split.facts)
                keep += [i for i in range(len(split.facts)) if not g or forms[i] == g]
        keep.sort()
        if split.forms is not None:
            value, n = recall[""]
            gate[name] = {
                "recall": value,
                "n": n,
                "included": bool(keep),
                "source": "this split (all forms)",
            }
        if not keep:
            used = ", ".join(
                f"{k} {gate[k]['recall']:.2f} ({gate[k]['source']})"
                for k in ([name] if split.forms is None else [f"{name}/{g}" for g in groups])
            )
            _log(progress, f"[gate] {name}: recall {used} < {recall_gate}: left out")
            continue
        table[name] = split.subset(keep)
        base_leak[name] = leaks[keep]
        base_lp[name] = object_logprob(model, table[name].facts, mask=split.mask, **kw)
        _log(progress, f"[gate] {name}: {len(keep)}/{len(split.facts)} facts in the table")
    if not table:
        raise ValueError(
            f"no split passes the recall gate ({recall_gate}): the unedited model does not "
            f"write the objects ({ {k: round(v['recall'], 2) for k, v in gate.items()} })"
        )
    ref_lp = {}
    if reference is not None:
        ref_lp = {
            name: object_logprob(reference, s.facts, mask=s.mask, **kw) for name, s in table.items()
        }
    forget_facts = list(all_splits["forget"].facts) if "forget" in all_splits else []
    has_tr = bool(forget_facts) and any(f.perturbed_answers for f in forget_facts)
    ref_tr = None
    if quality and reference is not None and has_tr:
        ref_tr = _truth_ratios(reference, forget_facts, estimator="masked", mc=1, seed=seed, **kw)
    stat = {"min_clusters": min_clusters, "n_resamples": n_resamples, "seed": seed}

    # --- every method ------------------------------------------------------------------------
    metrics: dict[str, dict[str, dict[str, Metric]]] = {}
    flags: dict[str, dict[str, str]] = {}
    summary: dict[str, dict[str, Metric]] = {}
    parts_all: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for method in methods:
        t0 = time.perf_counter()
        metrics[method.name], flags[method.name], summary[method.name] = {}, {}, {}
        with method.applied(model) as queried:
            for name, split in table.items():
                clusters = split.clusters
                unedited = method.kind == "no_edit"
                lp = (
                    base_lp[name]
                    if unedited
                    else object_logprob(queried, split.facts, mask=split.mask, **kw)
                )
                swept = split.role in sweep_roles
                per: dict[str, Metric] = {}
                rates = []
                for point in points if swept else points[:1]:
                    if unedited and point is default:
                        leaks = base_leak[name]
                    else:
                        leaks = sampled_leaks(
                            queried, split.facts, mask=split.mask, sampler=point.sampler,
                            steps=point.steps, seed=seed, **kw,
                        )  # fmt: skip
                    m = _metric(leaks, clusters, **stat)
                    per[f"leak@{point.label}"] = m
                    rates.append(m.value)
                    if point is default:
                        per["leak"] = m
                per["leak_min"] = Metric(min(rates))
                per["leak_max"] = Metric(max(rates))
                per["object_lp"] = _metric(lp, clusters, **stat)
                per["delta_object_lp"] = _metric(lp - base_lp[name], clusters, **stat)
                flag = "n/a"
                if reference is not None:
                    d = _metric(lp - ref_lp[name], clusters, **stat)
                    per["distance"] = d
                    if split.role == "forget":
                        flag = distance_flag(d.low, d.high)
                metrics[method.name][name] = per
                flags[method.name][name] = flag
                _log(
                    progress,
                    f"[{method.name}] {name}: leak {per['leak'].value:.3f} "
                    f"(range {min(rates):.3f}–{max(rates):.3f}), ΔLP "
                    f"{per['delta_object_lp'].value:.2f}",
                )
            if utility and "retain" in all_splits and "world" in all_splits:
                value, parts = model_utility(
                    queried, all_splits["retain"].facts, all_splits["world"].facts,
                    steps=default.steps, seed=seed, sampler=default.sampler, **kw,
                )  # fmt: skip
                summary[method.name]["model_utility"] = Metric(value)
                parts_all[method.name] = parts
            if ref_tr is not None:
                tr = _truth_ratios(queried, forget_facts, estimator="masked", mc=1, seed=seed, **kw)
                summary[method.name]["forget_quality"] = Metric(forget_quality(tr, ref_tr))
        if depth and reference is not None and "forget" in table:
            split = table["forget"]
            result = unlearning_depth(
                model, method, reference, split.facts, threshold=depth_threshold,
                clusters=split.clusters, min_clusters=min_clusters, n_resamples=n_resamples,
                seed=seed, batch_size=batch_size,
            )  # fmt: skip
            summary[method.name]["depth"] = Metric(
                result.mean, result.low, result.high, result.n_scored, result.scores
            )
        timings[method.name] = time.perf_counter() - t0
        _log(progress, f"[{method.name}] done in {timings[method.name]:.1f} s")

    def unit(split: UnlearningSplit) -> str:
        n = 0 if split.clusters is None else len(set(split.clusters))
        return "person" if n >= min_clusters else "fact"

    return UnlearningReport(
        metrics=metrics,
        flags=flags,
        summary=summary,
        fact_ids={name: tuple(fact_key(f) for f in s.facts) for name, s in table.items()},
        splits={
            name: {
                "role": s.role,
                "mask": s.mask,
                "description": s.description,
                "n": len(s.facts),
                "ci_unit": unit(s),
                "swept": s.role in sweep_roles,
            }
            for name, s in table.items()
        },
        recall_gate=gate,
        methods={m.name: {"kind": m.kind, "description": m.description} for m in methods},
        samplers={p.label: {"sampler": p.sampler.to_dict(), "steps": p.steps} for p in points},
        utility_parts=parts_all,
        config={
            "model": str(getattr(model, "name", "")),
            "reference": None if reference is None else str(getattr(reference, "name", "")),
            "recall_gate": recall_gate,
            "sweep_roles": list(sweep_roles),
            "min_clusters": min_clusters,
            "n_resamples": n_resamples,
            "seed": seed,
            "estimator": "object log-probability, one forward",
            "depth_threshold": depth_threshold if depth else None,
            "seconds": {**timings, "total": time.perf_counter() - t_start},
            "version": __version__,
        },
    )
