"""SPEC §9 metrics (hand-computed values), the Evaluation result, and evaluate()."""

from __future__ import annotations

import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core.facts import Fact
from tie_tracing.evaluation.metrics import (
    Evaluation,
    Metric,
    evaluate,
    exact_match,
    forget_quality,
    forget_tr_score,
    mean_ci,
    normalize_answer,
    paired_ttest,
    retain_tr_score,
    rouge_l_recall,
    significance_marker,
    truth_ratio,
)

# --- truth ratio ---------------------------------------------------------------------------


def test_truth_ratio_hand_computed():
    """R = geomean_j p_j^(1/len_j) / p_par^(1/len_par) on known probabilities (open-unlearning's form)."""
    # fact 0: perturbed per-token probs 0.2 and 0.4 (geometric mean √0.08), paraphrase 0.6
    lp_p = [[2 * math.log(0.2), 3 * math.log(0.4)], [math.log(0.5), math.log(0.5)]]
    len_p = [[2, 3], [1, 1]]
    lp_a = [4 * math.log(0.6), 2 * math.log(0.25)]
    len_a = [4, 2]
    r = truth_ratio(lp_p, len_p, lp_a, len_a)
    assert r.dtype == torch.float64 and r.shape == (2,)
    expected = [math.sqrt(0.2 * 0.4) / 0.6, 0.5 / 0.25]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float64))


def test_truth_ratio_log_space_and_ragged():
    """Very small probabilities do not underflow; NaN entries are missing perturbations."""
    r = truth_ratio([[-2000.0, math.nan]], [[1, 1]], [-2001.0], [1])
    torch.testing.assert_close(r, torch.tensor([math.e], dtype=torch.float64))
    assert torch.isnan(truth_ratio([[math.nan]], [[1]], [-1.0], [1]))[0]
    with pytest.raises(ValueError, match="fact"):
        truth_ratio([[1.0]], [[1.0]], [1.0, 2.0], [1.0, 1.0])


def test_tr_scores_hand_computed():
    """Forget score mean(min(R,1/R)), retain score mean(max(0,1-R))."""
    r = [0.5, 2.0, 1.0, 0.25]
    assert forget_tr_score(r) == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert retain_tr_score(r) == pytest.approx((0.5 + 0 + 0 + 0.75) / 4)
    torch.testing.assert_close(
        forget_tr_score(r, reduce=False), torch.tensor([0.5, 0.5, 1.0, 0.25], dtype=torch.float64)
    )


def test_forget_quality_identical_and_different():
    """KS p-value is 1 on identical samples and small on separated ones."""
    x = [0.1, 0.4, 0.5, 0.9, 1.3]
    assert forget_quality(x, x) == 1.0
    assert forget_quality([0.1 * i for i in range(20)], [5 + 0.1 * i for i in range(20)]) < 1e-6


# --- statistics ----------------------------------------------------------------------------


def test_mean_ci_contains_mean_and_is_seeded():
    """The bootstrap CI brackets the mean, narrows with confidence, and is reproducible."""
    vals = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8, 0.6]
    m, lo, hi = mean_ci(vals)
    assert m == pytest.approx(sum(vals) / len(vals)) and lo < m < hi
    assert mean_ci(vals) == (m, lo, hi)
    _, lo50, hi50 = mean_ci(vals, confidence=0.5)
    assert lo <= lo50 and hi50 <= hi
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert mean_ci([3.0]) == (3.0, 3.0, 3.0)  # one value: no spread (bootstrap_ci's policy)
    assert mean_ci([3.0, math.nan, math.inf]) == (3.0, 3.0, 3.0)  # non-finite dropped
    assert all(math.isnan(v) for v in mean_ci([math.nan]))


def test_mean_ci_is_bootstrap_ci_in_one_dimension():
    """mean_ci and analysis.bootstrap_ci give the same interval for the same sample and seed."""
    vals = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8, 0.6]
    x = torch.tensor(vals, dtype=torch.float64)
    for confidence, seed in ((0.95, 0), (0.8, 7)):
        m, lo, hi = mean_ci(vals, n_resamples=500, confidence=confidence, seed=seed)
        low, high = tt.analysis.bootstrap_ci(
            x[:, None], n_resamples=500, confidence=confidence, seed=seed
        )
        assert (lo, hi) == (float(low[0]), float(high[0])) and m == pytest.approx(float(x.mean()))
    low1, high1 = tt.analysis.bootstrap_ci(torch.tensor([[3.0]]))
    assert mean_ci([3.0]) == (3.0, float(low1[0]), float(high1[0]))


