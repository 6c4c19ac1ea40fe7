"""Training-time unlearning baselines beside the edit memory (SPEC §10.6; paper §IV-D, Figure 5).

On the embedded MDLM every method of ``tt.unlearn`` (GA, GD, NPO, SimNPO, RMU; full
fine-tuning) runs over a named learning-rate grid under two protocols:

* ``unmitigated`` — the method as open-unlearning defines it, no clipping, no stopping;
* ``converged``  — retain-NLL anchor, gradient clipping at 1.0 and early stopping when RetainLP
  (on ``retain_tune``) drifts by more than 1 nat; the last evaluation within the threshold is
  returned. Here "converged" names that protocol, not a loss that has stopped moving: runs
  that never cross the threshold simply end at their step budget.

**The reduced grid (the default; 7–13 minutes on one shared CPU thread).** A pilot on the
previous world's 6-block model (unmitigated, forget01, 25 steps, learning rates 1e-5 … 1e-2;
RMU also 1e-1) placed each
method's "does nothing" and "collapses" ends; the default keeps three rates per method that
span them (four for NPO, whose collapse point is the highest), ``METHOD_LRS``:

=========  ============================  ===============================================
method     learning rates                pilot (ΔForgetLP / ΔRetainLP, nats)
=========  ============================  ===============================================
GA         1e-5, 1e-4, 1e-3              −0.009/−0.0003, −19/−0.31, −198/−67
GD         1e-5, 1e-4, 1e-3              −0.004/−0.0001, −8.8/−0.08, −155/−17
NPO        1e-5, 1e-4, 1e-3, 1e-2        −0.04/−0.0006, −21/−0.33, −77/−3.9, −77/−64
SimNPO     1e-4, 1e-3, 1e-2              −0.40/−0.001, −36/−1.1, −70/−65
RMU        1e-3, 1e-2, 1e-1              −0.0002/−0.002, −0.16/−0.23, −124/−128
=========  ============================  ===============================================

forget01 runs both protocols for 10 epochs (batches of 8 facts: 15 steps on world v3's 12
facts); forget05 runs the converged protocol only, for 5 epochs (15 steps on its 24 facts). Under the converged protocol
GA *is* GD (the anchor the protocol adds to GA is GD's retain term, with the same seed and
batches), so GA is run unmitigated only. ``--grid full`` runs every method at every rate of
``LR_GRID`` under both protocols on both splits, for ``--epochs`` (default 10) epochs each
(about two hours on one CPU thread).

Fact sets (``edit_common.fact_sets``, disjoint where it matters): the retain batches come from
``retain_pool``, early stopping watches ``retain_tune``, and the reported numbers are measured
on sets no run trained or stopped on: ΔForgetLP (the forget split), ΔRetainLP
(``retain_eval``), Δneighbour, Δworld (masked estimator, mean nats per fact against the base
model), forget quality against ``tiny-mdlm-retain`` (KS p-value of truth ratios), training
wall-clock (evaluations excluded) and memory. Every configuration runs in a child process
forked from one that has loaded the model, the retain-only reference and the facts, so its
peak RSS is "loaded process + this run" and ``extra_memory_bytes`` is what the run added
(on a GPU: ``torch.cuda.max_memory_allocated``).

Each run is classified: ``collapse`` (RetainLP on ``retain_eval`` drops by more than
``COLLAPSE_NATS`` or the loss diverges), ``halted`` (converged protocol only: the first
evaluation, ``EVAL_EVERY_CONVERGED`` steps in, already drifted past the threshold, so the base
model is returned — the protocol caught a collapse), ``no effect`` (ForgetLP moves by less
than ``NO_EFFECT_NATS``), otherwise ``trade-off`` — which answers where each method collapses
the MDLM and where it does nothing.

The edit memory is measured on the same facts, in the same kind of child process: build +
install time and memory at each point, then its α sweep (``ALPHA_SCALES`` × the point's α) as
the curves of the Pareto figure. The points are ``EDIT_POINTS``, every build argument explicit
and the same two memories as ``experiments/unlearning_suite.py``: ``paper_memory``, the paper's
memory (Eq. 11–12: ungated, every position, subject keys, one ridge; the package defaults α 1,
λ 0.01) at the middle block, and ``token_gate``, the token-gated memory at the previous world's
operating point (layer 0, α 2, λ 0.1, one ridge per subject, update and keys at the answer
slots), not re-tuned on this model; neither was tuned on a reported set. ``--points FILE ...``
draws the named points of tuning files instead (the ``points`` section a tuning script
writes). The model's stored operating point is never read. ``speed_ratio`` is the training
time the fastest converged baseline needs to reach the edit's ΔForgetLP (training time × the
first evaluated step that got there ÷ steps run, at or before the returned step) over the
edit's build + install time; ``null`` with the reason when no converged run reaches it.
``speed_ratio_sweep`` does the same for every α of the sweep (the memory is built once; α
changes without recapture).

Writes ``figures/baselines.json``, ``figures/baselines.md`` (the table) and
``figures/baselines.html`` (forget drop against retain drop, one point per method ×
configuration, each edit point's α sweep as a curve; log axes, drops ≤ 1e-3 drawn at 1e-3
with the true values on hover; ``halted`` runs — converged runs whose first evaluation already
crossed the drift threshold, so they return the base model — are listed, not drawn).

Run: ``python experiments/baselines.py`` (reduced grid), ``--grid full``, ``--quick`` (a smoke
run: 2 steps, 4 facts, in one process), ``--device cuda``; ``--reanalyse figures/baselines.json``
redoes the bookkeeping of a saved run (thresholds, classes, speed ratios, table, figure)
without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

SPLITS = ("forget01", "forget05")
METHODS = tt.evaluation.unlearning.METHODS
#: Named learning-rate grid; ``1e-5`` is open-unlearning's TOFU default.
LR_GRID = {"1e-5": 1e-5, "1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2, "1e-1": 1e-1}
STANDARD_LR = "1e-5"
#: The reduced grid: per method, rates from "does nothing" to "collapses" (pilot in the docstring).
METHOD_LRS = {
    "ga": ("1e-5", "1e-4", "1e-3"),
    "gd": ("1e-5", "1e-4", "1e-3"),
    "npo": ("1e-5", "1e-4", "1e-3", "1e-2"),
    "simnpo": ("1e-4", "1e-3", "1e-2"),
    "rmu": ("1e-3", "1e-2", "1e-1"),
}
#: The reduced grid: protocols per split, epochs per split.
REDUCED_PROTOCOLS = {"forget01": ("unmitigated", "converged"), "forget05": ("converged",)}
REDUCED_EPOCHS = {"forget01": 10.0, "forget05": 5.0}
PROTOCOLS = {"unmitigated": False, "converged": True}
BATCH_SIZE = 8
#: Evaluation interval of converged runs (early stopping restores the last evaluation within
#: the drift threshold, so this is the protocol's granularity); unmitigated runs evaluate only
#: the base model and their last step (their reported numbers come from the final measurement).
EVAL_EVERY_CONVERGED = 2
ALPHA_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
COLLAPSE_NATS = 5.0
NO_EFFECT_NATS = 0.5
#: RMU's steering coefficient as a multiple of the mean residual-stream norm at its layer
#: (open-unlearning's absolute default of 300 is tuned for 7B models).
RMU_STEERING_X_NORM = 4.0
EVAL_SETS = {"retain": "retain_eval", "neighbour": "neighbour", "world": "world"}
COLORS = {"ga": "#d62728", "gd": "#ff7f0e", "npo": "#2ca02c", "simnpo": "#1f77b4", "rmu": "#9467bd"}
#: The edit memory's points drawn beside the baselines (see the docstring); ``layer=None``:
#: the model's middle block. Every build argument is explicit.
EDIT_POINTS: dict[str, dict[str, Any]] = {
    "paper_memory": {
        "layer": None, "module": "resid", "alpha": 1.0, "lam": 0.01, "q": None, "steps": None,
        "subject_gate": False, "ridge_blocks": "memory", "apply_at": "all", "key_at": "subject",
    },
    "token_gate": {
        "layer": 0, "module": "resid", "alpha": 2.0, "lam": 0.1, "q": None, "steps": None,
        "subject_gate": True, "gate_kind": "tokens", "ridge_blocks": "subject",
        "apply_at": "answer", "key_at": "answer",
    },
}  # fmt: skip
EDIT_STYLE = {"paper_memory": "dash", "token_gate": "solid"}

#: What the parent loaded before forking (the children inherit it).
_STATE: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------
# measurements (run inside child processes)
# ---------------------------------------------------------------------------------------


def _load(device: str | None, limit_eval: int | None = None):
    """Model (its shipped operating point kept for reports only), retain-only reference (or ``None``), fact sets
    (retain-side sets cut to ``limit_eval`` facts in a smoke run)."""
    import torch

    torch.set_num_threads(1)
    model = tt.load_model(C.MODEL, device=device) if device else C.load()
    if device:
        model.shipped_operating_point = model.info.get("operating_point")
    try:
        reference = tt.load_model("tiny-mdlm-retain", device=device)
    except tt.CheckpointNotFoundError:
        reference = None
    sets = C.fact_sets()
    for k in ("retain_eval", "neighbour", "world", "retain_tune", "retain_pool", "retain_cal"):
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
        ev = tt.evaluate(
            model, {"forget": plain}, reference=reference, generate=False, n_resamples=200
        )
        out["forget_quality"] = ev["forget"]["forget_quality"].value
    return out


def _rmu_steering(model, forget, layer: int) -> float:
    """``RMU_STEERING_X_NORM`` × the mean norm of block ``layer``'s output at answer tokens."""
    import torch

    from tie_tracing.core.backbones import hidden_of

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
    """One method × learning rate × protocol on one split."""
    model, reference, sets = _STATE["model"], _STATE["reference"], _STATE["sets"]
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
        k: job[k]
        for k in ("split", "method", "lr_name", "lr", "protocol", "converged", "steps", "epochs")
    }
    if job["method"] == "rmu":
        row["rmu"] = {"layer": kw["rmu_layer"], "steering": kw["rmu_steering"]}
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
        trainable_parameters=log.trainable_parameters,
        stopped_early=log.stopped_early,
        steps_run=log.steps_run,
        returned_step=log.returned_step,
    )
    return row


