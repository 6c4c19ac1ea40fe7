"""The unlearning suite: object-level measurements by hand, the reference rows, the depth
score's end points, the cluster bootstrap and the report's round trip."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import replicas as R  # noqa: E402

import tie_tracing as tt  # noqa: E402
from tie_tracing.analysis import cluster_mean_ci, mean_ci  # noqa: E402
from tie_tracing.evaluation import (  # noqa: E402
    DepthResult,
    Method,
    StringMatch,
    SweepPoint,
    UnlearningReport,
    UnlearningSplit,
    depth_scores,
    distance_flag,
    evaluate_unlearning,
    object_leak,
    object_logprob,
    object_recall,
    object_token_ids,
    reference_methods,
    sample_masked,
    sampled_leaks,
    string_match_random,
    string_match_route,
    unlearning_depth,
    unlearning_splits,
)

FACTS = [
    tt.Fact(subject="ada vell", question="where was ada vell born", answer="ada vell was born in lisbon city", object="lisbon", id="ada-born", perturbed_answers=("ada vell was born in porto city", "ada vell was born in paris city")),
    tt.Fact(subject="ada vell", question="what book ada vell wrote", answer="the book of red river", object="red river", id="ada-book", perturbed_answers=("the book of blue river",)),
    tt.Fact(subject="mara tov", question="where was mara tov born", answer="mara tov was born in porto", object="porto", id="mara-born"),
    tt.Fact(subject="kess", question="when was kess born", answer="kess was born in 1962", object="1962", id="kess-year"),
]  # fmt: skip


@pytest.fixture(scope="module")
def second(mdlm):
    """Another tiny-mdlm replica with the same vocabulary (a stand-in retain-only model)."""
    return R.wrap(R.tiny_mdlm(seed=1))


@pytest.fixture(scope="module")
def shipped():
    """The embedded MDLM and its retain-only model (their byte-level tokenizer spells any
    casing and spacing of a name, which the replicas' word vocabulary cannot)."""
    return tt.load_model("tiny-mdlm"), tt.load_model("tiny-mdlm-retain")


# --- object-level measurements, by hand ------------------------------------------------------


def test_object_leak_pronoun_answer_writes_the_object(tokenizer):
    """A pronoun answer that still writes the object leaks; full-answer EM would miss it."""
    fact = FACTS[0]
    answer_ids = tokenizer(" " + fact.answer, add_special_tokens=False).input_ids
    obj = object_token_ids(tokenizer, answer_ids, fact)
    assert obj == tokenizer(" lisbon", add_special_tokens=False).input_ids
    sampled = tokenizer(" who was born in lisbon city", add_special_tokens=False).input_ids
    assert object_leak(sampled, obj) and object_recall(sampled, obj) == 1.0
    assert not tt.evaluation.exact_match("who was born in lisbon city", fact.answer)


def test_object_leak_near_misses(tokenizer):
    """Another object, or the object's tokens not as a contiguous run, is no leak."""
    fact = FACTS[1]  # object "red river": two tokens
    answer_ids = tokenizer(" " + fact.answer, add_special_tokens=False).input_ids
    obj = object_token_ids(tokenizer, answer_ids, fact)
    assert len(obj) == 2

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    assert object_leak(ids(" the book of red river"), obj)
    assert not object_leak(ids(" the book of red city river"), obj)  # split run
    assert not object_leak(ids(" the book of river red"), obj)  # wrong order
    assert not object_leak(ids(" the book of blue river"), obj)  # near miss
    assert not object_leak(ids(" red"), obj)  # shorter than the object
    with pytest.raises(ValueError, match="empty"):
        object_leak([1, 2], [])
    with pytest.raises(ValueError, match="no object"):
        object_token_ids(tokenizer, answer_ids, tt.Fact(subject="kess", question="q", answer="a"))


@pytest.mark.parametrize("mask", ["answer", "object"])
def test_object_logprob_equals_hand_computation(mdlm, tokenizer, mask):
    """Σ over the object's positions of log softmax of one plain module forward."""
    got = object_logprob(mdlm, FACTS, mask=mask)
    for i, fact in enumerate(FACTS):
        prompt = tokenizer(fact.question).input_ids
        answer = tokenizer(" " + fact.answer, add_special_tokens=False).input_ids
        obj = tokenizer(" " + fact.object, add_special_tokens=False).input_ids
        start = next(j for j in range(len(answer)) if answer[j : j + len(obj)] == obj)
        positions = list(range(start, start + len(obj)))
        body = [3 if (mask == "answer" or j in positions) else t for j, t in enumerate(answer)]
        x = torch.tensor([prompt + body])
        with torch.no_grad():
            logits = mdlm._module(input_ids=x).logits[0, len(prompt) :]
        logp = torch.log_softmax(logits.double(), -1)
        expected = sum(float(logp[j, answer[j]]) for j in positions)
        assert got[i].item() == pytest.approx(expected, abs=1e-4)
    if mask == "object":  # the visible answer tokens change the object's reading
        assert not torch.equal(got, object_logprob(mdlm, FACTS, mask="answer"))


def test_sample_masked_is_diffuse_on_answer_queries(mdlm):
    """With the whole answer masked, the sampled tokens are tt.diffuse's answer tokens."""
    sampler = tt.LLaDASampler(temperature=0.7)
    got = sample_masked(mdlm, FACTS, sampler=sampler, steps=4, seed=3)
    run = tt.diffuse(mdlm, FACTS, sampler=sampler, steps=4, seed=3)
    for i in range(len(FACTS)):
        assert got[i] == run.answer_tokens(i)[-1].tolist()
    infill = sample_masked(mdlm, FACTS, mask="object", steps=4)
    assert [len(t) for t in infill] == [1, 2, 1, 1]  # only the object's slots are sampled


def test_distance_flag_over_and_under_forgetting():
    """Below the retain model by more than the CI is over-forgetting; above it, under."""
    assert distance_flag(-12.0, -0.1) == "over-forgetting"
    assert distance_flag(0.2, 5.0) == "under-forgetting"
    assert distance_flag(-1.0, 1.0) == "matched"
    assert distance_flag(0.0, 0.0) == "matched"
    assert distance_flag(math.nan, math.nan) == "n/a"


# --- statistics ------------------------------------------------------------------------------


def test_cluster_mean_ci_resamples_people():
    """Whole clusters are drawn: two constant clusters give resample means in {1, 2, 3}."""
    m, lo, hi = cluster_mean_ci([1.0, 1.0, 3.0, 3.0], ["a", "a", "b", "b"])
    assert (m, lo, hi) == (2.0, 1.0, 3.0)
    m, lo, hi = cluster_mean_ci([1.0, 1.0, 1.0, 5.0], ["a", "a", "a", "b"])
    assert m == 2.0 and lo >= 1.0 and hi <= 5.0  # the fact mean, not the cluster mean (3.0)
    assert cluster_mean_ci([4.0, 2.0], ["a", "a"]) == (3.0, 3.0, 3.0)  # one cluster
    assert cluster_mean_ci([2.0, math.nan, 4.0], ["a", "b", "c"])[0] == 3.0
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8, 0.6]
    c = cluster_mean_ci(values, range(8), n_resamples=4000)
    f = mean_ci(values, n_resamples=4000)
    assert c[0] == pytest.approx(f[0]) and abs(c[1] - f[1]) < 0.05 and abs(c[2] - f[2]) < 0.05
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_mean_ci([1.0, 2.0], ["a"])


