"""Parity table: tt.diffuse's samplers against upstream generate.py / Dream's _sample.

For each family × sampler case × dtype × sampler setting, runs the package's sampler and the
upstream sampler (with the same keyed draws injected, see tests/test_upstream.py) on tiny
random-weight checkpoints built from the upstream files in ../shared/realcode, and prints
``match`` or the first step whose committed tokens differ. Settings: ``upstream`` =
``precision="model", commit_mask=True`` (what the parity tests assert), ``default`` = the
package's defaults (``precision="float32", commit_mask=False``), ``float32`` =
``precision="float32", commit_mask=True``.

    PYTHONPATH=$PWD python benchmarks/upstream_parity.py [--out benchmarks/results/upstream_parity.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = {
    "upstream": dict(precision="model", commit_mask=True),
    "float32": dict(precision="float32", commit_mask=True),
    "default": dict(precision="float32", commit_mask=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    import torch
    import transformers
    import upstream_checkpoints as U

    if U.realcode_dir() is None:
        raise SystemExit(U.MISSING)
    import test_upstream as T

    import tie_tracing as tt
    from tie_tracing.core.samplers import DreamSampler, LLaDASampler

    root = Path(tempfile.mkdtemp())
    dirs = {"llada": U.build_llada(root / "llada"), "dream": U.build_dream(root / "dream")}
    models: dict = {}
    refs: dict = {}

    def model(family, dtype):
        if (family, dtype) not in models:
            models[family, dtype] = tt.load_model(
                dirs[family], trust_remote_code=True, dtype=T.DTYPES[dtype], progress=False
            )
        return models[family, dtype]

    def ref(family, dtype):
        if (family, dtype) not in refs:
            if family == "llada":
                refs[family, dtype] = T.reference_llada(dirs[family], T.DTYPES[dtype])
            else:
                refs[family, dtype] = T.reference_dream(dirs[family], T.DTYPES[dtype])
        return refs[family, dtype]

    rows = []
    start = time.perf_counter()
    for dtype in T.DTYPES:
        for setting, extra in SETTINGS.items():
            for case, kw in T.LLADA_GRID.items():
                m, r = model("llada", dtype), ref("llada", dtype)
                x, p = T.query(m)
                seeds = [3, 4]
                sampler = LLaDASampler(**kw, **extra)
                ours = m.denoise(x, answer_start=p, steps=8, sampler=sampler, seeds=seeds).states
                up = dict(kw, block_length=kw.get("block_length", T.GEN))
                theirs = T.run_generate(
                    r, x, p, steps=8, seeds=seeds, precision=extra["precision"], **up
                )
                rows.append(("llada", case, dtype, setting, T.first_difference(ours, theirs)))
            for case, kw in T.DREAM_GRID.items():
                m = model("dream", dtype)
                r, pkg = ref("dream", dtype)
                x, p = T.query(m)
                seeds = [5, 6]
                sampler = DreamSampler(**kw, **extra)
                ours = m.denoise(x, answer_start=p, steps=6, sampler=sampler, seeds=seeds).states
                theirs = torch.cat(
                    [T.run_sample(r, pkg, x[i : i + 1], p, steps=6, seeds=seeds[i : i + 1], **kw) for i in range(2)]
                )  # fmt: skip
                rows.append(("dream", case, dtype, setting, T.first_difference(ours, theirs)))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print(f"{'family':<7} {'case':<24} {'dtype':<9} {'setting':<9} result")
    for family, case, dtype, setting, diff in rows:
        result = "match" if diff is None else f"differs from step {diff}"
        print(f"{family:<7} {case:<24} {dtype:<9} {setting:<9} {result}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "rows": [dict(zip(("family", "case", "dtype", "setting", "first_difference"), r)) for r in rows],
                },
                indent=1,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
