"""The object target (the default), the name target, the sweep cache that shares one sweep
between targets, and the sites that are zero by architecture (SPEC §5)."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import pytest
import torch

import tie_tracing as tt
from tie_tracing.tracing.patching import encode_query
from tie_tracing.tracing.reference import reference_ie
from tie_tracing.tracing.tie import structural_zeros

from .. import replicas

# answers that repeat the subject's name and carry an object
FACTS = [
    tt.Fact(
        "ada vell",
        "where was ada vell born",
        "ada vell was born in lisbon",
        object="lisbon",
        id="n0",
    ),
    tt.Fact(
        "mara tov",
        "who wrote of mara tov",
        "the book of mara tov is orion",
        object="orion",
        id="n1",
    ),
]


@functools.cache
def model(family: str) -> tt.core.TracedModel:
    return {
        "tiny-mdlm": lambda: replicas.wrap(replicas.tiny_mdlm()),
        "dream": lambda: replicas.wrap(replicas.dream_replica()),
    }[family]()


def trace(m, facts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        return tt.trace_tie(m, facts, progress=False, **kw)


def test_object_is_the_default_target_everywhere():
    """TraceConfig, trace_tie's record, diffuse and the CLI all default to the object."""
    from tie_tracing import cli

    assert tt.TraceConfig().target == "object"
    r = trace(model("tiny-mdlm"), FACTS[:1], steps=2, modules="resid")
    assert r.config["target"] == "object"
    q = encode_query(model("tiny-mdlm"), FACTS[0])
    assert r.target_mask[0].tolist() == q.object_mask.tolist()
    args = cli.build_parser().parse_args(["figure2"])
    assert args.target == "object"


def test_name_target_sums_over_the_subjects_tokens_inside_the_answer():
    """target='name' weighs exactly the answer tokens that decode to the subject's name."""
    m = model("tiny-mdlm")
    for fact in FACTS:
        q = encode_query(m, fact)
        mask = q.target_mask("name")
        said = m.tokenizer.decode([a for a, on in zip(q.answer_ids, mask) if on]).strip()
        assert said == fact.subject
        assert not (mask & q.object_mask).any()


def test_name_target_without_the_name_in_the_answer_is_an_error_naming_the_fact():
    fact = tt.Fact("ada vell", "where was ada vell born", "lisbon", object="lisbon", id="bare")
    with pytest.raises(ValueError, match=r"target='name'.*\['bare'\].*target='object' or 'answer'"):
        trace(model("tiny-mdlm"), [fact], steps=2, target="name")


