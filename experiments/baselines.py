"""Training-time unlearning baselines beside the edit memory (SPEC §10.6; paper §IV-D, Figure 5).

On the embedded MDLM, for forget01 and forget05, every method of ``tt.unlearn`` (GA, GD,
NPO, SimNPO, RMU; full fine-tuning) runs over a named learning-rate grid under two protocols:

* ``unmitigated`` — the method as open-unlearning defines it, no clipping, no stopping;
* ``converged``  — retain-NLL anchor, gradient clipping at 1.0 and early stopping when RetainLP
  (on ``retain_tune``) drifts by more than 1 nat.

Each run trains for ``--epochs`` passes over the forget set (batch ``--batch-size``). Fact sets
(``edit_common.fact_sets``, disjoint where it matters): the retain batches come from
``retain_pool``, early stopping watches ``retain_tune``, and the reported numbers are measured
on sets no run trained or stopped on: ΔForgetLP (the forget split), ΔRetainLP
(``retain_eval``), Δneighbour, Δworld (masked estimator, mean nats per fact against the base
model), forget quality against ``tiny-mdlm-retain`` (KS p-value of truth ratios, when that
model is built), wall-clock (training, evaluations excluded) and peak memory. Every
configuration runs in a fresh process, so the CPU peak RSS belongs to that run alone.

Each run is classified: ``collapse`` (RetainLP drops by more than ``COLLAPSE_NATS`` or the loss
diverges), ``no effect`` (ForgetLP moves by less than ``NO_EFFECT_NATS``), otherwise
``trade-off`` — which answers where each method collapses the MDLM and where it does nothing.

The edit memory is measured on the same facts: build + install time and peak memory (fresh
process) at the model's operating point, and its α sweep (``ALPHA_SCALES`` × the operating
α) as the curve of the Pareto figure. ``speed_ratio`` is the training time the fastest converged
baseline needs to reach the edit's ΔForgetLP (training time × the first evaluated step that got
there ÷ steps run) over the edit's build + install time.

Writes ``figures/baselines.json`` and ``figures/baselines.html`` (forget drop against retain drop,
one point per method × configuration, the edit's α sweep as a curve; log axes, drops ≤ 1e-3
drawn at 1e-3 with the true values on hover).

Run (full size, about an hour on one CPU thread): ``python experiments/baselines.py``.
A smoke run: ``python experiments/baselines.py --quick``. GPU: ``--device cuda``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import sys
import time
import traceback
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

SPLITS = ("forget01", "forget05")
METHODS = tt.unlearning.METHODS
#: Named learning-rate grid; ``1e-5`` is open-unlearning's TOFU default.
LR_GRID = {"1e-6": 1e-6, "1e-5 (standard)": 1e-5, "1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2}
PROTOCOLS = {"unmitigated": False, "converged": True}
ALPHA_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
COLLAPSE_NATS = 5.0
NO_EFFECT_NATS = 0.5
#: RMU's steering coefficient as a multiple of the mean residual-stream norm at its layer
#: (open-unlearning's absolute default of 300 is tuned for 7B models).
RMU_STEERING_X_NORM = 4.0
EVAL_SETS = {"retain": "retain_eval", "neighbour": "neighbour", "world": "world"}
COLORS = {"ga": "#d62728", "gd": "#ff7f0e", "npo": "#2ca02c", "simnpo": "#1f77b4", "rmu": "#9467bd"}


# ---------------------------------------------------------------------------------------
# measurements (run inside worker processes)
# ---------------------------------------------------------------------------------------


def _load(device: str | None, limit_eval: int | None = None):
    """Model, retain-only reference (or ``None``) and fact sets (retain-side sets cut to
    ``limit_eval`` facts in a smoke run)."""
    import torch

    torch.set_num_threads(1)
    model = tt.load_model(C.MODEL, device=device) if device else C.load()
    try:
        reference = tt.load_model("tiny-mdlm-retain", device=device)
    except tt.CheckpointNotFoundError:
        reference = None
    sets = C.fact_sets()
    for k in ("retain_eval", "neighbour", "world", "retain_tune", "retain_pool"):
        sets[k] = sets[k][:limit_eval]
    return model, reference, sets


def _measure(model, reference, sets, forget) -> dict:
    """Mean log-probabilities (nats) on the reported sets, and forget quality when possible."""
    out = {"forget": float(tt.answer_logprob(model, forget).mean())}
    for name, split in EVAL_SETS.items():
        out[name] = float(tt.answer_logprob(model, sets[split]).mean())
    out["forget_quality"] = math.nan
    if reference is not None and any(f.perturbed_answers for f in forget):
        # object=None: tt.evaluate swaps in perturbed answers, which do not contain the object
        plain = [dataclasses.replace(f, object=None) for f in forget]
        ev = tt.evaluate(model, {"forget": plain}, reference=reference, generate=False)
        out["forget_quality"] = ev["forget"]["forget_quality"].value
    return out


def _rmu_steering(model, forget, layer: int) -> float:
    """``RMU_STEERING_X_NORM`` × the mean norm of block ``layer``'s output at answer tokens."""
    import torch

    from tie_tracing.backbones import hidden_of

    norms = []

    def hook(_m, _i, output):
        norms.append(hidden_of(output).norm(dim=-1).mean())

    handle = model.site_module(layer, "resid").register_forward_hook(hook)
    try:
        with torch.no_grad():
            for f in forget:
                p, a = model.encode(f.question, f.answer)
                x = torch.tensor([p + [model.mask_token_id] * len(a)], device=model.param_device)
                model.forward_logits(x)
    finally:
        handle.remove()
    return RMU_STEERING_X_NORM * float(torch.stack(norms).mean())


