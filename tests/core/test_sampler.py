"""The diffusion sampler (SPEC §4): schedule, commits, exact step count, seeding, batching."""

from __future__ import annotations

import pytest
import replicas as R
import torch
from conftest import MDLM_FAMILIES, count_forwards, hooked

import tie_tracing as tt
from tie_tracing.core.commit import transfer_schedule
from tie_tracing.core.sampler import run_loop
from tie_tracing.core.samplers import commit

MASK = 3


def fact(question: str, answer: str, id: str = "") -> tt.Fact:
    return tt.Fact(subject="ada vell", question=question, answer=answer, id=id)


# Same prompt and answer lengths, so they batch together.
SAME_SHAPE = [
    fact("where was ada vell born", "paris 1962 writer", "a"),
    fact("when was ada vell born", "lisbon 1971 painter", "b"),
    fact("what was ada vell award", "porto red prize", "c"),
]
TWO_TOKEN = fact("where was ada vell born", "paris 1962", "two")
MIXED = SAME_SHAPE + [TWO_TOKEN, fact("who wrote the book of ada vell", "mara tov", "d")]


def initial_state(model, f: tt.Fact) -> torch.Tensor:
    prompt, answer = model.encode(f.question, f.answer)
    return torch.tensor(prompt + [MASK] * len(answer))


def commits_per_step(result: tt.DiffusionResult, row: int, model) -> list[int]:
    """Number of answer positions that stop being masked at each step."""
    p, a = result.prompt_lengths[row], result.answer_lengths[row]
    prev = torch.full((a,), MASK)
    counts = []
    for k in range(result.tokens.shape[1]):
        now = result.tokens[row, k, p : p + a]
        counts.append(int(((prev == MASK) & (now != MASK)).sum()))
        prev = now
    return counts


