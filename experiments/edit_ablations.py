"""Ablations (SPEC §10.5) of the edit memory on forget01, around an explicit operating point.

The operating point is read from ``--points`` (the tuning scripts' outputs) and chosen with
``--point`` (default ``paper_tie``); the model's shipped point is never used. One axis at a
time, everything else at that point:

* **site** — ``resid`` / ``attn`` / ``mlp`` at the operating layer;
* **step set** — all steps vs early-only ``{0, 1, 2}`` vs late-only ``{5, 6, 7}`` (of T = 8).
  A step set only matters inside the diffusion loop (a stand-alone forward, as used by the
  masked likelihood, always fires), so this axis is measured on sampled trajectories:
  ``LP(k)`` of the original answer along the edited trajectory (``tt.diffuse``'s
  ``target_logprobs``, mean over the 8 steps) and exact match of the sampled answer;
* **q** — ``top_q`` sparsity 1 … N;
* **λ** — ridge strength;
* **α** — the strength sweep (the forget/utility Pareto curve);
* **rule** — ridge memory vs stacked single-fact gated edits (Eq. 10, κ = 1) vs act_steer;
* **gate** — the gated memory's three parts switched on and off one at a time (subject gate ×
  update at all positions / answer slots × subject / answer-slot keys), at the ``gated`` point.

Masked-estimator ΔForgetLP (forget01) and ΔRetainLP (retain_eval) for every row, bootstrap
95% CIs over facts. Writes ``figures/edit_ablations.{json,md,html}``.
Run: ``python experiments/edit_ablations.py [--point paper_tie|paper_grid|gated] [--points A.json B.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

STEP_SETS = {"all": None, "early {0,1,2}": (0, 1, 2), "late {5,6,7}": (5, 6, 7)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.point_arguments(ap, default="paper_tie")
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    op, calibration, points = C.chosen_point(args, sets)
    forget, retain = sets["forget01"], sets["retain_eval"]
    base_f, base_r = C.logprobs(model, forget), C.logprobs(model, retain)
    memory = C.build(model, forget, op, calibration=calibration)
    n = len(forget)

    def measure(mem, **extra):
        with mem.install(model):
            df = C.logprobs(model, forget) - base_f
            dr = C.logprobs(model, retain) - base_r
        row = dict(extra)
        for name, d in (("d_forget", df), ("d_retain", dr)):
            row[name], row[name + "_low"], row[name + "_high"] = tt.analysis.mean_ci(d)
        return row

    rows: dict[str, list] = {
        "site": [],
        "q": [],
        "lam": [],
        "alpha": [],
        "rule": [],
        "gate": [],
        "steps": [],
    }
    for module in ("resid", "attn", "mlp"):
        mem = (
            memory
            if module == op.get("module", "resid")
            else C.build(model, forget, op, module=module, calibration=calibration)
        )
        rows["site"].append(measure(mem, value=module))
    for q in sorted({1, 2, 4, 8, 16, n}):
        if q <= n:
            rows["q"].append(measure(memory.with_config(q=q, cap_q=False), value=q))
    for lam in (0.001, 0.01, 0.1, 1.0, 10.0):
        rows["lam"].append(measure(memory.with_config(lam=lam), value=lam))
    for alpha in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
        rows["alpha"].append(measure(memory.with_config(alpha=alpha), value=alpha))
    for mode in ("ridge", "gated", "steer"):
        gate = {"subject_gate": False} if mode == "steer" else {}
        rows["rule"].append(measure(memory.with_config(mode=mode, **gate), value=mode))
    # the gated memory's three parts, one at a time, at the gated point (when tuned)
    if "gated" in points["points"]:
        gp = C.require(points, "gated")
        full = C.build(model, forget, gp, calibration=C.calibration_facts(points, sets))
        for gate_on, apply_at, key_at in itertools.product(
            (False, True), ("all", "answer"), ("subject", "answer")
        ):
            variant = full.with_config(subject_gate=gate_on, apply_at=apply_at, key_at=key_at)
            label = f"gate {'on' if gate_on else 'off'}, apply {apply_at}, keys {key_at}"
            rows["gate"].append(measure(variant, value=label))
    print("likelihood ablations done", flush=True)

    # step sets: measured along diffusion trajectories
    ref_f, ref_r = tt.diffuse(model, forget), tt.diffuse(model, retain)
    for label, steps in STEP_SETS.items():
        mem = memory.with_config(edit_steps=steps)
        with mem.install(model) as handle:
            out_f, out_r = tt.diffuse(model, forget), tt.diffuse(model, retain)
        d_traj_f = (out_f.target_logprobs - ref_f.target_logprobs).mean(1)
        d_traj_r = (out_r.target_logprobs - ref_r.target_logprobs).mean(1)

        def em(res, facts):
            return [
                float(tt.evaluation.exact_match(a, f.answer)) for a, f in zip(res.answers, facts)
            ]

        row = {"value": label, "fired": dict(handle.fired)}
        for name, d in (("d_traj_forget", d_traj_f), ("d_traj_retain", d_traj_r)):
            row[name], row[name + "_low"], row[name + "_high"] = tt.analysis.mean_ci(d)
        row["em_forget"], row["em_retain"] = (
            sum(em(out_f, forget)) / n,
            sum(em(out_r, retain)) / len(retain),
        )
        rows["steps"].append(row)
    row0 = {"em_forget_no_edit": sum(float(tt.evaluation.exact_match(a, f.answer)) for a, f in zip(ref_f.answers, forget)) / n,
            "em_retain_no_edit": sum(float(tt.evaluation.exact_match(a, f.answer)) for a, f in zip(ref_r.answers, retain)) / len(retain)}  # fmt: skip

    C.write_json(
        C.FIGURES / "edit_ablations.json",
        {
            "operating_point": op,
            "point_files": points["files"],
            "rows": rows,
            "no_edit": row0,
            "seconds": time.perf_counter() - t_start,
        },
    )
    fmt = lambda r, k: f"{r[k]:+.2f} [{r[k + '_low']:+.2f}, {r[k + '_high']:+.2f}]"  # noqa: E731
    lines = [f"Ablations on forget01 ({n} facts) around the operating point {op['name']!r} ({C.point_label(op)}; "
             f"from {', '.join(points['files'])}); masked estimator; Δ vs no_edit, mean [95% CI] over facts.", ""]  # fmt: skip
    for axis in ("site", "rule", "gate", "q", "lam", "alpha"):
        if not rows[axis]:
            continue
        lines += [
            f"**{axis}**",
            "",
            f"| {axis} | ΔForgetLP | ΔRetainLP | ratio |",
            "|---|---|---|---|",
        ]
        for r in rows[axis]:
            ratio = (
                f"{abs(r['d_forget']) / abs(r['d_retain']):.1f}"
                if abs(r["d_retain"]) > 1e-6
                else "∞"
            )
            lines.append(
                f"| {r['value']} | {fmt(r, 'd_forget')} | {fmt(r, 'd_retain')} | {ratio} |"
            )
        lines.append("")
    lines += ["**step set** (along sampled trajectories: Δ mean_k LP(k) of the original answer; EM of samples; "
              f"no_edit EM forget {row0['em_forget_no_edit']:.2f}, retain {row0['em_retain_no_edit']:.2f})", "",
              "| steps | Δ trajectory LP forget | Δ trajectory LP retain | EM forget | EM retain |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows["steps"]:
        lines.append(f"| {r['value']} | {fmt(r, 'd_traj_forget')} | {fmt(r, 'd_traj_retain')} | "
                     f"{r['em_forget']:.2f} | {r['em_retain']:.2f} |")  # fmt: skip
    md = "\n".join(lines) + "\n"
    C.write_text(C.FIGURES / "edit_ablations.md", md)
    print(md)

    fig = make_subplots(rows=1, cols=2, subplot_titles=("α sweep: forget vs utility", "q sweep"))
    a = rows["alpha"]
    fig.add_scatter(x=[r["d_retain"] for r in a], y=[r["d_forget"] for r in a], mode="lines+markers+text",
                    text=[f"α={r['value']}" for r in a], textposition="top center", name="α sweep", row=1, col=1)  # fmt: skip
    qs = rows["q"]
    fig.add_scatter(
        x=[r["value"] for r in qs],
        y=[r["d_forget"] for r in qs],
        name="ΔForgetLP (q)",
        row=1,
        col=2,
    )
    fig.add_scatter(
        x=[r["value"] for r in qs],
        y=[r["d_retain"] for r in qs],
        name="ΔRetainLP (q)",
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="ΔRetainLP (nats)", row=1, col=1)
    fig.update_yaxes(title_text="ΔForgetLP (nats)", row=1, col=1)
    fig.update_xaxes(title_text="q", type="log", row=1, col=2)
    fig.update_layout(title="Edit-memory ablations on forget01")
    C.save_plot(fig, "edit_ablations")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