def _memory_now(device) -> tuple[int, str]:
    """The measure ``tt.unlearn`` logs: CUDA peak allocation, or the process's peak RSS."""
    import resource

    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


def baseline_job(job: dict) -> dict:
    """One method × learning rate × protocol on one split, in a fresh process."""
    model, reference, sets = _load(job["device"], job["limit_eval"])
    forget = sets[job["split"]][: job["limit"]]
    kw = dict(
        method=job["method"], lr=job["lr"], steps=job["steps"], batch_size=job["batch_size"],
        converged=job["converged"], eval_every=job["eval_every"], seed=job["seed"],
        monitor=sets["retain_tune"], progress=False,
    )  # fmt: skip
    if job["method"] == "rmu":
        layer = (7 * model.num_layers) // 32
        kw.update(rmu_layer=layer, rmu_steering=_rmu_steering(model, forget, layer))
    row = {
        k: job[k] for k in ("split", "method", "lr_name", "lr", "protocol", "converged", "steps")
    }
    try:
        new, log = tt.unlearn(model, forget, sets["retain_pool"], **kw)
    except tt.NonFiniteActivationError as error:
        return {**row, "status": "diverged", "error": str(error)}
    row.update(
        status="ok",
        log=log.to_dict(),
        after=_measure(new, reference, sets, forget),
        train_seconds=log.train_seconds,
        wall_seconds=log.wall_seconds,
        peak_memory_bytes=log.peak_memory_bytes,
        extra_memory_bytes=log.extra_memory_bytes,
        memory_source=log.memory_source,
        stopped_early=log.stopped_early,
        returned_step=log.returned_step,
    )
    return row


def edit_job(job: dict) -> dict:
    """The edit memory on one split: build + install time and memory, then the α sweep."""
    model, reference, sets = _load(job["device"], job["limit_eval"])
    forget = sets[job["split"]][: job["limit"]]
    start, source = _memory_now(model.param_device)
    t0 = time.perf_counter()
    memory = tt.EditMemory.build(model, forget)
    handle = memory.install(model)
    seconds = time.perf_counter() - t0
    peak, _ = _memory_now(model.param_device)
    at_op = _measure(model, reference, sets, forget)
    handle.remove()
    sweep = []
    for scale in ALPHA_SCALES:
        scaled = memory.with_config(alpha=memory.config.alpha * scale)
        with scaled.install(model):
            sweep.append(
                {
                    "alpha": scaled.config.alpha,
                    "scale": scale,
                    **_measure(model, None, sets, forget),
                }
            )
    return {
        "split": job["split"],
        "config": memory.config.to_dict(),
        "build_install_seconds": seconds,
        "timings": dict(memory.timings),
        "peak_memory_bytes": peak,
        "extra_memory_bytes": peak - start,
        "memory_source": source,
        "at_operating_point": at_op,
        "alpha_sweep": sweep,
    }


def _guarded(fn, job):
    try:
        return fn(job)
    except Exception:  # a failed configuration is recorded, not fatal to the sweep
        return {**{k: job.get(k) for k in ("split", "method", "lr_name", "protocol")},
                "status": "error", "error": traceback.format_exc()}  # fmt: skip


