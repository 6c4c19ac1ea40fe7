"""Does Figure 2 survive a change of noise seed? Correlation between seeds versus facts and draws.

For every number of noise draws ``k`` in ``--n-noise`` (default 1 2 4 8) and every number of
facts ``n`` in ``--n-facts`` (default 12 24), two independent Figure 2 maps of the first
``n`` facts are compared. The facts are the main job's: ``--per-person`` facts of each of
``--people`` people drawn from ``--facts`` (default: the main job's split, ``tiny:figure``
or ``tiny:retain``; ``tt.draw_people``, seed 0), listed person by person, so the first ``n``
facts are those of the first ``n / per-person`` people; ``--people 0`` takes the split's
facts as listed. Each map pools ``k``
single-draw traces (``TIEResult.pool_seeds``): ``2·max(k)`` seeds are traced once with
``n_noise=1`` and map A takes seeds ``0 … k−1``, map B seeds ``k … 2k−1`` — noise is keyed by
seed, fact and draw, so a pool of ``k`` single-draw seeds is ``k`` independent draws, the same
as one seed with ``n_noise=k``. Per row:

* ``r_resid`` — Pearson correlation of the two mean ``resid`` maps ``[layer, step]``
  (``tt.analysis.seed_stability``; cells that are exactly 0 in both maps, such as idle steps under
  ``lp="frozen"``, are left out), and ``r_all`` over all modules;
* the Eq. 5 cell (β = 0, all modules) each map selects, and each map's ``resid`` cell;
* ``est. seconds`` — the cost of tracing both maps, ``2·k·n`` times the measured seconds per
  fact and draw (printed above the table; the main job's own wall time is measured by running
  it);
* ``known`` — how many of the facts the model knows (the maps average those).

Prints the commit and the command line, then a markdown table, and writes the rows (with the
commit, command and settings) as JSON to ``--out``. The defaults of ``tie-tracing figure2``
(``cli.DEFAULT_N_FACTS``, ``DEFAULT_N_NOISE``, ``DEFAULT_N_SEEDS``) are set from this table:
the smallest cost at which ``r_resid`` is high and both maps select one cell.

Usage: ``python benchmarks/seed_stability.py [--n-noise 1 2 4 8] [--n-facts 12 24]
[--people 24] [--per-person 1] [--target object] [--threads 2] [--out seed_stability.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
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


def trace(model, facts, *, seed: int, n_noise: int, steps: int, lp: str, target: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown facts are counted in the table instead
        return tt.trace_tie(
            model, facts, steps=steps, n_noise=n_noise, seed=seed, lp=lp, target=target,
            progress=False,
        )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--model", default="tiny-mdlm", help="embedded name or checkpoint directory")
    ap.add_argument("--facts", default=None, help="tiny:<split> or tofu:<split>")
    ap.add_argument("--people", type=int, default=cli.DEFAULT_PEOPLE, help="0: no draw")
    ap.add_argument("--per-person", type=int, default=cli.DEFAULT_PER_PERSON)
    ap.add_argument("--n-facts", type=int, nargs="+", default=[12, 24])
    ap.add_argument("--n-noise", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=cli.DEFAULT_STEPS, help="denoising steps T")
    ap.add_argument("--lp", default="frozen", choices=["frozen", "raw"])
    ap.add_argument("--target", default="object", choices=["object", "answer", "name"])
    ap.add_argument("--seed", type=int, default=0, help="first of the 2·max(n_noise) seeds")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON file for the rows (none: not written)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit()
    command = shlex.join(["python", *sys.argv])
    print(f"commit {commit}")
    print(f"command {command}")
    model = tt.load_model(args.model)
    n_max = max(args.n_facts)
    args.facts = args.facts or cli._figure_split()
    if args.people:
        drawn = tt.draw_people(
            cli._load_facts(args.facts, None), n_people=args.people, per_person=args.per_person
        )
        facts = drawn[:n_max]
    else:
        facts = cli._load_facts(args.facts, n_max)
    kw = dict(steps=args.steps, lp=args.lp, target=args.target)
    print(
        f"model={model.name} layers={model.num_layers} facts={args.facts} T={args.steps} "
        f"lp={args.lp} target={args.target} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()}"
    )
    trace(model, facts[:1], seed=args.seed, n_noise=1, **kw)  # warm-up
    # one single-draw trace per seed; a "seed with k draws" is the pool of k of them (noise is
    # keyed by seed, fact and draw, so pooled single-draw seeds are k independent draws)
    n_seeds = 2 * max(args.n_noise)
    singles, seconds = [], []
    for s in range(args.seed, args.seed + n_seeds):
        start = time.perf_counter()
        singles.append(trace(model, facts, seed=s, n_noise=1, **kw))
        seconds.append(time.perf_counter() - start)
    per_fact_draw = sum(seconds) / (n_seeds * n_max)
    print(f"\none single-draw trace of {n_max} facts: {statistics.median(seconds):.1f} s (median "
          f"of {n_seeds}); {per_fact_draw:.2f} s per fact and draw")  # fmt: skip

    rows = []
    header = (
        "| n_facts | n_noise per map | known | r_resid | r_all | cell A | cell B "
        "| resid cell A | resid cell B | est. seconds for both maps |"
    )
    print("\n" + header + "\n" + "|---" * 10 + "|")
    for n_noise in args.n_noise:
        for n_facts in args.n_facts:
            maps = [
                tt.TIEResult.pool_seeds(singles[i * n_noise : (i + 1) * n_noise]).select_facts(
                    slice(0, n_facts)
                )
                for i in (0, 1)
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "knows none of the facts": averages all
                st = tt.analysis.seed_stability(maps)
            row = {
                "n_facts": n_facts,
                "n_noise": n_noise,
                "known": maps[0].n_known,
                "r_resid": st.mean_correlation,
                "r_all": st.mean_correlation_all,
                "cells": [cell(c) for c in st.coordinates_all],
                "resid_cells": [cell(c) for c in st.coordinates],
                "same_cell": st.coordinates_all[0].index == st.coordinates_all[1].index,
                "same_resid_cell": st.coordinates[0].index == st.coordinates[1].index,
                "seconds_estimate": 2 * n_noise * n_facts * per_fact_draw,
            }
            rows.append(row)
            print(
                f"| {n_facts} | {n_noise} | {row['known']} | {fmt(row['r_resid'])} "
                f"| {fmt(row['r_all'])} | {row['cells'][0]} | {row['cells'][1]} "
                f"| {row['resid_cells'][0]} | {row['resid_cells'][1]} "
                f"| {row['seconds_estimate']:.0f} |",
                flush=True,
            )
    if args.out:
        report = {
            "commit": commit,
            "command": command,
            "model": str(model.name),
            "facts": args.facts,
            "people": args.people,
            "per_person": args.per_person,
            "steps": args.steps,
            "lp": args.lp,
            "target": args.target,
            "seeds": list(range(args.seed, args.seed + n_seeds)),
            "seconds_per_fact_and_draw": per_fact_draw,
            "threads": torch.get_num_threads(),
            "rows": [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
                for r in rows
            ],
        }
        from tie_tracing.core._io import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
