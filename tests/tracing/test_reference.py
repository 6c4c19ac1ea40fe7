"""The slow reference shares nothing with the engine it checks: mutations of the engine's
commit rule and of its frozen-LP rule make the engine-versus-reference comparison fail."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core import sampler as sampler_module
from tie_tracing.core import samplers
from tie_tracing.tracing import tie as tie_module
from tie_tracing.tracing.reference import own_rule, reference_ie

from .. import replicas

FACT = tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="f0")
SETTINGS = dict(steps=4, nu=2.0, n_noise=2, seed=3)


@functools.cache
def model() -> tt.core.TracedModel:
    return replicas.wrap(replicas.tiny_mdlm())


def engine(**kw) -> tt.TIEResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random replica knows no fact
        return tt.trace_tie(model(), [FACT], progress=False, **(SETTINGS | kw))


def gap(result: tt.TIEResult, ref: dict) -> float:
    """The largest difference between the engine and the reference (IE and both LPs)."""
    return max(
        float((result.ie[0].nan_to_num() - ref["ie"].nan_to_num()).abs().max()),
        float((result.lp_clean[0] - ref["lp_clean"]).abs().max()),
        float((result.lp_corrupt[0] - ref["lp_corrupt"]).abs().max()),
    )


@pytest.fixture(scope="module")
def unmutated():
    """The engine and the reference agree before any mutation (the reference's own rule)."""
    ref = reference_ie(model(), FACT, **SETTINGS)
    assert ref["commit_rule"] == "reference"
    result = engine()
    assert gap(result, ref) < 1e-5
    return result, ref


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7}, {"block_length": 2}])
def test_inverted_commit_order_is_caught(unmutated, monkeypatch, kwargs):
    """The sampler's commit order inverted (the least confident positions first) moves the
    engine's numbers and the reference no longer agrees: its commit rule is its own."""
    original = samplers.commit_ranked

    def least_confident_first(x, *, confidence, **rest):
        return original(x, confidence=-confidence, **rest)

    ref = reference_ie(model(), FACT, **(SETTINGS | kwargs))
    assert gap(engine(**kwargs), ref) < 1e-5
    monkeypatch.setattr(samplers, "commit_ranked", least_confident_first)
    mutated = engine(**kwargs)
    assert gap(mutated, ref) > 1e-3
    again = reference_ie(model(), FACT, **(SETTINGS | kwargs))
    assert torch.equal(again["ie"].nan_to_num(), ref["ie"].nan_to_num())  # not reached by it


def test_frozen_lp_read_at_the_wrong_step_is_caught(unmutated, monkeypatch):
    """The frozen-LP rule mutated to read a committed position at the current step instead
    of its commit step (everywhere the package applies it) moves the engine's numbers, and
    the reference, which keeps its own books, no longer agrees."""
    result, ref = unmutated

    def current_step(terms, masked, frozen):
        return terms

    monkeypatch.setattr(sampler_module, "frozen_terms", current_step)
    monkeypatch.setattr(tie_module, "frozen_terms", current_step)
    mutated = engine()
    assert not torch.equal(mutated.lp_clean, result.lp_clean)  # the mutation bites
    assert gap(mutated, reference_ie(model(), FACT, **SETTINGS)) > 1e-3


def test_the_reference_covers_llada_low_confidence_only():
    """Its own rule covers LLaDA's low-confidence remasking (temperature, blocks, counts,
    commit_mask); other samplers are stepped by their own update, and it says so."""
    covered = [
        tt.LLaDASampler(),
        tt.LLaDASampler(temperature=0.7, block_length=2, commit_mask=True),
        tt.LLaDASampler(transfer_counts=(2, 0, 1, 1)),
    ]
    assert all(own_rule(s) for s in covered)
    others = [
        tt.LLaDASampler(remasking="random"),
        tt.LLaDASampler(cfg_scale=0.5),
        tt.LLaDASampler(threshold=0.5),
        tt.LLaDASampler(precision="model"),
        tt.DreamSampler(),
    ]
    assert not any(own_rule(s) for s in others)
    ref = reference_ie(model(), FACT, steps=2, nu=2.0, modules=("resid",), sampler=others[-1])
    assert ref["commit_rule"] == "sampler"
