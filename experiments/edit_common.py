"""Shared pieces of the edit-memory experiments (``experiments/edit_*.py``).

**Fact sets** (all from ``tt.load_facts("tiny", ...)``; ``rest`` = retain facts outside
``retain_eval`` and ``neighbour``, shuffled with ``random.Random(0)``):

* ``forget01`` / ``forget05`` / ``forget10`` — reported forget sets (never tuned on);
* ``validation`` — the forget10 people outside forget05: tuning only;
* ``retain_eval`` (200) and ``neighbour`` — reported utility sets (never tuned or
  calibrated on);
* ``retain_tune`` = the first 3/8 of ``rest`` — the tuning scripts' utility constraint and the
  training baselines' early-stopping monitor;
* ``retain_cal`` = the next 2/8 — the subject gate's calibration prompts (``μ``, ``C``,
  ``τ``); disjoint from everything reported and from ``retain_tune``, so a tuned gate is
  judged on prompts it was not calibrated on;
* ``retain_pool`` = the last 3/8 — the training baselines' retain batches, and retain facts
  that grow memories beyond forget10 (scaling, the cost benchmark).

Shares, not fixed counts, so every set is non-empty on any world: on world v3 ``rest`` holds
279 facts (104 / 70 / 105).

**Operating points are explicit inputs.** The tuning scripts write them to JSON files
(``figures/edit_tune.json``: ``paper_tie``, ``paper_grid`` and the installation layers;
``figures/edit_tune_gate.json``: ``gated`` and its calibration ids;
``figures/edit_tune_token_gate.json``: ``gated_tokens``); every other experiment
reads them with ``--points FILE ...`` and passes every build argument (``EditMemory.build``
reads nothing from the model's files). The shipped point
(``tie_tracing/zoo/models/<model>/tie_tracing.json``) is written only by a tuning script run
with ``--write``, through :func:`write_shipped_point` — ``tt.editing.write_operating_point``,
which validates it and regenerates the model card's section from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import tie_tracing as tt  # noqa: E402
from tie_tracing.core._io import atomic_write_text  # noqa: E402

FIGURES = ROOT / "figures"
MODEL = os.environ.get("TT_EDIT_MODEL", "tiny-mdlm")
DEFAULT_POINTS = (
    FIGURES / "edit_tune.json",
    FIGURES / "edit_tune_gate.json",
    FIGURES / "edit_tune_token_gate.json",
)
#: Every build argument an operating point fixes (all passed explicitly; None = dense / all).
POINT_KEYS = (
    "layer", "module", "alpha", "lam", "q", "steps", "subject_gate", "gate_kind", "gate_margin",
    "ridge_blocks",
    "gate_shrinkage", "apply_at", "key_at",
)  # fmt: skip
PAPER_FORM = {"subject_gate": False, "apply_at": "all", "key_at": "subject"}


def setup() -> None:
    torch.set_num_threads(1)
    FIGURES.mkdir(exist_ok=True)


def load(name: str = MODEL):
    """The model, its shipped operating point record (or ``None``) kept as
    ``model.shipped_operating_point`` for reports (no build reads it)."""
    for _ in range(360):
        try:
            model = tt.load_model(name)
            break
        except tt.CheckpointNotFoundError:
            print(f"waiting for {name} ...", file=sys.stderr, flush=True)
            time.sleep(10)
    else:
        model = tt.load_model(name)
    model.shipped_operating_point = model.info.get("operating_point")
    return model


def model_dir(name: str = MODEL) -> Path:
    return Path(name) if Path(name).is_dir() else tt.core.model.ZOO_DIR / name


def fact_sets() -> dict[str, list[tt.Fact]]:
    facts = {
        s: tt.load_facts("tiny", split=s)
        for s in (
            "forget01", "forget05", "forget10", "validation", "retain", "retain_eval", "world",
            "neighbour",
        )
    }  # fmt: skip
    used = {f.id for f in facts["retain_eval"]} | {f.id for f in facts["neighbour"]}
    rest = [f for f in facts["retain"] if f.id not in used]
    random.Random(0).shuffle(rest)
    tune, cal = len(rest) * 3 // 8, len(rest) * 5 // 8
    facts["retain_tune"] = rest[:tune]
    facts["retain_cal"] = rest[tune:cal]
    facts["retain_pool"] = rest[cal:]
    return facts


def people(facts: Sequence[tt.Fact]) -> list[list[tt.Fact]]:
    """Facts grouped by subject (one memory per person, like forget01), in order."""
    groups: dict[str, list[tt.Fact]] = {}
    for f in facts:
        groups.setdefault(f.subject, []).append(f)
    return list(groups.values())


def paraphrased(facts: Sequence[tt.Fact]) -> list[tt.Fact]:
    """The facts asked with their paraphrased question (same answer); facts without one dropped."""
    import dataclasses

    return [
        dataclasses.replace(f, question=f.paraphrased_question, id=f"{f.id}-para")
        for f in facts
        if f.paraphrased_question
    ]


def surname_neighbours(forget: Sequence[tt.Fact], pool: Sequence[tt.Fact]) -> list[tt.Fact]:
    """Facts of ``pool`` about other people who share a forget subject's surname."""
    names = {f.subject for f in forget}
    surnames = {n.split()[-1] for n in names}
    return [f for f in pool if f.subject not in names and f.subject.split()[-1] in surnames]


def logprobs(model, facts) -> torch.Tensor:
    """``[fact]`` masked-estimator ``log p(answer | question)`` (nats)."""
    return tt.answer_logprob(model, facts, estimator="masked")


