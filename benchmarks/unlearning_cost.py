"""What each unlearning row of the suite costs: to build, and per query once built.

The rows of ``experiments/unlearning_suite.py`` are built exactly as there (the same
``build_methods``, forget split ``--forget``): the edit memories' build time (capture,
calibration, solve), NPO's training time under the converged protocol, and ~0 for the string
filters (a list of names). Then the same fixed query batch — the forget facts and ``--retain``
retain_eval facts, sampled with the default sampler (``tt.diffuse``, T = 8, greedy) — is run
with each row applied, rows interleaved round-robin ``--repeats`` times, and the median
sampling time compared with the unedited model's in the same rounds.

Prints per row: ``build_s``, ``per_query_ms`` (median batch time / queries),
``overhead_per_query_ms`` (against no edit), and ``break_even_queries`` against NPO — the
number of queries after which the row's build plus its per-query overhead exceeds NPO's
training time (NPO adds no per-query cost: it is a new model). Appends nothing; the figures go
to ``benchmarks/RESULTS.md`` by hand with the commit and command.

Usage: ``python benchmarks/unlearning_cost.py [--forget forget01] [--retain 120] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import edit_common as C  # noqa: E402
import unlearning_suite as S  # noqa: E402

import tie_tracing as tt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", default="forget01")
    ap.add_argument("--retain", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    C.setup()
    model = tt.load_model("tiny-mdlm")
    retain_model = tt.load_model("tiny-mdlm-retain")
    forget = tt.load_facts("tiny", args.forget)
    sets = C.fact_sets()
    ns = argparse.Namespace(
        forget_name=args.forget, quick=False, paper_layer=None, seed=0,
        npo_lr=[1e-3, 3e-4, 1e-4], slots_point=str(ROOT / "figures" / "edit_tune_slots.json"),
    )  # fmt: skip
    methods, info = S.build_methods(model, retain_model, forget, sets, ns)
    build = {name: float(v.get("build_seconds", 0.0)) for name, v in info.items()}
    npo_attempts = info["npo"]["attempts"]
    build["npo"] = sum(a["seconds"] for a in npo_attempts)  # every rate tried counts
    queries = forget + tt.load_facts("tiny", "retain_eval")[: args.retain]
    keep = [m for m in methods if m.name not in ("retain_model", "random_directions",
                                                  "slots_random_directions")]  # fmt: skip
    times: dict[str, list[float]] = {m.name: [] for m in keep}
    for _ in range(args.repeats):
        for m in keep:
            with m.applied(model) as queried:
                t0 = time.perf_counter()
                tt.diffuse(queried, queries, steps=8, progress=False)
                times[m.name].append(time.perf_counter() - t0)
    n = len(queries)
    base = statistics.median(times["no_edit"]) / n
    npo_cost = build["npo"]
    print(f"# {args.forget}: {len(forget)} forget facts; {n} queries per batch; "
          f"{args.repeats} interleaved rounds; torch threads {args.threads}")  # fmt: skip
    print("row build_s per_query_ms overhead_per_query_ms break_even_queries_vs_npo")
    for m in keep:
        per = statistics.median(times[m.name]) / n
        over = per - base
        b = build.get(m.name, 0.0)
        if m.name in ("npo", "no_edit"):
            even = "—"
        elif over <= 0:
            even = "never (no measurable overhead)"
        else:
            even = f"{max(0.0, (npo_cost - b) / over):.0f}"
        print(f"{m.name} {b:.2f} {per * 1e3:.2f} {over * 1e3:+.2f} {even}")
    print(f"npo_chosen_lr={info['npo']['chosen_lr']} npo_train_s={npo_cost:.2f}")


if __name__ == "__main__":
    main()
