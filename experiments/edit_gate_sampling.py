"""What the masked estimator cannot see: does the subject gate stay open along a sampled trajectory? (validation only)

``experiments/edit_tune_gate.py`` scores every configuration with the masked estimator — one
forward of the fully masked query, on which a fact's own gate scores exactly 1 (its subject
key was captured on that very input). Inside the diffusion loop the gate reads the residuals of
a *partly decoded* sequence; in a bidirectional model the subject tokens' residuals move as
answer tokens are committed, so the fact's own score falls below 1 and, when its threshold
``τ_f = (highest score on other subjects' calibration prompts) + margin`` is high, the gate
closes mid-trajectory and the unedited model finishes the answer. A larger margin keeps the
gate shut on retain prompts and closes it earlier on the forgotten ones.

This script measures that trade-off on ``validation`` people only (one memory per person, 20
facts, like forget01; the gate calibrated on ``retain_cal``, utility on
``retain_tune[:100]``, as in the tuning) at the gated point's layer and α (or ``--layers`` /
``--alphas``), for every margin of the tuning grid, under the default sampler (T = 8,
greedy):

* ``forget_em`` / ``retain_em`` — exact match of the sampled answer (validation / retain_tune);
* ``own_gate_open`` — share of the 8 steps of each forgotten fact's *edited* trajectory at which
  its own gate is open (step ``k`` reads the sequence after step ``k − 1``);
* ``never_open`` — facts whose threshold is ≥ 1, so that their gate can never open.

Writes ``figures/edit_gate_sampling.{json,md}``. Reads the gated point from ``--points``
(default ``figures/edit_tune_gate.json``). Nothing here chooses or writes an operating point.
Run: ``python experiments/edit_gate_sampling.py [--layers 5] [--alphas 32]`` (about a minute per
layer and α, one thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402
from edit_tune_gate import MARGINS  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.editing.capture import query_ids  # noqa: E402


def exact_match(result, facts) -> float:
    return sum(a.strip() == f.answer.strip() for a, f in zip(result.answers, facts)) / len(facts)


def own_gate_open(model, memory: tt.EditMemory, facts, result) -> float:
    """Share of (fact, step) pairs of ``result``'s trajectories at which the fact's own gate is open."""
    inputs, rows = [], []
    for i, f in enumerate(facts):
        n = result.prompt_lengths[i] + result.answer_lengths[i]
        steps = [torch.tensor(query_ids(model, f))]
        steps += [result.tokens[i, k, :n] for k in range(result.tokens.shape[1] - 1)]
        inputs += steps
        rows += [i] * len(steps)
    states = tt.editing.capture_states(model, inputs, layer=memory.config.layer)
    tau = memory.gate_thresholds
    opened = [
        float(memory.gate_scores(h[None], x[None])[0, i] > tau[i])
        for h, x, i in zip(states, inputs, rows)
    ]
    return sum(opened) / len(opened)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", nargs="+", type=Path, default=[C.FIGURES / "edit_tune_gate.json"])
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    ap.add_argument("--alphas", type=float, nargs="*", default=None)
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    points = C.read_points(args.points)
    gated = C.require(points, "gated")
    calibration = C.calibration_facts(points, sets)
    groups, retain = C.people(sets["validation"]), sets["retain_tune"][:100]
    base = {
        "forget_em": exact_match(tt.diffuse(model, sets["validation"]), sets["validation"]),
        "retain_em": exact_match(tt.diffuse(model, retain), retain),
    }
    print("no edit:", base, flush=True)
    rows = []
    for layer in args.layers or [gated["layer"]]:
        memories = [C.build(model, g, gated, layer=layer, calibration=calibration) for g in groups]
        for alpha in args.alphas or [gated["alpha"]]:
            for margin in MARGINS:
                t0 = time.perf_counter()
                fe, re, go, never = [], [], [], 0
                for g, m in zip(groups, memories):
                    m = m.with_config(gate_margin=margin, alpha=alpha)
                    never += int((m.gate_thresholds >= 1).sum())
                    with m.install(model):
                        res = tt.diffuse(model, g)
                        fe.append(exact_match(res, g))
                        re.append(exact_match(tt.diffuse(model, retain), retain))
                    go.append(own_gate_open(model, m, g, res))
                row = {
                    "layer": layer, "alpha": alpha, "gate_margin": margin,
                    "forget_em": sum(fe) / len(fe), "retain_em": sum(re) / len(re),
                    "own_gate_open": sum(go) / len(go), "never_open": never,
                    "shipped": layer == gated["layer"] and alpha == gated["alpha"]
                    and margin == gated["gate_margin"],
                }  # fmt: skip
                rows.append(row)
                print(
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    C.write_json(
        C.FIGURES / "edit_gate_sampling.json",
        {
            "model": model.name, "point": gated, "point_files": points["files"], "no_edit": base,
            "rows": rows, "n_people": len(groups), "n_retain": len(retain),
            "seconds": time.perf_counter() - t_start,
            "command": " ".join(["python", "experiments/edit_gate_sampling.py", *sys.argv[1:]]),
        },
    )  # fmt: skip
    lines = [
        "Gated memory on validation people (one 20-fact memory per person, 3 people), default "
        f"sampler (T = 8, greedy); retain = retain_tune[:100]. No edit: forget EM "
        f"{base['forget_em']:.3f}, retain EM {base['retain_em']:.3f}. `own gate open` = share "
        "of the 8 steps of each forgotten fact's edited trajectory at which its own gate is "
        "open; `never open` = facts with τ ≥ 1. ★ = the shipped point.",
        "",
        "| layer | α | margin | forget EM | retain EM | own gate open | never open |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['alpha']:g} | {r['gate_margin']:g}{' ★' if r['shipped'] else ''} | "
            f"{r['forget_em']:.3f} | {r['retain_em']:.3f} | {r['own_gate_open']:.2f} | {r['never_open']} |"
        )
    C.write_text(C.FIGURES / "edit_gate_sampling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
