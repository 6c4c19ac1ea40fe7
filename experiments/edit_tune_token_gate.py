"""Tune the token-gated edit memory on ``validation`` people, with a sampler-aware rule.

The cosine gate of ``experiments/edit_tune_gate.py`` reads residuals of a partly decoded
sequence: measured on validation (``experiments/edit_gate_sampling.py``), retain prompts
mid-trajectory score up to 0.27 above thresholds calibrated on masked prompts while the
forgotten facts' own scores fall below theirs, so no margin keeps both forget exact match
≤ 5% and the masked retain damage within 0.5 nat. The **token gate** (``gate_kind="tokens"``)
opens a fact's edit when the subject's token ids occur consecutively in the prompt: it does
not move along a trajectory, needs no calibration, and leaves every prompt that does not
name the subject bit-identical.

Never touches a reported fact. As in ``edit_tune_gate.py``: one memory per ``validation``
person (20 facts), effects averaged over the people; utility on ``retain_tune[:100]``.

1. **Masked grid** — every layer × α × λ × q (update at the answer slots, answer-slot
   keys): ``d_forget``, ``d_paraphrase`` (paraphrased questions, which still name the
   person; reported, not a criterion: the model never learned the paraphrased answers —
   about −130 nats before any edit — so their change says little), ``d_retain``, ``lookalike_open`` (the person's questions under other first
   names: the surname look-alike weak spot).
2. **Sampler-aware rule** — candidates with ``|d_retain| ≤ 0.25`` and ``d_forget ≤ −20``
   (twice the −10 goal), taken in order of increasing α (the least invasive edit first;
   ties: the stronger ``d_forget``), are sampled with the default sampler (T = 8, greedy):
   the first whose validation forget exact match is ≤ 2.5% (half the 5% goal) and whose
   retain exact match drops by ≤ 0.5 point is chosen.

Writes ``figures/edit_tune_token_gate.json`` (``points.gated_tokens``, the grid, the sampled
candidates) and ``.html``. ``--write`` also stores the chosen point as the model's shipped
operating point (``tie_tracing.json`` and the card's section, through
``tt.editing.write_operating_point``), which ``tt.EditMemory.build(model, facts,
tt.editing.OperatingPoint.shipped(model))`` builds on request. Run: ``python experiments/edit_tune_token_gate.py [--write]`` (a few
CPU-minutes, one thread).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edit_common as C  # noqa: E402
from edit_tune_gate import lookalikes  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.editing.capture import query_ids  # noqa: E402

ALPHAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
LAMS = (0.1, 1.0)
QS = (1, None)
RETAIN_BUDGET = 0.25
FORGET_GOAL = -20.0
FORGET_EM_MAX = 0.025
RETAIN_EM_DROP = 0.005
MAX_SAMPLED = 12


def exact_match(model, facts) -> float:
    res = tt.diffuse(model, facts)
    return sum(a.strip() == f.answer.strip() for a, f in zip(res.answers, facts)) / len(facts)


def opens(memory: tt.EditMemory, model, facts) -> list[bool]:
    """Whether some gate of ``memory`` opens on each fact's masked query (the token gate reads
    token ids only, so the hidden states passed are placeholders)."""
    out = []
    for f in facts:
        ids = query_ids(model, f)
        x = torch.tensor([ids])
        h = torch.zeros(1, len(ids), int(model.hidden_size))
        out.append(bool((memory.gate_scores(h, x) > 0.5).any()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--write", action="store_true", help="store the chosen point as the shipped operating point"
    )
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--out", type=Path, default=C.FIGURES / "edit_tune_token_gate.json")
    args = ap.parse_args()
    C.setup()
    t_start = time.perf_counter()
    model = C.load()
    sets = C.fact_sets()
    groups = C.people(sets["validation"])
    retain = sets["retain_tune"][:100]
    paras = [C.paraphrased(g) for g in groups]
    looks = [lookalikes(g, [o for o in groups if o is not g]) for g in groups]
    base_f = [C.logprobs(model, g) for g in groups]
    base_p = [C.logprobs(model, p) for p in paras]
    base_r = C.logprobs(model, retain)
    fixed = {
        "subject_gate": True,
        "gate_kind": "tokens",
        "ridge_blocks": "subject",
        "apply_at": "answer",
        "key_at": "answer",
    }
    layers = args.layers if args.layers else list(range(model.num_layers))
    rows, memories = [], {}
    for layer in layers:
        t0 = time.perf_counter()
        built = [
            tt.EditMemory.build(model, g, layer=layer, alpha=1.0, lam=0.1, **fixed) for g in groups
        ]
        memories[layer] = built
        looked = [sum(opens(m, model, lk)) / len(lk) for m, lk in zip(built, looks)]
        opened = [[f for f, o in zip(retain, opens(m, model, retain)) if o] for m in built]
        for alpha, lam, q in itertools.product(ALPHAS, LAMS, QS):
            dfs, dps, drs = [], [], []
            for i, (g, p, m) in enumerate(zip(groups, paras, built)):
                edited = m.with_config(alpha=alpha, lam=lam, q=q)
                with edited.install(model):
                    dfs.append(float((C.logprobs(model, g) - base_f[i]).mean()))
                    dps.append(float((C.logprobs(model, p) - base_p[i]).mean()))
                    # retain rows on which no gate opens are bit-identical to the frozen model
                    dr = 0.0
                    if opened[i]:
                        idx = [retain.index(f) for f in opened[i]]
                        dr = float((C.logprobs(model, opened[i]) - base_r[idx]).sum()) / len(retain)
                drs.append(dr)
            rows.append({
                "layer": layer, "alpha": alpha, "lam": lam, "q": q,
                "d_forget": sum(dfs) / len(dfs), "d_paraphrase": sum(dps) / len(dps),
                "d_retain": sum(drs) / len(drs), "lookalike_open": sum(looked) / len(looked),
                "retain_gate_open": sum(len(o) for o in opened) / (len(retain) * len(opened)),
            })  # fmt: skip
        print(f"layer {layer}: {time.perf_counter() - t0:.0f} s", flush=True)

    base_em = {
        "forget_em": exact_match(model, sets["validation"]),
        "retain_em": exact_match(model, retain),
    }
    print("no edit:", base_em, flush=True)
    candidates = sorted(
        (r for r in rows if abs(r["d_retain"]) <= RETAIN_BUDGET and r["d_forget"] <= FORGET_GOAL),
        key=lambda r: (r["alpha"], r["d_forget"]),
    )
    sampled, chosen = [], None
    for r in candidates[:MAX_SAMPLED]:
        fe, re = [], []
        for g, m in zip(groups, memories[r["layer"]]):
            with m.with_config(alpha=r["alpha"], lam=r["lam"], q=r["q"]).install(model):
                fe.append(exact_match(model, g))
                re.append(exact_match(model, retain))
        s = {**r, "forget_em": sum(fe) / len(fe), "retain_em": sum(re) / len(re)}
        sampled.append(s)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}, flush=True)
        if (
            s["forget_em"] <= FORGET_EM_MAX
            and base_em["retain_em"] - s["retain_em"] <= RETAIN_EM_DROP
        ):
            chosen = s
            break
    rule = (
        f"masked: |ΔRetainLP| ≤ {RETAIN_BUDGET} and ΔForgetLP ≤ {FORGET_GOAL}; in order of "
        f"increasing α (ties: stronger ΔForgetLP), the first whose sampled validation forget EM "
        f"≤ {FORGET_EM_MAX} and retain EM drop ≤ {RETAIN_EM_DROP}"
    )
    if chosen is None:
        raise SystemExit(f"no configuration satisfies the rule ({rule}); see {args.out}")
    point = {
        "layer": chosen["layer"], "module": "resid", "alpha": chosen["alpha"], "lam": chosen["lam"],
        "q": chosen["q"], "steps": None, **fixed, "selected_by": "grid on validation people",
        "rule": rule,
        "measured_on_validation": {k: chosen[k] for k in (
            "d_forget", "d_retain", "d_paraphrase", "lookalike_open", "retain_gate_open",
            "forget_em", "retain_em")},
    }  # fmt: skip
    fingerprint = tt.editing.model_fingerprint(model)
    print("chosen:", point, flush=True)
    C.write_json(args.out, {
        "model": model.name, "fingerprint": fingerprint, "points": {"gated_tokens": point},
        "no_edit_validation": base_em, "grid": rows, "sampled": sampled,
        "seconds": time.perf_counter() - t_start,
        "command": " ".join(["python", "experiments/edit_tune_token_gate.py", *sys.argv[1:]]),
    })  # fmt: skip
    if args.write:
        op = {
            **{k: point.get(k) for k in C.POINT_KEYS if k in point},
            "fingerprint": fingerprint,
            "tuned_on": {"forget": "validation: one memory per person (20 facts), effects averaged",
                         "retain": "retain_tune[:100]"},
            "measured": {**{f"{k}_lp" if k.startswith("d_") else k: v
                            for k, v in point["measured_on_validation"].items()},
                         "estimator": "masked + greedy T=8 sampling"},
            "rule": rule,
            "command": "python experiments/edit_tune_token_gate.py --write",
            "date": datetime.date.today().isoformat(),
        }  # fmt: skip
        print("wrote", C.write_shipped_point(op), flush=True)

    fig = go.Figure()
    for layer in layers:
        pts = [r for r in rows if r["layer"] == layer]
        fig.add_scatter(x=[r["alpha"] for r in pts], y=[r["d_forget"] for r in pts], mode="markers",
                        name=f"layer {layer}", text=[f"λ={r['lam']}, q={r['q']}, ΔP={r['d_paraphrase']:.1f}"
                                                     for r in pts],
                        hovertemplate="α %{x}: ΔF %{y:.2f}<br>%{text}<extra></extra>")  # fmt: skip
    fig.update_layout(title="Token-gated memory on validation: ΔForgetLP by layer and α "
                      "(ΔRetainLP is 0 wherever no gate opens)", xaxis_type="log",
                      xaxis_title="α", yaxis_title="ΔForgetLP (nats per fact)")  # fmt: skip
    C.save_plot(fig, "edit_tune_token_gate")
    print(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
