"""Scaling (SPEC §10.5): memories of N = 10 … 400 facts at an explicit operating point.

The fact pool is forget10 (200 facts, in split order) followed by retain facts disjoint from
the reported ``retain_eval`` and ``neighbour`` sets (``edit_common.retain_pool``). For each N:
build time (capture of keys and deltas + Cholesky solve), install time, and the effect —
ΔForgetLP on the N edited facts, ΔRetainLP on ``retain_eval``, ΔWorldFact — masked
estimator, mean over facts with bootstrap 95% CIs. Build is timed ``--repeats`` times
(median).

The operating point comes from ``--points`` / ``--point`` (default ``gated_tokens``).
Writes ``figures/edit_scaling[_<point>].{json,md,html}``.
Run: ``python experiments/edit_scaling.py [--point gated_tokens|gated|paper_tie|paper_grid] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

NS = (10, 20, 50, 100, 200, 400)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    C.point_arguments(ap, default="gated_tokens")
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    op, calibration, points = C.chosen_point(args, sets)
    stem = "edit_scaling" if args.point == "gated_tokens" else f"edit_scaling_{args.point}"
    pool = sets["forget10"] + sets["retain_pool"]
    retain, world = sets["retain_eval"], sets["world"]
    base_pool, base_r, base_w = (
        C.logprobs(model, pool[: max(NS)]),
        C.logprobs(model, retain),
        C.logprobs(model, world),
    )
    rows = []
    for n in NS:
        facts = pool[:n]
        builds, solves, captures = [], [], []
        for _ in range(args.repeats):
            memory = C.build(model, facts, op, calibration=calibration)
            builds.append(memory.timings["build"])
            captures.append(memory.timings["capture"])
            solves.append(memory.timings["solve"])
        handle = memory.install(model)
        try:
            df = C.logprobs(model, facts) - base_pool[:n]
            dr = C.logprobs(model, retain) - base_r
            dw = C.logprobs(model, world) - base_w
        finally:
            handle.remove()
        row = {"n": n, "build_s": statistics.median(builds), "capture_s": statistics.median(captures),
               "solve_s": statistics.median(solves), "install_s": handle.install_seconds,
               "q_effective": memory.q_effective}  # fmt: skip
        for name, d in (("d_forget", df), ("d_retain", dr), ("d_world", dw)):
            row[name], row[name + "_low"], row[name + "_high"] = tt.analysis.mean_ci(d)
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    C.write_json(
        C.FIGURES / f"{stem}.json",
        {
            "operating_point": op,
            "point_files": points["files"],
            "rows": rows,
            "seconds": time.perf_counter() - t_start,
        },
    )
    lines = [
        "| N | build s (capture + solve) | solve ms | install ms | ΔForgetLP | ΔRetainLP | ΔWorldFact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['build_s']:.2f} ({r['capture_s']:.2f} + {r['solve_s'] * 1e3:.1f} ms) | "
            f"{r['solve_s'] * 1e3:.2f} | {r['install_s'] * 1e3:.2f} | "
            + " | ".join(
                f"{r[k]:+.2f} [{r[k + '_low']:+.2f}, {r[k + '_high']:+.2f}]"
                for k in ("d_forget", "d_retain", "d_world")
            )
            + " |"
        )
    md = (f"Scaling at the operating point {op['name']!r} ({C.point_label(op)}); "
          "pool = forget10 then retain facts outside retain_eval/neighbour; median of "
          f"{args.repeats} builds; 1 CPU thread.\n\n" + "\n".join(lines) + "\n")  # fmt: skip
    C.write_text(C.FIGURES / f"{stem}.md", md)
    print(md)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("build time (s)", "effect (nats per fact)"))
    ns = [r["n"] for r in rows]
    fig.add_scatter(
        x=ns, y=[r["build_s"] for r in rows], name="build (capture + solve)", row=1, col=1
    )
    fig.add_scatter(x=ns, y=[rows[0]["build_s"] * n / ns[0] for n in ns],
                    name="linear in N", line=dict(dash="dot"), row=1, col=1)  # fmt: skip
    for key, label in (
        ("d_forget", "ΔForgetLP"),
        ("d_retain", "ΔRetainLP"),
        ("d_world", "ΔWorldFact"),
    ):
        fig.add_scatter(x=ns, y=[r[key] for r in rows], name=label, row=1, col=2,
                        error_y=dict(type="data", symmetric=False, array=[r[key + "_high"] - r[key] for r in rows],
                                     arrayminus=[r[key] - r[key + "_low"] for r in rows]))  # fmt: skip
    fig.update_xaxes(type="log", title_text="N facts")
    fig.update_layout(title="Edit memory scaling")
    C.save_plot(fig, stem)
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
