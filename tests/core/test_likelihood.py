"""Answer likelihoods (SPEC §4): the masked and ELBO estimators, and teacher forcing on AR models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import replicas as R
import torch
from conftest import CAUSAL_FAMILIES, MDLM_FAMILIES
from torch import nn

import tie_tracing as tt
from tie_tracing.core.likelihood import _elbo_masks

MASK = 3


def fact(question: str, answer: str, id: str = "") -> tt.Fact:
    return tt.Fact(subject="ada vell", question=question, answer=answer, id=id)


FACTS = [
    fact("where was ada vell born", "paris 1962 writer", "a"),
    fact("when was ada vell born", "lisbon 1971 painter", "b"),
    fact("who wrote the book of ada vell", "mara tov", "c"),
    fact("what was ada vell award", "porto", "d"),
    fact("where was ada vell born", "red blue green cat", "e"),
]


# -- a context-free model whose answer distribution is known in closed form ---------------


class _Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.self_attn = nn.Linear(d, d)
        self.mlp = nn.Linear(d, d)

    def forward(self, h):
        h = h + self.self_attn(h)
        return h + self.mlp(h)


class _Inner(nn.Module):
    def __init__(self, d: int, vocab: int, layers: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d) for _ in range(layers)])


class ContextFreeMDLM(nn.Module):
    """tiny-mdlm layout whose logits at position ``i`` are ``table[i]`` whatever the tokens.

    The blocks run (so every site fires) but their output is discarded; the answer tokens are
    therefore independent given the prompt, ``log p(answer) = Σ_i log softmax(table[p+i])[a_i]``
    exactly, the masked estimate equals it, and so does the ELBO's expectation.
    """

    def __init__(self, seed: int = 0, d: int = 8, vocab: int = R.VOCAB, max_len: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(model_type="llama", tie_tracing_family="tiny-mdlm")
        self.model = _Inner(d, vocab, 2)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.table = nn.Parameter(torch.randn(max_len, vocab, generator=g))

    def forward(self, input_ids):
        h = self.model.embed_tokens(input_ids)
        for block in self.model.layers:
            h = block(h)
        logits = self.table[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1)
        return SimpleNamespace(logits=logits + 0.0 * self.lm_head(h).detach().clamp(-1, 1))


@pytest.fixture(scope="module")
def context_free():
    module = ContextFreeMDLM()
    return tt.core.TracedModel.from_module(module, R.make_tokenizer()), module


def token_logprobs(model, module, f: tt.Fact) -> torch.Tensor:
    """``log p_i(a_i)`` of each answer token under the context-free table."""
    prompt, answer = model.encode(f.question, f.answer)
    logp = torch.log_softmax(module.table.detach().float(), dim=-1)
    return torch.stack([logp[len(prompt) + i, a] for i, a in enumerate(answer)])


def closed_form(model, module, f: tt.Fact) -> float:
    return float(token_logprobs(model, module, f).sum())


def test_context_free_model_is_wrapped_as_tiny_mdlm(context_free):
    """The closed-form model is recognised as tiny-mdlm with the tokenizer's mask id."""
    model, _ = context_free
    assert model.backbone.family == "tiny-mdlm" and model.mask_token_id == MASK
    assert model.num_layers == 2


def test_masked_estimator_equals_closed_form(context_free):
    """On a context-free model the masked estimate is exactly ``Σ_i log p_i(a_i)``."""
    model, module = context_free
    got = tt.answer_logprob(model, FACTS, estimator="masked")
    expected = torch.tensor([closed_form(model, module, f) for f in FACTS])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_elbo_estimator_matches_closed_form_within_mc_error(context_free):
    """The ELBO estimate of a context-free model agrees with the true log-prob within MC tolerance."""
    model, module = context_free
    facts = [f for f in FACTS if len(model.encode(f.question, f.answer)[1]) > 1]
    expected = torch.tensor([closed_form(model, module, f) for f in facts])
    mc = 256
    got = tt.answer_logprob(model, facts, estimator="elbo", mc=mc, seed=0)
    # each draw is (A/l)·Σ_{masked} log p_i(a_i) ∈ [A·min c, A·max c], so its std is at most
    # A·(max c − min c)/2 (Popoviciu); allow 4 standard errors of the mean of mc draws.
    for f, g, e in zip(facts, got, expected):
        c = token_logprobs(model, module, f)
        sigma = len(c) * float(c.max() - c.min()) / 2
        assert abs(float(g) - float(e)) < 4 * sigma / mc**0.5, (f.id, float(g), float(e))
    # a single-token answer has no Monte-Carlo freedom: the ELBO is exact
    single = [f for f in FACTS if len(model.encode(f.question, f.answer)[1]) == 1]
    torch.testing.assert_close(
        tt.answer_logprob(model, single, estimator="elbo", mc=4),
        torch.tensor([closed_form(model, module, f) for f in single]),
        rtol=0,
        atol=1e-5,
    )


