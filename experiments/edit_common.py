"""Shared pieces of the edit-memory experiments (``experiments/edit_*.py``).

Fact sets (all from ``tt.load_facts("tiny", ...)``, never overlapping where it matters):

* ``forget01`` (20 facts, one person) — reported headline facts;
* ``validation`` (100 forget10 facts of 5 other people) — tuning only;
* ``retain_eval`` (200 retain facts) — reported RetainLP;
* ``retain_tune`` — 200 further retain facts, disjoint from ``retain_eval`` and ``neighbour``,
  used only by the tuning script for the utility constraint;
* ``retain_pool`` — the remaining retain facts (disjoint from all of the above), used to grow
  memories beyond forget10 in the scaling experiment.

Every script calls :func:`setup` (one CPU thread, warnings shown once) and writes JSON /
Markdown tables and Plotly figures under ``figures/``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import tie_tracing as tt  # noqa: E402
from tie_tracing._io import atomic_write_text  # noqa: E402

FIGURES = ROOT / "figures"
MODEL = os.environ.get("TT_EDIT_MODEL", "tiny-mdlm")


def setup() -> None:
    torch.set_num_threads(1)
    FIGURES.mkdir(exist_ok=True)


def load(name: str = MODEL):
    """The model, waiting until the zoo has written it (the zoo helper trains it)."""
    for _ in range(360):
        try:
            return tt.load_model(name)
        except tt.CheckpointNotFoundError:
            print(f"waiting for {name} ...", file=sys.stderr, flush=True)
            time.sleep(10)
    return tt.load_model(name)


def fact_sets() -> dict[str, list[tt.Fact]]:
    facts = {
        s: tt.load_facts("tiny", split=s)
        for s in (
            "forget01",
            "forget05",
            "forget10",
            "validation",
            "retain",
            "retain_eval",
            "world",
            "neighbour",
        )
    }
    used = {f.id for f in facts["retain_eval"]} | {f.id for f in facts["neighbour"]}
    rest = [f for f in facts["retain"] if f.id not in used]
    random.Random(0).shuffle(rest)
    facts["retain_tune"] = rest[:200]
    facts["retain_pool"] = rest[200:]
    return facts


def logprobs(model, facts) -> torch.Tensor:
    """``[fact]`` masked-estimator ``log p(answer | question)`` (nats)."""
    return tt.answer_logprob(model, facts, estimator="masked")


def write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def save_plot(fig, name: str) -> None:
    """``figures/<name>.html`` (small, plotly.js from the CDN) via ``tt.save_figure``."""
    tt.save_figure(fig, FIGURES / f"{name}.html", include_plotlyjs="cdn")


def operating_point(model) -> dict:
    op = model.info.get("operating_point")
    if not op:
        raise SystemExit(
            f"{model.name} has no operating point yet: run experiments/edit_tune.py first"
        )
    return op
