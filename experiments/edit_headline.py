"""Headline table (SPEC §10.4, issue 12): forgetting and collateral damage of each edit, honestly labelled.

Rows (every memory forgets the same facts with refusal targets; operating points are read
from ``--points``, written by ``experiments/edit_tune.py``,
``experiments/edit_tune_gate.py`` and ``experiments/edit_tune_token_gate.py`` on ``validation`` people only — never from the model's
shipped operating point, which :func:`edit_common.load` removes from ``model.info``):

* ``no_edit`` — the frozen model;
* ``paper_tie`` — the paper's memory (Eq. 11–12, ungated, every position) at the
  **TIE-selected** layer (Eq. 5 on validation facts), hyper-parameters tuned at that layer;
* ``paper_grid`` — the same memory at the **best layer by grid** (all layers searched on
  validation) — *not* a TIE selection, and labelled so;
* ``gated`` — the gated memory with the cosine subject gate (update at the answer slots,
  answer-slot keys; its gate calibrated on the named ``retain_cal`` prompts);
* ``gated_tokens`` — the same with the token subject gate (``gate_kind="tokens"``, tuned by
  ``experiments/edit_tune_token_gate.py``: no calibration prompts);
* ``random_layer`` — the paper's memory at a seeded random other layer (``paper_tie``'s
  hyper-parameters);
* ``act_steer`` — one fixed direction (the mean delta) added with ``paper_tie``'s α at every
  position of the TIE-selected layer (``mode="steer"``);
* ``ar_positional`` — the paper's memory at the layer of ``tiny-ar``'s positional-trace peak
  (``paper_tie``'s hyper-parameters), when that layer was found.

Splits: ``forget`` (``--forget``, default forget01), ``forget_paraphrase`` (its facts asked with
the paraphrased question), ``retain`` (retain_eval, 200), ``world`` (50), ``neighbour``
(152) and ``neighbour_surname`` (retain facts of people sharing a forget subject's surname).
Metrics by ``tt.evaluate`` (masked estimator; greedy 8-step sampling for exact match and
ROUGE-L; truth ratios; forget quality = KS p-value against ``tiny-mdlm-retain``) plus model
utility (open-unlearning's harmonic mean, over retain and world: probability — normalised over
the perturbed options for world —, ROUGE-L recall and the retain-side truth-ratio score; the
tiny world has no real-authors set). Every row: mean [95% bootstrap CI over facts], Δ against
``no_edit`` on the same facts with a paired t-test. The issue's utility goals are checked
and printed per row.

Writes ``figures/edit_headline[_<forget>].{json,md,html}``.
Run: ``python experiments/edit_headline.py [--forget forget01 forget05 forget10] [--points A.json B.json] [--fast]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402

import tie_tracing as tt  # noqa: E402

SPLITS = ("forget", "forget_paraphrase", "retain", "world", "neighbour", "neighbour_surname")
GOALS = {  # issue 12's utility goals, checked per row (masked estimator, default sampler)
    "forget/logprob": ("Δ ≤ −10", lambda d: d <= -10),
    "retain/logprob": ("|Δ| ≤ 0.5", lambda d: abs(d) <= 0.5),
    "neighbour/logprob": ("Δ ≥ −1", lambda d: d >= -1),
    "world/logprob": ("Δ ≥ −0.5", lambda d: d >= -0.5),
    "retain/exact_match": ("Δ ≥ −0.01", lambda d: d >= -0.01),
    "world/exact_match": ("Δ ≥ −0.01", lambda d: d >= -0.01),
}


def world_normalised_prob(model, facts) -> torch.Tensor:
    """``[fact]`` ``p̄(a) / (p̄(a) + Σ_j p̄(â_j))``, ``p̄`` the per-token geometric-mean probability."""
    alts, index = [], []
    for i, f in enumerate(facts):
        for a in (f.answer, *f.perturbed_answers):
            alts.append(dataclasses.replace(f, answer=a, object=None))
            index.append(i)
    lp = C.logprobs(model, alts).double()
    lens = torch.tensor(
        [len(model.encode(f.question, f.answer)[1]) for f in alts], dtype=torch.float64
    )
    p = (lp / lens).exp()
    out = torch.empty(len(facts), dtype=torch.float64)
    k = 0
    for i, f in enumerate(facts):
        n = 1 + len(f.perturbed_answers)
        out[i] = p[k] / p[k : k + n].sum()
        k += n
    return out


def model_utility(ev, norm_prob: torch.Tensor) -> float:
    """Harmonic mean of retain {probability, ROUGE-L, TR} and world {normalised prob, ROUGE-L, TR}."""
    r, w = ev["retain"], ev["world"]
    parts = [
        float(r["logprob_per_token"].per_fact.exp().mean()),
        r["rouge_l_recall"].value if "rouge_l_recall" in r else math.nan,
        r["tr_retain_score"].value if "tr_retain_score" in r else math.nan,
        float(norm_prob.mean()),
        w["rouge_l_recall"].value if "rouge_l_recall" in w else math.nan,
        w["tr_retain_score"].value if "tr_retain_score" in w else math.nan,
    ]
    return (
        C.hmean([p for p in parts if not math.isnan(p)])
        if any(not math.isnan(p) for p in parts)
        else math.nan
    )


def object_hit(ev, split: str, facts) -> torch.Tensor:
    """``[fact]`` 1 when the sampled answer contains the fact's object (case-insensitive)."""
    answers = ev.answers.get(split, ())
    return torch.tensor(
        [float(bool(f.object) and f.object.lower() in a.lower()) for a, f in zip(answers, facts)],
        dtype=torch.float64,
    )