def test_elbo_is_exact_when_every_token_is_equally_likely():
    """With equal per-position log-probs every ELBO draw is ``A·c``, so the estimate is exact."""
    module = ContextFreeMDLM()
    with torch.no_grad():
        module.table.zero_()
    model = tt.core.TracedModel.from_module(module, R.make_tokenizer())
    got = tt.answer_logprob(model, FACTS, estimator="elbo", mc=16)
    lengths = torch.tensor(
        [len(model.encode(f.question, f.answer)[1]) for f in FACTS], dtype=torch.float
    )
    torch.testing.assert_close(
        got, -lengths * torch.log(torch.tensor(float(R.VOCAB))), rtol=0, atol=1e-4
    )


# -- the ELBO's machinery ------------------------------------------------------------------


@pytest.mark.parametrize("answer_length, mc", [(1, 8), (3, 12), (5, 128), (7, 5)])
def test_elbo_masks_are_stratified(answer_length, mc):
    """Masked counts are in 1..A and spread evenly (each count appears ⌊mc/A⌋ or ⌈mc/A⌉ times, ±1)."""
    masks = _elbo_masks(answer_length, mc, torch.Generator().manual_seed(3))
    assert masks.shape == (mc, answer_length) and masks.dtype == torch.bool
    counts = masks.sum(-1)
    assert counts.min() >= 1 and counts.max() <= answer_length
    if mc >= answer_length:
        hist = torch.bincount(counts, minlength=answer_length + 1)[1:]
        assert hist.min() >= mc // answer_length - 1
        assert hist.max() <= -(-mc // answer_length) + 1


@pytest.mark.parametrize("family", MDLM_FAMILIES)
def test_elbo_is_seeded(replicas, family):
    """The same seed gives the same ELBO value; another seed gives (typically) another."""
    model = replicas[family]
    a = tt.answer_logprob(model, FACTS[:2], estimator="elbo", mc=8, seed=4)
    b = tt.answer_logprob(model, FACTS[:2], estimator="elbo", mc=8, seed=4)
    c = tt.answer_logprob(model, FACTS[:2], estimator="elbo", mc=8, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all() and (a < 0).all()


# -- batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MDLM_FAMILIES + CAUSAL_FAMILIES)
def test_batch_equals_one_at_a_time(replicas, family):
    """Facts scored in one call equal the same facts scored one at a time (elbo: fact i uses seed+i)."""
    model = replicas[family]
    together = tt.answer_logprob(model, FACTS, estimator="masked", batch_size=2)
    alone = torch.cat([tt.answer_logprob(model, f, estimator="masked") for f in FACTS])
    assert torch.equal(together, alone)
    if not model.is_causal:
        together = tt.answer_logprob(model, FACTS, estimator="elbo", mc=6, seed=2, batch_size=4)
        alone = torch.cat(
            [
                tt.answer_logprob(model, f, estimator="elbo", mc=6, seed=2 + i)
                for i, f in enumerate(FACTS)
            ]
        )
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


# -- causal models -------------------------------------------------------------------------


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_teacher_forcing_matches_manual(replicas, family):
    """On a causal model both estimators give the teacher-forced log-prob from the raw logits."""
    model = replicas[family]
    expected = []
    for f in FACTS:
        prompt, answer = model.encode(f.question, f.answer)
        x = torch.tensor([prompt + answer])
        with torch.no_grad():
            raw = model._module(input_ids=x).logits[0].float()
        logp = torch.log_softmax(raw, dim=-1)
        expected.append(sum(float(logp[len(prompt) + i - 1, a]) for i, a in enumerate(answer)))
    expected = torch.tensor(expected)
    for estimator in ("masked", "elbo"):
        got = tt.answer_logprob(model, FACTS, estimator=estimator)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# -- errors --------------------------------------------------------------------------------


def test_bad_arguments_raise(mdlm):
    """An unknown estimator, no facts, or ``mc < 1`` raise ``ValueError`` naming the problem."""
    with pytest.raises(ValueError, match="unknown estimator 'exact'.*masked.*elbo"):
        tt.answer_logprob(mdlm, FACTS, estimator="exact")
    with pytest.raises(ValueError, match="at least one"):
        tt.answer_logprob(mdlm, [])
    with pytest.raises(ValueError, match="mc"):
        tt.answer_logprob(mdlm, FACTS, estimator="elbo", mc=0)


def test_nan_logits_raise_naming_the_fact(context_free):
    """Non-finite logits raise ``NonFiniteActivationError`` naming the facts concerned."""
    model, module = context_free
    saved = module.table.detach().clone()
    try:
        with torch.no_grad():
            module.table[:, 5] = float("nan")
        with pytest.raises(tt.NonFiniteActivationError, match="'a'"):
            tt.answer_logprob(model, FACTS[:1], estimator="masked")
        with pytest.raises(tt.NonFiniteActivationError, match="'a'"):
            tt.answer_logprob(model, FACTS[:1], estimator="elbo", mc=2)
    finally:
        with torch.no_grad():
            module.table.copy_(saved)