def test_paired_ttest_sign_and_markers():
    """t > 0 when a exceeds b pairwise; markers at .05/.01/.001; equal samples give nan."""
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [0.5, 1.6, 2.4, 3.5, 4.6]
    up = paired_ttest(a, b)
    assert up.statistic > 0 and up.mean_diff == pytest.approx(0.48) and up.n == 5
    assert paired_ttest(b, a).statistic == pytest.approx(-up.statistic)
    assert up.marker == significance_marker(up.pvalue) != ""
    same = paired_ttest(a, a)
    assert math.isnan(same.pvalue) and same.marker == ""
    assert [significance_marker(p) for p in (0.0005, 0.005, 0.03, 0.2)] == ["***", "**", "*", ""]


# --- generation metrics -------------------------------------------------------------------


def test_exact_match_normalisation():
    """Strip, casefold, collapse whitespace, drop trailing punctuation."""
    assert normalize_answer("  Rio   de Janeiro. ") == "rio de janeiro"
    assert exact_match("LISBON!", " lisbon")
    assert exact_match("New\tYork.", "new york")
    assert not exact_match("Lisbon", "Porto")
    assert not exact_match("Lis bon", "Lisbon")


def test_rouge_l_recall_worked_example():
    """ref 'the cat sat on the mat' (6), pred 'the cat lay on a mat': LCS the,cat,on,mat = 4/6."""
    assert rouge_l_recall("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("The mat.", "the mat") == 1.0
    assert rouge_l_recall("", "the mat") == 0.0
    assert rouge_l_recall("mat the", "the mat") == 0.5  # order matters


# --- Evaluation object ----------------------------------------------------------------------


def _evaluation() -> Evaluation:
    per = torch.tensor([-1.5, -0.25, math.nan, -3.0], dtype=torch.float64)
    return Evaluation(
        metrics={
            "forget": {
                "logprob": Metric.from_values(per),
                "forget_quality": Metric(0.123456789012345678),
            },
            "retain": {"logprob": Metric.from_values([-0.1, -0.2])},
        },
        fact_ids={"forget": ("a", "b", "c", "d"), "retain": ("e", "f")},
        answers={"forget": ("x", "y", "z", "w")},
        config={"model": "fake", "estimator": "masked", "seed": 0},
    )


def test_evaluation_save_load_round_trip(tmp_path):
    """save/load reproduces every value, CI, per-fact tensor (NaN included) and label."""
    ev = _evaluation()
    path = ev.save(tmp_path / "sub" / "eval.json")
    back = Evaluation.load(path)
    assert back.equals(ev)
    assert torch.isnan(back["forget"]["logprob"].per_fact[2])
    assert back["forget"]["forget_quality"].value == 0.123456789012345678
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left
    assert ev.values.shape == (2, 2) and ev.dims == ("split", "metric")
    assert math.isnan(float(ev.values[1, 1]))


def test_evaluation_table_and_compare():
    """table() has one row per (split, metric); compare() gives deltas and paired tests."""
    ev = _evaluation()
    rows = ev.table()
    assert len(rows) == 3 and rows[0]["split"] == "forget" and rows[0]["n"] == 3
    shifted = Evaluation(
        metrics={"forget": {"logprob": Metric.from_values([-1.0, 0.3, math.nan, -2.4])}},
        fact_ids={"forget": ("a", "b", "c", "d")},
    )
    (row,) = shifted.compare(ev)
    assert row["delta"] == pytest.approx(
        shifted["forget"]["logprob"].value - ev["forget"]["logprob"].value
    )
    assert row["n"] == 3 and row["t"] > 0
    other = Evaluation(metrics={"forget": {}}, fact_ids={"forget": ("z",)})
    with pytest.raises(ValueError, match="different facts"):
        other.compare(ev)
    assert "forget" in str(ev)


# --- evaluate() with a fake model -----------------------------------------------------------


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=list(range(len(text.split()))))


def _fake_lp(answer: str) -> float:
    return -0.5 * len(answer.split()) - (0.0 if "true" in answer else 1.0)


@pytest.fixture
def fake_api(monkeypatch):
    """Substitute answer_logprob / diffuse with deterministic functions of the answer."""
    calls = []

    def answer_logprob(model, facts, *, estimator="masked", mc=128, seed=0, **rows):
        calls.append((model.name, len(facts), estimator, mc, seed))
        shift = model.shift
        return torch.tensor([_fake_lp(f.answer) + shift for f in facts])

    def diffuse(model, facts, *, steps=8, seed=0, **rows):
        return SimpleNamespace(
            answers=[f.answer if i % 2 == 0 else "nope" for i, f in enumerate(facts)]
        )

    lik = types.ModuleType("tie_tracing.core.likelihood")
    lik.answer_logprob = answer_logprob
    smp = types.ModuleType("tie_tracing.core.sampler")
    smp.diffuse = diffuse
    monkeypatch.setitem(sys.modules, "tie_tracing.core.likelihood", lik)
    monkeypatch.setitem(sys.modules, "tie_tracing.core.sampler", smp)
    return calls


