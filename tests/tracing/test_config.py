"""Configs are the API: nested frozen configs, keyword overrides, one engine for both sweeps."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import pytest
import torch

import tie_tracing as tt
from tie_tracing.tracing import Budget, Corruption, Sites, TraceConfig
from tie_tracing.tracing.config import valid_settings

from .. import replicas

FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="f0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion lyra", id="f1"),
]


@functools.cache
def tiny() -> tt.core.TracedModel:
    return replicas.wrap(replicas.tiny_mdlm())


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        return fn(*args, progress=False, **kwargs)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_keyword_overrides_equal_the_nested_config():
    """trace_tie(model, facts, steps=.., n_noise=.., modules=..) is the nested config with
    those fields; both record the same flat settings and give the same tensors."""
    flat = quiet(tt.trace_tie, tiny(), FACTS, steps=3, n_noise=2, nu=2.0, modules="resid", seed=4)
    config = TraceConfig(
        steps=3,
        corruption=Corruption(n_noise=2, nu=2.0, seed=4),
        sites=Sites(modules=("resid",)),
    )
    nested = quiet(tt.trace_tie, tiny(), FACTS, config)
    assert same(flat.ie, nested.ie) and torch.equal(flat.lp_clean, nested.lp_clean)
    drop = ("engine_stats",)
    assert {k: v for k, v in flat.config.items() if k not in drop} == {
        k: v for k, v in nested.config.items() if k not in drop
    }
    over = quiet(tt.trace_tie, tiny(), FACTS, config, n_noise=1)  # overrides apply on top
    assert over.config["n_noise"] == 1 and over.config["seed"] == 4
    assert over.lp_corrupt_draws.shape[1] == 1


def test_results_record_the_flat_settings_they_always_had():
    """to_dict() is the flat record of results and resumable sweeps: the keys results carry
    (and resumed directories compare) are those of earlier releases; the budget is left out."""
    record = TraceConfig(budget=Budget(batch_size=3)).to_dict()
    assert list(record) == [
        "modules", "layers", "noise_scale", "nu", "replace", "n_noise", "seed", "mentions",
        "steps", "decay", "temperature", "block_length", "lp", "target", "mode", "horizon",
        "sampler",
    ]  # fmt: skip
    assert record["modules"] == ["resid", "attn", "mlp"] and record["sampler"]["name"] == "llada"
    assert "patch_steps" in TraceConfig(patch_steps=(1,)).to_dict()
    assert list(tt.PositionalConfig().to_dict())[-1] == "window"


def test_unknown_settings_list_the_valid_names():
    """An unknown keyword names itself, suggests the close one and lists every setting."""
    with pytest.raises(TypeError, match=r"no setting 'n_noises' \(did you mean 'n_noise'\?\)"):
        quiet(tt.trace_tie, tiny(), FACTS, n_noises=2)
    with pytest.raises(TypeError, match="the settings are: .*steps"):
        TraceConfig().override(stepz=3)
    with pytest.raises(TypeError, match="no setting 'steps'"):
        quiet(tt.trace_positional, tiny(), FACTS, steps=3)  # positional has no denoising steps
    assert "window" in valid_settings(tt.PositionalConfig())
    assert {"steps", "n_noise", "batch_size", "temperature"} <= set(valid_settings(TraceConfig()))
    with pytest.raises(TypeError, match="takes a TraceConfig"):
        quiet(tt.trace_tie, tiny(), FACTS, {"steps": 2})


def test_configs_are_frozen_and_validated_on_construction():
    """Fields cannot be assigned; bad values are refused when the config is made."""
    config = TraceConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="layers is empty"):
        Sites(layers=[])
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        Budget(batch_size=0)
    with pytest.raises(ValueError, match="max_memory"):
        Budget(max_memory="lots")
    with pytest.raises(ValueError, match=r"patch_steps \[8\] outside"):
        TraceConfig(patch_steps=(1, 8))
    with pytest.raises(TypeError, match="corruption must be a Corruption"):
        TraceConfig(corruption={"n_noise": 2})  # type: ignore[arg-type]
    assert Sites(modules="mlp", layers=2) == Sites(modules=("mlp",), layers=(2,))


def test_sampler_shorthands_set_or_check_the_sampler():
    """temperature/block_length set the config's sampler; beside sampler= they must agree;
    a sampler without the setting refuses it."""
    assert TraceConfig().override(temperature=0.7).sampler == tt.LLaDASampler(temperature=0.7)
    dream = TraceConfig(sampler=tt.DreamSampler())
    with pytest.raises(ValueError, match="block_length=2 is a shorthand of LLaDASampler"):
        dream.override(block_length=2)
    with pytest.raises(ValueError, match="disagrees"):
        TraceConfig().override(sampler=tt.LLaDASampler(temperature=0.5), temperature=0.7)
    assert TraceConfig(sampler="dream").sampler == tt.DreamSampler()


@pytest.mark.parametrize("mode", ["exact", "immediate", "attribution"])
def test_patch_steps_trace_a_subset_of_the_cells(mode):
    """patch_steps=(1, 3) gives exactly the full sweep's cells at steps 1 and 3 (bit for bit)
    and NaN at the others; the trajectories still run every step."""
    kw = dict(steps=4, nu=2.0, n_noise=2, seed=3, mode=mode)
    full = quiet(tt.trace_tie, tiny(), FACTS, **kw)
    part = quiet(tt.trace_tie, tiny(), FACTS, patch_steps=(3, 1), **kw)
    assert part.config["patch_steps"] == [1, 3]
    kept = torch.tensor([False, True, False, True])
    assert same(part.ie[:, :, kept], full.ie[:, :, kept])
    assert same(part.tie[:, :, kept], full.tie[:, :, kept])
    assert same(part.diverged[:, :, kept], full.diverged[:, :, kept])
    assert bool(part.ie[:, :, ~kept].isnan().all()) and bool(part.tie[:, :, ~kept].isnan().all())
    assert torch.equal(part.lp_clean, full.lp_clean)
    assert part.config["engine_stats"]["rows"] < full.config["engine_stats"]["rows"]


def test_positional_tracing_resumes_shards_and_budgets(tmp_path):
    """Positional tracing runs on the same engine as TIE: rows per forward never change a
    result, and shards written separately merge, by resuming, into the whole trace."""
    m = tiny()
    facts = FACTS + [tt.Fact("kess", "what city was kess born in", "paris porto", id="f2")]
    whole = quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=2)
    small = quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=2, batch_size=5)
    assert same(small.lp, whole.lp) and same(small.lp_corrupt, whole.lp_corrupt)
    assert small.config["engine_stats"]["forwards"] > whole.config["engine_stats"]["forwards"]
    out = tmp_path / "positional"
    part = quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=2, out=out, shard=(1, 2))
    assert part.fact_ids == ("f1",)
    quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=2, out=out, shard=(0, 2))
    merged = quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=2, out=out)
    assert merged.config["engine_stats"]["forwards"] == 0  # all resumed from the files
    assert merged.config["engine_stats"]["resumed"] == 3
    for name in ("lp", "prob", "lp_clean", "lp_corrupt"):
        assert same(getattr(merged, name), getattr(whole, name)), name
    assert merged.tokens == whole.tokens
    assert merged.config["prompt_length"] == whole.config["prompt_length"]
    assert merged.config["unknown_facts"] == whole.config["unknown_facts"]
    with pytest.raises(ValueError, match="another experiment"):
        quiet(tt.trace_positional, m, facts, nu=0.5, n_noise=2, window=3, out=out)


def test_batch_size_and_progress_share_their_defaults():
    """Every tracing function takes batch_size (default None: from the memory budget) and
    progress (default True) alike."""
    import inspect

    from tie_tracing.tracing import trace_sharded

    for fn in (tt.trace_tie, tt.trace_positional, trace_sharded):
        assert inspect.signature(fn).parameters["progress"].default is True, fn
    assert TraceConfig().budget == tt.PositionalConfig().budget == Budget()
    assert Budget().batch_size is None and Budget().max_memory is None
