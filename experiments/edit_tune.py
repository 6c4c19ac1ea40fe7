"""Tune the utility-safe operating point ``(layer, α, λ, q)`` of the edit memory on ``validation``.

Never touches forget01 or any reported fact: the memory holds the 100 ``validation`` facts
(forget10 people outside forget05), utility is measured on ``retain_tune[:100]`` (100 retain facts
disjoint from the reported ``retain_eval`` and from ``neighbour``).

Memories are built per validation person (5 memories of 20 facts, like forget01's one
person), and effects averaged over the 5.

1. TIE coordinate selection (``tt.trace_tie`` on 8 validation facts, ``resid`` only,
   ``tt.select_coordinate(modules="resid")``) proposes the layer, as the paper does.
2. A grid over every layer × α × λ × q (keys captured once per layer, ``with_config`` for
   the rest) measures ΔForgetLP (validation) and ΔRetainLP (retain_tune), masked estimator.
3. Rule: at the TIE layer (else the best layer), among configurations with ΔForgetLP ≤ −5,
   |ΔRetainLP| ≤ 0.5 (half the 1-nat budget, a margin for the transfer to other fact sets)
   and |ΔF|/|ΔR| ≥ 10, take the strongest forgetting; if none, relax |ΔRetainLP| to 1.
4. The winner is written into ``tie_tracing/zoo/models/<model>/tie_tracing.json`` under
   ``"operating_point"`` (other keys preserved, atomic write); the grid goes to
   ``figures/edit_tune.json`` and a layer × α landscape to ``figures/edit_tune.html``.

Run: ``python experiments/edit_tune.py`` (about 2-4 CPU-minutes on one thread).
"""

from __future__ import annotations

import datetime
import itertools
import json
import sys
import time
from pathlib import Path

import plotly.graph_objects as go

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

ALPHAS = (1.0, 2.0, 4.0, 8.0)
LAMS = (0.1, 1.0)
QS = (1, 4, None)
FORGET_GOAL, RETAIN_BUDGET, RATIO_GOAL = -5.0, 1.0, 10.0