def edit_job(job: dict) -> dict:
    """The edit memory at one operating point on one split: build + install, then the α sweep."""
    model, reference, sets = _STATE["model"], _STATE["reference"], _STATE["sets"]
    forget = sets[job["split"]][: job["limit"]]
    point = job["point"]
    calibration = job.get("calibration") if point.get("subject_gate") else None
    start, source = _memory_now(model.param_device)
    t0 = time.perf_counter()
    memory = C.build(model, forget, point, calibration=calibration)
    handle = memory.install(model)
    seconds = time.perf_counter() - t0
    peak, _ = _memory_now(model.param_device)
    at_op = _measure(model, reference, sets, forget)
    handle.remove()
    sweep = []
    for scale in ALPHA_SCALES:
        scaled = memory.with_config(alpha=memory.config.alpha * scale)
        with scaled.install(model):
            m = _measure(model, None, sets, forget)
        sweep.append({"alpha": scaled.config.alpha, "scale": scale, **m})
    return {
        "split": job["split"],
        "point": job["point_name"],
        "source": job["source"],
        "config": memory.config.to_dict(),
        "build_install_seconds": seconds,
        "timings": dict(memory.timings),
        "peak_memory_bytes": peak,
        "extra_memory_bytes": peak - start,
        "memory_source": source,
        "at_operating_point": at_op,
        "alpha_sweep": sweep,
        "status": "ok",
    }


