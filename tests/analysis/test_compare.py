"""AR-versus-diffusion comparison: token categories, localisation summaries, table, figure."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import tie_tracing as tt
from tie_tracing.analysis.compare import (
    CATEGORIES,
    aligned_positional,
    compare_paradigms,
    localisation_summary,
    pick_layers,
    token_categories,
)
from tie_tracing.core.results import PositionalResult, TIEResult
from tie_tracing.figures.compare import plot_ar_vs_diffusion


def _positional(
    lp: torch.Tensor,
    *,
    subject=(2, 3),
    n_prompt=6,
    shifted=True,
    model_id="m",
    object_offset: int | None = None,
) -> PositionalResult:
    """One-fact result whose ``lp`` map ``[layer, position, module]`` is given; corrupt lp = -5.

    ``object_offset`` records the layout as ``trace_positional`` does (``config["prompt_length"]``,
    the object's first token at ``n_prompt + object_offset``); ``None`` leaves it out (older results).
    """
    n_l, n_p, n_m = lp.shape
    tokens = tuple(f"t{i}" for i in range(n_p))
    k = object_offset or 0
    pred = n_prompt + k - 1 if shifted else n_prompt + k
    base = PositionalResult.synthetic(
        n_facts=1, n_layers=n_l, modules=("resid", "attn", "mlp")[:n_m]
    )
    config = dict(base.config, shifted=shifted)
    if object_offset is not None:
        config["prompt_length"] = {"f0": n_prompt}
    return dataclasses.replace(
        base,
        prob=lp[None].exp(),
        lp=lp[None],
        lp_clean=torch.tensor([-0.1]),
        lp_corrupt=torch.tensor([-5.0]),
        tokens=(tokens,),
        subject_positions=(tuple(subject),),
        prediction_position=(pred,),
        config=config,
        model_id=model_id,
        metric="lp",
    )


def test_token_categories_ar_and_mdlm():
    """Positions map to ROME's categories; MDLM answer slots get the mask categories."""
    ar = _positional(torch.zeros(2, 8, 1), subject=(2, 3, 4), n_prompt=8)
    assert token_categories(ar) == (
        "before subject",
        "before subject",
        "first subject",
        "middle subject",
        "last subject",
        "first subsequent",
        "further tokens",
        "last prompt",
    )
    md = _positional(torch.zeros(2, 7, 1), subject=(1,), n_prompt=5, shifted=False)
    assert token_categories(md) == (
        "before subject",
        "last subject",
        "first subsequent",
        "further tokens",
        "last prompt",
        "object [MASK]",
        "later [MASK]s",
    )


def test_token_categories_with_an_answer_prefix():
    """AR with an object mid-answer: the teacher-forced prefix after the prompt, its last token
    (the prediction position) apart; MDLM: slots before the object, the object's slot, later."""
    ar = _positional(torch.zeros(1, 9, 1), subject=(2, 3), n_prompt=6, object_offset=3)
    assert ar.prediction_position == (8,)
    assert token_categories(ar)[4:] == (
        "first subsequent",
        "last prompt",
        "answer prefix",
        "answer prefix",
        "last prefix",
    )
    md = _positional(
        torch.zeros(1, 11, 1), subject=(2, 3), n_prompt=6, shifted=False, object_offset=2
    )
    assert md.prediction_position == (8,)
    assert token_categories(md)[6:] == (
        "[MASK]s before object",
        "[MASK]s before object",
        "object [MASK]",
        "later [MASK]s",
        "later [MASK]s",
    )
    dream = _positional(torch.zeros(1, 11, 1), n_prompt=6, shifted=True, object_offset=2)
    assert dream.prediction_position == (7,) and token_categories(dream)[8] == "object [MASK]"
    assert token_categories(dream)[5:8] == ("last prompt",) + ("[MASK]s before object",) * 2


def test_summary_with_an_answer_prefix_reads_at_the_prediction_position():
    """AR with a prefix: the prediction position is the last prefix token, not the last prompt
    token; the relative peak position counts from the question's last subject token."""
    lp = torch.full((2, 9, 1), -5.0)
    lp[1, 8, 0] = -1.0  # prediction position (last prefix token)
    lp[0, 5, 0] = -4.0  # last prompt token
    s = localisation_summary(_positional(lp, subject=(2, 3), n_prompt=6, object_offset=3))
    assert s.peak == {"layer": 1, "category": "last prefix", "module": "resid"}
    assert s.share_prediction == pytest.approx(0.8) and s.share_last_prompt == pytest.approx(0.2)
    assert s.share_last_subject == 0.0 and s.peak_relative_position == (8 - 3,)


def test_aligned_positional_means_within_categories():
    """The aligned map averages the effect over each category's positions; absent ones are NaN."""
    lp = torch.full((1, 8, 1), -5.0)
    lp[0, 5, 0], lp[0, 6, 0] = -4.0, -3.0  # first subsequent, further tokens
    lp[0, 0, 0], lp[0, 1, 0] = -5.0, -3.0  # before subject (mean effect 1)
    x = aligned_positional(_positional(lp, subject=(2, 3, 4), n_prompt=8))
    assert x.shape == (1, 1, len(CATEGORIES), 1)
    get = lambda name: float(x[0, 0, CATEGORIES.index(name), 0])  # noqa: E731
    assert get("before subject") == pytest.approx(1.0)
    assert get("first subsequent") == pytest.approx(1.0)
    assert get("further tokens") == pytest.approx(2.0)
    assert math.isnan(get("object [MASK]")) and math.isnan(get("answer prefix"))


def test_summary_of_a_last_subject_hotspot():
    """All effect in one cell at the last subject token: top-1 share 1, entropy 0, shares right."""
    lp = torch.full((3, 6, 2), -5.0)
    lp[1, 3, 1] = -2.0  # layer 1, last subject (3), mlp
    s = localisation_summary(_positional(lp))
    assert s.peak == {"layer": 1, "category": "last subject", "module": "attn"}
    assert s.peak_value == pytest.approx(3.0)
    assert s.top_share[1] == pytest.approx(1.0) and s.entropy == pytest.approx(0.0)
    assert s.peak_relative_position == (0,) and s.frac_peak_at_last_subject == 1.0
    assert s.share_last_subject == pytest.approx(1.0) and s.share_last_prompt == pytest.approx(0.0)


def test_summary_share_at_last_prompt_and_module_restriction():
    """Effect split between last subject and last prompt token; a module restriction narrows the map."""
    lp = torch.full((2, 6, 2), -5.0)
    lp[0, 3, 0] = -4.0  # last subject, module 0
    lp[1, 5, 1] = -2.0  # last prompt, module 1
    r = _positional(lp)
    s = localisation_summary(r)
    assert s.share_last_subject == pytest.approx(0.25) and s.share_last_prompt == pytest.approx(
        0.75
    )
    assert s.share_prediction == pytest.approx(0.75)  # AR: prediction at the last prompt token
    s0 = localisation_summary(r, module=r.modules[0])
    assert s0.share_last_subject == pytest.approx(1.0) and s0.peak_relative_position == (0,)
    with pytest.raises(ValueError, match="module"):
        localisation_summary(r, module="nope")


def test_summary_of_tie_result():
    """A TIE summary reports the fact-mean peak (layer, step, module) and per-fact shares."""
    t = TIEResult.synthetic(n_facts=2, n_layers=3)
    tie = torch.zeros_like(t.tie)
    tie[:, 2, 1, 0] = 4.0
    t = dataclasses.replace(t, tie=tie)
    s = localisation_summary(t)
    assert s.paradigm == "diffusion-time" and s.peak == {
        "layer": 2,
        "step": 1,
        "module": t.modules[0],
    }
    assert s.top_share[1] == pytest.approx(1.0) and s.share_last_subject is None


def test_compare_paradigms_rows_and_fact_check():
    """Three rows in a fixed order; results of different facts are refused."""
    ar, md = PositionalResult.synthetic(n_facts=3), PositionalResult.synthetic(n_facts=3, seed=1)
    t = TIEResult.synthetic(n_facts=3)
    rows = compare_paradigms(ar, md, t, module="resid")
    assert [r["paradigm"] for r in rows] == ["AR positional", "MDLM positional", "MDLM TIE"]
    assert {
        "peak_layer",
        "peak_at",
        "top1_share",
        "top3_share",
        "top5_share",
        "entropy",
        "share_last_subject",
        "share_last_prompt",
    } <= set(rows[0])
    with pytest.raises(ValueError, match="same facts"):
        compare_paradigms(ar, md, TIEResult.synthetic(n_facts=2))


def test_plot_has_three_panels_and_statistics(tmp_path, monkeypatch):
    """Three heatmaps (AR without mask categories), statistics in the titles; nothing written."""
    monkeypatch.chdir(tmp_path)
    ar, md = PositionalResult.synthetic(n_facts=3), PositionalResult.synthetic(n_facts=3, seed=1)
    fig = plot_ar_vs_diffusion(ar, md, TIEResult.synthetic(n_facts=3), module="mlp")
    assert [d.type for d in fig.data] == ["heatmap"] * 3
    assert "object [MASK]" not in list(fig.data[0].x)
    assert all("peak L" in a.text for a in fig.layout.annotations[:3])
    assert len(fig.layout.meta["rows"]) == 3
    assert list(tmp_path.iterdir()) == []


def test_pick_layers():
    """TIE layer = Eq. 5 on resid; AR layer = peak of the aligned resid map; random is another layer."""
    t = TIEResult.synthetic(n_facts=2, n_layers=4)
    tie = torch.zeros_like(t.tie)
    tie[:, 3, 0, 0] = 1.0
    t = dataclasses.replace(t, tie=tie)
    ar = PositionalResult.synthetic(n_facts=2, n_layers=4)  # hot-spot: early resid at last subject
    layers = pick_layers(ar, t, 4)
    assert layers["tie"] == 3 and layers["ar_positional"] in (0, 1)
    assert layers["random"] not in (layers["tie"], layers["ar_positional"])
    assert pick_layers(ar, t, 4) == layers


@pytest.mark.filterwarnings("ignore:.*top-1 prediction is not the answer", "ignore:.*does not know")
def test_end_to_end_on_replicas(replicas):
    """Positional traces of a causal and an MDLM replica and a TIE trace of the same fact compare."""
    fact = tt.Fact(subject="ada vell", question="where was ada vell born", answer="lisbon", id="f0")
    ar = tt.trace_positional(replicas["llama"], [fact], nu=0.5, progress=False)
    md = tt.trace_positional(replicas["tiny-mdlm"], [fact], nu=0.5, progress=False)
    tie = tt.trace_tie(replicas["tiny-mdlm"], [fact], steps=1, nu=0.5, progress=False)
    rows = compare_paradigms(ar, md, tie, module="mlp")
    assert rows[0]["model_id"] == "llama" and rows[1]["share_prediction"] is not None
    assert md.tokens[0][-1] == "[MASK]" and "object [MASK]" in token_categories(md)
    fig = plot_ar_vs_diffusion(ar, md, tie, module="mlp")
    assert "object [MASK]" in list(fig.data[1].x)


@pytest.mark.filterwarnings("ignore:.*top-1 prediction is not the answer", "ignore:.*does not know")
def test_end_to_end_with_an_object_mid_answer(replicas):
    """Real traces of a fact whose object sits mid-answer and whose answer names the subject:
    categories follow the recorded layout, the subject is the question's mention only."""
    fact = tt.Fact(
        subject="ada vell",
        question="where was ada vell born",
        answer="ada vell was born in lisbon city",
        object="lisbon",
        id="f0",
    )
    ar = tt.trace_positional(replicas["llama"], [fact], nu=0.5, progress=False)
    md = tt.trace_positional(replicas["tiny-mdlm"], [fact], nu=0.5, progress=False)
    n_prompt = ar.config["prompt_length"]["f0"]
    cats = token_categories(ar)
    assert cats[n_prompt - 1] == "last prompt" and cats[-1] == "last prefix"
    assert cats[n_prompt:-1] == ("answer prefix",) * 4  # "ada vell was born": not the subject
    assert cats.count("last subject") == 1 and cats.index("last subject") < n_prompt
    mcats = token_categories(md)
    assert mcats[n_prompt + 5] == "object [MASK]" == mcats[md.prediction_position[0]]
    assert mcats[n_prompt : n_prompt + 5] == ("[MASK]s before object",) * 5
    tie = tt.trace_tie(replicas["tiny-mdlm"], [fact], steps=1, nu=0.5, progress=False)
    rows = compare_paradigms(ar, md, tie, module="mlp")
    a = ar.effect()[0, :, :, 2].abs()
    assert rows[0]["share_prediction"] == pytest.approx(float(a[:, -1].sum() / a.sum()), rel=1e-5)
    fig = plot_ar_vs_diffusion(ar, md, tie, module="mlp")
    assert "last prefix" in list(fig.data[0].x) and "object [MASK]" in list(fig.data[1].x)


def test_rare_category_cannot_decide_the_peak():
    """A category only one of five facts has is left out of the peak and dropped from the figure."""
    parts = []
    for i in range(5):
        n = 8 if i == 0 else 6
        lp = torch.full((2, n, 1), -5.0)
        lp[1, 3, 0] = -4.0  # last subject (positions 2, 3)
        if i == 0:
            lp[0, 5, 0] = 0.0  # "further tokens" of the one long prompt: a huge effect
        r = _positional(lp, n_prompt=n)
        parts.append(dataclasses.replace(r, fact_ids=(f"f{i}",)))
    r = PositionalResult.concat(parts)
    assert int(tt.analysis.category_support(r)[CATEGORIES.index("further tokens")]) == 1
    assert localisation_summary(r).peak["category"] == "last subject"
    t = TIEResult.synthetic(n_facts=5)
    t = dataclasses.replace(t, fact_ids=tuple(f"f{i}" for i in range(5)))
    fig = plot_ar_vs_diffusion(r, r, t, module="resid")
    assert not any(x.startswith("further tokens") for x in fig.data[0].x)


def test_summaries_leave_unknown_facts_out():
    """TIE and positional summaries use known_only(): n_facts known of n_traced."""
    t = TIEResult.synthetic(n_facts=3, n_layers=3)
    tie = torch.zeros_like(t.tie)
    tie[:2, 2, 1, 0] = 4.0
    tie[2, 0, 3, 2] = 100.0  # the unknown fact would decide the peak
    t = dataclasses.replace(t, tie=tie, config=dict(t.config, unknown_facts=["f2"]))
    s = localisation_summary(t)
    assert s.peak == {"layer": 2, "step": 1, "module": "resid"} and s.peak_value == 4.0
    assert (s.n_facts, s.n_traced) == (2, 3)
    assert s.clean_baseline == pytest.approx(float(t.lp_clean[:2, 0].mean()))
    row = s.as_row()
    assert row["n_facts"] == 2 and row["n_traced"] == 3
    p = PositionalResult.synthetic(n_facts=3)
    p = dataclasses.replace(p, config=dict(p.config, unknown_facts=["f0"]))
    sp = localisation_summary(p, module="resid")
    assert (sp.n_facts, sp.n_traced) == (2, 3) and len(sp.peak_relative_position) == 2
    fig = plot_ar_vs_diffusion(p, p, t, module="resid")
    np.testing.assert_allclose(
        np.asarray(fig.data[2].z, dtype=float), tie[:2, :, :, 0].mean(0).numpy()
    )
    assert "2 known of 3 facts" in fig.layout.annotations[2].text


def test_bf16_results_compare_and_plot():
    """bf16 results (as a bf16 or CUDA trace gives) summarise and plot (no bare .numpy())."""
    ar, md = PositionalResult.synthetic(n_facts=3), PositionalResult.synthetic(n_facts=3, seed=1)
    t = TIEResult.synthetic(n_facts=3)
    bf = torch.bfloat16
    ar_b = dataclasses.replace(ar, prob=ar.prob.to(bf), lp=ar.lp.to(bf))
    t_b = dataclasses.replace(t, tie=t.tie.to(bf), ie=t.ie.to(bf))
    fig = plot_ar_vs_diffusion(ar_b, md, t_b, module="resid")
    np.testing.assert_allclose(
        np.asarray(fig.data[2].z, dtype=float), t.tie[..., 0].mean(0).numpy(), atol=0.02
    )
    rows = compare_paradigms(ar_b, md, t_b, module="resid")
    assert rows[0]["peak_at"] == compare_paradigms(ar, md, t, module="resid")[0]["peak_at"]


def test_plot_outlines_the_object_commit_steps_of_known_facts():
    """The TIE panel outlines (and its title counts) the clean object-commit steps of the known
    facts only, at the steps' columns; a result without commit maps gets no outline."""
    t = TIEResult.synthetic(n_facts=3)  # answer positions 0, 1, 2 committed at steps 0, 2, 5
    obj = torch.zeros(3, 3, dtype=torch.bool)
    obj[:2, 1] = True  # f0, f1: object at position 1 (step 2)
    obj[2, 2] = True  # f2: object at position 2 (step 5), but f2 is unknown
    t = dataclasses.replace(t, object_mask=obj, config=dict(t.config, unknown_facts=["f2"]))
    assert t.object_commit_step.tolist() == [2, 2, 5]
    p = PositionalResult.synthetic(n_facts=3)
    fig = plot_ar_vs_diffusion(p, p, t, module="resid")
    outlines = [s for s in fig.layout.shapes if s.name == "object commit"]
    assert [(s.xref, s.x0, s.x1) for s in outlines] == [("x3", 1.5, 2.5)]
    assert list(fig.data[2].x)[2] == "step 2"
    assert "object committed (clean run): step 2 ×2" in fig.layout.annotations[2].text
    assert "object committed" not in fig.layout.annotations[0].text
    config = {k: v for k, v in t.config.items() if k != "mask_token_id"}
    bare = plot_ar_vs_diffusion(p, p, dataclasses.replace(t, config=config), module="resid")
    assert not [s for s in bare.layout.shapes if s.name == "object commit"]
    assert "no commit maps recorded" in bare.layout.annotations[2].text
