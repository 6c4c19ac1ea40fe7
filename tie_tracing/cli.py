"""The ``tie-tracing`` command line.

``tie-tracing figure2`` is the main job: trace the facts with diffusion-time causal tracing
under ``--n-seeds`` noise seeds, pool them (``TIEResult.pool_seeds``), write the interactive
Figure 2 (and a static image where a renderer is available), the pooled result and the
selected coordinate, and print a summary: the coordinate with its 95% bootstrap CI over
facts, whether it survives a change of seed (seed-to-seed correlation of the mean ``resid``
map, each seed's choice), where the object is committed and how many steps are idle.

The defaults of ``--n-facts``, ``--n-noise``, ``--n-seeds`` and ``--steps`` are the
module constants below, to be tuned from ``benchmarks/seed_stability.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write_text

DEFAULT_N_FACTS = 12
DEFAULT_N_NOISE = 4
DEFAULT_N_SEEDS = 2
DEFAULT_STEPS = 8


def _load_facts(spec: str, n: int):
    import tie_tracing as tt

    source, _, split = spec.partition(":")
    if source == "tiny":
        facts = tt.load_facts("tiny", split=split or "forget01")
    elif source == "tofu":
        facts = [f for f in tt.load_tofu(split=split or "forget01") if f.traceable]
    else:
        raise SystemExit(f"--facts must be tiny:<split> or tofu:<split>, got {spec!r}")
    if len(facts) < n:
        raise SystemExit(f"--facts {spec} has only {len(facts)} traceable facts, {n} requested")
    return facts[:n]


def _concentration(result) -> dict:
    """Where |TIE| concentrates: shares by layer and by step, and the top cells."""
    mean = result.mean().abs().nan_to_num()
    total = float(mean.sum()) or 1.0
    by_layer = (mean.sum(dim=(1, 2)) / total).tolist()
    by_step = (mean.sum(dim=(0, 2)) / total).tolist()
    by_module = (mean.sum(dim=(0, 1)) / total).tolist()
    flat = mean.flatten()
    top = torch.topk(flat, k=min(5, flat.numel())).indices.tolist()
    n_s, n_m = mean.shape[1], mean.shape[2]
    cells = [
        {
            "layer": result.layers[i // (n_s * n_m)],
            "step": result.steps[(i // n_m) % n_s],
            "module": result.modules[i % n_m],
            "mean_abs_tie": float(flat[i]),
        }
        for i in top
    ]
    return {
        "share_by_layer": dict(zip(map(str, result.layers), by_layer)),
        "share_by_step": dict(zip(map(str, result.steps), by_step)),
        "share_by_module": dict(zip(result.modules, by_module)),
        "top_cells": cells,
    }


def _cell_ci(result, coordinate) -> dict[str, Any]:
    """The Eq. 5 score of one cell (mean |TIE| over known facts) and signed mean, with 95% CIs."""
    import tie_tracing as tt

    known = result.known_only()
    li, si, mi = coordinate.index
    per_fact = known.tie[:, li, si, mi].detach().to("cpu", torch.float64)
    low, high = tt.bootstrap_ci(per_fact.abs())
    t_low, t_high = tt.bootstrap_ci(per_fact)
    return coordinate.to_dict() | {
        "n_facts": int(per_fact.numel()),
        "ci95": [float(low), float(high)],
        "mean_tie": float(per_fact.mean()),
        "mean_tie_ci95": [float(t_low), float(t_high)],
    }


def _spread(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _commit_summary(result) -> dict[str, Any]:
    """Where the clean trajectory commits the object, and which steps are idle, over known facts."""
    known = result.known_only()
    steps = [int(s) for s in known.object_commit_step]
    committed = {fid: s for fid, s in zip(known.fact_ids, steps)}
    decided = [s for s in steps if s >= 0]
    idle = known.idle_steps  # [fact, T]
    per_fact_idle = [int(n) for n in idle.sum(-1)]
    return {
        "object_commit": {
            **_spread(decided),
            "per_fact": committed,
            "histogram": {str(k): decided.count(k) for k in sorted(set(decided))},
            "never_committed": [fid for fid, s in committed.items() if s < 0],
        },
        "idle_steps": {
            "T": known.n_later_steps,
            **_spread(per_fact_idle),
            "per_fact": dict(zip(known.fact_ids, per_fact_idle)),
            "idle_for_every_fact": [int(k) for k in torch.nonzero(idle.all(0)).flatten()],
        },
    }


def _fmt_range(spread: dict[str, Any]) -> str:
    lo, hi = spread["min"], spread["max"]
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _fmt_cell(c: dict[str, Any]) -> str:
    return f"({c['layer']},{c['step']},{c['module']})"


def figure2(args: argparse.Namespace) -> int:
    import tie_tracing as tt
    from tie_tracing.plotting import StaticExportError, save_figure, static_export_available

    if args.n_seeds < 1:
        raise SystemExit(f"--n-seeds must be ≥ 1, got {args.n_seeds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = tt.load_model(
        args.model,
        family=args.family,
        trust_remote_code=args.trust_remote_code,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        device_map=args.device_map,
    )
    facts_spec = args.facts or (
        "tiny:forget01" if args.model in tt.model.EMBEDDED_MODELS else "tofu:forget01"
    )
    facts = _load_facts(facts_spec, args.n_facts)
    if args.target == "object":
        missing = [f.id or f.question for f in facts if f.object is None]
        if missing:
            raise SystemExit(
                f"--target object needs facts that record their object; {len(missing)} of "
                f"{facts_spec} do not ({missing[:5]}): use --target answer"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [args.seed + i for i in range(args.n_seeds)]
    print(
        f"tracing {len(facts)} facts ({facts_spec}) on {model.name} [{model.backbone.family}, "
        f"{model.num_layers} layers], T={args.steps}, lp={args.lp}, target={args.target}, "
        f"seeds {seeds} × {args.n_noise} noise draw(s)"
    )
    traces = [
        tt.trace_tie(
            model,
            facts,
            steps=args.steps,
            n_noise=args.n_noise,
            seed=s,
            lp=args.lp,
            target=args.target,
            progress=not args.quiet,
        )
        for s in seeds
    ]
    result = tt.TIEResult.pool_seeds(traces)
    result.save(out / "figure2_tie.safetensors")
    best = tt.select_coordinate(result)
    resid = tt.select_coordinate(result, modules="resid")
    stability = tt.seed_stability(traces) if len(traces) > 1 else None
    bootstrap = tt.selection_stability(result, seeds=traces if len(traces) > 1 else None)
    commits = _commit_summary(result)
    summary = {
        "model": str(model.name),
        "facts": list(result.fact_ids),
        "unknown_facts": result.config.get("unknown_facts", []),
        "lp": args.lp,
        "target": args.target,
        "steps": args.steps,
        "seeds": seeds,
        "n_noise_per_seed": args.n_noise,
        "selected": _cell_ci(result, best),
        "selected_resid": _cell_ci(result, resid),
        "selection_bootstrap": {
            "resampled": "facts and seeds" if len(traces) > 1 else "facts",
            "n_boot": bootstrap.n_boot,
            "agreement": bootstrap.agreement,
            "top": [list(t) for t in bootstrap.top],
        },
        "seed_stability": stability.to_dict() if stability is not None else None,
        **commits,
        "lp_clean_final": result.lp_clean[:, -1].mean().item(),
        "lp_corrupt_final": result.lp_corrupt[:, -1].mean().item(),
        "concentration": _concentration(result),
        "engine_stats": result.config.get("engine_stats"),
    }
    draws = result.lp_corrupt_draws.shape[1]
    fig = tt.plot_tie_heatmaps(
        result,
        title=f"Figure 2 — TIE over (layer, step), {len(facts)} facts × {draws} noise draws "
        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}), {model.name}",
    )
    written = list(
        save_figure(
            fig, out / "figure2.html", include_plotlyjs=True if args.self_contained else "directory"
        )
    )
    if static_export_available():
        try:
            written += save_figure(fig, out / "figure2.png", width=1200, height=450)
        except StaticExportError as error:
            print(f"note: no static image: {error}", file=sys.stderr)
    else:
        print(
            "note: no static image written: kaleido needs a Chrome/Chromium "
            "(pip install kaleido; apt-get install chromium). The .html figure is complete.",
            file=sys.stderr,
        )
    atomic_write_text(out / "figure2_summary.json", json.dumps(summary, indent=1))
    _print_summary(summary)
    print(
        "wrote "
        + ", ".join(
            str(p)
            for p in written + [out / "figure2_tie.safetensors", out / "figure2_summary.json"]
        )
    )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    """The human-readable summary of ``figure2_summary.json``."""
    for key, label in (
        ("selected", "selected coordinate (β=0)"),
        ("selected_resid", "selected resid coordinate (the paper's installation site)"),
    ):
        c = summary[key]
        low, high = c["ci95"]
        print(
            f"{label}: layer {c['layer']}, step {c['step']}, {c['module']} — score (mean |TIE|) "
            f"{c['score']:.3f}, 95% CI [{low:.3f}, {high:.3f}] over {c['n_facts']} facts"
        )
    st = summary["seed_stability"]
    if st is None:
        print("seed stability: not measured (one seed; use --n-seeds 2 or more)")
    else:
        r, r_all = st["mean_correlation"], st["mean_correlation_all_modules"]
        print(
            f"seed stability over seeds {summary['seeds']}: correlation of the mean resid map "
            f"r = {'n/a' if r is None else f'{r:.3f}'} (all modules "
            f"{'n/a' if r_all is None else f'{r_all:.3f}'})"
        )
        for cells, same, pooled, what in (
            ("coordinates_all_modules", "same_cell_all_modules", "pooled_all_modules", "cell"),
            ("coordinates", "same_cell", "pooled", "resid cell"),
        ):
            per_seed = ", ".join(
                f"seed {s[0] if len(s) == 1 else s}: {_fmt_cell(c)}{'' if ok else ' (differs)'}"
                for s, c, ok in zip(st["seeds"], st[cells], st[same])
            )
            print(
                f"  {what} per seed: {per_seed}; {sum(st[same])}/{len(st[same])} select the "
                f"pooled {_fmt_cell(st[pooled])}"
            )
    boot = summary["selection_bootstrap"]
    print(
        f"selection bootstrap ({boot['resampled']} resampled, {boot['n_boot']} draws): the "
        f"selected cell wins {boot['agreement']:.0%} of resamples"
    )
    oc = summary["object_commit"]
    if oc["median"] is None:
        print("object committed: never (no fact's clean trajectory commits its object)")
    else:
        print(f"object committed at step {oc['median']:g} (median), range {_fmt_range(oc)}")
    idle = summary["idle_steps"]
    every = idle["idle_for_every_fact"]
    print(
        f"idle steps (no masked target position left): {idle['median']:g} of {idle['T']} per "
        f"fact (median), range {_fmt_range(idle)}"
        + (f"; idle for every fact: steps {every}" if every else "")
    )
    conc = summary["concentration"]
    top_layers = sorted(conc["share_by_layer"].items(), key=lambda kv: -kv[1])[:2]
    top_steps = sorted(conc["share_by_step"].items(), key=lambda kv: -kv[1])[:3]
    print(
        "effect concentrates in layers "
        + ", ".join(f"{k} ({v:.0%})" for k, v in top_layers)
        + "; steps "
        + ", ".join(f"{k} ({v:.0%})" for k, v in top_steps)
        + "; modules "
        + ", ".join(f"{k} {v:.0%}" for k, v in conc["share_by_module"].items())
    )
    if summary["unknown_facts"]:
        print(
            f"warning: the model does not know {len(summary['unknown_facts'])} of the facts: "
            f"{summary['unknown_facts']}"
        )


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or "tie-tracing"
    parser = argparse.ArgumentParser(prog="tie-tracing", description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f2 = sub.add_parser(
        "figure2",
        help="trace the facts under several noise seeds and write the interactive Figure 2",
        description="Trace the facts under --n-seeds noise seeds, pool them, write Figure 2, "
        "the pooled result and a summary (selected coordinate with its CI, seed stability, "
        "object commit step, idle steps).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f2.add_argument(
        "--model", default="tiny-mdlm", help="embedded name or local checkpoint directory"
    )
    f2.add_argument(
        "--family",
        default=None,
        help="backbone family, when the config does not say (e.g. diffullama)",
    )
    f2.add_argument(
        "--facts",
        default=None,
        help="tiny:<split> or tofu:<split>; unset: tiny:forget01 for embedded models, "
        "tofu:forget01 otherwise",
    )
    f2.add_argument("--n-facts", type=int, default=DEFAULT_N_FACTS, help="facts to trace")
    f2.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps T")
    f2.add_argument(
        "--n-noise", type=int, default=DEFAULT_N_NOISE, help="noise draws per fact and seed"
    )
    f2.add_argument(
        "--n-seeds",
        type=int,
        default=DEFAULT_N_SEEDS,
        help="noise seeds --seed, --seed+1, …; their traces are pooled, and compared when ≥ 2",
    )
    f2.add_argument("--seed", type=int, default=0, help="first noise seed")
    f2.add_argument(
        "--lp",
        choices=("frozen", "raw"),
        default="frozen",
        help="how LP reads committed positions (SPEC §4): frozen at their commit, or raw",
    )
    f2.add_argument(
        "--target",
        choices=("answer", "object"),
        default="answer",
        help="positions LP sums over: the whole answer or the fact's object",
    )
    f2.add_argument("--out", default="figures", help="output directory")
    f2.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    f2.add_argument("--dtype", default=None, help="e.g. bfloat16 for a real checkpoint on GPU")
    f2.add_argument("--device-map", default=None, help="e.g. cuda")
    f2.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own modelling code (LLaDA, Dream)",
    )
    f2.add_argument(
        "--self-contained",
        action="store_true",
        help="embed plotly.js in the html (~4 MB); by default the html loads plotly.min.js "
        "written once beside it, which also opens offline",
    )
    f2.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.command == "figure2":
        return figure2(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