def _guarded(fn, job):
    try:
        return fn(job)
    except Exception:  # a failed configuration is recorded, not fatal to the sweep
        keys = ("split", "method", "lr_name", "protocol", "point_name")
        return {**{k: job.get(k) for k in keys}, "status": "error",
                "error": traceback.format_exc()}  # fmt: skip


def _child(fn_name: str, job: dict, conn) -> None:
    try:
        conn.send(_guarded(globals()[fn_name], job))
    finally:
        conn.close()


def _run_all(fn, jobs: list[dict], *, fresh: bool) -> list[dict]:
    """Run ``fn`` on each job, each in a child forked from this (loaded) process when ``fresh``."""
    out = []
    for i, job in enumerate(jobs):
        if fresh:
            ctx = mp.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(fn.__name__, job, send))
            proc.start()
            send.close()
            try:
                row = recv.recv()
            except EOFError:
                row = {**job, "status": "error", "error": f"child exited ({proc.exitcode})"}
            proc.join()
        else:
            row = _guarded(fn, job)
        print(f"[{i + 1}/{len(jobs)}] {_label(row)}", flush=True)
        out.append(row)
    return out


def _label(row: dict) -> str:
    if "method" not in row or row.get("method") is None:
        return f"edit memory {row.get('point')} {row.get('split')}: {row.get('status')}"
    return f"{row['split']} {row['method']} lr={row.get('lr_name')} {row.get('protocol')}: " + (
        row.get("status", "?")
    )


