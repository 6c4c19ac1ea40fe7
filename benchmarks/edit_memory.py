"""Cost of an installed edit memory on the embedded MDLM: sampling time, memory, install time.

Measured side by side in one run (machines are noisy): ``tt.diffuse`` (T = 8, greedy) over a
fixed batch of facts with no edit and with an N-fact memory installed, alternating
unedited / edited runs ``--repeats`` times and comparing medians. Also:

* **install time** — ``EditMemory.build`` (capture of keys and deltas + Cholesky solve), per
  fact, and ``install`` (registering the nnsight edit);
* **extra memory** — the persistent tensors the installed memory holds (keys, deltas,
  ``G⁻¹K``, on the model's device) and the transient tensors one edited forward allocates
  (coefficients ``[tokens, N]`` and the update ``[tokens, d]``); no weight is copied;
* **nnsight floor** — the same sampling with an edit that fires but adds nothing
  (``alpha=0``), separating nnsight's per-forward cost from the memory's arithmetic.

The memory holds forget10 (120 facts) then retain facts outside ``retain_eval`` (the pool of
``experiments/edit_scaling.py``) at an explicit operating point (``--points`` / ``--point``,
default ``gated_tokens``: the subject gate scans every forward, so this measures its cost too; the
timed queries are retain facts, mostly about people outside the memory). Prints, last,
``edited_over_unedited=<x> zero_alpha_over_unedited=<y> build_ms_per_fact=<z> install_ms=<i>
extra_kib=<w>``: ``build_ms_per_fact`` is ``EditMemory.build``'s wall time / N (capture +
solve), ``install_ms`` the median time of ``install`` (registering the nnsight edit).

Usage: ``python benchmarks/edit_memory.py [--n 400] [--facts 200] [--repeats 7] [--threads 1] [--point gated_tokens]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400, help="facts in the memory")
    ap.add_argument("--facts", type=int, default=200, help="facts sampled per timing run")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=C.MODEL)
    C.point_arguments(ap, default="gated_tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = C.load(args.model)
    sets = C.fact_sets()
    op, calibration, _points = C.chosen_point(args, sets)
    pool = (sets["forget10"] + sets["retain_pool"])[: args.n]
    if len(pool) < args.n:
        raise SystemExit(f"only {len(pool)} facts in the pool; use --n {len(pool)} or fewer")
    queries = sets["retain_eval"][: args.facts]

    t0 = time.perf_counter()
    memory = C.build(model, pool, op, calibration=calibration)
    build_s = time.perf_counter() - t0
    zero = memory.with_config(alpha=0.0)

    def sample():
        t = time.perf_counter()
        out = tt.diffuse(model, queries, steps=8)
        return time.perf_counter() - t, out

    sample()  # warm-up
    times = {"unedited": [], "edited": [], "zero_alpha": []}
    install_s = []
    for _ in range(args.repeats):
        dt, ref = sample()
        times["unedited"].append(dt)
        handle = memory.install(model)
        install_s.append(handle.install_seconds)
        dt, edited = sample()
        handle.remove()
        times["edited"].append(dt)
        with zero.install(model):
            dt, _ = sample()
        times["zero_alpha"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    changed = sum(a != b for a, b in zip(ref.answers, edited.answers))

    # memory held by the installed edit (device copies of the solved tensors) + transient per forward
    persistent = sum(
        t.numel() * t.element_size() for t in memory._tensors(model.param_device).values()
    )
    captured = sum(
        t.numel() * t.element_size()
        for t in (memory.keys, memory.answer_values, memory.target_values)
    )
    tokens = max(
        len(model.encode(f.question, f.answer)[0]) + len(model.encode(f.question, f.answer)[1])
        for f in queries
    )
    transient = (
        64 * tokens * (len(memory) + 2 * model.hidden_size) * 4
    )  # one batch of 64 rows, float32

    ratio = med["edited"] / med["unedited"]
    zratio = med["zero_alpha"] / med["unedited"]
    per_fact_ms = build_s / len(memory) * 1e3  # build (capture + solve) per fact
    install_ms = statistics.median(install_s) * 1e3
    print(f"model {model.name} (d={model.hidden_size}, L={model.num_layers}); memory {memory!r}")
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"sampling {len(queries)} facts x T=8, median of {args.repeats}: unedited {med['unedited']:.3f} s, "
          f"edited {med['edited']:.3f} s ({ratio:.3f}x), alpha=0 edit {med['zero_alpha']:.3f} s ({zratio:.3f}x); "
          f"{changed}/{len(queries)} retain answers changed by the edit")  # fmt: skip
    print(f"build (capture + solve) {build_s:.2f} s = {per_fact_ms:.2f} ms/fact (capture {memory.timings['capture']:.2f} s, "
          f"solve {memory.timings['solve'] * 1e3:.2f} ms); install median {install_ms:.3f} ms")  # fmt: skip
    print(f"extra memory: persistent {persistent / 1024:.0f} KiB on device (+ {captured / 1024:.0f} KiB captured "
          f"tensors on CPU), transient ≈ {transient / 1024:.0f} KiB per forward of 64 rows; weights untouched")  # fmt: skip
    print(
        f"edited_over_unedited={ratio:.3f} zero_alpha_over_unedited={zratio:.3f} "
        f"build_ms_per_fact={per_fact_ms:.2f} install_ms={install_ms:.3f} "
        f"extra_kib={persistent / 1024:.0f}"
    )


if __name__ == "__main__":
    main()
