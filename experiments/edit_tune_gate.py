"""Tune the gated edit memory (subject gate, update at the answer slots, answer-slot keys) on ``validation``.

Never touches a reported fact. Memories hold one ``validation`` person each (20 facts, like
forget01; effects averaged over the people); the gate is calibrated on ``retain_cal`` (200
retain prompts); utility is measured on ``retain_tune[:100]`` — disjoint from the calibration
prompts, so a threshold that merely memorised its calibration set would show up here — and
neither set meets ``retain_eval`` or ``neighbour`` (see ``edit_common``).

Grid: every layer × gate margin × α × λ × q (keys, values and gate statistics captured once
per layer and person; ``with_config`` for the rest). Per configuration, averaged over people:

* ``d_forget`` — ΔForgetLP of the person's facts (masked estimator);
* ``d_retain`` — ΔRetainLP on ``retain_tune[:100]``;
* ``d_paraphrase`` — ΔLP of the person's facts asked with the paraphrased question (the
  probe's weak spot: does forgetting carry over?);
* ``lookalike_open`` — the share of *surname look-alike* prompts on which some gate opens:
  the person's questions with their first name replaced by other validation people's first
  names (people who do not exist, so no reported fact is used), the probe's other weak spot.

Exact shortcuts keep the grid to a few CPU-minutes: the gate reads the site's output before
its own update, so the unedited site states of every evaluated query are captured once per
layer and gate decisions computed from them; a retain query on which no gate opens is
bit-identical to the unedited model (tested), so only the queries where some gate opens are
re-scored; and forget/paraphrase log-probabilities are reused between margins that open the
same gates on the same queries.

Rule: among configurations with |ΔRetainLP| ≤ 0.25 (half the 0.5-nat goal, a margin for the
transfer to other sets), the strongest ΔForgetLP (ties: the larger margin, then the smaller
α); if none, the smallest |ΔRetainLP|.

Writes ``figures/edit_tune_gate.json`` (``points.gated``, ``calibration`` ids, the grid) and
``figures/edit_tune_gate.html``. ``--write`` also stores the chosen point, with its
calibration ids and the model's fingerprint, as the model's shipped operating point
(``tie_tracing.json`` and the card's section, through ``tt.editing.write_operating_point``);
a user builds it only by asking, ``tt.EditMemory.build(model, facts,
tt.editing.OperatingPoint.shipped(model))``. Under the sampler this cosine gate closes as the
answer is decoded (``experiments/edit_gate_sampling.py``).

Run: ``python experiments/edit_tune_gate.py [--write]`` (a few CPU-minutes, one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.editing.capture import query_ids  # noqa: E402

MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3)
ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
LAMS = (0.1, 1.0)
QS = (1, None)
RETAIN_BUDGET = 0.25


def lookalikes(group: list[tt.Fact], others: list[list[tt.Fact]]) -> list[tt.Fact]:
    """The person's questions with their first name swapped for other people's first names."""
    first, *rest = group[0].subject.split()
    out = []
    for other in others:
        alt = other[0].subject.split()[0]
        if alt == first:
            continue
        name = " ".join([alt, *rest])
        for f in group[:5]:
            out.append(dataclasses.replace(
                f, subject=name, question=f.question.replace(f.subject, name), id=f"{f.id}-as-{alt}"
            ))  # fmt: skip
    return out


def gate_patterns(memory: tt.EditMemory, states, queries) -> torch.Tensor:
    """``[n, N]`` bool: which of ``memory``'s gates open on each query (site states precomputed)."""
    tau = memory.gate_thresholds
    out = []
    for h, x in zip(states, queries):
        out.append(memory.gate_scores(h[None], x[None])[0] > tau)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--write", action="store_true", help="store the chosen point as the shipped operating point"
    )
    ap.add_argument("--apply-at", default="answer", choices=("all", "answer"))
    ap.add_argument("--key-at", default="answer", choices=("subject", "answer"))
    ap.add_argument("--shrinkage", type=float, default=0.1)
    ap.add_argument(
        "--layers", type=int, nargs="*", default=None, help="layers to search (default: all)"
    )
    ap.add_argument("--out", type=Path, default=C.FIGURES / "edit_tune_gate.json")
    args = ap.parse_args()  # fmt: skip
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    groups = C.people(sets["validation"])
    retain, calibration = sets["retain_tune"][:100], sets["retain_cal"]
    paras = [C.paraphrased(g) for g in groups]
    looks = [lookalikes(g, [o for o in groups if o is not g]) for g in groups]
    base_f = [C.logprobs(model, g) for g in groups]
    base_p = [C.logprobs(model, p) for p in paras]
    base_r = C.logprobs(model, retain)
    layers = args.layers if args.layers else list(range(model.num_layers))
    fixed = {"subject_gate": True, "apply_at": args.apply_at, "key_at": args.key_at}
    rows = []
    for layer in layers:
        t0 = time.perf_counter()
        memories = [
            tt.EditMemory.build(model, g, layer=layer, alpha=1.0, lam=0.1, gate_shrinkage=args.shrinkage,
                                calibration=calibration, **fixed)
            for g in groups
        ]  # fmt: skip
        # the site's unedited outputs on every query the grid evaluates: gate decisions read
        # them (the gate sees the site output before its own update), so they are computed once
        evaluated = [f for g in groups for f in g] + [f for p in paras for f in p] + retain
        evaluated += [f for lk in looks for f in lk]
        queries = [torch.tensor(query_ids(model, f)) for f in evaluated]
        states = dict(zip((f.id for f in evaluated), zip(
            tt.editing.capture_states(model, queries, layer=layer), queries)))  # fmt: skip

        def patterns(memory, facts, states=states):
            return gate_patterns(memory, *zip(*(states[f.id] for f in facts)))

        cache: dict[tuple, tuple[float, float]] = {}
        for margin in MARGINS:
            at_margin = [m.with_config(gate_margin=margin) for m in memories]
            looked = [
                float(patterns(m, lk).any(-1).float().mean()) for m, lk in zip(at_margin, looks)
            ]
            pats = [(patterns(m, g), patterns(m, p)) for m, g, p in zip(at_margin, groups, paras)]
            opened = [[f for f, o in zip(retain, patterns(m, retain).any(-1).tolist()) if o]
                      for m in at_margin]  # fmt: skip
            for alpha, lam, q in itertools.product(ALPHAS, LAMS, QS):
                dfs, drs, dps = [], [], []
                for i, (g, p, m) in enumerate(zip(groups, paras, at_margin)):
                    edited = m.with_config(alpha=alpha, lam=lam, q=q)
                    key = (
                        i,
                        alpha,
                        lam,
                        q,
                        pats[i][0].numpy().tobytes(),
                        pats[i][1].numpy().tobytes(),
                    )
                    if key not in cache:  # same gates open on the same inputs: same log-probs
                        with edited.install(model):
                            cache[key] = (float((C.logprobs(model, g) - base_f[i]).mean()),
                                          float((C.logprobs(model, p) - base_p[i]).mean()))  # fmt: skip
                    dfs.append(cache[key][0])
                    dps.append(cache[key][1])
                    # retain rows where no gate opens are bit-identical: only the others can move
                    dr = 0.0
                    if opened[i]:
                        idx = [retain.index(f) for f in opened[i]]
                        with edited.install(model):
                            dr = float((C.logprobs(model, opened[i]) - base_r[idx]).sum()) / len(
                                retain
                            )
                    drs.append(dr)
                rows.append({
                    "layer": layer, "gate_margin": margin, "alpha": alpha, "lam": lam, "q": q,
                    "d_forget": sum(dfs) / len(dfs), "d_retain": sum(drs) / len(drs),
                    "d_paraphrase": sum(dps) / len(dps), "lookalike_open": sum(looked) / len(looked),
                    "retain_gate_open": sum(len(o) for o in opened) / (len(retain) * len(opened)),
                })  # fmt: skip
        here = [r for r in rows if r["layer"] == layer and abs(r["d_retain"]) <= RETAIN_BUDGET]
        best = min(here, key=lambda r: r["d_forget"]) if here else None
        print(f"layer {layer} ({time.perf_counter() - t0:.0f} s): "
              + (f"ΔF {best['d_forget']:.2f} ΔR {best['d_retain']:.3f} ΔP {best['d_paraphrase']:.2f} "
                 f"look-alike open {best['lookalike_open']:.2f}" if best else "nothing within budget"),
              flush=True)  # fmt: skip

    ok = [r for r in rows if abs(r["d_retain"]) <= RETAIN_BUDGET]
    if ok:
        chosen = min(ok, key=lambda r: (r["d_forget"], -r["gate_margin"], r["alpha"]))
        rule = f"strongest ΔForgetLP with |ΔRetainLP| ≤ {RETAIN_BUDGET} (ties: larger margin, smaller α)"
    else:
        chosen = min(rows, key=lambda r: abs(r["d_retain"]))
        rule = f"no configuration within |ΔRetainLP| ≤ {RETAIN_BUDGET}: the smallest |ΔRetainLP|"
    point = {
        "layer": chosen["layer"], "module": "resid", "alpha": chosen["alpha"], "lam": chosen["lam"],
        "q": chosen["q"], "steps": None, "gate_margin": chosen["gate_margin"],
        "gate_shrinkage": args.shrinkage, **fixed, "selected_by": "grid on validation people", "rule": rule,
        "measured_on_validation": {k: chosen[k] for k in ("d_forget", "d_retain", "d_paraphrase", "lookalike_open", "retain_gate_open")},
    }  # fmt: skip
    calib = {"corpus": "tiny", "split": "retain", "ids": [f.id for f in calibration],
             "note": "retain_cal of experiments/edit_common.py: disjoint from retain_eval, neighbour, retain_tune"}  # fmt: skip
    fingerprint = tt.editing.model_fingerprint(model)
    print("chosen:", point, flush=True)
    C.write_json(args.out, {
        "model": model.name, "fingerprint": fingerprint, "points": {"gated": point},
        "calibration": calib, "grid": rows, "seconds": time.perf_counter() - t_start,
        "command": " ".join(["python", "experiments/edit_tune_gate.py", *sys.argv[1:]]),
    })  # fmt: skip
    if args.write:
        op = {
            **{k: point[k] for k in C.POINT_KEYS}, "calibration": calib, "fingerprint": fingerprint,
            "tuned_on": {"forget": "validation: one memory per person (20 facts), effects averaged",
                         "retain": "retain_tune[:100]", "calibration": "retain_cal (200 prompts)"},
            "measured": {**{f"{k}_lp" if k.startswith("d_") else k: v
                            for k, v in point["measured_on_validation"].items()}, "estimator": "masked"},
            "rule": rule,
            "command": "python experiments/edit_tune_gate.py --write",
            "date": datetime.date.today().isoformat(),
        }  # fmt: skip
        print("wrote", C.write_shipped_point(op), flush=True)

    fig = go.Figure()
    for margin in MARGINS:
        pts = [r for r in rows if r["gate_margin"] == margin]
        fig.add_scatter(x=[r["d_retain"] for r in pts], y=[r["d_forget"] for r in pts], mode="markers",
                        name=f"margin {margin}", text=[f"layer {r['layer']}, α={r['alpha']}, λ={r['lam']}, q={r['q']}"
                                                       for r in pts],
                        hovertemplate="%{text}<br>ΔR %{x:.3f}, ΔF %{y:.2f}<extra></extra>")  # fmt: skip
    fig.add_vrect(
        x0=-RETAIN_BUDGET, x1=RETAIN_BUDGET, fillcolor="green", opacity=0.08, line_width=0
    )
    fig.update_layout(title="Gated memory on validation: forgetting vs retain damage per configuration",
                      xaxis_title="ΔRetainLP (nats per fact)", yaxis_title="ΔForgetLP (nats per fact)")  # fmt: skip
    C.save_plot(fig, "edit_tune_gate")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