# ---------------------------------------------------------------------------------------
# operating points of the edit memory
# ---------------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(C.ROOT))
    except ValueError:
        return str(path)


def edit_points(paths, model, sets) -> dict[str, dict[str, Any]]:
    """``name -> {"point", "source", "calibration"}`` for the edit curves: ``EDIT_POINTS``, or
    the points of the tuning files ``paths`` when given (``calibration``: the gate's
    calibration prompts, for cosine-gated points)."""
    found: dict[str, dict[str, Any]] = {}
    calibration_spec = None
    for path in paths:
        data = json.loads(Path(path).read_text())
        for name, point in data.get("points", {}).items():
            found[name] = {"point": dict(point), "source": _shown(Path(path))}
        calibration_spec = data.get("calibration") or calibration_spec
    if not paths:
        for name, point in EDIT_POINTS.items():
            point = dict(point)
            if point["layer"] is None:
                point["layer"] = model.num_layers // 2
            found[name] = {"point": point, "source": "EDIT_POINTS (experiments/baselines.py)"}
    for entry in found.values():  # only the cosine gate is calibrated
        if (
            entry["point"].get("subject_gate")
            and entry["point"].get("gate_kind", "cosine") == "cosine"
        ):
            spec = entry["point"].get("calibration") or calibration_spec
            entry["calibration"] = C.calibration_facts({"calibration": spec}, sets)
    return found


# ---------------------------------------------------------------------------------------
# analysis, table and figure
# ---------------------------------------------------------------------------------------


def _deltas(after: dict, base: dict) -> dict:
    return {f"d_{k}": after[k] - base[k] for k in ("forget", "retain", "neighbour", "world")}


def _classify(row: dict) -> str:
    if row["status"] == "diverged":
        return "collapse"
    if row["status"] != "ok":
        return "error"
    if row.get("stopped_early") and row.get("returned_step") == 0:
        return "halted"
    if -row["d_retain"] > COLLAPSE_NATS:
        return "collapse"
    if abs(row["d_forget"]) < NO_EFFECT_NATS:
        return "no effect"
    return "trade-off"


def _seconds_to(row: dict, step: int) -> float:
    """Training seconds of ``row`` up to ``step`` (pro rata over the steps it ran)."""
    return row["train_seconds"] * step / max(1, len(row["log"]["loss"]))


def _seconds_to_reach(row: dict, target_drop: float) -> float | None:
    """Training seconds until the run's ForgetLP first dropped by ``target_drop``, counted only
    when the model the run returns has dropped by that much too (a transient dip that the run
    later undoes, as RMU's do, is not a model one could stop at); ``None``: never."""
    log = row["log"]
    base = log["forget_lp"][0]
    returned = log["forget_lp"][log["eval_steps"].index(log["returned_step"])]
    if base - returned < target_drop:
        return None
    for step, lp in zip(log["eval_steps"], log["forget_lp"]):
        if step > 0 and base - lp >= target_drop and step <= log["returned_step"]:
            return _seconds_to(row, step)
    return None