# -- the schedule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer_length, steps, block_length",
    [
        (3, 8, None),
        (5, 2, None),
        (7, 3, None),
        (8, 8, None),
        (4, 4, 2),
        (5, 4, 3),
        (6, 6, 2),
        (1, 1, None),
    ],
)
def test_transfer_schedule_splits_evenly(answer_length, steps, block_length):
    """Each block's count is split over its steps evenly, remainder to the first steps."""
    schedule = transfer_schedule(answer_length, steps, block_length)
    assert len(schedule) == steps
    block = block_length or answer_length
    n_blocks = -(-answer_length // block)
    per_block = steps // n_blocks
    for b in range(n_blocks):
        part = schedule[b * per_block : (b + 1) * per_block]
        lo, hi = b * block, min((b + 1) * block, answer_length)
        assert all((s[0], s[1]) == (lo, hi) for s in part)
        counts = [s[2] for s in part]
        assert sum(counts) == hi - lo
        assert counts == sorted(counts, reverse=True)
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize(
    "args, match",
    [
        ((3, 0), "steps"),
        ((3, -2), "steps"),
        ((0, 4), "at least one"),
        ((5, 4, 2), "divisible"),
        ((3, 4, 0), "block_length"),
    ],
)
def test_transfer_schedule_rejects_bad_configurations(args, match):
    """Bad step counts, empty answers, zero blocks and non-divisible block layouts raise."""
    with pytest.raises(ValueError, match=match):
        transfer_schedule(*args)


# -- commits -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MDLM_FAMILIES)
@pytest.mark.parametrize("steps, block_length", [(8, None), (2, None), (4, 1), (3, None)])
def test_commit_counts_follow_schedule(replicas, family, steps, block_length):
    """Newly unmasked answer positions per step equal the schedule; committed tokens never change."""
    model = replicas[family]
    facts = (
        MIXED
        if block_length is None
        else [f for f in MIXED if len(model.encode(f.question, f.answer)[1]) == 2]
    )
    result = tt.diffuse(model, facts, steps=steps, block_length=block_length)
    assert result.tokens.shape[:2] == (len(facts), steps)
    for row in range(len(facts)):
        a = result.answer_lengths[row]
        expected = [n for _, _, n in transfer_schedule(a, steps, block_length)]
        assert commits_per_step(result, row, model) == expected, (row, family)
        p = result.prompt_lengths[row]
        states = result.tokens[row, :, : p + a]
        # the prompt is untouched; a committed token is never changed or re-masked
        assert torch.equal(states[:, :p], initial_state(model, facts[row])[:p].expand(steps, -1))
        for k in range(1, steps):
            committed = states[k - 1, p:] != MASK
            assert torch.equal(states[k, p:][committed], states[k - 1, p:][committed])
        assert not (states[-1, p:] == MASK).any()
        assert (result.tokens[row, :, p + a :] == -1).all()


def test_commit_never_chooses_the_mask_token():
    """Even when ``[MASK]`` is the argmax, ``commit`` writes a real token (committing is never re-masking)."""
    x = torch.tensor([[1, 5, MASK, MASK, MASK]])
    logits = torch.zeros(1, 3, 10)
    logits[..., MASK] = 10.0
    logits[0, :, 7] = torch.tensor([1.0, 3.0, 2.0])
    out = commit(x, logits, answer_start=2, block=(0, 3), n_commit=2, mask_id=MASK)
    assert out[0, 2:].tolist() == [MASK, 7, 7]
    sampled = commit(
        x,
        logits,
        answer_start=2,
        block=(0, 3),
        n_commit=3,
        mask_id=MASK,
        temperature=1.0,
        seeds=[0],
    )
    assert not (sampled[0, 2:] == MASK).any()
    assert torch.equal(x, torch.tensor([[1, 5, MASK, MASK, MASK]]))  # input not modified


@pytest.mark.parametrize("family", MDLM_FAMILIES)
def test_exactly_T_forwards_even_when_answer_finishes_early(replicas, family):
    """A 2-token answer with T=8 still runs 8 backbone forwards and reports 8 LPs."""
    model = replicas[family]
    with count_forwards(model) as calls:
        result = tt.diffuse(model, TWO_TOKEN, steps=8)
    assert calls[0] == 8
    assert result.target_logprobs.shape == (1, 8)
    assert torch.isfinite(result.target_logprobs).all()
    assert commits_per_step(result, 0, model) == [1, 1, 0, 0, 0, 0, 0, 0]
    # finished answer: later steps keep the final state
    assert (result.tokens[0, 2:] == result.tokens[0, 1]).all()


def test_semi_autoregressive_blocks_commit_in_order(mdlm):
    """block_length=1 on a 2-token answer with T=4: position 0 is committed at step 0, position 1 at step 2."""
    result = tt.diffuse(mdlm, TWO_TOKEN, steps=4, block_length=1)
    ans = result.answer_tokens(0)
    masked = (ans == MASK).tolist()
    assert masked == [[False, True], [False, True], [False, False], [False, False]]


# -- batching and seeds --------------------------------------------------------------------


@pytest.mark.parametrize("family", MDLM_FAMILIES)
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_batch_equals_rows_alone(replicas, family, temperature):
    """A batch equals its rows run alone (row i with seed+i): states and LPs exactly equal."""
    model = replicas[family]
    batch = tt.diffuse(model, MIXED, steps=4, temperature=temperature, seed=11)
    for i, f in enumerate(MIXED):
        alone = tt.diffuse(model, f, steps=4, temperature=temperature, seed=11 + i)
        width = alone.tokens.shape[-1]
        assert torch.equal(batch.tokens[i, :, :width], alone.tokens[0]), (family, i)
        assert torch.equal(batch.target_logprobs[i], alone.target_logprobs[0]), (family, i)
        assert batch.answers[i] == alone.answers[0]


def test_seeds_reproduce_and_vary(mdlm):
    """Same seed gives the same samples; different seeds give different samples at high temperature."""
    facts = SAME_SHAPE
    a = tt.diffuse(mdlm, facts, steps=3, temperature=50.0, seed=7)
    b = tt.diffuse(mdlm, facts, steps=3, temperature=50.0, seed=7)
    assert torch.equal(a.tokens, b.tokens) and a.answers == b.answers
    others = [tt.diffuse(mdlm, facts, steps=3, temperature=50.0, seed=s).tokens for s in (8, 9, 10)]
    assert any(not torch.equal(a.tokens, o) for o in others)
    # at temperature 0 the seed is irrelevant
    c = tt.diffuse(mdlm, facts, steps=3, seed=1)
    d = tt.diffuse(mdlm, facts, steps=3, seed=2)
    assert torch.equal(c.tokens, d.tokens)


def test_lp0_equals_masked_answer_logprob(replicas):
    """``target_logprobs[:, 0]`` equals ``answer_logprob(estimator="masked")``."""
    for family in MDLM_FAMILIES:
        model = replicas[family]
        result = tt.diffuse(model, MIXED, steps=2)
        masked = tt.answer_logprob(model, MIXED, estimator="masked")
        torch.testing.assert_close(result.target_logprobs[:, 0], masked, rtol=0, atol=1e-5)
        assert (result.target_logprobs < 0).all()


def test_plain_prompts_give_answers_without_lps(mdlm):
    """Plain prompts with ``answer_length`` sample that many slots and report no LPs."""
    result = tt.diffuse(
        mdlm, ["where was ada vell born", "who wrote the book"], steps=2, answer_length=2
    )
    assert result.target_logprobs is None
    assert result.answer_lengths == (2, 2)
    assert len(result.answers) == 2 and all(isinstance(s, str) for s in result.answers)


# -- traced loop ---------------------------------------------------------------------------


def test_traced_denoise_without_intervention_matches_direct_call(mdlm):
    """``with model.denoise(...)`` iterating every step, with no intervention, gives the direct call's states."""
    T = 4
    x = torch.stack([initial_state(mdlm, f) for f in SAME_SHAPE])
    prompt_len = len(mdlm.encode(SAME_SHAPE[0].question, SAME_SHAPE[0].answer)[0])
    targets = torch.tensor([mdlm.encode(f.question, f.answer)[1] for f in SAME_SHAPE])
    hooked_resid = []
    with hooked(mdlm.site_module(1, "resid"), lambda _m, _i, o: hooked_resid.append(o[0].clone())):
        direct = mdlm.denoise(x, answer_start=prompt_len, steps=T, targets=targets)
    resid, steps_seen = [], []
    with torch.inference_mode():
        with mdlm.denoise(x, answer_start=prompt_len, steps=T, targets=targets) as tracer:
            for k in tracer.iter[:T]:
                steps_seen.append(k)
                resid.append(mdlm.site(1, "resid").output[0].clone().save())
            out = tracer.result.save()
    assert torch.equal(out.states, direct.states)
    assert torch.equal(out.target_logprobs, direct.target_logprobs)
    assert list(steps_seen) == list(range(T)) and len(hooked_resid) == T
    # tracer.iter[k] is the k-th backbone forward (step k), read at the same site as a hook
    for k in range(T):
        assert torch.equal(resid[k], hooked_resid[k]), k
    assert not torch.equal(resid[0], resid[1])


def test_run_loop_matches_denoise(mdlm):
    """``run_loop`` called directly equals ``model.denoise``."""
    x = initial_state(mdlm, TWO_TOKEN)[None]
    p = x.shape[1] - 2
    with torch.inference_mode():
        a = run_loop(mdlm, x, answer_start=p, steps=4)
    b = mdlm.denoise(x, answer_start=p, steps=4)
    assert torch.equal(a.states, b.states)
    assert a.target_logprobs is None


# -- errors --------------------------------------------------------------------------------


def test_nan_activation_raises(mdlm):
    """A NaN injected into an MLP output raises ``NonFiniteActivationError``."""

    def poison(_m, _i, out):
        return out * float("nan")

    with hooked(mdlm.site_module(1, "mlp"), poison):
        with pytest.raises(tt.NonFiniteActivationError):
            tt.diffuse(mdlm, TWO_TOKEN, steps=2)
    assert torch.isfinite(tt.diffuse(mdlm, TWO_TOKEN, steps=2).target_logprobs).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=-1), "steps"),
        (dict(steps=3, block_length=1), "divisible"),
    ],
)
def test_bad_sampler_settings_raise(mdlm, kwargs, match):
    """``steps < 1`` and a block layout that does not divide the steps raise ``ValueError``."""
    with pytest.raises(ValueError, match=match):
        tt.diffuse(mdlm, TWO_TOKEN, **kwargs)