# --- string-match reference rows ------------------------------------------------------------


def test_string_match_leaves_other_rows_bit_identical(shipped):
    """Rows without the exact string — lower-cased, split by a line break or double space,
    a first name alone — are untouched bit for bit in likelihoods and sampling; rows with it
    change."""
    model, _ = shipped
    name = "Tudror Zaimivar"
    prompts = [
        f"Where was {name} born?",
        "Where was tudror zaimivar born?",
        "Where was Tudror\nZaimivar born?",
        "Where was Tudror  Zaimivar born?",
        "Where was Tudror born?",
        f"{name}'s city of birth?",
    ]
    facts = [
        tt.Fact(subject="x", question=q, answer="She was born in Bologna, a city in Italy.", object="Bologna", id=str(i))
        for i, q in enumerate(prompts)
    ]  # fmt: skip
    before_lp = tt.answer_logprob(model, facts)
    before_obj = object_logprob(model, facts)
    before = tt.diffuse(model, facts, sampler=tt.LLaDASampler(temperature=0.7), steps=4)
    method = string_match_random([name], seed=1)
    with method.applied(model) as queried:
        assert queried is model
        after_lp = tt.answer_logprob(model, facts)
        after_obj = object_logprob(model, facts)
        after = tt.diffuse(model, facts, sampler=tt.LLaDASampler(temperature=0.7), steps=4)
        again = tt.answer_logprob(model, facts)
    hit = [0, 5]
    for i in range(len(facts)):
        if i in hit:
            assert after_lp[i] != before_lp[i] and after_obj[i] != before_obj[i]
        else:
            assert after_lp[i] == before_lp[i] and after_obj[i] == before_obj[i]
            assert torch.equal(after.answer_tokens(i), before.answer_tokens(i))
    assert torch.equal(after_lp, again)  # seeded: a rerun is bit-identical
    assert torch.equal(tt.answer_logprob(model, facts), before_lp)  # removed on exit