def speed_ratio(rows: list[dict], split: str, target_drop: float, edit_seconds: float) -> dict:
    """Training time of the fastest converged run on ``split`` whose returned model's ForgetLP
    dropped by ``target_drop``, over the edit's build + install time.

    When no converged run gets there, ``ratio`` is ``None`` with the reason, and
    ``lower_bound`` compares the edit with the converged run that forgot most: the training
    time to its returned step over the edit's time (the baseline buys less forgetting with it).
    """
    converged = [r for r in rows if r["split"] == split and r.get("status") == "ok"]
    converged = [r for r in converged if r["converged"]]
    out: dict[str, Any] = {"target_d_forget": -target_drop, "edit_seconds": edit_seconds}
    if target_drop <= 0:
        return {**out, "ratio": None, "reason": "the edit does not lower ForgetLP"}
    reach = [(s, r) for r in converged if (s := _seconds_to_reach(r, target_drop)) is not None]
    if reach:
        secs, best = min(reach, key=lambda x: x[0])
        return {
            **out,
            "baseline": f"{best['method']} lr={best['lr_name']}",
            "baseline_seconds": secs,
            "ratio": secs / edit_seconds,
        }
    out.update(ratio=None, reason="no converged baseline reaches this ΔForgetLP")
    strongest = min(converged, key=lambda r: r["d_forget"], default=None)
    if strongest is not None:
        secs = _seconds_to(strongest, strongest["returned_step"])
        out["reason"] += (
            f" (strongest: {strongest['method']} lr={strongest['lr_name']}, ΔForgetLP "
            f"{strongest['d_forget']:+.3g} at ΔRetainLP {strongest['d_retain']:+.3g})"
        )
        out["lower_bound"] = {
            "baseline": f"{strongest['method']} lr={strongest['lr_name']}",
            "baseline_d_forget": strongest["d_forget"],
            "baseline_seconds": secs,
            "ratio": secs / edit_seconds,
        }
    return out


def analyse(rows: list[dict], edits: dict[str, dict[str, dict]], base: dict) -> None:
    """Deltas against the base model, classes and speed ratios, written into ``rows`` and
    ``edits`` (pure bookkeeping on measured values: ``--reanalyse`` repeats it)."""
    for row in rows:
        if row.get("status") == "ok":
            row.update(_deltas(row["after"], base[row["split"]]))
        row["class"] = _classify(row) if row.get("status") in ("ok", "diverged") else "error"
    for split, by_point in edits.items():
        for edit in by_point.values():
            if edit.get("status") != "ok":
                continue
            edit["deltas"] = _deltas(edit["at_operating_point"], base[split])
            for s in edit["alpha_sweep"]:
                s.update(_deltas(s, base[split]))
            secs = edit["build_install_seconds"]
            edit["speed_ratio"] = speed_ratio(rows, split, -edit["deltas"]["d_forget"], secs)
            edit["speed_ratio_sweep"] = [
                {"alpha": s["alpha"], **speed_ratio(rows, split, -s["d_forget"], secs)}
                for s in edit["alpha_sweep"]
            ]


def collapse_map(rows: list[dict]) -> dict[str, str]:
    """``"split/method/protocol/lr" -> class``."""
    return {f"{r['split']}/{r['method']}/{r['protocol']}/{r['lr_name']}": r["class"] for r in rows}