def test_name_target_engine_equals_the_slow_reference():
    """The engine's name-target IE equals the hook reference's, which locates the name itself."""
    m = model("tiny-mdlm")
    r = trace(m, FACTS, steps=3, n_noise=1, nu=2.0, target="name")
    for i, fact in enumerate(FACTS):
        ref = reference_ie(m, fact, steps=3, nu=2.0, target="name")
        torch.testing.assert_close(r.ie[i], ref["ie"], rtol=0, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("mode", ["exact", "immediate"])
def test_sweep_cache_gives_bit_equal_results_without_running_a_forward(mode):
    """A second target read from the cache equals a fresh trace bit for bit and runs nothing."""
    m = model("tiny-mdlm")
    cache = tt.tracing.SweepCache()
    kw = dict(steps=3, n_noise=2, nu=2.0, mode=mode)
    obj = trace(m, FACTS, target="object", reuse=cache, **kw)
    assert len(cache) == len(FACTS)
    name = trace(m, FACTS, target="name", reuse=cache, **kw)
    fresh = trace(m, FACTS, target="name", **kw)
    for field in ("tie", "ie", "lp_clean", "lp_corrupt", "diverged"):
        a, b = getattr(name, field), getattr(fresh, field)
        assert torch.equal(a.nan_to_num(123.0), b.nan_to_num(123.0)), field
    stats = name.config["engine_stats"]
    assert stats["forwards"] == 0 and stats["reused_facts"] == len(FACTS)
    assert not torch.equal(obj.tie, name.tie)  # the targets differ, the runs do not


def test_sweep_cache_is_not_reused_across_other_settings():
    """Another seed (or any setting but the target) traces afresh."""
    m = model("tiny-mdlm")
    cache = tt.tracing.SweepCache()
    trace(m, FACTS[:1], steps=2, nu=2.0, reuse=cache)
    other = trace(m, FACTS[:1], steps=2, nu=2.0, seed=1, target="name", reuse=cache)
    assert other.config["engine_stats"]["forwards"] > 0 and len(cache) == 2
    with pytest.raises(TypeError, match="SweepCache"):
        tt.trace_tie(m, FACTS[:1], reuse={}, progress=False)


def test_last_block_is_zero_by_architecture_and_recorded():
    """Unshifted logits: every site of the last block is recorded as zero by architecture,
    and the slow reference (which runs those patches) measures exactly 0 there."""
    m = model("tiny-mdlm")
    last = m.num_layers - 1
    r = trace(m, FACTS[:1], steps=3, nu=2.0)
    zeros = {tuple(c) for c in r.config["structural_zeros"]["n0"]}
    assert zeros == {(last, mod) for mod in ("resid", "attn", "mlp")}
    ref = reference_ie(m, FACTS[0], steps=3, nu=2.0)
    assert torch.nan_to_num(ref["ie"][last]).abs().max() == 0
    assert torch.nan_to_num(r.ie[0, last]).abs().max() == 0
    assert torch.nan_to_num(ref["ie"][last - 1]).abs().max() > 0  # the rule is not "every layer"


def test_shifted_logits_next_to_the_answer_are_not_structural_zeros():
    """With shifted logits a subject token right before the answer scores the answer's first
    token, so the last block reaches it: no structural zero for that fact."""
    m = model("dream")
    q = encode_query(m, FACTS[0])
    sites = [(m.num_layers - 1, "resid")]
    assert structural_zeros(m, q, sites) == ((m.num_layers - 1, "resid"),)
    touching = dataclasses.replace(q, subject_positions=(q.answer_start - 1,))
    assert structural_zeros(m, touching, sites) == ()


def test_draw_people_is_reproducible_and_one_fact_per_person():
    facts = tt.load_facts("tiny", "retain")
    a = tt.draw_people(facts, n_people=24, per_person=2, seed=3)
    assert a == tt.draw_people(facts, n_people=24, per_person=2, seed=3)
    assert len({f.subject for f in a}) == 24 and len(a) == 48
    assert a != tt.draw_people(facts, n_people=24, per_person=2, seed=4)
    with pytest.raises(ValueError, match="hold 1 people, fewer than n_people=2"):
        tt.draw_people(tt.load_facts("tiny", "forget01"), n_people=2)


def test_log_step_grid_restricts_the_exact_sweep():
    """step_grid holds 0 and T-1, is dense early and sparse late; patch_steps='log:N' traces
    exactly those steps, each cell equal to the full sweep's, the others NaN."""
    from tie_tracing.tracing import step_grid

    grid = step_grid(128, 8)
    assert grid[0] == 0 and grid[-1] == 127 and list(grid) == sorted(set(grid))
    gaps = [b - a for a, b in zip(grid, grid[1:])]
    assert gaps == sorted(gaps)  # log-spaced: the gaps never shrink
    assert step_grid(6, 10) == tuple(range(6))
    with pytest.raises(ValueError, match="'log:N'"):
        tt.TraceConfig(patch_steps="lin:4")
    m = model("tiny-mdlm")
    full = trace(m, FACTS[:1], steps=6, nu=2.0, modules="resid")
    part = trace(m, FACTS[:1], steps=6, nu=2.0, modules="resid", patch_steps="log:4")
    on = list(step_grid(6, 4))
    off = [k for k in range(6) if k not in on]
    assert part.config["patch_steps"] == on
    torch.testing.assert_close(part.tie[:, :, on], full.tie[:, :, on], rtol=0, atol=0)
    assert torch.isnan(part.tie[:, :, off]).all()