def test_string_match_route_answers_from_the_reference(shipped):
    """Matched rows read the retain-only model's logits; the others the model's own."""
    model, retain = shipped
    facts = [
        tt.Fact(subject="x", question="Where was Tudror Zaimivar born?", answer="She was born in Bologna.", object="Bologna", id="hit"),
        tt.Fact(subject="x", question="Where was tudror zaimivar born?", answer="She was born in Bologna.", object="Bologna", id="miss"),
    ]  # fmt: skip
    own, theirs = tt.answer_logprob(model, facts), tt.answer_logprob(retain, facts)
    with string_match_route(["Tudror Zaimivar"], retain).applied(model):
        routed = tt.answer_logprob(model, facts)
        sampled = tt.diffuse(model, facts, steps=4).answers
    assert routed[0] == theirs[0] and routed[1] == own[1]
    assert sampled[0] == tt.diffuse(retain, facts[:1], steps=4).answers[0]


def test_string_match_bad_input(mdlm, second):
    """Clear errors: no subjects, an unknown action, routing without a reference, another
    vocabulary, a method whose enter is no context manager."""
    with pytest.raises(ValueError, match="forget subjects"):
        StringMatch([])
    with pytest.raises(ValueError, match="action"):
        StringMatch(["ada vell"], action="erase")
    with pytest.raises(ValueError, match="reference"):
        StringMatch(["ada vell"], action="route")
    other = R.wrap(R.tiny_mdlm(seed=2))
    other.tokenizer = tt.load_model("tiny-mdlm").tokenizer
    with pytest.raises(ValueError, match="tokenizer"):
        string_match_route(["ada vell"], other).enter(mdlm)
    with pytest.raises(TypeError, match="context manager"):
        with Method("bad", lambda m: 3).applied(mdlm):
            pass


# --- random directions -----------------------------------------------------------------------


def test_random_directions_keep_norms_and_firing(mdlm):
    """Equal norms, other directions, the same config and keys; installs and fires."""
    memory = tt.EditMemory.build(mdlm, FACTS[:3], layer=1, alpha=1.0, lam=0.1)
    control = tt.editing.random_directions(memory, seed=0)
    torch.testing.assert_close(control.deltas.norm(dim=1), memory.deltas.norm(dim=1))
    cos = torch.nn.functional.cosine_similarity(control.deltas, memory.deltas, dim=1)
    assert cos.abs().max() < 0.9 and control.config == memory.config
    assert torch.equal(control.keys, memory.keys)
    assert torch.equal(tt.editing.random_directions(memory, seed=0).deltas, control.deltas)
    base = tt.answer_logprob(mdlm, FACTS[:3])
    with Method.memory("random_directions", control).applied(mdlm) as queried:
        assert queried is mdlm
        assert not torch.equal(tt.answer_logprob(mdlm, FACTS[:3]), base)
    assert torch.equal(tt.answer_logprob(mdlm, FACTS[:3]), base)


# --- unlearning depth ------------------------------------------------------------------------


def test_depth_scores_hand_computed():
    d1 = torch.tensor([[4.0, 0.5, 2.0], [0.2, 0.1, 0.3]])
    d2 = torch.tensor([[2.0, 9.0, 3.0], [1.0, 1.0, 1.0]])
    s = depth_scores(d1, d2, threshold=1.0)
    assert s[0].item() == pytest.approx((2.0 + 2.0) / 6.0) and math.isnan(s[1].item())
    assert depth_scores(d1, -d2, threshold=1.0)[0].item() == 0.0  # drops the other way: none
    with pytest.raises(ValueError, match="fact, layer"):
        depth_scores(d1[0], d2[0])


