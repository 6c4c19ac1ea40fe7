"""Tune the paper's edit memory (Eq. 11–12, ungated) on ``validation`` and pick the installation layers.

Never touches a reported fact: memories hold ``validation`` facts (one memory per validation
person, 20 facts each, like forget01; effects averaged over people), utility is measured on
``retain_tune[:100]`` (disjoint from ``retain_eval``, ``neighbour`` and the gate's
calibration prompts; see ``edit_common``).

1. **Layers.** TIE tracing (``tt.trace_tie`` on 8 validation facts, ``resid``) and Eq. 5
   (``tt.select_coordinate``) give the *TIE-selected* layer; ``tiny-ar``'s positional trace
   on the same facts gives the *AR-positional* layer; ``tt.analysis.pick_layers`` draws the *random*
   layer among the others (seeded).
2. **Grid** over every layer × α × λ × q (keys captured once per layer and person,
   ``with_config`` for the rest): ΔForgetLP (validation) and ΔRetainLP (retain_tune), masked
   estimator.
3. **Rule**, applied twice — at the TIE-selected layer (``paper_tie``) and over all layers
   (``paper_grid``, the *best layer by grid*, labelled as such wherever it is reported):
   among configurations with |ΔRetainLP| ≤ 0.5, the strongest ΔForgetLP; if none, the
   smallest |ΔRetainLP|.

Writes ``figures/edit_tune.json`` (``points``: ``paper_tie``, ``paper_grid``; ``layers``:
``tie``, ``grid``, ``ar_positional``, ``random``; the grid) and ``figures/edit_tune.html``.
The shipped operating point (``tie_tracing.json``) is **not** touched unless ``--write``
is given, which stores ``paper_grid`` there (``--write tie`` stores ``paper_tie``) through
``tt.editing.write_operating_point``, which also regenerates the card's section. Nothing
reads it unless asked: ``tt.editing.OperatingPoint.shipped(model)``.

Run: ``python experiments/edit_tune.py [--write [grid|tie]]`` (a few CPU-minutes, one thread).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
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
RETAIN_BUDGET = 0.5


def choose(rows: list[dict], layers) -> tuple[dict, str]:
    ok = [r for r in rows if r["layer"] in layers and abs(r["d_retain"]) <= RETAIN_BUDGET]
    if ok:
        return min(ok, key=lambda r: r["d_forget"]), (
            f"strongest ΔForgetLP with |ΔRetainLP| ≤ {RETAIN_BUDGET}"
        )
    cand = [r for r in rows if r["layer"] in layers]
    return min(cand, key=lambda r: abs(r["d_retain"])), (
        f"no configuration within |ΔRetainLP| ≤ {RETAIN_BUDGET}: the smallest |ΔRetainLP|"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", nargs="?", const="grid", choices=("grid", "tie"), default=None,
                    help="also store the chosen point as the model's shipped operating point")  # fmt: skip
    ap.add_argument("--out", type=Path, default=C.FIGURES / "edit_tune.json")
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    val, retain = sets["validation"], sets["retain_tune"][:100]
    groups = C.people(val)

    # 1. layers: TIE selection, AR-positional peak, a random other layer
    trace_facts = [g[i] for g in groups for i in (0, 7, 13)][:8]
    t0 = time.perf_counter()
    # the shipped operating point was tuned on the whole-answer target (the default then)
    tie = tt.trace_tie(model, trace_facts, modules=("resid",), target="answer", progress=False)
    coord = tt.select_coordinate(tie, modules="resid")
    layers = {"tie": int(coord.layer)}
    try:
        ar = tt.load_model("tiny-ar")
        pos = tt.trace_positional(ar, trace_facts, modules=("resid",), progress=False)
        picked = tt.analysis.pick_layers(pos, tie, model.num_layers)
        layers.update(ar_positional=picked["ar_positional"], random=picked["random"])
    except tt.CheckpointNotFoundError:
        import random

        others = [x for x in range(model.num_layers) if x != layers["tie"]]
        layers["random"] = random.Random(0).choice(others)
        print("tiny-ar not built: no AR-positional layer", flush=True)
    trace_s = time.perf_counter() - t0
    print(f"TIE-selected {coord}; layers {layers} ({trace_s:.1f} s)", flush=True)

    # 2. grid
    base_f = [C.logprobs(model, g) for g in groups]
    base_r = C.logprobs(model, retain)
    rows = []
    for layer in range(model.num_layers):
        memories = [
            tt.EditMemory.build(model, g, layer=layer, alpha=1.0, lam=0.1, **C.PAPER_FORM)
            for g in groups
        ]
        for alpha, lam, q in itertools.product(ALPHAS, LAMS, QS):
            dfs, drs = [], []
            for g, memory, bf in zip(groups, memories, base_f):
                q_eff = None if q is None else min(q, len(g))
                with memory.with_config(alpha=alpha, lam=lam, q=q_eff).install(model):
                    dfs.append(float((C.logprobs(model, g) - bf).mean()))
                    drs.append(float((C.logprobs(model, retain) - base_r).mean()))
            rows.append({
                "layer": layer, "alpha": alpha, "lam": lam, "q": q,
                "d_forget": sum(dfs) / len(dfs), "d_retain": sum(drs) / len(drs),
            })  # fmt: skip
        best = min((r for r in rows if r["layer"] == layer), key=lambda r: r["d_forget"])
        print(
            f"layer {layer}: strongest ΔF {best['d_forget']:.2f} (ΔR {best['d_retain']:.2f})",
            flush=True,
        )

    # 3. rule, at the TIE layer and over all layers
    at_tie, rule_tie = choose(rows, [layers["tie"]])
    at_grid, rule_grid = choose(rows, range(model.num_layers))
    layers["grid"] = at_grid["layer"]

    def point(r: dict, rule: str, where: str) -> dict:
        return {
            "layer": r["layer"], "module": "resid", "alpha": r["alpha"], "lam": r["lam"],
            "q": r["q"], "steps": None, **C.PAPER_FORM,
            "selected_by": where, "rule": rule,
            "measured_on_validation": {"d_forget_lp": r["d_forget"], "d_retain_lp": r["d_retain"], "estimator": "masked"},
        }  # fmt: skip

    points = {
        "paper_tie": point(at_tie, rule_tie, f"TIE-selected layer (Eq. 5 on {len(trace_facts)} validation facts)"),
        "paper_grid": point(at_grid, rule_grid, "best layer by grid (all layers, validation)"),
    }  # fmt: skip
    print("points:", points, flush=True)
    fingerprint = tt.editing.model_fingerprint(model)
    out = {
        "model": model.name, "fingerprint": fingerprint, "points": points, "layers": layers,
        "tie_coordinate": coord.to_dict(), "tie_scores_resid": coord.scores[..., 0].tolist(),
        "grid": rows, "seconds": time.perf_counter() - t_start, "trace_seconds": trace_s,
        "command": " ".join(["python", "experiments/edit_tune.py", *sys.argv[1:]]),
    }  # fmt: skip
    C.write_json(args.out, out)
    if args.write:
        chosen = points["paper_grid" if args.write == "grid" else "paper_tie"]
        op = {
            **{k: chosen[k] for k in C.POINT_KEYS if k in chosen}, "fingerprint": fingerprint,
            "tuned_on": {"forget": "validation: one memory per person (20 facts), effects averaged",
                         "retain": "retain_tune[:100] (experiments/edit_common.py)"},
            "measured": chosen["measured_on_validation"], "rule": chosen["rule"],
            "selected_by": chosen["selected_by"],
            "command": f"python experiments/edit_tune.py --write {args.write}",
            "date": datetime.date.today().isoformat(),
        }  # fmt: skip
        print("wrote", C.write_shipped_point(op), flush=True)

    z, text = [], []
    for layer in range(model.num_layers):
        zr, tr = [], []
        for a in ALPHAS:
            ok = [r for r in rows if r["layer"] == layer and r["alpha"] == a
                  and abs(r["d_retain"]) <= RETAIN_BUDGET]  # fmt: skip
            best = min(ok, key=lambda r: r["d_forget"]) if ok else None
            zr.append(best["d_forget"] if best else None)
            tr.append(
                f"λ={best['lam']}, q={best['q']}, ΔR={best['d_retain']:.2f}"
                if best
                else "none within budget"
            )
        z.append(zr)
        text.append(tr)
    fig = go.Figure(go.Heatmap(z=z, x=[str(a) for a in ALPHAS], y=list(range(model.num_layers)), text=text,
                               hovertemplate="layer %{y}, α %{x}<br>ΔForgetLP %{z:.2f}<br>%{text}<extra></extra>",
                               colorscale="RdBu", zmid=0))  # fmt: skip
    fig.update_layout(
        title=f"Paper's memory on validation: best ΔForgetLP with |ΔRetainLP| ≤ {RETAIN_BUDGET} "
        f"(TIE-selected layer {layers['tie']}; best layer by grid {layers['grid']})",
        xaxis_title="α",
        yaxis_title="layer",
    )
    C.save_plot(fig, "edit_tune")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