def _fake_model(name="fake", shift=0.0):
    return SimpleNamespace(name=name, shift=shift, tokenizer=_WordTokenizer(), is_causal=False)


def _facts():
    return [
        Fact(
            "Ada",
            "Where was Ada born?",
            "true answer",
            paraphrased_answer="true para answer",
            perturbed_answers=("wrong", "also wrong two"),
            id=f"f{i}",
        )
        for i in range(4)
    ] + [Fact("Bo", "Who is Bo?", "true", id="f4")]


def test_evaluate_with_fake_model(fake_api):
    """evaluate() returns logprob, generation and truth-ratio metrics equal to hand values."""
    facts = _facts()
    ev = evaluate(_fake_model(), {"forget": facts, "retain": facts[:2]}, mc=4, seed=3)
    m = ev["forget"]
    torch.testing.assert_close(
        m["logprob"].per_fact, torch.tensor([-1.0] * 4 + [-0.5], dtype=torch.float64)
    )
    assert m["logprob"].value == pytest.approx(-0.9)
    assert m["logprob_per_token"].value == pytest.approx((4 * -0.5 + -0.5) / 5)
    assert m["exact_match"].per_fact.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    # R = geomean(exp(-1.5/1), exp(-2.5/3)) / exp(-1.5/3); the fact without perturbations is NaN
    expected = math.exp((-1.5 - 2.5 / 3) / 2) / math.exp(-1.5 / 3)
    r = m["truth_ratio"].per_fact
    assert torch.isnan(r[4]) and m["truth_ratio"].n == 4
    torch.testing.assert_close(r[:4], torch.full((4,), expected, dtype=torch.float64))
    assert m["tr_forget_score"].value == pytest.approx(min(expected, 1 / expected))
    assert m["tr_retain_score"].value == pytest.approx(max(0.0, 1 - expected))
    assert "forget_quality" not in m
    assert ev.fact_ids["retain"] == ("f0", "f1") and ev.answers["forget"][1] == "nope"
    assert ev.config["estimator"] == "masked" and ev.config["model"] == "fake"
    assert all(c[3:] == (4, 3) for c in fake_api)


def test_evaluate_fact_keys_refuse_comparing_different_idless_facts(fake_api):
    """fact_ids hold fact_key (the question when a fact has no id), so evaluations of
    different id-less facts do not compare, while the same id-less facts do."""
    a = [Fact("Ada", "Where was Ada born?", "true answer"), Fact("Bo", "Who is Bo?", "true")]
    b = [Fact("Cy", "Where was Cy born?", "true answer"), Fact("Di", "Who is Di?", "true")]
    ev_a = evaluate(_fake_model(), {"forget": a}, generate=False, n_resamples=50)
    ev_b = evaluate(_fake_model(), {"forget": b}, generate=False, n_resamples=50)
    assert ev_a.fact_ids["forget"] == ("Where was Ada born?", "Who is Bo?")
    with pytest.raises(ValueError, match="different facts"):
        ev_b.compare(ev_a)
    again = evaluate(_fake_model(shift=-1.0), {"forget": a}, generate=False, n_resamples=50)
    rows = {r["metric"]: r for r in again.compare(ev_a)}
    assert rows["logprob"]["delta"] == pytest.approx(-1.0)


def test_evaluate_forget_quality_and_compare(fake_api, tmp_path):
    """A reference model adds forget quality (1.0 for the same model) on the forget split."""
    facts = _facts()[:4]
    ev = evaluate(_fake_model(), {"forget": facts}, reference=_fake_model("ref"), generate=False)
    assert ev["forget"]["forget_quality"].value == 1.0
    assert "exact_match" not in ev["forget"]
    assert Evaluation.load(ev.save(tmp_path / "e.json")).equals(ev)
    worse = evaluate(_fake_model(shift=-1.0), {"forget": facts}, generate=False)
    rows = {r["metric"]: r for r in worse.compare(ev)}
    assert rows["logprob"]["delta"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="no split named 'forget'"):
        evaluate(_fake_model(), {"retain": facts}, reference=_fake_model("ref"))


# --- integration on a random-initialised tiny MDLM ------------------------------------------


