"""Streaming (SPEC §10.5): 50 facts inserted one at a time into an installed memory.

The memory starts with the first of 50 forget05 facts, is installed once, and grows by
``handle.insert(fact)`` on the installed memory (each insert captures on the frozen model with the edit suspended,
then refactorises ``G``; the installed edit sees the new state at once). After every insert:
RetainLP on ``retain_eval`` (200), WorldFact (50), ForgetLP of the facts inserted so far,
and the insert time. Masked estimator, refusal targets, at an explicit operating point
(``--points`` / ``--point``, default ``gated_tokens``, the token-gated memory; with
``--point gated`` each insert calibrates only the new fact's cosine-gate threshold, on the
stored calibration prompts).

Writes ``figures/edit_streaming[_<point>].{json,md,html}``.
Run: ``python experiments/edit_streaming.py [--point gated_tokens|gated|paper_tie|paper_grid]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

N_INSERTS = 50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.point_arguments(ap, default="gated_tokens")
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    op, calibration, points = C.chosen_point(args, sets)
    stem = "edit_streaming" if args.point == "gated_tokens" else f"edit_streaming_{args.point}"
    stream = sets["forget05"][:N_INSERTS]
    retain, world = sets["retain_eval"], sets["world"]
    base_r, base_w, base_f = (
        C.logprobs(model, retain),
        C.logprobs(model, world),
        C.logprobs(model, stream),
    )
    memory = C.build(model, stream[:1], op, calibration=calibration)
    rows = []
    with memory.install(model) as handle:
        for i in range(N_INSERTS):
            t0 = time.perf_counter()
            if i:
                handle.insert(stream[i])
            insert_s = time.perf_counter() - t0 if i else memory.timings["build"]
            dr = C.logprobs(model, retain) - base_r
            dw = C.logprobs(model, world) - base_w
            df = C.logprobs(model, stream[: i + 1]) - base_f[: i + 1]
            row = {"n": i + 1, "insert_s": insert_s, "d_forget": float(df.mean())}
            for name, d in (("d_retain", dr), ("d_world", dw)):
                row[name], row[name + "_low"], row[name + "_high"] = tt.analysis.mean_ci(
                    d, n_resamples=500
                )
            rows.append(row)
            if (i + 1) % 10 == 0:
                print(
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                    flush=True,
                )
    summary = {
        "max_abs_d_retain": max(abs(r["d_retain"]) for r in rows),
        "max_abs_d_retain_after_10": max(abs(r["d_retain"]) for r in rows[9:]),
        "max_abs_d_world": max(abs(r["d_world"]) for r in rows),
        "final_d_forget": rows[-1]["d_forget"],
        "median_insert_s": sorted(r["insert_s"] for r in rows[1:])[len(rows[1:]) // 2],
    }
    C.write_json(
        C.FIGURES / f"{stem}.json",
        {
            "operating_point": op,
            "point_files": points["files"],
            "rows": rows,
            "summary": summary,
            "seconds": time.perf_counter() - t_start,
        },
    )
    md = (
        f"Streaming: {N_INSERTS} forget05 facts inserted one at a time into an installed memory "
        f"(point {op['name']!r}: {C.point_label(op)}; q capped at N).\n\n"
        "| after inserts | ΔRetainLP [95% CI] | ΔWorldFact | ΔForgetLP (inserted facts) | insert s |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r['n']} | {r['d_retain']:+.3f} [{r['d_retain_low']:+.3f}, {r['d_retain_high']:+.3f}] | "
            f"{r['d_world']:+.3f} | {r['d_forget']:+.2f} | {r['insert_s']:.3f} |"
            for r in rows if r["n"] in (1, 2, 5, 10, 20, 30, 40, 50)
        )
        + f"\n\nmax |ΔRetainLP| over all 50 inserts: {summary['max_abs_d_retain']:.3f} nats "
        f"(after the 10th: {summary['max_abs_d_retain_after_10']:.3f}); max |ΔWorldFact| "
        f"{summary['max_abs_d_world']:.3f}; median insert {summary['median_insert_s'] * 1e3:.0f} ms.\n"
    )  # fmt: skip
    C.write_text(C.FIGURES / f"{stem}.md", md)
    print(md)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("utility after each insert", "forgetting of inserted facts")
    )
    ns = [r["n"] for r in rows]
    for key, label in (("d_retain", "ΔRetainLP"), ("d_world", "ΔWorldFact")):
        fig.add_scatter(x=ns, y=[r[key] for r in rows], name=label, row=1, col=1,
                        error_y=dict(type="data", symmetric=False, array=[r[key + "_high"] - r[key] for r in rows],
                                     arrayminus=[r[key] - r[key + "_low"] for r in rows]))  # fmt: skip
    fig.add_scatter(x=ns, y=[r["d_forget"] for r in rows], name="ΔForgetLP", row=1, col=2)
    fig.add_hrect(y0=-1, y1=1, fillcolor="green", opacity=0.08, line_width=0, row=1, col=1)
    fig.update_xaxes(title_text="facts inserted")
    fig.update_yaxes(title_text="Δ nats per fact")
    fig.update_layout(title="Streaming inserts into an installed edit memory")
    C.save_plot(fig, stem)
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