def test_bad_inputs_raise(mdlm):
    """Empty input, a plain string without ``answer_length``, or a wrong type raise clear errors."""
    with pytest.raises(ValueError, match="at least one"):
        tt.diffuse(mdlm, [])
    with pytest.raises(ValueError, match="answer_length"):
        tt.diffuse(mdlm, "where was ada vell born")
    with pytest.raises(TypeError, match="Fact or a str"):
        tt.diffuse(mdlm, [3])


def test_causal_model_is_rejected(tokenizer):
    """Diffusion sampling on a causal model (no mask token) raises a clear ``ValueError``."""
    model = tt.core.TracedModel.from_module(R.causal("llama"), tokenizer)
    assert model.is_causal and model.mask_token_id is None
    with pytest.raises(ValueError, match="causal"):
        tt.diffuse(model, TWO_TOKEN, steps=2)
    with pytest.raises(ValueError, match="causal"):
        model.denoise(torch.tensor([[1, 5, 3]]), answer_start=2, steps=1)


# -- frozen log-probabilities, target positions, commit maps (SPEC §4-§5) --------------------


def test_frozen_lp_keeps_each_position_at_its_commit_forward(mdlm):
    """LP(k) under lp='frozen' equals a hand reconstruction from the raw per-step terms: a
    position masked in step k's input reads step k's term, a committed one its commit step's."""
    x = initial_state(mdlm, SAME_SHAPE[0])[None]
    p = len(mdlm.encode(SAME_SHAPE[0].question, SAME_SHAPE[0].answer)[0])
    targets = torch.tensor([mdlm.encode(SAME_SHAPE[0].question, SAME_SHAPE[0].answer)[1]])
    out = run_loop(mdlm, x, answer_start=p, steps=3, targets=targets, lp="frozen")
    raw = run_loop(mdlm, x, answer_start=p, steps=3, targets=targets, lp="raw")
    terms = out.token_logprobs[0].detach()  # [T, A]
    assert torch.equal(raw.target_logprobs[0], terms.sum(-1))
    commit_step = tt.core.sampler.commit_steps(out.states[0, :, p:], MASK)
    for k in range(3):
        expected = sum(
            float(terms[k, i]) if commit_step[i] >= k else float(terms[commit_step[i], i])
            for i in range(terms.shape[1])
        )
        assert float(out.target_logprobs[0, k].detach()) == pytest.approx(expected, abs=1e-5)
    # once every position is committed the frozen LP no longer moves
    last = int(commit_step.max())
    assert torch.equal(out.target_logprobs[0, last + 1 :], out.target_logprobs[0, last:-1])