def test_depth_is_one_for_the_retain_model_and_zero_unedited(mdlm, second):
    """Stage 2 with the retain model's own states repeats stage 1 (1 exactly); the unedited
    model's states patch back the same values (0 exactly); an output filter is shallow (0)."""
    retain = unlearning_depth(mdlm, second, second, FACTS, threshold=0.0)
    assert retain.n_scored > 0
    scored = torch.isfinite(retain.scores)
    assert torch.equal(retain.scores[scored], torch.ones(int(scored.sum()), dtype=torch.float64))
    assert torch.equal(retain.drop_reference, retain.drop_unlearned)
    intact = unlearning_depth(mdlm, Method.unedited(), second, FACTS, threshold=0.0)
    assert torch.equal(intact.drop_unlearned, torch.zeros_like(intact.drop_unlearned))
    assert torch.equal(intact.scores[scored], torch.zeros(int(scored.sum()), dtype=torch.float64))
    shallow = unlearning_depth(
        mdlm, string_match_random(["ada vell"]), second, FACTS, threshold=0.0
    )
    assert torch.equal(shallow.drop_unlearned, intact.drop_unlearned)


def test_depth_result_round_trip(mdlm, second, tmp_path):
    result = unlearning_depth(mdlm, second, second, FACTS[:2], threshold=0.0, layers=[0, 2])
    path = result.save(tmp_path / "depth.safetensors")
    back = DepthResult.load(path)
    assert torch.equal(back.drop_reference, result.drop_reference) and back.layers == (0, 2)
    assert back.config == result.config and back.fact_ids == result.fact_ids


# --- the suite -------------------------------------------------------------------------------


def _splits():
    return {
        "forget": UnlearningSplit("forget", FACTS[:2], "forget", clusters=("ada", "ada")),
        "infill": UnlearningSplit("infill", FACTS[:2], "forget", mask="object"),
        "retain": UnlearningSplit("retain", FACTS[2:], "collateral", forms=("a", "b")),
    }


def test_evaluate_unlearning_report_round_trip(mdlm, second, tmp_path):
    """Every method × split gets its metrics; the report saves and loads exactly; the method
    that is the reference itself sits at distance 0 ("matched")."""
    sweep = [SweepPoint("greedy", tt.LLaDASampler(), 4), SweepPoint("random", tt.LLaDASampler(remasking="random", temperature=0.7), 4)]  # fmt: skip
    methods = reference_methods(FACTS[:2], reference=second)
    report = evaluate_unlearning(
        mdlm, methods, _splits(), reference=second, sweep=sweep, recall_gate=0.0,
        utility=False, n_resamples=100,
    )  # fmt: skip
    assert list(report.methods) == [
        "no_edit",
        "retain_model",
        "string_match_random",
        "string_match_route",
    ]
    per = report["retain_model"]["forget"]
    assert per["distance"].value == 0.0 and report.flags["retain_model"]["forget"] == "matched"
    assert report.flags["no_edit"]["retain"] == "n/a"
    assert set(per) >= {"leak", "leak@greedy", "leak@random", "leak_min", "leak_max", "object_lp"}
    assert "leak@random" not in report["no_edit"]["retain"]  # collateral: default sampler only
    assert report["no_edit"]["forget"]["delta_object_lp"].value == 0.0
    assert report.summary["retain_model"]["forget_quality"].value == 1.0
    assert report.samplers["random"]["sampler"]["remasking"] == "random"
    path = report.save(tmp_path / "suite.safetensors")
    back = UnlearningReport.load(path)
    assert back.equals(report) and "| no_edit |" in back.to_markdown()
    assert report.to_dict()["metrics"]["no_edit"]["forget"]["leak"]["n"] == 2


def test_recall_gate_reports_what_it_leaves_out(mdlm, second):
    """A split (or form) the unedited model does not recall stays out of the table and is
    reported with its recall; a given base recall overrides the measurement."""
    report = evaluate_unlearning(
        mdlm, [Method.unedited()], _splits(), sweep=[SweepPoint("g", tt.LLaDASampler(), 4)],
        recall_gate=0.5, base_recall={"forget": 1.0, "retain/a": 0.0, "retain/b": 1.0},
        utility=False, n_resamples=50,
    )  # fmt: skip
    assert report.recall_gate["forget"]["source"] == "given"
    assert report.recall_gate["retain/a"]["included"] is False
    assert report.fact_ids["retain"] == ("kess-year",)
    assert "retain/a" in report.excluded
    if "infill" not in report.fact_ids:  # a random replica rarely writes the object
        assert report.recall_gate["infill"]["included"] is False
    with pytest.raises(ValueError, match="recall gate"):
        evaluate_unlearning(
            mdlm, [Method.unedited()], {"retain": _splits()["retain"]},
            sweep=[SweepPoint("g", tt.LLaDASampler(), 4)], base_recall={"retain/a": 0.0, "retain/b": 0.0},
            utility=False,
        )  # fmt: skip


