"""Does Figure 2 survive a change of noise seed? Correlation between seeds versus facts and draws.

For every number of noise draws in ``--n-noise`` (default 1 2 4 8) and every number of facts
in ``--n-facts`` (default 4 8 12 20), the first ``n`` facts of ``--facts`` (default
``tiny:forget01``, the embedded corpus) are traced twice with ``tt.trace_tie``, under seed
``--seed`` and ``--seed + 1`` (``n_noise`` draws each; draws are keyed by seed, fact id and
draw index, so the two traces are independent noise samples over the same facts). Per row:

* ``r_resid`` — Pearson correlation of the two mean ``resid`` maps ``[layer, step]``
  (``tt.seed_stability``; cells that are exactly 0 in both maps, such as idle steps under
  ``lp="frozen"``, are left out), and ``r_all`` over all modules;
* the Eq. 5 cell (β = 0, all modules) each seed selects, and each seed's ``resid`` cell;
* ``seconds`` — wall time of the two-seed run (both traces), after one warm-up trace;
* ``known`` — how many of the facts the model knows (the maps average those).

Prints the commit and the command line, then a markdown table, and writes the rows (with the
commit, command and settings) as JSON to ``--out``. The defaults of ``tie-tracing figure2``
(``cli.DEFAULT_N_FACTS``, ``DEFAULT_N_NOISE``, ``DEFAULT_N_SEEDS``) are meant to be set from
this table: the smallest cost at which ``r_resid`` is high and both seeds select one cell.

Usage: ``python benchmarks/seed_stability.py [--n-noise 1 2 4 8] [--n-facts 4 8 12 20]
[--facts tiny:forget10] [--threads 2] [--out seed_stability.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import tie_tracing as tt
from tie_tracing import cli

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """``HEAD``'s hash, with ``+dirty`` when the work tree has uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cell(c: tt.Coordinate) -> str:
    return f"({c.layer},{c.step},{c.module})"


def fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def trace(model, facts, *, seed: int, n_noise: int, steps: int) -> tt.TIEResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown facts are counted in the table instead
        return tt.trace_tie(model, facts, steps=steps, n_noise=n_noise, seed=seed, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--model", default="tiny-mdlm", help="embedded name or checkpoint directory")
    ap.add_argument("--facts", default="tiny:forget01", help="tiny:<split> or tofu:<split>")
    ap.add_argument("--n-facts", type=int, nargs="+", default=[4, 8, 12, 20])
    ap.add_argument("--n-noise", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=cli.DEFAULT_STEPS, help="denoising steps T")
    ap.add_argument("--seed", type=int, default=0, help="the seeds are SEED and SEED+1")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON file for the rows (none: not written)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit()
    command = shlex.join(["python", *sys.argv])
    print(f"commit {commit}")
    print(f"command {command}")
    model = tt.load_model(args.model)
    facts = cli._load_facts(args.facts, max(args.n_facts))
    print(
        f"model={model.name} layers={model.num_layers} facts={args.facts} T={args.steps} "
        f"seeds={args.seed},{args.seed + 1} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()}"
    )
    trace(model, facts[:1], seed=args.seed, n_noise=1, steps=args.steps)  # warm-up

    rows = []
    header = (
        "| n_facts | n_noise | known | r_resid | r_all | cell seed 0 | cell seed 1 "
        "| resid cell seed 0 | resid cell seed 1 | seconds |"
    )
    print("\n" + header + "\n" + "|---" * 10 + "|")
    for n_noise in args.n_noise:
        for n_facts in args.n_facts:
            subset = facts[:n_facts]
            start = time.perf_counter()
            traces = [
                trace(model, subset, seed=s, n_noise=n_noise, steps=args.steps)
                for s in (args.seed, args.seed + 1)
            ]
            seconds = time.perf_counter() - start
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "knows none of the facts": averages all
                st = tt.seed_stability(traces)
            row = {
                "n_facts": n_facts,
                "n_noise": n_noise,
                "known": traces[0].n_known,
                "r_resid": st.mean_correlation,
                "r_all": st.mean_correlation_all,
                "cells": [cell(c) for c in st.coordinates_all],
                "resid_cells": [cell(c) for c in st.coordinates],
                "same_cell": st.coordinates_all[0].index == st.coordinates_all[1].index,
                "same_resid_cell": st.coordinates[0].index == st.coordinates[1].index,
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"| {n_facts} | {n_noise} | {row['known']} | {fmt(row['r_resid'])} "
                f"| {fmt(row['r_all'])} | {row['cells'][0]} | {row['cells'][1]} "
                f"| {row['resid_cells'][0]} | {row['resid_cells'][1]} | {seconds:.1f} |",
                flush=True,
            )
    if args.out:
        report = {
            "commit": commit,
            "command": command,
            "model": str(model.name),
            "facts": args.facts,
            "steps": args.steps,
            "seeds": [args.seed, args.seed + 1],
            "threads": torch.get_num_threads(),
            "rows": [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                for r in rows
            ],
        }
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