def test_diffuse_records_reading_target_and_commit_maps(mdlm):
    """diffuse records lp/target, reads the object's tokens for target='object', and its
    commit maps say when each answer position (and the object) was committed."""
    f = tt.Fact("ada vell", "where was ada vell born", "paris 1962 writer", object="1962", id="o")
    whole = tt.diffuse(mdlm, [f], steps=3)
    obj = tt.diffuse(mdlm, [f], steps=3, target="object", lp="raw")
    assert whole.config["lp"] == "frozen" and obj.config["target"] == "object"
    assert whole.object_offsets == ((1,),)
    terms = run_loop(
        mdlm, initial_state(mdlm, f)[None], answer_start=whole.prompt_lengths[0], steps=3,
        targets=torch.tensor([mdlm.encode(f.question, f.answer)[1]]), lp="raw",
    ).token_logprobs[0].detach()  # fmt: skip
    torch.testing.assert_close(obj.target_logprobs[0], terms[:, 1])
    commits = whole.commits(0)
    tokens = whole.answer_tokens(0)
    for i, c in enumerate(commits.tolist()):
        assert (tokens[:c, i] == MASK).all() and (tokens[c:, i] == tokens[-1, i]).all()
    assert whole.object_commit_step(0) == int(commits[1])


def test_diffuse_bad_reading_and_target(mdlm):
    """Unknown lp/target list the choices; under target='object' a fact without an object
    scores its whole answer (what Fact.object=None means), the same as target='answer'."""
    with pytest.raises(ValueError, match=r"lp must be one of \('frozen', 'raw'\)"):
        tt.diffuse(mdlm, SAME_SHAPE, steps=2, lp="later")
    with pytest.raises(ValueError, match=r"target must be one of \('object', 'answer', 'name'\)"):
        tt.diffuse(mdlm, SAME_SHAPE, steps=2, target="subject")
    obj = tt.diffuse(mdlm, SAME_SHAPE, steps=2, target="object")
    whole = tt.diffuse(mdlm, SAME_SHAPE, steps=2, target="answer")
    torch.testing.assert_close(obj.target_logprobs, whole.target_logprobs, rtol=0, atol=0)
