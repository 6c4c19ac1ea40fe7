"""Headline table (SPEC §10.4) on forget01: no_edit, random_layer, act_steer, ar_positional, TimeROME.

Every method uses the model's tuned operating point (``experiments/edit_tune.py``, tuned on
``validation`` only) and refusal targets:

* ``no_edit`` — the frozen model;
* ``random_layer`` — the same memory at a seeded random layer (not the TIE/AR layers);
* ``act_steer`` — one fixed direction, the mean of the deltas, added with the same α at every
  position of the chosen layer (``EditMemory(mode="steer")``);
* ``ar_positional`` — the memory at the layer of the AR twin's positional-trace peak (``resid``,
  ``tt.pick_layers``), when ``tiny-ar`` exists;
* ``TimeROME`` — the memory at the operating point (TIE-selected layer, ``resid``, all steps).

Metrics by ``tt.evaluate`` (masked estimator; forget quality against ``tiny-mdlm-retain``):
ForgetLP (forget01), RetainLP (retain_eval, 200), WorldFact (world, 50), Neighbour (265),
exact match of sampled answers, truth-ratio scores; bootstrap 95% CIs over facts and paired
t-tests against ``no_edit`` over the same facts (the estimator is deterministic, so facts,
not seeds, are the unit).

Writes ``figures/edit_headline.{json,md,html}``. Run: ``python experiments/edit_headline.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import plotly.graph_objects as go

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

SPLITS = ("forget", "retain", "world", "neighbour")
METRICS = ("logprob", "exact_match", "tr_forget_score", "tr_retain_score", "forget_quality")


def main() -> None:
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    op = C.operating_point(model)
    sets = C.fact_sets()
    forget = sets["forget01"]
    splits = {"forget": forget, "retain": sets["retain_eval"], "world": sets["world"],
              "neighbour": sets["neighbour"]}  # fmt: skip
    try:
        reference = tt.load_model("tiny-mdlm-retain")
    except tt.CheckpointNotFoundError:
        reference = None
        print("tiny-mdlm-retain not built: no forget quality", flush=True)

    # layers of the baselines
    layers = {"tie": op["layer"]}
    try:
        ar = tt.load_model("tiny-ar")
        val = sets["validation"]
        trace_facts = [f for i, f in enumerate(val) if i % 20 in (0, 7)][:8]
        pos = tt.trace_positional(ar, trace_facts, modules=("resid",), progress=False)
        tie = tt.trace_tie(model, trace_facts, modules=("resid",), progress=False)
        picked = tt.pick_layers(pos, tie, model.num_layers)
        layers["ar_positional"], layers["random"] = picked["ar_positional"], picked["random"]
    except tt.CheckpointNotFoundError:
        import random

        layers["random"] = random.Random(0).choice(
            [x for x in range(model.num_layers) if x != op["layer"]]
        )
    print("layers:", layers, flush=True)

    memory = tt.EditMemory.build(model, forget)  # the operating point, refusal targets
    methods = {
        "no_edit": None,
        "random_layer": tt.EditMemory.build(model, forget, layer=layers["random"]),
        "act_steer": memory.with_config(mode="steer"),
        "TimeROME": memory,
    }
    if "ar_positional" in layers:
        methods["ar_positional"] = tt.EditMemory.build(model, forget, layer=layers["ar_positional"])
    evals = {}
    for name, mem in methods.items():
        t0 = time.perf_counter()
        if mem is None:
            evals[name] = tt.evaluate(model, splits, reference=reference, estimator="masked")
        else:
            with mem.install(model):
                evals[name] = tt.evaluate(model, splits, reference=reference, estimator="masked")
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)

    base = evals["no_edit"]
    table = {}
    for name, ev in evals.items():
        rows = {}
        for split in SPLITS:
            for metric in METRICS:
                if metric not in ev[split]:
                    continue
                m = ev[split][metric]
                row = {"value": m.value, "low": m.low, "high": m.high, "n": m.n}
                if name != "no_edit" and m.per_fact is not None:
                    delta = m.per_fact - base[split][metric].per_fact
                    d, lo, hi = tt.mean_ci(delta)
                    test = tt.paired_ttest(m.per_fact, base[split][metric].per_fact)
                    row.update(
                        delta=d, delta_low=lo, delta_high=hi, p=test.pvalue, marker=test.marker
                    )
                rows[f"{split}/{metric}"] = row
        table[name] = rows
    result = {
        "layers": layers, "operating_point": {k: op[k] for k in ("layer", "module", "alpha", "lam", "q")},
        "memory": repr(memory), "build_seconds": memory.timings.get("build"),
        "install_seconds": memory.install_seconds, "table": table,
        "seconds": time.perf_counter() - t_start,
    }  # fmt: skip
    C.write_json(C.FIGURES / "edit_headline.json", result)

    def cell(row, delta=True):
        if row is None:
            return "—"
        s = f"{row['value']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"
        if delta and "delta" in row:
            s += f"; Δ {row['delta']:+.2f}{row['marker']}"
        return s

    cols = [("forget/logprob", "ForgetLP"), ("retain/logprob", "RetainLP"), ("world/logprob", "WorldFact"),
            ("neighbour/logprob", "NeighbourLP"), ("forget/exact_match", "Forget EM"),
            ("retain/exact_match", "Retain EM"), ("forget/tr_forget_score", "Forget-TR"),
            ("retain/tr_retain_score", "Retain-TR"), ("forget/forget_quality", "Forget quality (KS p)")]  # fmt: skip
    lines = ["| method | " + " | ".join(c for _, c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, rows in table.items():
        cells = []
        for key, _ in cols:
            row = rows.get(key)
            if key.endswith("forget_quality") and row is not None:
                cells.append(f"{row['value']:.3g}")
            else:
                cells.append(cell(row))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = (f"Edit memory on forget01 ({len(forget)} facts), tiny-mdlm, masked estimator, layers {layers}, "
          f"operating point {result['operating_point']}. Mean [95% bootstrap CI over facts]; Δ vs no_edit "
          "with paired t-test markers (* p<.05, ** p<.01, *** p<.001).\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    C.write_text(C.FIGURES / "edit_headline.md", md)
    print(md)

    fig = go.Figure()
    for split, label in (
        ("forget", "ΔForgetLP"),
        ("retain", "ΔRetainLP"),
        ("world", "ΔWorldFact"),
        ("neighbour", "ΔNeighbourLP"),
    ):
        names = [n for n in table if n != "no_edit"]
        rows = [table[n][f"{split}/logprob"] for n in names]
        fig.add_bar(name=label, x=names, y=[r["delta"] for r in rows],
                    error_y=dict(type="data", symmetric=False, array=[r["delta_high"] - r["delta"] for r in rows],
                                 arrayminus=[r["delta"] - r["delta_low"] for r in rows]))  # fmt: skip
    fig.update_layout(
        barmode="group",
        title="forget01: change in mean log p(answer|question) vs no_edit (nats, 95% CI)",
        yaxis_title="Δ nats per fact",
    )
    C.save_plot(fig, "edit_headline")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