def run(model, sets, points, forget_name: str, args, reference) -> dict:
    forget = sets[forget_name]
    splits = {
        "forget": forget,
        "forget_paraphrase": C.paraphrased(forget),
        "retain": sets["retain_eval"],
        "world": sets["world"],
        "neighbour": sets["neighbour"],
        "neighbour_surname": C.surname_neighbours(forget, sets["retain"]),
    }
    splits = {k: v for k, v in splits.items() if v}
    paper_tie = C.require(points, "paper_tie")
    layers = dict(points["layers"])
    methods: dict[str, tuple[str, tt.EditMemory | None]] = {"no_edit": ("no edit", None)}
    t0 = time.perf_counter()
    methods["paper_tie"] = (
        f"TimeROME (paper's memory), TIE-selected layer {paper_tie['layer']}",
        C.build(model, forget, paper_tie),
    )
    if "paper_grid" in points["points"]:
        grid = C.require(points, "paper_grid")
        methods["paper_grid"] = (
            f"TimeROME (paper's memory), best layer by grid: {grid['layer']}",
            C.build(model, forget, grid),
        )
    if "gated" in points["points"]:
        gated = C.require(points, "gated")
        methods["gated"] = (
            f"gated TimeROME (cosine subject gate, {gated['apply_at']} slots, "
            f"{gated['key_at']} keys), layer {gated['layer']}",
            C.build(model, forget, gated, calibration=C.calibration_facts(points, sets)),
        )
    if "gated_tokens" in points["points"]:
        tokens = C.require(points, "gated_tokens")
        methods["gated_tokens"] = (
            f"gated TimeROME (token subject gate, {tokens['apply_at']} slots, "
            f"{tokens['key_at']} keys), layer {tokens['layer']}",
            C.build(model, forget, tokens),
        )
    if "random" in layers:
        methods["random_layer"] = (
            f"TimeROME, random layer {layers['random']}",
            C.build(model, forget, paper_tie, layer=int(layers["random"])),
        )
    methods["act_steer"] = (
        f"act_steer (mean delta, every position), layer {paper_tie['layer']}",
        methods["paper_tie"][1].with_config(mode="steer"),  # type: ignore[union-attr]
    )
    if "ar_positional" in layers:
        methods["ar_positional"] = (
            f"TimeROME, AR-positional layer {layers['ar_positional']}",
            C.build(model, forget, paper_tie, layer=int(layers["ar_positional"])),
        )
    print(
        f"{forget_name}: built {len(methods) - 1} memories in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    evals, utility, hits, seconds, install_s = {}, {}, {}, {}, {}
    for name, (_label, memory) in methods.items():
        t1 = time.perf_counter()
        handle = memory.install(model) if memory is not None else None
        if handle is not None:
            install_s[name] = handle.install_seconds
        try:
            ev = tt.evaluate(
                model, splits, estimator="masked", reference=None if args.fast else reference,
                truth_ratios=not args.fast, n_resamples=args.resamples,
            )  # fmt: skip
            norm = world_normalised_prob(model, splits["world"])
        finally:
            if handle is not None:
                handle.remove()
        evals[name], utility[name] = ev, model_utility(ev, norm)
        hits[name] = {s: object_hit(ev, s, f) for s, f in splits.items()}
        seconds[name] = time.perf_counter() - t1
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)

    base = evals["no_edit"]
    table = {}
    for name, ev in evals.items():
        rows = {}
        for split in splits:
            per = dict(ev[split])
            for metric, m in per.items():
                row = {"value": m.value, "low": m.low, "high": m.high, "n": m.n}
                if name != "no_edit" and m.per_fact is not None and metric in base[split]:
                    ok = torch.isfinite(m.per_fact) & torch.isfinite(base[split][metric].per_fact)
                    if ok.sum() > 1:
                        row.update(
                            C.delta_row(
                                m.per_fact[ok], base[split][metric].per_fact[ok], args.resamples
                            )
                        )
                rows[f"{split}/{metric}"] = row
            h = hits[name][split]
            if h.numel():
                row = dict(
                    zip(
                        ("value", "low", "high"), tt.analysis.mean_ci(h, n_resamples=args.resamples)
                    )
                )
                if name != "no_edit":
                    row.update(C.delta_row(h, hits["no_edit"][split], args.resamples))
                rows[f"{split}/object_in_answer"] = row
        rows["model_utility"] = {"value": utility[name]}
        goals = {}
        for key, (text, test) in GOALS.items():
            if key in rows and "delta" in rows[key]:
                goals[key] = {"goal": text, "met": bool(test(rows[key]["delta"]))}
        if "forget/exact_match" in rows and name != "no_edit":
            goals["forget/exact_match"] = {
                "goal": "≤ 0.05",
                "met": rows["forget/exact_match"]["value"] <= 0.05,
            }
        table[name] = {
            "label": methods[name][0],
            "rows": rows,
            "goals": goals,
            "seconds": seconds[name],
        }
    memories = {
        name: {"repr": repr(mem), "build_s": mem.timings.get("build"), "install_s": install_s.get(name),
               "gate_tau": None if mem.gate_thresholds is None or not mem.config.subject_gate
               else [float(mem.gate_thresholds.min()), float(mem.gate_thresholds.max())]}
        for name, (_l, mem) in methods.items() if mem is not None
    }  # fmt: skip
    return {
        "forget_split": forget_name, "n_forget": len(forget), "split_sizes": {k: len(v) for k, v in splits.items()},
        "points": points["points"], "layers": layers, "point_files": points["files"],
        "shipped_operating_point_ignored": model.shipped_operating_point is not None,
        "memories": memories, "table": table, "fast": args.fast,
    }  # fmt: skip


