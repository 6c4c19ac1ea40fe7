"""Does TIE say where the edit works? Edit efficacy per (layer, step) against the TIE of that cell.

The forget facts (default ``forget05``: 2 people × 12 facts) are traced with ``target="object"``
(``tt.trace_tie``, ``T = 8``, resid). For each memory kind below and each cell ``(l, k)`` of the
8 × 8 grid, the same memory is built at layer ``l`` and installed with the one-step set
``edit_steps={k}``; the forget facts are sampled with the default sampler and the **efficacy**
of the cell is ``−Δ object LP`` (the object's log-probability at the end of the loop, frozen at
its commit, edited minus unedited; nats, more = more forgotten), with the object leak beside
it. Rows ``k = all`` fire on every step (one per layer).

Memory kinds (each fixed across cells; only the layer and step set move):

* ``slots`` — the answer-slot gate with the never-met update at the margin and α chosen by
  ``experiments/edit_tune_slots.py`` (read from ``--slots-point``); its keys and radii are
  measured at each layer, so the gate is the same rule, calibrated where it acts;
* ``paper`` — the paper's memory (Eq. 11–12, ungated, every position, α = 1, λ = 0.01).

Reported: Spearman's ρ between the 64 cells' mean TIE and mean efficacy, with a 95% bootstrap
CI that resamples facts (both means recomputed per resample); the same over the 8 layers with
every step firing (TIE summed over steps); the rank, among the 64 cells, of the cell chosen by
``tt.select_coordinate`` (Eq. 5, β = 0, resid) — 1 = the most effective.

Run: ``python experiments/edit_vs_tie.py [--forget forget05] [--out figures]``; writes
``edit_vs_tie.{json,md}``. Reads operating points; writes none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_tune_slots as SLOTS  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.core._io import atomic_write_text  # noqa: E402
from tie_tracing.evaluation.objects import object_leak, object_token_ids  # noqa: E402
from tie_tracing.zoo import corpus  # noqa: E402

T = 8


def loop_lp_and_leak(model, facts) -> tuple[np.ndarray, np.ndarray]:
    """Per fact: the object's final frozen LP and whether the sampled answer writes it."""
    res = tt.diffuse(model, facts, steps=T, progress=False, target="object")
    lp = res.target_logprobs[:, -1].double().numpy()
    leak = []
    for r, f in enumerate(facts):
        _, answer = model.encode(f.question, f.answer)
        final = res.answer_tokens(r)[-1].tolist()
        leak.append(float(object_leak(final, object_token_ids(model.tokenizer, answer, f))))
    return lp, np.array(leak)


def build(kind: str, model, facts, layer: int, point, calib, names):
    if kind == "slots":
        return tt.EditMemory.build(
            model, facts, SLOTS.slots_config(layer, point["margin"], point["alpha"]),
            targets="unknown", unknown_names=names, calibration=calib,
        )  # fmt: skip
    return tt.EditMemory.build(model, facts, tt.EditConfig(layer=layer))