# ----------------------------------------------------------------------- operating points


def points_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--points", nargs="+", type=Path, default=list(DEFAULT_POINTS),
        help="operating-point JSON files written by the tuning scripts (merged in order)",
    )  # fmt: skip


def read_points(paths: Sequence[Path]) -> dict[str, Any]:
    """Merge the ``points``, ``layers`` and ``calibration`` sections of tuning outputs."""
    out: dict[str, Any] = {"points": {}, "layers": {}, "calibration": None, "files": []}
    for path in paths:
        if not Path(path).is_file():
            raise SystemExit(
                f"no operating points at {path}: run experiments/edit_tune.py and "
                "experiments/edit_tune_gate.py first (or pass --points)"
            )
        data = json.loads(Path(path).read_text())
        out["points"].update(data.get("points", {}))
        out["layers"].update(data.get("layers", {}))
        if data.get("calibration"):
            out["calibration"] = data["calibration"]
        out["files"].append(str(path))
    return out


def require(points: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in points["points"]:
        raise SystemExit(f"operating point {name!r} not in {points['files']}")
    return dict(points["points"][name])


def build(model, facts, point: dict[str, Any], *, calibration=None, **changes) -> tt.EditMemory:
    """``EditMemory.build`` with every argument of ``point`` (plus ``changes``) passed explicitly.

    A point's ``q`` larger than the memory (a streaming memory starting small) is a ceiling,
    ``min(q, N)`` as the memory grows (``cap_q``), as a shipped operating point's ``q`` is.
    """
    kwargs = {k: point.get(k) for k in POINT_KEYS}
    kwargs.update(changes)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("q", "steps")}
    kwargs["edit_steps"] = kwargs.pop("steps", None)  # a point's step set (build's edit_steps)
    if not kwargs.get("subject_gate"):
        kwargs.pop("gate_margin", None)
        kwargs.pop("gate_shrinkage", None)
    n = 1 if isinstance(facts, tt.Fact) else len(facts)
    if kwargs.get("q") is not None and kwargs["q"] > n:
        kwargs["cap_q"] = True
    return tt.EditMemory.build(model, facts, calibration=calibration, **kwargs)


def point_arguments(parser: argparse.ArgumentParser, default: str = "gated") -> None:
    """``--points FILE ...`` and ``--point NAME`` (``paper_tie``, ``paper_grid``, ``gated``)."""
    points_argument(parser)
    parser.add_argument(
        "--point", default=default, help="operating point to use (default: %(default)s)"
    )


def chosen_point(args, sets) -> tuple[dict[str, Any], list[tt.Fact] | None, dict[str, Any]]:
    """``(point, calibration prompts or None, all points)`` named by ``--points`` / ``--point``."""
    points = read_points(args.points)
    point = require(points, args.point)
    point["name"] = args.point
    calibration = calibration_facts(points, sets) if point.get("subject_gate") else None
    return point, calibration, points


def calibration_facts(points: dict[str, Any], sets: dict[str, list[tt.Fact]]) -> list[tt.Fact]:
    """The calibration prompts a gated point was tuned with (by id), else ``retain_cal``."""
    spec = points.get("calibration")
    if not spec:
        return sets["retain_cal"]
    pool = {f.id: f for f in tt.load_facts(spec["corpus"], spec["split"])}
    return [pool[i] for i in spec["ids"]]


def point_label(point: dict[str, Any]) -> str:
    parts = [
        f"layer {point['layer']}",
        f"α={point['alpha']:g}",
        f"λ={point['lam']:g}",
        f"q={point['q']}",
    ]
    if point.get("subject_gate") and point.get("gate_kind", "cosine") == "tokens":
        parts.append("token gate")
    elif point.get("subject_gate"):
        parts.append(f"cosine gate, margin {point['gate_margin']:g}")
    if point.get("ridge_blocks", "memory") != "memory":
        parts.append(f"ridge per {point['ridge_blocks']}")
    if point.get("apply_at", "all") != "all" or point.get("key_at", "subject") != "subject":
        parts.append(f"apply {point.get('apply_at')}, keys {point.get('key_at')}")
    return ", ".join(parts)


def write_shipped_point(op: dict[str, Any], name: str = MODEL) -> Path:
    """Store ``op`` as the model's shipped operating point: validated, written to its
    ``tie_tracing.json`` (other keys kept) and rendered into its ``MODEL_CARD.md`` section, by
    the package's one writer (``tt.editing.write_operating_point``)."""
    return tt.editing.write_operating_point(model_dir(name), op)


# ----------------------------------------------------------------------------- reporting


def write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def save_plot(fig, name: str) -> None:
    """``figures/<name>.html`` via ``tt.figures.save_figure``: small, plotly.js loaded from
    ``plotly.min.js`` beside it, so it opens offline."""
    tt.figures.save_figure(fig, FIGURES / f"{name}.html", include_plotlyjs="directory")


def delta_row(values: torch.Tensor, base: torch.Tensor, n_resamples: int = 2000) -> dict:
    """Mean of ``values``, its change from ``base`` (same facts) with a bootstrap CI and a
    paired t-test."""
    d, lo, hi = tt.analysis.mean_ci(values - base, n_resamples=n_resamples)
    test = tt.evaluation.paired_ttest(values, base)
    return {"delta": d, "delta_low": lo, "delta_high": hi, "p": test.pvalue, "marker": test.marker}


def hmean(values: Sequence[float]) -> float:
    """Harmonic mean (0 if any value is ≤ 0; NaN if any is NaN)."""
    if any(math.isnan(v) for v in values):
        return math.nan
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)