def markdown(result: dict) -> str:
    def cell(rows, key, delta=True, digits=2):
        row = rows.get(key)
        if row is None:
            return "—"
        if "delta" in row and delta:
            return f"{row['delta']:+.{digits}f} [{row['delta_low']:+.{digits}f}, {row['delta_high']:+.{digits}f}]{row['marker']}"
        if "low" in row and not math.isnan(row.get("low", math.nan)):
            return f"{row['value']:.{digits}f} [{row['low']:.{digits}f}, {row['high']:.{digits}f}]"
        return f"{row['value']:.3g}"

    cols = [
        ("forget/logprob", "ΔForgetLP"), ("forget_paraphrase/logprob", "ΔParaphraseLP"),
        ("retain/logprob", "ΔRetainLP"), ("world/logprob", "ΔWorldLP"), ("neighbour/logprob", "ΔNeighbourLP"),
        ("neighbour_surname/logprob", "ΔSurnameLP"), ("forget/exact_match", "Forget EM"),
        ("retain/exact_match", "Retain EM"), ("world/exact_match", "World EM"), ("neighbour/exact_match", "Neighbour EM"),
        ("forget/tr_forget_score", "Forget-TR"), ("forget/forget_quality", "Forget quality"),
        ("model_utility", "Model utility"),
    ]  # fmt: skip
    lines = [
        "| method | " + " | ".join(c for _, c in cols) + " | goals met |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for name, entry in result["table"].items():
        rows = entry["rows"]
        cells = []
        for key, _ in cols:
            absolute = name == "no_edit" or key.endswith(
                ("exact_match", "forget_quality", "model_utility", "tr_forget_score")
            )
            cells.append(cell(rows, key, delta=not absolute))
        met = entry["goals"]
        goals = f"{sum(g['met'] for g in met.values())}/{len(met)}" if met else "—"
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + f" | {goals} |")
    return (
        f"Edit memories on {result['forget_split']} ({result['n_forget']} facts), tiny-mdlm, masked estimator; "
        f"operating points from {', '.join(result['point_files'])} (tuned on validation people only). "
        "Δ vs no_edit on the same facts: mean [95% bootstrap CI], paired t-test markers "
        "(* p<.05, ** p<.01, *** p<.001); exact match of greedy 8-step samples (absolute); "
        "forget quality: KS p-value against tiny-mdlm-retain. 'Best layer by grid' is a layer "
        "chosen by searching all layers, not by TIE.\n\n" + "\n".join(lines) + "\n"
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.points_argument(ap)
    ap.add_argument(
        "--forget", nargs="+", default=["forget01"], choices=("forget01", "forget05", "forget10")
    )
    ap.add_argument(
        "--fast", action="store_true", help="no truth ratios, no forget quality (a quick look)"
    )
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per CI")
    args = ap.parse_args()  # fmt: skip
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    points = C.read_points(args.points)
    sets = C.fact_sets()
    reference = None
    if not args.fast:
        try:
            reference = tt.load_model("tiny-mdlm-retain")
        except tt.CheckpointNotFoundError:
            print("tiny-mdlm-retain not built: no forget quality", flush=True)
    for forget_name in args.forget:
        result = run(model, sets, points, forget_name, args, reference)
        result["seconds"] = time.perf_counter() - t_start
        stem = "edit_headline" if forget_name == "forget01" else f"edit_headline_{forget_name}"
        C.write_json(C.FIGURES / f"{stem}.json", result)
        md = markdown(result)
        C.write_text(C.FIGURES / f"{stem}.md", md)
        print(md, flush=True)
        fig = go.Figure()
        names = [n for n in result["table"] if n != "no_edit"]
        for key, label in (("forget/logprob", "ΔForgetLP"), ("forget_paraphrase/logprob", "ΔParaphraseLP"),
                           ("retain/logprob", "ΔRetainLP"), ("world/logprob", "ΔWorldLP"),
                           ("neighbour/logprob", "ΔNeighbourLP")):  # fmt: skip
            rows = [result["table"][n]["rows"].get(key, {}) for n in names]
            fig.add_bar(name=label, x=[result["table"][n]["label"] for n in names],
                        y=[r.get("delta") for r in rows],
                        error_y=dict(type="data", symmetric=False,
                                     array=[r.get("delta_high", 0) - r.get("delta", 0) for r in rows],
                                     arrayminus=[r.get("delta", 0) - r.get("delta_low", 0) for r in rows]))  # fmt: skip
        fig.update_layout(barmode="group", yaxis_title="Δ nats per fact (95% CI)",
                          title=f"{forget_name}: change in log p(answer | question) against no edit")  # fmt: skip
        C.save_plot(fig, stem)
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