def _fmt(x: float | None, spec: str = "+.3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def table_markdown(summary: dict) -> str:
    """The per-row table (baselines, then the edit memory) as Markdown."""
    lines = [
        "| split | method | lr | protocol | class | ΔForgetLP | ΔRetainLP | Δneighbour | Δworld "
        "| FQ | steps (returned) | train s | peak MiB | extra MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split in summary["splits"]:
        fq = summary["base"][split]["forget_quality"]
        lines.append(
            f"| {split} | base model | | | | (ForgetLP {summary['base'][split]['forget']:.3g}) "
            f"| (RetainLP {summary['base'][split]['retain']:.3g}) | | | {_fmt(fq, '.2g')} "
            "| | | | |"
        )
        for r in summary["runs"]:
            if r["split"] != split:
                continue
            if r.get("status") != "ok":
                lines.append(
                    f"| {split} | {r['method']} | {r['lr_name']} | {r['protocol']} | "
                    f"{r['class']} ({r.get('status')}) | | | | | | | | | |"
                )
                continue
            lines.append(
                f"| {split} | {r['method']} | {r['lr_name']} | {r['protocol']} | {r['class']} "
                f"| {_fmt(r['d_forget'])} | {_fmt(r['d_retain'])} | {_fmt(r['d_neighbour'])} "
                f"| {_fmt(r['d_world'])} | {_fmt(r['after']['forget_quality'], '.2g')} "
                f"| {r['steps_run']} ({r['returned_step']}) | {r['train_seconds']:.3g} "
                f"| {r['peak_memory_bytes'] / 2**20:.0f} | {r['extra_memory_bytes'] / 2**20:.0f} |"
            )
        for name, e in summary["edit_memory"].get(split, {}).items():
            if e.get("status") != "ok":
                lines.append(f"| {split} | edit memory ({name}) | | | error | | | | | | | | | |")
                continue
            d, cfg = e["deltas"], e["config"]
            lines.append(
                f"| {split} | edit memory ({name}) | α={cfg['alpha']:g} | build+install | "
                f"| {_fmt(d['d_forget'])} | {_fmt(d['d_retain'])} | {_fmt(d['d_neighbour'])} "
                f"| {_fmt(d['d_world'])} | {_fmt(e['at_operating_point']['forget_quality'], '.2g')} "
                f"| — | {e['build_install_seconds']:.3g} | {e['peak_memory_bytes'] / 2**20:.0f} "
                f"| {e['extra_memory_bytes'] / 2**20:.0f} |"
            )
    return "\n".join(lines) + "\n"


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
                    and r["class"] != "halted"
                ]  # fmt: skip
                if not pts:
                    continue
                name = f"{method} ({protocol})"
                fig.add_trace(
                    go.Scatter(
                        x=[max(floor, -r["d_forget"]) for r in pts],
                        y=[max(floor, -r["d_retain"]) for r in pts],
                        mode="markers+text",
                        text=[r["lr_name"] for r in pts],
                        textposition="top center",
                        textfont=dict(size=9, color=COLORS[method]),
                        name=name,
                        legendgroup=name,
                        showlegend=name not in seen,
                        marker=dict(
                            color=COLORS[method],
                            symbol="circle" if protocol == "converged" else "x",
                            size=10,
                        ),
                        hovertext=[
                            f"{method} {protocol} lr={r['lr_name']}<br>ΔForgetLP={r['d_forget']:.4g}"
                            f"<br>ΔRetainLP={r['d_retain']:.4g}<br>{r['class']}"
                            f"<br>train {r['train_seconds']:.3g}s, {r['steps_run']} steps"
                            for r in pts
                        ],  # fmt: skip
                        hoverinfo="text",
                    ),
                    row=1,
                    col=col,
                )
                seen.add(name)
        for point, edit in edits.get(split, {}).items():
            if edit.get("status") != "ok":
                continue
            sweep = edit["alpha_sweep"]
            name = f"edit memory, {point} (α sweep)"
            fig.add_trace(
                go.Scatter(
                    x=[max(floor, -s["d_forget"]) for s in sweep],
                    y=[max(floor, -s["d_retain"]) for s in sweep],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=name not in seen,
                    line=dict(color="black", dash=EDIT_STYLE.get(point, "solid")),
                    marker=dict(color="black", symbol="diamond", size=7),
                    hovertext=[
                        f"edit ({point}) α={s['alpha']:.3g} (×{s['scale']})"
                        f"<br>ΔForgetLP={s['d_forget']:.4g}<br>ΔRetainLP={s['d_retain']:.4g}"
                        for s in sweep
                    ],  # fmt: skip
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
            seen.add(name)
        fig.update_xaxes(type="log", title_text="forget drop −ΔForgetLP (nats)", row=1, col=col)
    fig.update_yaxes(type="log")  # every panel: a shared axis does not inherit the type
    fig.update_yaxes(title_text="retain drop −ΔRetainLP (nats)", row=1, col=1)
    fig.update_layout(
        title="Training-time baselines vs the edit memory on tiny-mdlm (lower right is better; "
        "× unmitigated, ● converged; labels: learning rate;<br>drops ≤ 1e-3 drawn at 1e-3; "
        "halted runs, which return the base model, not drawn)",
        height=560,
        width=620 * len(splits),
    )
    return fig


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def plan(args, sets, limit) -> list[dict]:
    """The baseline jobs of the reduced (default) or full grid."""
    jobs = []
    for split in args.splits:
        n = len(sets[split][:limit])
        if args.grid == "full":
            protocols, epochs = args.protocols, args.epochs or 10.0
        else:
            protocols = [p for p in REDUCED_PROTOCOLS[split] if p in args.protocols]
            epochs = args.epochs or REDUCED_EPOCHS[split]
        steps = 2 if args.quick else max(1, math.ceil(epochs * n / BATCH_SIZE))
        for method in args.methods:
            lrs = list(LR_GRID) if args.grid == "full" else list(METHOD_LRS[method])
            if args.lrs:
                lrs = [lr for lr in lrs if lr in args.lrs]
            for lr_name in lrs:
                for protocol in protocols:
                    if args.grid != "full" and method == "ga" and protocol == "converged":
                        continue  # identical to gd converged (see the docstring)
                    jobs.append(dict(
                        split=split, method=method, lr_name=lr_name, lr=LR_GRID[lr_name],
                        protocol=protocol, converged=PROTOCOLS[protocol], steps=steps,
                        epochs=epochs, batch_size=BATCH_SIZE,
                        eval_every=1 if args.quick else (
                            EVAL_EVERY_CONVERGED if PROTOCOLS[protocol] else steps
                        ),
                        seed=args.seed,
                        limit=limit,
                    ))  # fmt: skip
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=("reduced", "full"), default="reduced")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--lrs", nargs="+", default=None, help="restrict to these LR_GRID names")
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--epochs", type=float, default=None, help="override the epochs per split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--in-process", action="store_true", help="no child process per run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 4 facts")
    ap.add_argument("--out", default=str(C.FIGURES / "baselines"))
    ap.add_argument(
        "--reanalyse", type=Path, default=None, metavar="JSON",
        help="redo the analysis, table and figure of a saved run (no training)",
    )  # fmt: skip
    ap.add_argument(
        "--points", nargs="+", type=Path, default=[],
        help="tuning files whose points to draw instead of EDIT_POINTS",
    )  # fmt: skip
    args = ap.parse_args()
    C.setup()
    if args.reanalyse:
        return reanalyse(args.reanalyse)
    t_start = time.perf_counter()
    limit = limit_eval = None
    if args.quick:
        args.splits, args.lrs = args.splits[:1], ["1e-3"]
        limit, limit_eval = 4, 8

    model, reference, sets = _load(args.device, limit_eval)
    _STATE.update(model=model, reference=reference, sets=sets)
    base = {split: _measure(model, reference, sets, sets[split][:limit]) for split in args.splits}
    jobs = plan(args, sets, limit)
    fresh = not (args.in_process or args.quick)
    print(f"{len(jobs)} baseline runs", flush=True)
    rows = _run_all(baseline_job, jobs, fresh=fresh)

    points = edit_points(args.points, model, sets)  # read when used: tuning may run meanwhile
    print(f"edit points {list(points)}", flush=True)
    edit_jobs = [
        dict(split=s, point_name=name, point=e["point"], source=e["source"],
             calibration=e.get("calibration"), limit=limit)
        for s in args.splits
        for name, e in points.items()
    ]  # fmt: skip
    edits: dict[str, dict[str, dict]] = {s: {} for s in args.splits}
    for job, edit in zip(edit_jobs, _run_all(edit_job, edit_jobs, fresh=fresh)):
        split, name = job["split"], job["point_name"]
        edits[split][name] = edit
        if edit.get("status") != "ok":
            print(f"edit memory {name} on {split} failed:\n{edit.get('error')}", flush=True)
    analyse(rows, edits, base)

    summary = {
        "model": model.name,
        "grid": args.grid,
        "splits": args.splits,
        "lr_grid": LR_GRID,
        "standard_lr": STANDARD_LR,
        "method_lrs": METHOD_LRS if args.grid == "reduced" else {m: list(LR_GRID) for m in METHODS},
        "protocols": {s: sorted({j["protocol"] for j in jobs if j["split"] == s}) for s in args.splits},
        "steps": {s: next((j["steps"] for j in jobs if j["split"] == s), None) for s in args.splits},
        "epochs": {s: next((j["epochs"] for j in jobs if j["split"] == s), None) for s in args.splits},
        "batch_size": BATCH_SIZE,
        "eval_every_converged": EVAL_EVERY_CONVERGED,
        "seed": args.seed,
        "thresholds": {"collapse_nats": COLLAPSE_NATS, "no_effect_nats": NO_EFFECT_NATS},
        "rmu_steering_x_norm": RMU_STEERING_X_NORM,
        "ga_converged": "not run: identical to gd converged (same loss, seed and batches)",
        "fact_sets": {k: len(sets[k]) for k in ("retain_eval", "neighbour", "world", "retain_tune", "retain_pool")},
        "reference": None if reference is None else reference.name,
        "edit_points": {
            k: {"point": v["point"], "source": v["source"],
                "calibration_ids": [f.id for f in v["calibration"]] if v.get("calibration") else None}
            for k, v in points.items()
        },
        "alpha_scales": ALPHA_SCALES,
        "base": base,
        "runs": rows,
        "edit_memory": edits,
        "collapse_map": collapse_map(rows),
        "device": str(model.param_device),
        "torch_threads": 1,
        "version": tt.__version__,
        "seconds": time.perf_counter() - t_start,
        "quick": args.quick,
        "command": "python experiments/baselines.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    write_outputs(summary, Path(args.out))


def write_outputs(summary: dict, out: Path) -> None:
    """``out`` ``.json``, ``.md`` (the table) and ``.html`` (the Pareto figure); a summary."""
    C.write_json(out.with_suffix(".json"), summary)
    C.write_text(out.with_suffix(".md"), table_markdown(summary))
    rows, edits = summary["runs"], summary["edit_memory"]
    fig = plot_pareto([r for r in rows if r.get("status") == "ok"], edits, summary["splits"])
    tt.figures.save_figure(fig, out.with_suffix(".html"), include_plotlyjs="directory")
    print(table_markdown(summary))
    for split, es in edits.items():
        for name, e in es.items():
            if "speed_ratio" in e:
                print(f"{split} {name}: speed ratio {e['speed_ratio']}")
    print(
        f"wrote {out.with_suffix('.json')}, .md and .html ({summary['seconds']:.0f} s of measurement)"
    )


def reanalyse(path: Path) -> None:
    """Redo the bookkeeping (deltas, classes, speed ratios, table, figure) of a saved run."""
    summary = json.loads(path.read_text())
    analyse(summary["runs"], summary["edit_memory"], summary["base"])
    summary["collapse_map"] = collapse_map(summary["runs"])
    summary["thresholds"] = {"collapse_nats": COLLAPSE_NATS, "no_effect_nats": NO_EFFECT_NATS}
    summary["reanalysed"] = "python experiments/baselines.py " + " ".join(sys.argv[1:])
    write_outputs(summary, path.with_suffix(""))


if __name__ == "__main__":
    main()