def _run_all(fn, jobs: list[dict], *, fresh: bool) -> list[dict]:
    if not fresh:
        return [_guarded(fn, j) for j in jobs]
    ctx = mp.get_context("spawn")
    out = []
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for i, row in enumerate(pool.imap(_job_entry, [(fn.__name__, j) for j in jobs])):
            print(f"[{i + 1}/{len(jobs)}] {_label(row)}", flush=True)
            out.append(row)
    return out


def _job_entry(args):
    name, job = args
    return _guarded(globals()[name], job)


def _label(row: dict) -> str:
    if "method" not in row:
        return f"edit memory {row.get('split')}"
    return f"{row['split']} {row['method']} lr={row.get('lr_name')} {row.get('protocol')}: " + (
        row.get("status", "?")
    )


# ---------------------------------------------------------------------------------------
# analysis and figure
# ---------------------------------------------------------------------------------------


def _deltas(after: dict, base: dict) -> dict:
    return {f"d_{k}": after[k] - base[k] for k in ("forget", "retain", "neighbour", "world")}


def _classify(row: dict) -> str:
    if row["status"] == "diverged":
        return "collapse"
    if row["status"] != "ok":
        return "error"
    if -row["d_retain"] > COLLAPSE_NATS:
        return "collapse"
    if abs(row["d_forget"]) < NO_EFFECT_NATS:
        return "no effect"
    return "trade-off"


def _seconds_to_reach(row: dict, target_drop: float) -> float | None:
    """Training seconds until the run's ForgetLP first dropped by ``target_drop`` (None: never)."""
    log = row["log"]
    base = log["forget_lp"][0]
    for step, lp in zip(log["eval_steps"], log["forget_lp"]):
        if base - lp >= target_drop and step <= log["returned_step"]:
            return row["train_seconds"] * step / max(1, len(log["loss"]))
    return None


