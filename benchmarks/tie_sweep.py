"""TIE sweep cost on the embedded MDLM: engine vs the naive per-coordinate loop vs bare forwards.

All three are measured side by side in one run (machines are noisy):

* **engine** — ``tt.trace_tie`` (nnsight interventions, batched patch rows, memoised futures);
* **naive** — ``tie_tracing.tracing.reference.reference_ie``: one full corrupted trajectory per
  coordinate, batch size 1, plain hooks (``L·M·T²`` forwards per fact and draw);
* **floor** — bare batched forwards of exactly the rows the engine ran (same batch shapes,
  no nnsight, no patching, no bookkeeping).

Engine and floor runs alternate (``--repeats`` pairs) so background load hits both alike;
``floor_ratio`` is the median of the per-pair ratios. It checks that the engine and the naive
loop agree and prints, last,
``speedup_vs_naive=<x> floor_ratio=<y> max_abs_diff=<z>``.

Usage: ``python benchmarks/tie_sweep.py [--facts 2] [--threads 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

import tie_tracing as tt
from tie_tracing.tracing.reference import reference_ie


def best_of(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def random_like(model, width: int):
    """A random-initialised model of ``model``'s family, tokenizer and depth, ``width`` wide."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(model.tokenizer),
        hidden_size=width,
        intermediate_size=3 * width,
        num_hidden_layers=model.num_layers,
        num_attention_heads=max(1, width // 64),
        num_key_value_heads=max(1, width // 64),
        max_position_embeddings=128,
        is_causal=False,
    )
    torch.manual_seed(0)
    return tt.core.TracedModel.from_module(
        LlamaForCausalLM(cfg).eval(),
        model.tokenizer,
        family=model.backbone.family,
        name=f"random-{width}",
        mask_token_id=model.mask_token_id,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-mdlm")
    parser.add_argument("--facts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--n-noise", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--random-width",
        type=int,
        default=None,
        help="trace a random-initialised LLaDA-style model of this width instead (same layers "
        "and tokenizer as --model): shows how the overhead scales with forward cost",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = tt.load_model(args.model)
    if args.random_width:
        model = random_like(model, args.random_width)
    facts = tt.load_facts("tiny", split="forget01")[: args.facts]
    print(
        f"model={args.model} layers={model.num_layers} d={model.hidden_size} facts={len(facts)} "
        f"T={args.steps} n_noise={args.n_noise} threads={torch.get_num_threads()} cpu={platform.processor() or platform.machine()}"
    )

    def engine():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tt.trace_tie(
                model, facts, steps=args.steps, n_noise=args.n_noise, progress=False
            )

    result = engine()  # warm-up; its shapes define the floor
    nu = result.config["nu"]
    shapes = result.config["engine_stats"]["shapes"]

    def floor():
        with torch.inference_mode():
            for rows, seq in shapes:
                model._module(
                    input_ids=torch.full((rows, seq), 5, dtype=torch.long), use_cache=False
                )

    # engine and floor alternate, so background load hits both alike; floor_ratio is the
    # median of the per-pair ratios, the times printed are the best of each
    pairs = []
    for _ in range(args.repeats):
        t_e, result = best_of(engine, 1)
        t_f, _ = best_of(floor, 1)
        pairs.append((t_e, t_f))
    t_engine, t_floor = min(p[0] for p in pairs), min(p[1] for p in pairs)
    floor_ratio = float(torch.tensor([e / f for e, f in pairs]).median())

    def naive():
        return [
            reference_ie(model, f, steps=args.steps, nu=nu, n_noise=args.n_noise) for f in facts
        ]

    t_naive, refs = best_of(naive, 1)
    diff = max(
        float((torch.nan_to_num(r["ie"]) - torch.nan_to_num(result.ie[i])).abs().max())
        for i, r in enumerate(refs)
    )
    stats = result.config["engine_stats"]
    n_cells = result.ie.shape[1] * result.ie.shape[2] * result.ie.shape[3]
    naive_forwards = (
        len(facts) * args.n_noise * n_cells * args.steps
        + len(facts) * (1 + args.n_noise) * args.steps
    )
    diverged = float(result.diverged.mean())
    print(
        f"engine: {t_engine:.3f} s  ({stats['forwards']} forwards, {stats['rows']} rows, "
        f"{stats['divergent_continuations']} divergent continuation nodes)"
    )
    print(f"floor (bare batched forwards of the same rows): {t_floor:.3f} s")
    print(f"naive per-coordinate loop: {t_naive:.3f} s  ({naive_forwards} batch-1 forwards)")
    print(f"share of patch runs whose commits diverged at the patched step: {diverged:.3f}")
    print(
        f"speedup_vs_naive={t_naive / t_engine:.2f} floor_ratio={floor_ratio:.3f} max_abs_diff={diff:.2e}"
    )


if __name__ == "__main__":
    main()
