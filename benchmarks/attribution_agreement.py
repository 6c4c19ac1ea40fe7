"""Does the attribution scan agree with the exact immediate scan? Spearman, top-20, speed.

For each estimator of ``mode="attribution"`` — plain attribution patching (``ig_steps=1``,
the gradient at the corrupted point) and integrated gradients over the corruption
(``ig_steps = 2, 4``: the gradient averaged at noise scales ``(j − ½)/n``) — it compares the
per-fact cells ``[fact, layer, step, module]`` with ``mode="immediate"`` (the exact ``IE`` at
the patched step) on the same facts and seed:

* ``spearman_all`` over every cell, and ``spearman_live`` over the cells the exact scan does
  not hold at exactly 0 (idle steps and the sites zero by architecture are 0 in both);
* ``top20``: the share of the exact scan's 20 largest ``|IE|`` cells that the estimate also
  puts in its top 20;
* ``speed``: the exact scan's wall time over the estimate's (one thread; the machine is
  shared, so the ratio within a run is what counts).

Models: the embedded ``tiny-mdlm`` at ``T = 32`` on ``--facts`` facts of as many people
(``tt.draw_people`` from the main job's split, object target), and the reduced LLaDA layout of
``benchmarks/gpu_llada_layout.py`` (random weights: the costs are real, the effects mean
little) at ``T = 64`` on two facts with 64-token answers. Goals (issue 23): Spearman ≥ 0.8,
top-20 ≥ 0.6, ≥ 5× faster.

Usage: ``python benchmarks/attribution_agreement.py [--facts 6] [--ig 1 2 4] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
from scipy.stats import spearmanr

import tie_tracing as tt
from tie_tracing import cli

ROOT = Path(__file__).resolve().parents[1]


def timed(model, facts, **kw) -> tuple[tt.TIEResult, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        r = tt.trace_tie(model, facts, progress=False, **kw)
        return r, time.perf_counter() - t0


def topk(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> float:
    ta = set(a.abs().topk(k).indices.tolist())
    return len(ta & set(b.abs().topk(k).indices.tolist())) / k


def compare(name: str, model, facts, steps: int, igs: list[int], **kw) -> list[dict]:
    exact, t_exact = timed(model, facts, steps=steps, mode="immediate", **kw)
    a = exact.tie.flatten()
    live = a != 0
    rows = []
    print(f"[{name}] T={steps}, {len(facts)} facts, exact immediate {t_exact:.2f} s")
    for n in igs:
        est, t = timed(model, facts, steps=steps, mode="attribution", ig_steps=n, **kw)
        b = est.tie.flatten()
        row = {
            "model": name,
            "steps": steps,
            "facts": len(facts),
            "ig_steps": n,
            "spearman_all": float(spearmanr(a, b).correlation),
            "spearman_live": float(spearmanr(a[live], b[live]).correlation),
            "top20": topk(a, b),
            "seconds_exact": t_exact,
            "seconds": t,
            "speed": t_exact / t,
        }
        rows.append(row)
        print(
            f"  ig_steps={n}: Spearman {row['spearman_all']:.3f} (live {row['spearman_live']:.3f}), "
            f"top-20 {row['top20']:.2f}, {t:.2f} s ({row['speed']:.2f}× faster)",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--facts", type=int, default=6, help="facts (people) on tiny-mdlm")
    ap.add_argument("--ig", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-llada", action="store_true", help="skip the LLaDA layout")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from seed_stability import git_commit  # type: ignore[import-not-found]

    commit, command = git_commit(), shlex.join(["python", *sys.argv])
    print(f"commit {commit}\ncommand {command}")
    model = tt.load_model("tiny-mdlm")
    facts = tt.draw_people(cli._load_facts(cli._figure_split(), None), n_people=args.facts)
    rows = compare("tiny-mdlm", model, facts, 32, args.ig)
    if not args.no_llada:
        import gpu_llada_layout as G  # type: ignore[import-not-found]

        ns = argparse.Namespace(checkpoint=None, width=256, layers=4, vocab=8192)
        llada, source = G.load(ns, torch.device("cpu"), torch.float32, 2, 8191)
        print(f"LLaDA layout: {source}")
        rows += compare("llada-layout", llada, G.facts(2, 64), 64, args.ig, target="answer")
    if args.out:
        from tie_tracing.core._io import atomic_write_text

        report = {"commit": commit, "command": command, "threads": args.threads, "rows": rows}
        atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
