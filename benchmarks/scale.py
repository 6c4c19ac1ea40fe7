"""Tracing at scale on the embedded MDLM: horizon, immediate/attribution scans, T = 128 memory.

Everything is measured side by side in one run, one CPU thread (``torch.set_num_threads``;
the machines are shared, so compare ratios within a run, not times across runs):

1. **exact vs naive at T = 8** — ``tt.trace_tie`` against ``tie_tracing.tracing.reference.reference_ie``
   (one full hook-patched trajectory per coordinate), and their largest |ΔIE|.
2. **horizon at T = 32** — ``horizon = 1, 2, 4, 8`` against the exact sweep: relative error of
   Σ|TIE| (over facts and cells), the largest |ΔTIE| of a cell, the stated weight bound, time.
3. **immediate scan at T = 32** — exact ``mode="immediate"`` vs ``mode="attribution"``:
   Spearman correlation over cells (all cells, and the cells of steps that still decide
   something: idle steps are 0 in both exactly), top-k agreement of |IE|, max error, time.
4. **T = 128** — the exact sweep in a child process (clean peak RSS), with the default memory
   budget and with ``--max-memory``.

Times are the best of ``--repeats`` alternating runs. Usage::

    python benchmarks/scale.py [--facts 4] [--repeats 3] [--max-memory 64MB]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import tie_tracing as tt
from tie_tracing.tracing.reference import reference_ie


def quiet_trace(model, facts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tt.trace_tie(model, facts, progress=False, **kw)


def best(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best time of each function over ``repeats`` alternating rounds; and the last outputs."""
    times = {k: float("inf") for k in fns}
    outs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name] = min(times[name], time.perf_counter() - t0)
    return times, outs


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy()).correlation)


def topk_agreement(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    ta = set(a.abs().topk(k).indices.tolist())
    tb = set(b.abs().topk(k).indices.tolist())
    return len(ta & tb) / k


def child_t128(args) -> None:
    """Child process: one exact sweep at T = 128; prints a JSON line with time and peak RSS."""
    torch.set_num_threads(1)
    model = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", split="forget01")[: args.facts]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    r = quiet_trace(model, facts, steps=128, max_memory=args.max_memory or None)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = r.config["engine_stats"]
    print(
        json.dumps(
            dict(
                wall=wall,
                rss_before_mib=base,
                peak_rss_mib=peak,
                rows=stats["rows"],
                forwards=stats["forwards"],
                rows_per_forward=max(stats["rows_per_forward"]),
                divergent=stats["divergent_continuations"],
                sum_abs_tie=float(r.tie.abs().sum()),
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-memory", default="64MB", help="the bounded T = 128 run")
    parser.add_argument("--child-t128", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_t128:
        child_t128(args)
        return
    torch.set_num_threads(1)
    model = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", split="forget01")[: args.facts]
    lengths = [len(model.encode(f.question, f.answer)[1]) for f in facts]
    print(
        f"model=tiny-mdlm layers={model.num_layers} d={model.hidden_size} facts={len(facts)} "
        f"answer tokens={lengths} threads=1 repeats={args.repeats}"
    )

    # 1. exact vs naive at T = 8
    nu = quiet_trace(model, facts, steps=8).config["nu"]
    times, outs = best(
        {
            "engine": lambda: quiet_trace(model, facts, steps=8),
            "naive": lambda: [reference_ie(model, f, steps=8, nu=nu) for f in facts],
        },
        1,
    )
    diff = max(
        float((r["ie"].nan_to_num() - outs["engine"].ie[i].nan_to_num()).abs().max())
        for i, r in enumerate(outs["naive"])
    )
    print(
        f"[T=8] exact {times['engine']:.2f} s, naive {times['naive']:.2f} s: "
        f"speedup_vs_naive={times['naive'] / times['engine']:.1f} max_abs_diff={diff:.1e}"
    )

    # 2. horizon at T = 32
    runs = {"exact": lambda: quiet_trace(model, facts, steps=32)}
    for h in (1, 2, 4, 8):
        runs[f"h={h}"] = lambda h=h: quiet_trace(model, facts, steps=32, horizon=h)
    times, outs = best(runs, args.repeats)
    exact = outs["exact"]
    total = float(exact.tie.abs().sum())
    print(
        f"[T=32 horizon] exact: {times['exact']:.2f} s, Σ|TIE| = {total:.3f}, "
        f"{exact.config['engine_stats']['rows']} rows, "
        f"{exact.config['engine_stats']['divergent_continuations']} divergent nodes"
    )
    for h in (1, 2, 4, 8):
        r = outs[f"h={h}"]
        rel = (float(r.tie.abs().sum()) - total) / total
        cell = float((r.tie - exact.tie).abs().max())
        print(
            f"  h={h}: Σ|TIE| error {rel:+.2%}, max |ΔTIE| {cell:.3f} nats, weight bound "
            f"{r.config['horizon_weight']:.4f}, time {times[f'h={h}']:.2f} s "
            f"({times['exact'] / times[f'h={h}']:.2f}× faster), rows "
            f"{r.config['engine_stats']['rows']}"
        )

    # 3. immediate scan at T = 32
    times, outs = best(
        {
            "immediate": lambda: quiet_trace(model, facts, steps=32, mode="immediate"),
            "attribution": lambda: quiet_trace(model, facts, steps=32, mode="attribution"),
        },
        args.repeats,
    )
    a, b = outs["immediate"].tie.flatten(), outs["attribution"].tie.flatten()
    live = a != 0  # cells of steps that still decide something (idle steps are 0 in both)
    k = 20
    print(
        f"[T=32 immediate] exact {times['immediate']:.3f} s, attribution "
        f"{times['attribution']:.3f} s: speed ratio {times['immediate'] / times['attribution']:.2f}×"
    )
    print(
        f"  Spearman all {a.numel()} cells {spearman(a, b):.3f}; non-idle {int(live.sum())} cells "
        f"{spearman(a[live], b[live]):.3f}; Pearson non-idle "
        f"{float(torch.corrcoef(torch.stack([a[live], b[live]]))[0, 1]):.3f}; top-{k} |IE| "
        f"agreement {topk_agreement(a, b, k):.2f}; max error {float((a - b).abs().max()):.2f} "
        f"nats (max |IE| {float(a.abs().max()):.2f})"
    )
    mean_a, mean_b = outs["immediate"].mean().flatten(), outs["attribution"].mean().flatten()
    print(
        f"  mean over facts [layer, step, module]: Spearman {spearman(mean_a, mean_b):.3f}, "
        f"top-10 agreement {topk_agreement(mean_a, mean_b, 10):.2f}"
    )

    # 4. T = 128, each in a clean child process
    for budget in (None, args.max_memory):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-t128"]
        cmd += ["--facts", str(args.facts)]
        if budget:
            cmd += ["--max-memory", budget]
        else:
            cmd += ["--max-memory", ""]
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res = json.loads(line.strip().splitlines()[-1])
        print(
            f"[T=128 exact, budget {budget or 'default'}] {res['wall']:.1f} s, peak RSS "
            f"{res['peak_rss_mib']:.0f} MiB (process before tracing {res['rss_before_mib']:.0f} "
            f"MiB), {res['rows']} rows in {res['forwards']} forwards, ≤ {res['rows_per_forward']} "
            f"rows per forward, {res['divergent']} divergent nodes, Σ|TIE| {res['sum_abs_tie']:.3f}"
        )


if __name__ == "__main__":
    main()
