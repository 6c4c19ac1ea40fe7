"""The unlearning suite (SPEC §9, issue 21) on the embedded world: a table a keyword filter cannot pass.

Rows (every one forgets the same facts; every build argument is passed explicitly — the model's
stored operating point is removed from ``model.info`` so nothing falls back to it):

* reference rows — ``no_edit``; ``retain_model`` (the retain-only model: the gold standard);
  ``string_match_random`` (if a forget subject's exact name is in the prompt, the answer slots
  get seeded random logits); ``string_match_route`` (… the row is answered by the retain-only
  model); ``random_directions`` (``token_gate`` with its update directions replaced by random
  ones of equal norm, seed 0);
* ``token_gate`` — the shipped-style token-gated memory, built explicitly: layer 0, α = 2,
  λ = 0.1, ``subject_gate=True, gate_kind="tokens", ridge_blocks="subject",
  apply_at="answer", key_at="answer"``, refusal targets (the old world's shipped operating
  point, not re-tuned on this model);
* ``slots_gate`` — the answer-slot gate (``gate_kind="slots"``) with the never-met update
  (``targets="unknown"``, ``mode="steer"``) at the operating point chosen on the validation
  people by ``experiments/edit_tune_slots.py`` (read from ``--slots-point``, default
  ``figures/edit_tune_slots.json``; this script never writes it). It forgets the forget split's
  canonical questions and their two trained paraphrase wordings (T1, T2); calibration: retain
  and world training prompts minus every fact the suite evaluates; never-met names and
  look-alikes: the first 8 held-out people. ``slots_random_directions``: the same memory and
  gate with its update directions replaced by random ones of equal norm (seed 0);
* ``paper_memory`` — the paper's memory (Eq. 11–12, ungated, every position, subject keys, one
  ridge over the memory) at layer ``--paper-layer`` (default: the middle block), α = 1,
  λ = 0.01 (the package defaults; not tuned on this model);
* ``npo`` — ``tt.unlearn(method="npo")`` under the converged protocol of
  ``experiments/baselines.py`` (retain-NLL anchor, gradient clipping 1.0, early stopping when
  RetainLP on ``retain_tune`` drifts by more than 1 nat, evaluated every 2 steps; batches of
  8; 10 epochs on forget01, 5 beyond), retain batches from ``retain_pool``; the learning rate
  is the largest of ``--npo-lr`` (default 1e-3, 3e-4, 1e-4) whose run the protocol does not
  halt at its first evaluation (a halted run returns the base model); every attempt is
  recorded.

Splits (``tt.evaluation.unlearning_splits``): forget, surface forms, held-out templates,
indirect references, infilling, retain (``retain_eval``), world, same-surname neighbours,
mention collateral. The recall gate (object recall ≥ 0.9 of the unedited model, default
sampler) is fed the base recall measured per family and form on the probes of *every* trained
person (``--recall-people``), a larger sample than one forget person's probes; the families
and forms that fall short are listed with their recall. The base-recall table is written
beside the suite, for the unedited model and the retain-only model.

Writes ``figures/unlearning_suite[_<forget>].{json,md,safetensors}`` (the report; the
``.safetensors`` loads back exactly with ``tt.UnlearningReport.load``) and
``figures/unlearning_suite_recall.{json,md}`` (base recall per family and form).

Run: ``python experiments/unlearning_suite.py --model DIR --retain DIR [--forget forget01
forget05] [--quick]``; ``--quick`` is a smoke run (a few facts per split, two samplers, two
NPO steps, no depth).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402
import edit_tune_slots as SLOTS  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.core._io import atomic_write_text  # noqa: E402
from tie_tracing.evaluation import (  # noqa: E402
    Method,
    UnlearningSplit,
    default_sweep,
    evaluate_unlearning,
    reference_methods,
    sampled_leaks,
    unlearning_splits,
)
from tie_tracing.zoo import corpus  # noqa: E402

TOKEN_GATE = dict(
    layer=0, module="resid", alpha=2.0, lam=0.1, q=None, edit_steps=None, subject_gate=True,
    gate_kind="tokens", ridge_blocks="subject", apply_at="answer", key_at="answer",
)  # fmt: skip
PAPER = dict(
    module="resid", alpha=1.0, lam=0.01, q=None, edit_steps=None, subject_gate=False,
    ridge_blocks="memory", apply_at="all", key_at="subject", mode="ridge",
)  # fmt: skip
NPO = dict(batch_size=8, converged=True, eval_every=2, max_retain_drift=1.0, grad_clip=1.0)
EPOCHS = {"forget01": 10.0}
DEFAULT_EPOCHS = 5.0
GENERALISATION = ("forget", "surface", "template", "indirect", "infill")
COLLATERAL = ("retain", "world", "neighbour", "mention")


# ---------------------------------------------------------------------------------------
# base recall per family and form
# ---------------------------------------------------------------------------------------


def recall_population(people: int | None) -> dict[str, UnlearningSplit]:
    """Probes of every trained person (or the first ``people`` of each family's people), one
    split per family, with forms as in ``unlearning_splits``; the canonical splits beside."""
    data = corpus.load_corpus("tiny")
    trained = {f["person"] for f in data["facts"] if f["person"] is not None} - {
        f["person"] for f in data["facts"] if f["id"] in set(data["splits"]["holdout"])
    }
    keep = sorted(trained)[:people] if people else sorted(trained)
    keep_set = set(keep)
    out: dict[str, UnlearningSplit] = {}
    form_of = {
        "surface": lambda r: r["form"],
        "indirect": lambda r: r["form"],
        "template": lambda r: "question" if r["kind"].startswith("T") else "wrapper",
    }
    for family in corpus.PROBE_FAMILIES:
        records = corpus.probe_records("tiny", "train", family)
        facts = corpus.load_probes("tiny", "train", family)
        pairs = [
            (r, f)
            for r, f in zip(records, facts)
            if (r.get("mentions") if family == "mention" else r["person"]) in keep_set
            or (family != "mention" and r["person"] is None)
        ]
        if not pairs:
            continue
        form = form_of.get(family)
        out[family] = UnlearningSplit(
            family,
            tuple(f for _, f in pairs),
            "forget",
            "object" if family == "infill" else "answer",
            tuple(str(r["person"]) for r, _ in pairs),
            None if form is None else tuple(form(r) for r, _ in pairs),
        )
    return out


def base_recall_table(model, population: dict[str, UnlearningSplit], seed: int) -> dict[str, Any]:
    """``family`` / ``family/form`` → {recall, n} under the default sampler."""
    default = default_sweep()[0]
    table: dict[str, Any] = {}
    for name, split in population.items():
        leaks = sampled_leaks(
            model, split.facts, mask=split.mask, sampler=default.sampler, steps=default.steps,
            seed=seed,
        )  # fmt: skip
        table[name] = {"recall": float(leaks.mean()), "n": len(split.facts)}
        if split.forms is not None:
            for form in dict.fromkeys(split.forms):
                idx = [i for i, f in enumerate(split.forms) if f == form]
                table[f"{name}/{form}"] = {"recall": float(leaks[idx].mean()), "n": len(idx)}
    return table


def canonical_recall(model, seed: int) -> dict[str, Any]:
    """Recall on the canonical splits (trained questions) and on the held-out people."""
    default = default_sweep()[0]
    out = {}
    for split in ("forget10", "retain_eval", "world", "holdout"):
        facts = tt.load_facts("tiny", split)
        leaks = sampled_leaks(
            model, facts, sampler=default.sampler, steps=default.steps, seed=seed
        )  # fmt: skip
        out[split] = {"recall": float(leaks.mean()), "n": len(facts)}
    return out


def recall_markdown(tables: dict[str, dict[str, Any]], gate: float) -> str:
    names = list(tables)
    keys = list(dict.fromkeys(k for t in tables.values() for k in t))
    lines = [
        "## Base object recall per probe family and form (default sampler)\n",
        f"Share of sampled answers that write the object. A family or form enters the suite's "
        f"tables only where the unedited model reaches {gate}.\n",
        "| family / form | " + " | ".join(f"{n} (n)" for n in names) + " | ≥ gate |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    first = names[0]
    for k in keys:
        cells = []
        for n in names:
            v = tables[n].get(k)
            cells.append("—" if v is None else f"{v['recall']:.2f} ({v['n']})")
        ok = tables[first].get(k)
        passed = "—" if ok is None else ("yes" if ok["recall"] >= gate else "**no**")
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {passed} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------


def build_methods(model, retain, forget, sets, args) -> tuple[list[Method], dict[str, Any]]:
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    token = tt.EditMemory.build(model, forget, **TOKEN_GATE)
    info["token_gate"] = {
        "config": token.config.to_dict(),
        "build_seconds": time.perf_counter() - t0,
    }
    layer = args.paper_layer if args.paper_layer is not None else model.num_layers // 2
    t0 = time.perf_counter()
    paper = tt.EditMemory.build(model, forget, layer=layer, **PAPER)
    info["paper_memory"] = {
        "config": paper.config.to_dict(),
        "build_seconds": time.perf_counter() - t0,
    }
    point = json.loads(Path(args.slots_point).read_text())["chosen"]
    if point is None:
        raise SystemExit(f"{args.slots_point} chose no operating point (no admissible grid point)")
    t0 = time.perf_counter()
    slots = tt.EditMemory.build(
        model, SLOTS.forget_rows(args.forget_name) if not args.quick else forget,
        SLOTS.slots_config(point["layer"], point["margin"], point["alpha"]),
        targets="unknown", unknown_names=corpus.holdout_names()[:8],
        calibration=SLOTS.calibration_prompts(),
    )  # fmt: skip
    info["slots_gate"] = {
        "config": slots.config.to_dict(),
        "operating_point": {k: point[k] for k in ("layer", "margin", "alpha")},
        "read_from": str(args.slots_point),
        "build_seconds": time.perf_counter() - t0,
        "timings": slots.timings,
        "n_rows": len(slots),
        "n_keys": len(slots.slot_gate.key_ids) if slots.slot_gate is not None else 0,
    }
    control = tt.editing.random_directions(token, seed=args.seed)
    methods = reference_methods(forget, reference=retain, random_directions=control, seed=args.seed)
    methods.append(
        Method.memory(
            "token_gate", token,
            "token-gated memory, explicit build: layer 0, α 2, λ 0.1, tokens gate, per-subject "
            "ridge, update and keys at the answer slots (the old world's shipped point)",
        )
    )  # fmt: skip
    methods.append(
        Method.memory(
            "slots_gate", slots,
            f"answer-slot gate, never-met update: layer {point['layer']}, margin "
            f"{point['margin']:+g}, α {point['alpha']:g}, steer (chosen on the validation people "
            "by experiments/edit_tune_slots.py)",
        )
    )  # fmt: skip
    methods.append(
        Method.memory(
            "slots_random_directions", tt.editing.random_directions(slots, seed=args.seed),
            "slots_gate with random update directions of equal norm (seed 0)",
        )
    )  # fmt: skip
    methods.append(
        Method.memory(
            "paper_memory", paper,
            f"the paper's memory (Eq. 11–12, ungated, every position, subject keys) at layer "
            f"{layer}, α 1, λ 0.01 (package defaults, not tuned)",
        )
    )  # fmt: skip
    epochs = EPOCHS.get(args.forget_name, DEFAULT_EPOCHS)
    steps = 2 if args.quick else max(1, math.ceil(epochs * len(forget) / NPO["batch_size"]))
    attempts = []
    npo = log = lr = None
    for lr in sorted(args.npo_lr, reverse=True):
        t0 = time.perf_counter()
        npo, log = tt.unlearn(
            model, forget, sets["retain_pool"], method="npo", lr=lr, steps=steps,
            monitor=sets["retain_tune"], seed=args.seed, progress=False,
            **{**NPO, "eval_every": 1 if args.quick else NPO["eval_every"]},
        )  # fmt: skip
        attempts.append({
            "lr": lr, "steps": steps, "returned_step": log.returned_step,
            "stopped_early": log.stopped_early, "train_seconds": log.train_seconds,
            "seconds": time.perf_counter() - t0, "forget_lp": list(log.forget_lp),
            "retain_lp": list(log.retain_lp), "eval_steps": list(log.eval_steps),
        })  # fmt: skip
        if log.returned_step > 0:  # the protocol kept some training: the strongest such rate
            break
    assert npo is not None and log is not None and lr is not None
    halted = log.returned_step == 0
    info["npo"] = {
        "chosen_lr": lr,
        "halted": halted,
        "rule": "the largest of --npo-lr whose converged run returns a step > 0 (a run whose "
        "first evaluation already drifts past 1 nat returns the base model)",
        "epochs": epochs,
        "protocol": "converged (retain anchor, clip 1.0, stop at 1 nat RetainLP drift, "
        "evaluated every 2 steps)",
        "attempts": attempts,
    }
    methods.append(
        Method.other_model(
            "npo", npo,
            f"NPO (tt.unlearn), converged protocol, lr {lr:g}, {steps} steps "
            + (
                "(halted at its first evaluation at every rate tried: the base model)"
                if halted
                else f"(returned step {log.returned_step})"
            ),
        )
    )  # fmt: skip
    return methods, info


# ---------------------------------------------------------------------------------------
# the headline statements
# ---------------------------------------------------------------------------------------


def headline(report) -> str:
    """The claims each row supports, as differences from the reference rows (generated)."""
    lines = ["## At a glance (default sampler; leak on forget-side splits, recall on collateral)\n"]
    splits = list(report.fact_ids)
    lines.append("| method | " + " | ".join(splits) + " | utility | FQ | depth |")
    lines.append("|---|" + "---|" * (len(splits) + 3))
    for m in report.methods:
        cells = [f"{report[m][s]['leak'].value:.2f}" for s in splits]
        summ = report.summary[m]
        extra = [
            f"{summ[k].value:.3f}" if k in summ else "—"
            for k in ("model_utility", "forget_quality", "depth")
        ]
        lines.append(f"| {m} | " + " | ".join(cells + extra) + " |")
    refs = {"string_match_random", "string_match_route", "retain_model"}
    lines.append("")
    for m in report.methods:
        if m in refs | {"no_edit", "random_directions", "slots_random_directions"}:
            continue
        gen = [s for s in splits if s in GENERALISATION]
        col = [s for s in splits if s in COLLATERAL]
        better, worse = [], []
        for s in gen:
            mine = report[m][s]["leak"].value
            best_filter = min(report[r][s]["leak"].value for r in refs - {"retain_model"})
            (better if mine < best_filter else worse).append(f"{s} {mine:.2f} vs {best_filter:.2f}")
        drops = [
            f"{s} {report['no_edit'][s]['leak'].value - report[m][s]['leak'].value:+.2f}"
            for s in col
        ]
        lines.append(
            f"* **{m}** — forget-side leak strictly below both string filters on: "
            f"{', '.join(better) or 'no split'}; not below on: {', '.join(worse) or 'none'}. "
            f"Recall drop against no edit on collateral: {', '.join(drops) or '—'}."
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def run_forget(model, retain, sets, forget_name: str, recall: dict[str, Any], args) -> dict:
    args.forget_name = forget_name
    forget = tt.load_facts("tiny", forget_name)
    splits = unlearning_splits(forget_name)
    if args.quick:
        splits = {k: s.subset(range(min(4, len(s.facts)))) for k, s in splits.items()}
        forget = list(splits["forget"].facts)
    t0 = time.perf_counter()
    methods, info = build_methods(model, retain, forget, sets, args)
    build_seconds = time.perf_counter() - t0
    base = {k: v["recall"] for k, v in recall.items() if k.split("/")[0] in splits}
    base = {k: v for k, v in base.items() if k.split("/")[0] not in ("forget", "retain", "world")}
    sweep = default_sweep()[:2] if args.quick else default_sweep()
    suffix = "" if forget_name == "forget01" else f"_{forget_name}"
    out = Path(args.out)
    try:
        report = evaluate_unlearning(
            model, methods, splits, reference=retain, sweep=sweep, base_recall=base,
            recall_gate=args.recall_gate, depth=not args.quick,
            n_resamples=200 if args.quick else 2000, seed=args.seed, progress=True,
        )  # fmt: skip
    except ValueError as error:  # nothing passes the recall gate: say so, with the recalls
        if "recall gate" not in str(error):
            raise
        atomic_write_text(
            out / f"unlearning_suite{suffix}.md",
            f"# Unlearning suite — {forget_name}\n\nNo table: {error}\n\nSee "
            "`unlearning_suite_recall.md` for the base recall per family and form.\n",
        )
        print(f"no table for {forget_name}: {error}", flush=True)
        return {}
    report.save(out / f"unlearning_suite{suffix}.safetensors")
    payload = {
        "report": report.to_dict(),
        "methods_built": info,
        "build_seconds": build_seconds,
        "base_recall_given": base,
        "command": " ".join(sys.argv),
        "model_dir": str(args.model),
        "retain_dir": str(args.retain),
    }
    atomic_write_text(out / f"unlearning_suite{suffix}.json", json.dumps(payload, indent=1))
    md = [
        f"# Unlearning suite — {forget_name}\n",
        f"Model `{args.model}`, retain-only model `{args.retain}`; command "
        f"`{' '.join(sys.argv)}`. Generated by `experiments/unlearning_suite.py`.\n",
        headline(report),
        report.to_markdown(),
        "\n## NPO run\n",
        "```json\n" + json.dumps(info["npo"], indent=1) + "\n```\n",
    ]
    atomic_write_text(out / f"unlearning_suite{suffix}.md", "\n".join(md))
    print(f"wrote {out / f'unlearning_suite{suffix}'}.{{json,md,safetensors}}", flush=True)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-mdlm", help="the MDLM (embedded name or directory)")
    ap.add_argument("--retain", default="tiny-mdlm-retain", help="the retain-only MDLM")
    ap.add_argument("--forget", nargs="+", default=["forget01"])
    ap.add_argument("--paper-layer", type=int, default=None)
    ap.add_argument(
        "--slots-point", default=str(C.FIGURES / "edit_tune_slots.json"),
        help="the slots gate's tuning record (experiments/edit_tune_slots.py)",
    )  # fmt: skip
    ap.add_argument("--npo-lr", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    ap.add_argument("--recall-people", type=int, default=None, help="people in the recall table")
    ap.add_argument("--recall-gate", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--out", default=str(C.FIGURES))
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = tt.load_model(args.model)  # every build argument is explicit (nothing is read)
    retain = tt.load_model(args.retain)
    sets = C.fact_sets()
    population = recall_population(3 if args.quick else args.recall_people)
    if args.quick:
        population = {k: s.subset(range(min(6, len(s.facts)))) for k, s in population.items()}
    t0 = time.perf_counter()
    tables = {
        "unedited": {
            **base_recall_table(model, population, args.seed),
            **canonical_recall(model, args.seed),
        },
        "retain-only": {
            **base_recall_table(retain, population, args.seed),
            **canonical_recall(retain, args.seed),
        },
    }
    recall_seconds = time.perf_counter() - t0
    out = Path(args.out)
    atomic_write_text(
        out / "unlearning_suite_recall.json",
        json.dumps({"tables": tables, "seconds": recall_seconds, "model": str(args.model),
                    "retain": str(args.retain), "command": " ".join(sys.argv)}, indent=1),
    )  # fmt: skip
    atomic_write_text(out / "unlearning_suite_recall.md", recall_markdown(tables, args.recall_gate))
    print(recall_markdown(tables, args.recall_gate), flush=True)
    for name in args.forget:
        run_forget(model, retain, sets, name, tables["unedited"], args)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