def test_evaluate_on_random_tiny_mdlm(replicas):
    """On a real (random) MDLM, evaluate's logprobs equal tt.answer_logprob and its truth
    ratios equal the hand formula applied to answer_logprob of the alternatives."""
    model = replicas["tiny-mdlm"]
    facts = [
        Fact(
            "ada vell",
            "where was ada vell born",
            "lisbon",
            paraphrased_answer="lisbon city",
            perturbed_answers=("porto", "paris city"),
            id="t0",
        ),
        Fact(
            "mara tov",
            "what did mara tov write",
            "book",
            paraphrased_answer="the book",
            perturbed_answers=("river", "red prize"),
            id="t1",
        ),
    ]
    ev = evaluate(model, {"forget": facts}, steps=2, n_resamples=50)
    lp = tt.answer_logprob(model, facts)
    torch.testing.assert_close(ev["forget"]["logprob"].per_fact, lp.to(torch.float64))
    f = facts[0]
    lps = tt.answer_logprob(
        model, [Fact(f.subject, f.question, a) for a in ("lisbon city", "porto", "paris city")]
    )
    ln = [len(model.encode(f.question, a)[1]) for a in ("lisbon city", "porto", "paris city")]
    expected = truth_ratio([[lps[1], lps[2]]], [ln[1:]], [lps[0]], [ln[0]])[0]
    torch.testing.assert_close(ev["forget"]["truth_ratio"].per_fact[0], expected)
    assert len(ev.answers["forget"]) == 2 and ev["forget"]["exact_match"].n == 2


def test_evaluate_on_causal_model_skips_generation(replicas):
    """On a causal (AR) model evaluate scores likelihoods and does not sample by default."""
    model = replicas["llama"]
    facts = [
        Fact("ada vell", "where was ada vell born", "lisbon", id="t0"),
        Fact("mara tov", "what did mara tov write", "book", id="t1"),
    ]
    ev = evaluate(model, {"retain": facts}, n_resamples=50)
    assert set(ev["retain"]) == {"logprob", "logprob_per_token"}
    assert ev.answers == {}
    torch.testing.assert_close(
        ev["retain"]["logprob"].per_fact, tt.answer_logprob(model, facts).double()
    )


def test_metrics_are_reachable_through_the_evaluation_layer():
    """The SPEC §9 metrics are ``tt.evaluation.<name>``, the metrics module's own objects;
    ``mean_ci`` is the analysis layer's (the evaluation re-exports it)."""
    import tie_tracing.evaluation.metrics as ev_mod

    for name in (
        "forget_quality",
        "forget_tr_score",
        "retain_tr_score",
        "exact_match",
        "rouge_l_recall",
        "PairedTest",
        "paired_ttest",
        "truth_ratio",
    ):
        assert getattr(tt.evaluation, name) is getattr(ev_mod, name)
        assert getattr(ev_mod, name).__module__ == "tie_tracing.evaluation.metrics"
    assert tt.evaluation.mean_ci is tt.analysis.mean_ci is ev_mod.mean_ci
    assert tt.evaluate is ev_mod.evaluate and tt.Evaluation is ev_mod.Evaluation


def test_truth_ratio_of_facts_that_record_an_object(fake_api):
    """Perturbed and paraphrased answers are other sentences: a fact's object need not occur in
    them, and the truth ratio of object-bearing facts equals that of the same facts without one."""
    import dataclasses

    facts = [
        Fact(
            "Ada",
            "Where was Ada born?",
            "Ada was born in Lisbon today",
            object="Lisbon",
            paraphrased_answer="Lisbon is where Ada was born",
            perturbed_answers=("Porto is where Ada was born", "Paris is where Ada was born"),
            id="o0",
        )
    ]
    plain = [dataclasses.replace(f, object=None) for f in facts]
    with_object = evaluate(_fake_model(), {"forget": facts}, mc=4, seed=3)["forget"]
    without = evaluate(_fake_model(), {"forget": plain}, mc=4, seed=3)["forget"]
    torch.testing.assert_close(with_object["truth_ratio"].per_fact, without["truth_ratio"].per_fact)
    assert torch.isfinite(with_object["truth_ratio"].per_fact).all()


def test_evaluate_samples_with_the_given_sampler_and_records_it(mdlm):
    """evaluate(sampler=...) samples with that config (the answers equal diffuse's under it)
    and records it; the default records None and samples with the default sampler."""
    facts = [
        tt.Fact(subject="ada vell", question="where was ada vell born", answer="lisbon", id="a"),
        tt.Fact(subject="kess", question="when was kess born", answer="1962", id="k"),
    ]
    sampler = tt.LLaDASampler(remasking="random")
    ev = tt.evaluate(mdlm, {"forget": facts}, truth_ratios=False, sampler=sampler, n_resamples=50)
    assert ev.config["sampler"] == sampler.to_dict()
    assert tuple(ev.answers["forget"]) == tuple(tt.diffuse(mdlm, facts, sampler=sampler).answers)
    plain = tt.evaluate(mdlm, {"forget": facts}, truth_ratios=False, n_resamples=50)
    assert plain.config["sampler"] is None
    assert tuple(plain.answers["forget"]) == tuple(tt.diffuse(mdlm, facts).answers)