def plot_pareto(rows: list[dict], edits: dict[str, dict], splits) -> go.Figure:
    """Forget drop (−ΔForgetLP) against retain drop (−ΔRetainLP), one panel per split."""
    fig = make_subplots(rows=1, cols=len(splits), subplot_titles=list(splits), shared_yaxes=True)
    floor = 1e-3
    seen = set()
    for col, split in enumerate(splits, start=1):
        for method in METHODS:
            for protocol in PROTOCOLS:
                pts = [
                    r
                    for r in rows
                    if r["split"] == split and r["method"] == method
                    and r["protocol"] == protocol and r["status"] == "ok"
                ]  # fmt: skip
                if not pts:
                    continue
                name = f"{method} ({protocol})"
                fig.add_trace(
                    go.Scatter(
                        x=[max(floor, -r["d_forget"]) for r in pts],
                        y=[max(floor, -r["d_retain"]) for r in pts],
                        mode="markers",
                        name=name,
                        legendgroup=name,
                        showlegend=name not in seen,
                        marker=dict(
                            color=COLORS[method],
                            symbol="circle" if protocol == "converged" else "x",
                            size=10,
                        ),
                        text=[
                            f"{method} {protocol} lr={r['lr_name']}<br>ΔForgetLP={r['d_forget']:.4g}"
                            f"<br>ΔRetainLP={r['d_retain']:.4g}<br>{r['class']}"
                            f"<br>train {r['train_seconds']:.3g}s"
                            for r in pts
                        ],  # fmt: skip
                        hoverinfo="text",
                    ),
                    row=1,
                    col=col,
                )
                seen.add(name)
        edit = edits.get(split)
        if edit and "alpha_sweep" in edit:
            sweep = edit["alpha_sweep"]
            fig.add_trace(
                go.Scatter(
                    x=[max(floor, -s["d_forget"]) for s in sweep],
                    y=[max(floor, -s["d_retain"]) for s in sweep],
                    mode="lines+markers",
                    name="edit memory (α sweep)",
                    legendgroup="edit",
                    showlegend="edit" not in seen,
                    line=dict(color="black"),
                    text=[
                        f"edit α={s['alpha']:.3g} (×{s['scale']})<br>ΔForgetLP={s['d_forget']:.4g}"
                        f"<br>ΔRetainLP={s['d_retain']:.4g}"
                        for s in sweep
                    ],  # fmt: skip
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
            seen.add("edit")
        fig.update_xaxes(type="log", title_text="forget drop −ΔForgetLP (nats)", row=1, col=col)
    fig.update_yaxes(type="log", title_text="retain drop −ΔRetainLP (nats)", row=1, col=1)
    fig.update_layout(
        title="Training-time baselines vs the edit memory (lower right is better; "
        "× unmitigated, ● converged)",
        height=520,
        width=520 * len(splits),
    )
    return fig


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--lrs", nargs="+", default=list(LR_GRID), help="names from LR_GRID")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--in-process", action="store_true", help="no fresh process per run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 steps, few facts")
    ap.add_argument("--out", default=str(C.FIGURES / "baselines"))
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    limit = limit_eval = None
    if args.quick:
        args.splits, args.lrs = args.splits[:1], ["1e-4"]
        limit, limit_eval = 4, 8

    model, reference, sets = _load(args.device, limit_eval)
    base = {split: _measure(model, reference, sets, sets[split][:limit]) for split in args.splits}
    jobs = []
    for split in args.splits:
        n = len(sets[split][:limit])
        steps = 2 if args.quick else max(1, math.ceil(args.epochs * n / args.batch_size))
        for method in args.methods:
            for lr_name in args.lrs:
                for protocol in args.protocols:
                    jobs.append(dict(
                        split=split, method=method, lr_name=lr_name, lr=LR_GRID[lr_name],
                        protocol=protocol, converged=PROTOCOLS[protocol], steps=steps,
                        batch_size=args.batch_size, eval_every=max(1, steps // 10),
                        seed=args.seed, device=args.device, limit=limit, limit_eval=limit_eval,
                    ))  # fmt: skip
    fresh = not (args.in_process or args.quick)
    rows = _run_all(baseline_job, jobs, fresh=fresh)
    for row in rows:
        if row.get("status") == "ok":
            row.update(_deltas(row["after"], base[row["split"]]))
        row["class"] = _classify(row) if row.get("status") in ("ok", "diverged") else "error"

    edit_jobs = [
        dict(split=s, device=args.device, limit=limit, limit_eval=limit_eval) for s in args.splits
    ]
    edits: dict[str, dict] = {}
    for job, edit in zip(edit_jobs, _run_all(edit_job, edit_jobs, fresh=fresh)):
        if edit.get("status") == "error":
            print(f"edit memory on {job['split']} failed:\n{edit['error']}", flush=True)
            edits[job["split"]] = edit
            continue
        b = base[job["split"]]
        edit["deltas"] = _deltas(edit["at_operating_point"], b)
        for s in edit["alpha_sweep"]:
            s.update(_deltas(s, b))
        target = -edit["deltas"]["d_forget"]
        reach: list[tuple[float, dict]] = []
        for r in rows:
            if r["split"] == job["split"] and r.get("status") == "ok" and r["converged"]:
                secs = _seconds_to_reach(r, target)
                if secs is not None:
                    reach.append((secs, r))
        if reach and target > 0:
            secs, best = min(reach, key=lambda x: x[0])
            edit["speed_ratio"] = {
                "baseline": f"{best['method']} lr={best['lr_name']}",
                "baseline_seconds": secs,
                "edit_seconds": edit["build_install_seconds"],
                "ratio": secs / edit["build_install_seconds"],
            }
        edits[job["split"]] = edit

    summary = {
        "model": model.name,
        "splits": args.splits,
        "lr_grid": {k: LR_GRID[k] for k in args.lrs},
        "protocols": args.protocols,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "thresholds": {"collapse_nats": COLLAPSE_NATS, "no_effect_nats": NO_EFFECT_NATS},
        "rmu_steering_x_norm": RMU_STEERING_X_NORM,
        "base": base,
        "runs": rows,
        "edit_memory": edits,
        "collapse_map": {
            f"{r['split']}/{r['method']}/{r['protocol']}/{r['lr_name']}": r["class"] for r in rows
        },
        "version": tt.__version__,
        "seconds": time.perf_counter() - t_start,
        "quick": args.quick,
    }
    out = Path(args.out)
    C.write_json(out.with_suffix(".json"), summary)
    fig = plot_pareto([r for r in rows if r.get("status") == "ok"], edits, args.splits)
    tt.save_figure(fig, out.with_suffix(".html"), include_plotlyjs="cdn")
    for r in rows:
        extra = ""
        if "d_forget" in r:
            extra = (
                f" ΔF={r['d_forget']:+.3g} ΔR={r['d_retain']:+.3g} steps={len(r['log']['loss'])}"
                f" returned={r['returned_step']} train={r['train_seconds']:.3g}s"
            )
        print(f"{_label(r)} [{r['class']}]{extra}")
    for split, e in edits.items():
        if "speed_ratio" in e:
            print(f"{split}: speed ratio {e['speed_ratio']}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.html')}")


if __name__ == "__main__":
    main()
