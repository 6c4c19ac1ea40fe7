"""Tune the answer-slot gate (``gate_kind="slots"``) on the validation people, never on a forget split.

For each grid point (layer × margin × α) the memory forgets the validation people (their
canonical questions and the two trained paraphrase wordings, T1 and T2: the forget set as the
model was trained on it) with the never-met update (``targets="unknown"``, ``mode="steer"``)
and is scored on the validation people's never-trained probes (held-out surface forms,
wordings, wrappers and indirect references) and on collateral (retain_eval, world and
neighbour facts, and mention prompts that name a validation person), by the share of sampled
answers that write the object (default sampler). The gate's open rate on each split (at the
first forward, where its decision is taken) is reported beside it.

Calibration (``calibration=``): the retain people's and world facts' training prompts in the
three trained wordings (T0, T1, T2), minus every prompt whose fact is evaluated by the suite
(retain_eval, neighbour, world); the look-alikes and the never-met values use the first
``--names`` held-out people. The probes are never used to build or calibrate.

Rule, fixed before the grid ran: among points whose collateral recall drop (retain, world,
neighbour) is at most 0.02 on every split, the lowest worst forget-side leak; ties go to the
larger margin (the narrower gate), then the smaller α.

Run: ``python experiments/edit_tune_slots.py [--layers 5 6 7] [--margins 0 -0.03 -0.06]
[--alphas 4] [--out runs/edit_tune_slots.json]``. Writes nothing into the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import tie_tracing as tt
from tie_tracing.core._io import atomic_write_text
from tie_tracing.evaluation import sampled_leaks
from tie_tracing.zoo import corpus

FORGET_SIDE = ("forget", "surface", "template", "indirect")
COLLATERAL = ("retain", "world", "neighbour")


def row_fact(r: dict) -> tt.Fact:
    return tt.Fact(
        question=r["question"], answer=r["answer"], subject=r["subject"], object=r["object"],
        id=r["id"],
    )  # fmt: skip


def forget_rows(split: str, canonical_only: bool = False) -> list[tt.Fact]:
    """A forget split's canonical facts and their two trained paraphrase wordings (T1, T2);
    ``canonical_only``: the canonical facts alone."""
    facts = tt.load_facts("tiny", split)
    if canonical_only:
        return facts
    ids = {f.id for f in facts}
    para = [
        row_fact(r)
        for r in corpus.training_pairs("tiny", "train")
        if r["base"] in ids and r["kind"] in ("T1-full", "T2-full")
    ]
    return facts + para


def calibration_prompts(exclude_neighbour_people: bool = False) -> list[tt.Fact]:
    """Retain and world training prompts (T0–T2 wordings), minus every fact the suite evaluates
    in its canonical wording (T0). The T1/T2 wordings of evaluated facts stay: a user calibrates
    on the training set. ``exclude_neighbour_people``: also drop every prompt about a retain
    person who shares a surname with a forget10 person (the check that the same-surname
    neighbours' own paraphrases are not what keeps them)."""
    evaluated = {
        f.id for s in ("retain_eval", "neighbour", "world") for f in tt.load_facts("tiny", s)
    }
    forget_surnames = {f.subject.split()[-1] for f in tt.load_facts("tiny", "forget10")}
    people = {
        f.id.split("-")[0] for f in tt.load_facts("tiny", "retain")
        if f.subject.split()[-1] in forget_surnames
    }  # fmt: skip
    return [
        row_fact(r)
        for r in corpus.training_pairs("tiny", "train_retain")
        if (r["kind"] in ("T1-full", "T2-full")
            or (r["kind"] == "T0-full" and r["base"] not in evaluated))
        and not (exclude_neighbour_people and r["base"].split("-")[0] in people)
    ]  # fmt: skip


def slots_config(layer: int, margin: float, alpha: float) -> tt.EditConfig:
    return tt.EditConfig(
        layer=layer, module="resid", mode="steer", alpha=alpha, subject_gate=True,
        gate_kind="slots", gate_margin=margin, apply_at="answer",
    )  # fmt: skip


def eval_sets(split: str) -> dict[str, list[tt.Fact]]:
    sets = {"forget": tt.load_facts("tiny", split)}
    for family in ("surface", "template", "indirect", "mention"):
        sets[family] = corpus.load_probes("tiny", split, family)
    sets["retain"] = tt.load_facts("tiny", "retain_eval")
    sets["world"] = tt.load_facts("tiny", "world")
    sets["neighbour"] = tt.load_facts("tiny", "neighbour")
    return sets


def open_rates(model, memory, sets) -> dict[str, float]:
    """Share of each split's queries whose gate opens at the first forward (answer all masked)."""
    return {
        name: float(memory.slot_gate_opens(model, facts).any(-1).double().mean())
        for name, facts in sets.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[5, 6, 7])
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, -0.03, -0.06])
    ap.add_argument("--alphas", type=float, nargs="+", default=[4.0])
    ap.add_argument("--names", type=int, default=8)
    ap.add_argument("--split", default="validation")
    ap.add_argument(
        "--exclude-neighbour-people", action="store_true",
        help="calibrate without any prompt about a retain person sharing a forget10 surname",
    )  # fmt: skip
    ap.add_argument(
        "--canonical-only", action="store_true",
        help="build from the canonical questions alone (no trained paraphrase wordings)",
    )  # fmt: skip
    ap.add_argument("--out", default="runs/edit_tune_slots.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = tt.load_model("tiny-mdlm")
    forget = forget_rows(args.split, args.canonical_only)
    calib = calibration_prompts(args.exclude_neighbour_people)
    names = corpus.holdout_names()[: args.names]
    sets = eval_sets(args.split)
    base = {k: float(sampled_leaks(model, v).mean()) for k, v in sets.items()}
    print("unedited", json.dumps({k: round(v, 3) for k, v in base.items()}), flush=True)
    points = []
    for layer in args.layers:
        for margin in args.margins:
            for alpha in args.alphas:
                t0 = time.perf_counter()
                memory = tt.EditMemory.build(
                    model, forget, slots_config(layer, margin, alpha), targets="unknown",
                    unknown_names=names, calibration=calib,
                )  # fmt: skip
                build_s = time.perf_counter() - t0
                rates = open_rates(model, memory, sets)
                with memory.install(model):
                    leak = {k: float(sampled_leaks(model, v).mean()) for k, v in sets.items()}
                drop = {k: base[k] - leak[k] for k in COLLATERAL}
                point = {
                    "layer": layer, "margin": margin, "alpha": alpha, "leak": leak,
                    "open": rates, "collateral_drop": drop, "build_seconds": build_s,
                    "admissible": max(drop.values()) <= 0.02,
                    "worst_forget_side": max(leak[k] for k in FORGET_SIDE),
                }  # fmt: skip
                points.append(point)
                print(
                    f"L{layer} m{margin:+.2f} a{alpha:g}: "
                    + " | ".join(f"{k[:5]} {leak[k]:.2f}/{rates[k]:.2f}" for k in sets)
                    + f"  build {build_s:.1f}s",
                    flush=True,
                )
    ok = [p for p in points if p["admissible"]]
    chosen = (
        min(ok, key=lambda p: (p["worst_forget_side"], -p["margin"], p["alpha"])) if ok else None
    )
    payload = {
        "unedited": base, "points": points, "chosen": chosen, "split": args.split,
        "names": names, "n_calibration": len(calib), "n_forget_rows": len(forget),
        "exclude_neighbour_people": args.exclude_neighbour_people,
        "canonical_only": args.canonical_only,
        "rule": "collateral recall drop <= 0.02 on retain, world and neighbour; then the lowest "
        "worst forget-side leak; ties: larger margin, then smaller alpha",
        "command": " ".join(["python", *sys.argv]),
    }  # fmt: skip
    atomic_write_text(Path(args.out), json.dumps(payload, indent=1))
    print(
        "chosen:", None if chosen is None else {k: chosen[k] for k in ("layer", "margin", "alpha")}
    )


if __name__ == "__main__":
    main()