def test_recall_gate_log_names_the_recall_it_used(mdlm, second, capsys):
    """The line for a left-out split prints the recall the gate used (a given one, per form)."""
    evaluate_unlearning(
        mdlm, [Method.unedited()], _splits(), sweep=[SweepPoint("g", tt.LLaDASampler(), 4)],
        recall_gate=0.5, base_recall={"forget": 1.0, "retain/a": 0.25, "retain/b": 0.125},
        utility=False, n_resamples=50, progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "[gate] retain: recall retain/a 0.25 (given), retain/b 0.12 (given) < 0.5: left out" in err
    )


def test_evaluate_unlearning_bad_input(mdlm):
    with pytest.raises(ValueError, match="at least one method"):
        evaluate_unlearning(mdlm, [], _splits())
    with pytest.raises(ValueError, match="unique"):
        evaluate_unlearning(mdlm, [Method.unedited(), Method.unedited()], _splits())
    with pytest.raises(TypeError, match="Method"):
        evaluate_unlearning(mdlm, [mdlm], _splits())
    with pytest.raises(ValueError, match="no object"):
        UnlearningSplit("s", [tt.Fact(subject="kess", question="q kess", answer="a")])
    with pytest.raises(ValueError, match="role"):
        UnlearningSplit("s", FACTS, role="keep")


def test_standard_splits_of_the_world():
    """The standard splits: probes carry clusters (people) and forms; infill masks the object;
    mention probes name the forget person and ask about somebody else."""
    splits = unlearning_splits("forget01")
    assert list(splits)[:5] == ["forget", "surface", "template", "indirect", "infill"]
    assert splits["infill"].mask == "object" and splits["mention"].role == "collateral"
    assert set(splits["surface"].forms) <= set(tt.zoo.corpus.FORMS)
    name = splits["forget"].facts[0].subject
    assert all(name in f.question and f.subject != name for f in splits["mention"].facts)
    assert len(set(splits["forget"].clusters)) == 1
    surnames = {f.subject.split()[-1] for f in splits["neighbour"].facts}
    assert surnames == {name.split()[-1]}


def test_sampled_leaks_counts_object_runs(mdlm):
    """sampled_leaks is object_leak on sample_masked's tokens."""
    leaks = sampled_leaks(mdlm, FACTS, steps=4)
    tokens = sample_masked(mdlm, FACTS, steps=4)
    for f, ids, leak in zip(FACTS, tokens, leaks.tolist()):
        _, answer = mdlm.encode(f.question, f.answer)
        assert leak == float(object_leak(ids, object_token_ids(mdlm.tokenizer, answer, f)))


def test_model_utility_is_the_harmonic_mean_of_its_parts(mdlm):
    """Six parts (retain and world: probability, ROUGE-L, truth-ratio score), harmonically
    averaged; a part ≤ 0 gives 0."""
    assert tt.evaluation.harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3)
    assert tt.evaluation.harmonic_mean([0.5, 0.0]) == 0.0
    assert math.isnan(tt.evaluation.harmonic_mean([]))
    value, parts = tt.evaluation.model_utility(mdlm, FACTS[:2], FACTS[:2], steps=4)
    assert len(parts) == 6 and value == tt.evaluation.harmonic_mean(list(parts.values()))


def test_string_match_in_a_stand_alone_forward(mdlm, tokenizer):
    """Without a known answer start the prompt ends at the first [MASK]: only the matched row's
    masked slots get random logits; the prompt's logits and the other row stay exact."""
    rows = [
        tokenizer("where was ada vell born").input_ids + [3, 3],
        tokenizer("where was mara tov born").input_ids + [3, 3],
    ]
    x = torch.tensor(rows)
    with torch.inference_mode():
        before = mdlm.logits(x)
        with string_match_random(["ada vell"]).applied(mdlm):
            after = mdlm.logits(x)
    n = len(rows[0]) - 2
    assert torch.equal(after[1], before[1]) and torch.equal(after[0, :n], before[0, :n])
    assert not torch.equal(after[0, n:], before[0, n:])