def spearman_ci(tie: np.ndarray, eff: np.ndarray, n: int, seed: int) -> tuple[float, float, float]:
    """ρ of the fact-means over cells, and a percentile bootstrap CI resampling facts."""
    rho = float(spearmanr(tie.mean(0), eff.mean(0)).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n):
        idx = rng.integers(0, tie.shape[0], tie.shape[0])
        r = spearmanr(tie[idx].mean(0), eff[idx].mean(0)).statistic
        if np.isfinite(r):
            boots.append(r)
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return rho, float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", default="forget05")
    ap.add_argument("--kinds", nargs="+", default=["slots", "paper"])
    ap.add_argument("--slots-point", default="figures/edit_tune_slots.json")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="figures")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", args.forget)
    point = json.loads(Path(args.slots_point).read_text())["chosen"]
    calib = SLOTS.calibration_prompts()
    names = corpus.holdout_names()[:8]
    t0 = time.perf_counter()
    trace = tt.trace_tie(model, facts, steps=T, modules=("resid",), target="object", progress=False)
    trace_s = time.perf_counter() - t0
    tie = trace.tie[..., 0].double().numpy()  # [fact, layer, step]
    n_layers = tie.shape[1]
    coord = tt.select_coordinate(trace, beta=0.0, modules="resid")
    base_lp, base_leak = loop_lp_and_leak(model, facts)
    out: dict = {
        "forget": args.forget, "n_facts": len(facts), "steps": T, "trace_seconds": trace_s,
        "tie_mean": tie.mean(0).tolist(),
        "selected": {"layer": coord.layer, "step": coord.step, "module": coord.module},
        "unedited": {"object_lp": float(base_lp.mean()), "leak": float(base_leak.mean())},
        "slots_point": {k: point[k] for k in ("layer", "margin", "alpha")},
        "kinds": {},
    }  # fmt: skip
    for kind in args.kinds:
        eff = np.zeros((len(facts), n_layers, T))
        leak = np.zeros((n_layers, T))
        eff_all = np.zeros((len(facts), n_layers))
        leak_all = np.zeros(n_layers)
        for layer in range(n_layers):
            memory = build(kind, model, facts, layer, point, calib, names)
            for k in range(T):
                with memory.with_config(edit_steps={k}).install(model):
                    lp, lk = loop_lp_and_leak(model, facts)
                eff[:, layer, k] = base_lp - lp
                leak[layer, k] = lk.mean()
            with memory.install(model):
                lp, lk = loop_lp_and_leak(model, facts)
            eff_all[:, layer] = base_lp - lp
            leak_all[layer] = lk.mean()
            print(
                f"[{kind}] layer {layer}: efficacy by step "
                + " ".join(f"{v:5.2f}" for v in eff[:, layer].mean(0))
                + f" | all steps {eff_all[:, layer].mean():.2f} (leak {leak_all[layer]:.2f})",
                flush=True,
            )
        cells = tie.reshape(len(facts), -1)
        rho = spearman_ci(cells, eff.reshape(len(facts), -1), args.resamples, args.seed)
        rho_layers = spearman_ci(tie.sum(2), eff_all, args.resamples, args.seed)
        mean_eff = eff.mean(0)
        order = np.argsort(-mean_eff.reshape(-1), kind="stable")
        sel = coord.layer * T + coord.step
        rank = int(np.nonzero(order == sel)[0][0]) + 1
        best = np.unravel_index(int(order[0]), mean_eff.shape)
        out["kinds"][kind] = {
            "efficacy": mean_eff.tolist(), "leak": leak.tolist(),
            "efficacy_all_steps": eff_all.mean(0).tolist(), "leak_all_steps": leak_all.tolist(),
            "spearman_cells": {"rho": rho[0], "low": rho[1], "high": rho[2], "n": n_layers * T},
            "spearman_layers": {"rho": rho_layers[0], "low": rho_layers[1], "high": rho_layers[2],
                                "n": n_layers},
            "selected_rank": rank, "selected_efficacy": float(mean_eff[coord.layer, coord.step]),
            "best_cell": {"layer": int(best[0]), "step": int(best[1]),
                          "efficacy": float(mean_eff[best])},
        }  # fmt: skip
        print(
            f"[{kind}] ρ(cells) {rho[0]:.2f} [{rho[1]:.2f}, {rho[2]:.2f}]; ρ(layers) "
            f"{rho_layers[0]:.2f} [{rho_layers[1]:.2f}, {rho_layers[2]:.2f}]; selected "
            f"({coord.layer}, {coord.step}) ranks {rank}/{n_layers * T}",
            flush=True,
        )
    out["seconds"] = time.perf_counter() - t_start
    out["command"] = " ".join(["python", *sys.argv])
    dest = Path(args.out)
    atomic_write_text(dest / "edit_vs_tie.json", json.dumps(out, indent=1))
    atomic_write_text(dest / "edit_vs_tie.md", markdown(out))
    print(f"wrote {dest / 'edit_vs_tie'}.{{json,md}} in {out['seconds']:.0f} s")


def markdown(out: dict) -> str:
    sel = out["selected"]
    lines = [
        f"# Edit efficacy against TIE — {out['forget']} ({out['n_facts']} facts, T = {out['steps']})\n",
        f"Command: `{out['command']}`. Generated by `experiments/edit_vs_tie.py`. Efficacy: −Δ "
        "object LP in the loop (nats; one-step edits `edit_steps={k}` at layer l). TIE: "
        f"`trace_tie(target='object')`, resid. Eq. 5 (β = 0) selects ({sel['layer']}, "
        f"{sel['step']}).\n",
        "| memory | ρ over 64 cells [95% CI] | ρ over 8 layers, all steps [95% CI] | "
        "rank of the TIE-selected cell | its efficacy | most effective cell |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in out["kinds"].items():
        c, la, b = r["spearman_cells"], r["spearman_layers"], r["best_cell"]
        lines.append(
            f"| {kind} | {c['rho']:.2f} [{c['low']:.2f}, {c['high']:.2f}] | {la['rho']:.2f} "
            f"[{la['low']:.2f}, {la['high']:.2f}] | {r['selected_rank']}/64 | "
            f"{r['selected_efficacy']:.2f} | ({b['layer']}, {b['step']}) {b['efficacy']:.2f} |"
        )
    for kind, r in out["kinds"].items():
        lines += [f"\n## {kind}: efficacy by layer (rows) and step (columns)\n",
                  "| layer | " + " | ".join(str(k) for k in range(out["steps"])) + " | all |",
                  "|---|" + "---|" * (out["steps"] + 1)]  # fmt: skip
        for layer, row in enumerate(r["efficacy"]):
            lines.append(
                f"| {layer} | " + " | ".join(f"{v:.2f}" for v in row)
                + f" | {r['efficacy_all_steps'][layer]:.2f} |"
            )  # fmt: skip
    lines += ["\n## Mean TIE (resid) by layer and step\n",
              "| layer | " + " | ".join(str(k) for k in range(out["steps"])) + " |",
              "|---|" + "---|" * out["steps"]]  # fmt: skip
    for layer, row in enumerate(out["tie_mean"]):
        lines.append(f"| {layer} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
