"""An installed edit memory acts on a state identically in the diffusion loop and in every
traced forward (TIE exact / immediate / attribution, positional tracing, likelihoods).

The state a forward runs in (its denoising step, where its answer span begins) reaches the
memory through one :class:`~tie_tracing.core.context.ForwardContext`. A sweep forward that
left the answer start out used to let the token gate read the *answer*: a word the clean run
wrote there opened a gate that stays closed in the diffusion loop, so tracing an edited model
mixed two behaviours.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core._nnsight import register_edit, remove_edit

# the traced fact: a four-slot answer the random replica fills with vocabulary words
FACT = tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris red", id="t0")
STEPS = 4
NU = 1e-6  # the corrupted runs commit as the clean run does: their states hold its words


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random replica knows no fact
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def written(mdlm):
    """``(word, slot)``: the vocabulary word the clean diffusion run writes first into FACT's
    answer, before its last step (so later forwards read it), and the slot it sits in; FACT's
    prompt does not name it."""
    prompt, _ = mdlm.encode(FACT.question, FACT.answer)
    run = tt.diffuse(mdlm, [FACT], steps=STEPS)
    final, commits = run.answer_tokens(0)[-1].tolist(), run.commits(0).tolist()
    taken = set(prompt) | {int(t) for t in mdlm.tokenizer(" where was born").input_ids}
    words = sorted(
        (step, slot, str(mdlm.tokenizer.decode([token])).strip())
        for slot, (token, step) in enumerate(zip(final, commits))
        if token not in taken and step < STEPS - 1
    )
    words = [(word, slot) for _, slot, word in words if word.isalnum()]  # a named word
    assert words, f"the clean run wrote no usable word: {final}"
    return words[0]


@pytest.fixture(scope="module")
def answer_gated(mdlm, written):
    """A token-gated memory whose subject is the written word: its gate must stay closed on
    FACT, whose prompt does not name it."""
    word = written[0]
    fact = tt.Fact(word, f"where was {word} born", "paris", target="porto", id="w")
    return tt.EditMemory.build(
        mdlm, [fact], layer=1, alpha=4.0, lam=0.1, subject_gate=True, gate_kind="tokens",
        apply_at="all", key_at="answer",
    )  # fmt: skip


def _traces(mdlm, written):
    """Every traced path on FACT: the loop, TIE in each mode, positional, likelihoods."""
    tie = dict(steps=STEPS, nu=NU, n_noise=1, progress=False)
    spelled = tt.Fact("ada vell", FACT.question, f"lisbon {written[0]}", id="t1")
    return {
        "diffuse": _quiet(tt.diffuse, mdlm, [FACT], steps=STEPS).tokens,
        **{
            f"tie-{mode}": _quiet(tt.trace_tie, mdlm, [FACT], mode=mode, **tie).ie.nan_to_num()
            for mode in ("exact", "immediate", "attribution")
        },
        "positional": _quiet(tt.trace_positional, mdlm, [FACT], nu=NU, progress=False).lp,
        "masked": tt.answer_logprob(mdlm, [spelled]),
        "elbo": tt.answer_logprob(mdlm, [spelled], estimator="elbo", mc=8),
    }


def test_a_word_written_into_the_answer_opens_the_gate_nowhere(mdlm, written, answer_gated):
    """With the memory installed every traced path gives the numbers of the unedited model:
    the gate reads the prompt only, in the loop and in every sweep forward alike. The gate
    does open on the same state when a forward's answer span is unknown (a stand-alone
    forward), so the comparison is not vacuous."""
    before = _traces(mdlm, written)
    with answer_gated.install(mdlm):
        after = _traces(mdlm, written)
        final = tt.diffuse(mdlm, [FACT], steps=STEPS).tokens[0, -1][None]
        slot = len(final[0]) - 4 + (written[1] + 1) % 4  # another slot, masked again
        final[0, slot] = mdlm.mask_token_id
        edited = mdlm.logits(final)  # stand-alone: the gate sees the written word
    assert written[0] in mdlm.tokenizer.decode(final[0].tolist())
    assert not torch.equal(edited, mdlm.logits(final))
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_every_traced_forward_runs_in_its_context(mdlm):
    """Each forward of each path runs in the context the diffusion loop gives the same state:
    the query's answer start, and the row's denoising step (None outside the loop)."""
    seen: list = []
    site = mdlm.site(1, "resid")
    mediator = register_edit(mdlm, site, lambda _hidden, context: seen.append(context))
    try:
        prompt, _ = mdlm.encode(FACT.question, FACT.answer)
        p = len(prompt)

        def steps_of(runs):
            out = set()
            for ctx in runs:
                step = ctx.step
                out |= set(step.tolist()) if isinstance(step, torch.Tensor) else {step}
            return out

        for mode in ("exact", "immediate", "attribution"):
            seen.clear()
            _quiet(tt.trace_tie, mdlm, [FACT], steps=STEPS, nu=0.5, mode=mode, progress=False)
            assert seen and all(ctx.answer_start == p for ctx in seen), mode
            assert steps_of(seen) == set(range(STEPS)), mode
        for fn in (
            lambda: _quiet(tt.trace_positional, mdlm, [FACT], nu=0.5, progress=False),
            lambda: tt.answer_logprob(mdlm, [FACT]),
            lambda: tt.answer_logprob(mdlm, [FACT], estimator="elbo", mc=4),
        ):
            seen.clear()
            fn()
            assert seen and all(c.answer_start == p and c.step is None for c in seen)
        seen.clear()
        mdlm.logits(torch.tensor([prompt]))
        assert seen == [tt.core.STANDALONE]
    finally:
        remove_edit(mdlm, mediator)
