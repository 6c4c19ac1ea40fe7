"""The ``tie-tracing`` command line.

``tie-tracing figure2`` is the main job: trace 8 facts with diffusion-time causal tracing,
write the interactive Figure 2 (and a static image where a renderer is available), the
traced result and the selected coordinate, and print where the effect concentrates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ._io import atomic_write_text


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


def figure2(args: argparse.Namespace) -> int:
    import tie_tracing as tt
    from tie_tracing.plotting import StaticExportError, save_figure, static_export_available

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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"tracing {len(facts)} facts ({facts_spec}) on {model.name} [{model.backbone.family}, {model.num_layers} layers], T={args.steps}"
    )
    result = tt.trace_tie(
        model,
        facts,
        steps=args.steps,
        n_noise=args.n_noise,
        seed=args.seed,
        progress=not args.quiet,
    )
    result.save(out / "figure2_tie.safetensors")
    best = tt.select_coordinate(result)
    resid = tt.select_coordinate(result, modules="resid")
    summary = {
        "model": str(model.name),
        "facts": list(result.fact_ids),
        "unknown_facts": result.config.get("unknown_facts", []),
        "selected": best.to_dict(),
        "selected_resid": resid.to_dict(),
        "lp_clean_final": result.lp_clean[:, -1].mean().item(),
        "lp_corrupt_final": result.lp_corrupt[:, -1].mean().item(),
        "concentration": _concentration(result),
        "engine_stats": result.config.get("engine_stats"),
    }
    fig = tt.plot_tie_heatmaps(
        result, title=f"Figure 2 — TIE over (layer, step), {len(facts)} facts, {model.name}"
    )
    written = list(
        save_figure(
            fig, out / "figure2.html", include_plotlyjs=True if args.self_contained else "cdn"
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
    conc = summary["concentration"]
    top_layers = sorted(conc["share_by_layer"].items(), key=lambda kv: -kv[1])[:2]
    top_steps = sorted(conc["share_by_step"].items(), key=lambda kv: -kv[1])[:3]
    print(
        f"selected coordinate (β=0): layer {best.layer}, step {best.step}, {best.module} (score {best.score:.3f})"
    )
    print(
        f"selected resid coordinate (the paper's installation site): layer {resid.layer}, step {resid.step}"
    )
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
            f"warning: the model does not know {len(summary['unknown_facts'])} of the facts: {summary['unknown_facts']}"
        )
    print(
        "wrote "
        + ", ".join(
            str(p)
            for p in written + [out / "figure2_tie.safetensors", out / "figure2_summary.json"]
        )
    )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tie-tracing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f2 = sub.add_parser("figure2", help="trace 8 facts and write the interactive Figure 2")
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
        help="tiny:<split> or tofu:<split> (default: tiny:forget01 for embedded models, tofu:forget01 otherwise)",
    )
    f2.add_argument("--n-facts", type=int, default=8)
    f2.add_argument("--steps", type=int, default=8)
    f2.add_argument("--n-noise", type=int, default=1)
    f2.add_argument("--seed", type=int, default=0)
    f2.add_argument("--out", default="figures")
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
        help="embed plotly.js in the html (~4 MB) so it opens offline",
    )
    f2.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "figure2":
        return figure2(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