def main() -> None:
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    val, retain = sets["validation"], sets["retain_tune"][:100]

    # 1. TIE coordinate selection on 8 validation facts (2 per person, 4 people)
    trace_facts = [f for i, f in enumerate(val) if i % 20 in (0, 7)][:8]
    t0 = time.perf_counter()
    tie = tt.trace_tie(model, trace_facts, modules=("resid",), progress=False)
    coord = tt.select_coordinate(tie, modules="resid")
    trace_s = time.perf_counter() - t0
    print(
        f"TIE selection on {len(trace_facts)} validation facts: {coord} ({trace_s:.1f} s)",
        flush=True,
    )

    # one memory per validation person (20 facts each, like forget01), effects averaged
    people: dict[str, list] = {}
    for f in val:
        people.setdefault(f.id.split("-")[0], []).append(f)
    groups = list(people.values())
    base_f = [C.logprobs(model, g) for g in groups]
    base_r = C.logprobs(model, retain)
    rows = []
    for layer in range(model.num_layers):
        memories = [tt.EditMemory.build(model, g, layer=layer, alpha=1.0, lam=0.1) for g in groups]
        for alpha, lam, q in itertools.product(ALPHAS, LAMS, QS):
            dfs, drs = [], []
            for g, memory, bf in zip(groups, memories, base_f):
                with memory.with_config(alpha=alpha, lam=lam, q=q).install(model):
                    dfs.append(float((C.logprobs(model, g) - bf).mean()))
                    drs.append(float((C.logprobs(model, retain) - base_r).mean()))
            df, dr = sum(dfs) / len(dfs), sum(drs) / len(drs)
            rows.append(
                dict(
                    layer=layer,
                    alpha=alpha,
                    lam=lam,
                    q=q,
                    d_forget=df,
                    d_retain=dr,
                    ratio=abs(df) / max(abs(dr), 1e-9),
                )
            )
        print(
            f"layer {layer}: best ΔF {min(r['d_forget'] for r in rows if r['layer'] == layer):.2f}",
            flush=True,
        )

    def feasible(r, budget):
        return (
            r["d_forget"] <= FORGET_GOAL
            and abs(r["d_retain"]) <= budget
            and r["ratio"] >= RATIO_GOAL
        )

    chosen, rule = None, None
    for budget in (RETAIN_BUDGET / 2, RETAIN_BUDGET):
        for layers, where in (([coord.layer], "TIE layer"), (range(model.num_layers), "any layer")):
            ok = [r for r in rows if r["layer"] in layers and feasible(r, budget)]
            if ok:
                chosen = min(ok, key=lambda r: r["d_forget"])
                rule = (
                    f"{where}; strongest ΔForgetLP among ΔForgetLP ≤ {FORGET_GOAL}, "
                    f"|ΔRetainLP| ≤ {budget}, ratio ≥ {RATIO_GOAL}"
                )
                break
        if chosen:
            break
    if chosen is None:
        strong = [r for r in rows if r["d_forget"] <= FORGET_GOAL]
        within = [r for r in rows if abs(r["d_retain"]) <= RETAIN_BUDGET]
        if within:  # utility first: the operating point must be utility-safe
            chosen, rule = (
                min(within, key=lambda r: r["d_forget"]),
                f"goals not met; strongest ΔForgetLP with |ΔRetainLP| ≤ {RETAIN_BUDGET} (any layer)",
            )
        elif strong:
            chosen, rule = (
                max(strong, key=lambda r: r["ratio"]),
                f"goals not met; best ratio among ΔForgetLP ≤ {FORGET_GOAL}",
            )
        else:
            chosen, rule = max(rows, key=lambda r: r["ratio"]), "goals not met; best ratio"
    print("chosen:", chosen, rule, flush=True)

    op = {
        "layer": chosen["layer"], "module": "resid", "alpha": chosen["alpha"], "lam": chosen["lam"],
        "q": chosen["q"], "steps": None,
        "tuned_on": {"forget": "validation: 5 memories of one person (20 facts) each, effects averaged", "retain": "100 retain facts disjoint from "
                     "retain_eval and neighbour (experiments/edit_common.py: retain_tune)"},
        "measured": {"d_forget_lp": chosen["d_forget"], "d_retain_lp": chosen["d_retain"],
                     "ratio": chosen["ratio"], "estimator": "masked"},
        "rule": rule,
        "tie_coordinate": coord.to_dict(),
        "command": "python experiments/edit_tune.py",
        "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    model_dir = Path(C.MODEL) if Path(C.MODEL).is_dir() else tt.model.ZOO_DIR / C.MODEL
    info_path = model_dir / "tie_tracing.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["operating_point"] = op
    C.write_text(info_path, json.dumps(info, indent=1) + "\n")

    C.write_json(C.FIGURES / "edit_tune.json", {
        "operating_point": op, "grid": rows, "tie_scores_resid": coord.scores[..., 0].tolist(),
        "seconds": time.perf_counter() - t_start, "trace_seconds": trace_s,
    })  # fmt: skip
    # landscape: best ΔF per (layer, α) among configs within the retain budget
    z, text = [], []
    for layer in range(model.num_layers):
        zr, tr = [], []
        for a in ALPHAS:
            ok = [
                r
                for r in rows
                if r["layer"] == layer and r["alpha"] == a and abs(r["d_retain"]) <= RETAIN_BUDGET
            ]
            best = min(ok, key=lambda r: r["d_forget"]) if ok else None
            zr.append(best["d_forget"] if best else None)
            tr.append(
                f"λ={best['lam']}, q={best['q']}, ΔR={best['d_retain']:.2f}"
                if best
                else "none within budget"
            )
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(z=z, x=[str(a) for a in ALPHAS], y=list(range(model.num_layers)),
                               text=text, hovertemplate="layer %{y}, α %{x}<br>ΔForgetLP %{z:.2f}<br>%{text}<extra></extra>",
                               colorscale="RdBu", zmid=0))  # fmt: skip
    fig.update_layout(
        title=f"Edit memory tuning on validation: best ΔForgetLP with |ΔRetainLP| ≤ 1 "
        f"(TIE layer {coord.layer}; chosen layer {chosen['layer']}, α={chosen['alpha']})",
        xaxis_title="α",
        yaxis_title="layer",
    )
    C.save_plot(fig, "edit_tune")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
