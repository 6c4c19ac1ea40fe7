"""TIE engine: exactness against the slow hook reference, invariants, resumable sweeps, bad input."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core.errors import NonFiniteActivationError, SubjectNotFoundError
from tie_tracing.core.results import TIEResult
from tie_tracing.tracing.patching import Capture, Corruption, Patch, encode_query, run_patched
from tie_tracing.tracing.reference import reference_ie, reference_tie

from .. import replicas

FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="f0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion", id="f1"),
    tt.Fact("kess", "what city was kess born in", "paris porto", id="f2"),
]


@functools.cache
def model(family: str) -> tt.core.TracedModel:
    return {
        "tiny-mdlm": lambda: replicas.wrap(replicas.tiny_mdlm()),
        "llada": lambda: replicas.wrap(replicas.LLaDAReplica()),
        "dream": lambda: replicas.wrap(replicas.dream_replica()),
        "llama": lambda: replicas.wrap(replicas.causal("llama")),
    }[family]()


def trace(m, facts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        return tt.trace_tie(m, facts, progress=False, **kw)


@pytest.mark.parametrize("family", ["tiny-mdlm", "llada", "dream"])
def test_engine_equals_slow_reference(family):
    """The memoised batched sweep equals one full hook-patched trajectory per coordinate (all modules, n_noise=2)."""
    m = model(family)
    result = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2, seed=3)
    for i, fact in enumerate(FACTS[:2]):
        ref = reference_ie(m, fact, steps=4, nu=2.0, n_noise=2, seed=3)
        assert torch.equal(torch.isnan(ref["ie"]), torch.isnan(result.ie[i]))
        torch.testing.assert_close(
            torch.nan_to_num(result.ie[i]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            result.tie[i].double(), reference_tie(ref["ie"], 0.5), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(result.lp_clean[i], ref["lp_clean"], atol=1e-5, rtol=0)
        torch.testing.assert_close(result.lp_corrupt[i], ref["lp_corrupt"], atol=1e-5, rtol=0)


def test_some_patch_runs_diverge_and_are_followed():
    """The reference comparison is not vacuous: some patch runs commit differently and have non-zero later IE."""
    result = trace(model("tiny-mdlm"), FACTS[:2], steps=4, nu=2.0, n_noise=2, seed=3)
    assert result.diverged.sum() > 0
    later = result.ie[..., 1:]
    steps = torch.arange(4)
    strictly_later = (steps[None, :] > steps[:, None])[None, None, :, None, :][..., 1:]
    assert torch.nan_to_num(later.abs() * strictly_later).sum() > 0


def test_identity_patch_has_zero_effect():
    """Patching a corrupted run with its own (corrupted) activations changes nothing."""
    m = model("tiny-mdlm")
    q = encode_query(m, FACTS[0])
    corruption = Corruption(nu=2.0)
    base = run_patched(
        m, q, steps=4, corruption=corruption, capture=[Capture(layer=1, module="mlp")]
    )
    for k in range(4):
        value = base.captures[(1, "mlp")][0, k]
        patched = run_patched(
            m,
            q,
            steps=4,
            corruption=corruption,
            patches=[Patch(layer=1, module="mlp", step=k, value=value)],
        )
        assert torch.equal(patched.target_logprobs, base.target_logprobs)
        assert torch.equal(patched.states, base.states)


def test_vanishing_noise_gives_zero_effect():
    """With ν → 0 the clean and corrupted runs coincide, so every IE is (numerically) zero."""
    result = trace(model("tiny-mdlm"), FACTS[:1], steps=4, nu=1e-9)
    assert torch.nan_to_num(result.ie).abs().max() < 1e-5
    assert result.diverged.sum() == 0


def test_full_restoration_reproduces_clean_run():
    """Restoring layer 0's block output at every position and step reproduces the clean trajectory exactly."""
    m = model("tiny-mdlm")
    q = encode_query(m, FACTS[0])
    everywhere = tuple(range(q.length))
    clean = run_patched(
        m, q, steps=4, capture=[Capture(layer=0, module="resid", positions=everywhere)]
    )
    patches = [
        Patch(
            layer=0,
            module="resid",
            step=k,
            value=clean.captures[(0, "resid")][0, k],
            positions=everywhere,
        )
        for k in range(4)
    ]
    restored = run_patched(m, q, steps=4, corruption=Corruption(nu=3.0), patches=patches)
    assert torch.equal(restored.states, clean.states)
    torch.testing.assert_close(restored.target_logprobs, clean.target_logprobs, atol=1e-6, rtol=0)


def test_same_seed_same_tensor_other_seed_differs():
    """Same seed ⇒ identical tensors; another seed ⇒ other noise, other effects."""
    m = model("llada")
    a = trace(m, FACTS[:1], steps=4, nu=2.0, seed=5)
    b = trace(m, FACTS[:1], steps=4, nu=2.0, seed=5)
    c = trace(m, FACTS[:1], steps=4, nu=2.0, seed=6)
    assert torch.equal(a.ie.nan_to_num(), b.ie.nan_to_num()) and torch.equal(a.tie, b.tie)
    assert not torch.equal(a.lp_corrupt, c.lp_corrupt)


def test_batch_of_facts_equals_facts_alone():
    """Tracing facts together equals tracing each alone (noise is keyed by fact id, ν fixed)."""
    m = model("dream")
    together = trace(m, FACTS, steps=4, nu=2.0)
    for i, fact in enumerate(FACTS):
        alone = trace(m, [fact], steps=4, nu=2.0)
        assert torch.equal(together.tie[i], alone.tie[0])
        assert torch.equal(together.lp_corrupt[i], alone.lp_corrupt[0])


def test_default_nu_follows_the_three_sigma_rule():
    """Without ν, the result records ν = 3 · σ of the subject-token embeddings of the fact set."""
    m = model("tiny-mdlm")
    result = trace(m, FACTS[:2], steps=2, modules=("resid",))
    emb = m.embedding_module()
    values = []
    for fact in FACTS[:2]:
        q = encode_query(m, fact)
        ids = torch.tensor([q.prompt_ids[p] for p in q.subject_positions])
        values.append(emb(ids).detach().reshape(-1))
    assert result.config["nu"] == pytest.approx(3.0 * float(torch.cat(values).std()), rel=1e-6)


def test_subset_of_modules_and_layers_matches_full_sweep():
    """Restricting modules/layers gives the same cells as the full sweep."""
    m = model("tiny-mdlm")
    full = trace(m, FACTS[:1], steps=4, nu=2.0)
    part = trace(m, FACTS[:1], steps=4, nu=2.0, modules=("mlp",), layers=(1, 2))
    assert part.modules == ("mlp",) and part.layers == (1, 2)
    assert torch.equal(part.tie[0, :, :, 0], full.tie[0, 1:3, :, 2])


def test_resumable_sweep(tmp_path):
    """A sweep writes each fact as it finishes and a rerun resumes from the files, with equal results."""
    m = model("tiny-mdlm")
    first = trace(m, FACTS[:2], steps=2, nu=2.0, out=tmp_path / "sweep")
    files = sorted((tmp_path / "sweep").glob("fact_*.safetensors"))
    assert len(files) == 2
    files[1].unlink()
    again = trace(m, FACTS[:2], steps=2, nu=2.0, out=tmp_path / "sweep")
    assert torch.equal(first.tie, again.tie)
    with pytest.raises(ValueError, match=r"another experiment \(settings nu: 2.0 → 3.0\)"):
        trace(m, FACTS[:2], steps=2, nu=3.0, out=tmp_path / "sweep")
    with pytest.raises(ValueError, match="fact list changed"):
        trace(m, [FACTS[2], FACTS[1]], steps=2, nu=2.0, out=tmp_path / "sweep")


def test_resume_is_keyed_by_content(tmp_path):
    """A changed fact, retrained weights or other settings are named errors; overwrite=True
    discards the old sweep; temporary files of killed writes are removed."""
    import dataclasses

    m = model("tiny-mdlm")
    out = tmp_path / "sweep"
    first = trace(m, FACTS[:2], steps=2, nu=2.0, out=out)
    (out / ".fact_00009.safetensors.abc.tmp").write_bytes(b"half a write")
    changed = [dataclasses.replace(FACTS[0], answer="porto lisbon paris"), FACTS[1]]
    with pytest.raises(ValueError, match="'f0' changed since it was traced.*answer"):
        trace(m, changed, steps=2, nu=2.0, out=out)
    assert not list(out.glob(".*.tmp"))
    other = replicas.wrap(replicas.tiny_mdlm(seed=1))  # same architecture, other weights
    with pytest.raises(ValueError, match="fingerprint"):
        trace(other, FACTS[:2], steps=2, nu=2.0, out=out)
    fresh = trace(m, changed, steps=2, nu=2.0, out=out, overwrite=True)
    assert fresh.answers[0] == "porto lisbon paris" and not torch.equal(fresh.tie, first.tie)
    again = trace(m, changed, steps=2, nu=2.0, out=out)
    assert torch.equal(again.tie, fresh.tie) and "fact" not in again.config


def test_result_round_trips(tmp_path):
    """A traced result saves and loads exactly."""
    result = trace(model("tiny-mdlm"), FACTS[:2], steps=2, nu=2.0)
    path = result.save(tmp_path / "r.safetensors")
    loaded = TIEResult.load(path)
    assert torch.equal(loaded.tie, result.tie)
    assert torch.equal(loaded.ie.nan_to_num(), result.ie.nan_to_num())
    assert loaded.fact_ids == result.fact_ids and loaded.config == result.config


def test_unknown_facts_are_one_warning_and_listed():
    """Facts the model does not know are one warning line naming them (not one per fact),
    and listed in the config."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tt.trace_tie(model("tiny-mdlm"), FACTS[1:], steps=2, nu=2.0, progress=False)
    unknown = [str(w.message) for w in caught if "does not know" in str(w.message)]
    assert result.config["unknown_facts"] == ["f1", "f2"]
    assert len(unknown) == 1 and "\n" not in unknown[0], unknown
    assert "does not know 2 of 2 facts ('f1', 'f2')" in unknown[0]


def test_subject_not_in_prompt_names_the_fact():
    """A subject missing from the prompt is a SubjectNotFoundError naming the fact."""
    bad = tt.Fact("orion", "where was ada vell born", "lisbon", id="bad-1")
    with pytest.raises(SubjectNotFoundError, match="bad-1"):
        trace(model("tiny-mdlm"), [FACTS[0], bad], steps=2)


def test_nan_activation_names_the_fact():
    """NaN in activations is an error naming the fact."""
    m = model("llada")
    handle = m.site_module(1, "mlp").register_forward_hook(lambda _m, _i, o: o * float("nan"))
    try:
        with pytest.raises(NonFiniteActivationError, match="f0"):
            trace(m, FACTS[:1], steps=2, nu=1.0)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps"),
        (dict(modules=("resid", "ffn")), "modules"),
        (dict(layers=(7,)), "layer 7"),
        (dict(decay=0.0), "decay"),
        (dict(n_noise=0), "n_noise"),
        (dict(nu=-1.0), "nu"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    """Bad steps, modules, layers, decay and noise settings raise errors that name them."""
    with pytest.raises(ValueError, match=message):
        trace(model("tiny-mdlm"), FACTS[:1], **kwargs)


def test_bad_patch_positions_and_shapes():
    """Patch positions outside the sequence and values of the wrong shape are named errors."""
    m = model("tiny-mdlm")
    q = encode_query(m, FACTS[0])
    d = m.hidden_size
    with pytest.raises(IndexError, match="position 99"):
        run_patched(
            m,
            q,
            steps=2,
            patches=[
                Patch(layer=0, module="mlp", step=0, value=torch.zeros(1, d), positions=(99,))
            ],
        )
    with pytest.raises(tt.ShapeError, match="patch value"):
        run_patched(
            m,
            q,
            steps=2,
            patches=[Patch(layer=0, module="mlp", step=0, value=torch.zeros(5, d + 1))],
        )
    with pytest.raises(ValueError, match="patch step 3"):
        run_patched(
            m, q, steps=2, patches=[Patch(layer=0, module="mlp", step=3, value=torch.zeros(2, d))]
        )


def test_causal_models_and_duplicates_are_refused():
    """TIE needs an MDLM and distinct fact ids."""
    with pytest.raises(ValueError, match="causal"):
        trace(model("llama"), FACTS[:1])
    with pytest.raises(ValueError, match="duplicate"):
        trace(model("tiny-mdlm"), [FACTS[0], FACTS[0]])


def test_unknown_facts_are_left_out_of_the_mean_and_the_selection():
    """Facts listed as unknown are not averaged into mean() nor into select_coordinate."""
    import dataclasses

    result = TIEResult.synthetic(n_facts=3, n_layers=2, n_steps=3, seed=0)
    marked = dataclasses.replace(
        result, config=result.config | {"unknown_facts": [result.fact_ids[1]]}
    )
    assert marked.known.tolist() == [True, False, True]
    torch.testing.assert_close(marked.mean(), torch.nanmean(result.tie[[0, 2]], 0))
    torch.testing.assert_close(marked.mean(include_unknown=True), result.mean())
    only_known = tt.select_coordinate(result.tie[[0, 2]])
    assert tt.select_coordinate(marked).index == only_known.index


@pytest.mark.parametrize("mentions", ["all", "first"])
def test_subject_named_twice_engine_equals_reference(mentions):
    """A subject named twice: every mention is corrupted and patched by default (positions not
    contiguous), the first only with mentions='first'; the engine equals the slow reference."""
    m = model("tiny-mdlm")
    fact = tt.Fact("mara", "mara wrote orion was mara the writer", "lyra paris", id="tw")
    q = encode_query(m, fact, mentions=mentions)
    assert q.subject_positions == ((1, 5) if mentions == "all" else (1,))
    result = trace(m, [fact], steps=2, nu=2.0, n_noise=1, seed=3, mentions=mentions)
    assert result.config["mentions"] == mentions
    ref = reference_ie(m, fact, steps=2, nu=2.0, n_noise=1, seed=3, mentions=mentions)
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(result.lp_corrupt[0], ref["lp_corrupt"], atol=1e-5, rtol=0)


def test_chunked_sweep_equals_one_batch():
    """Splitting the patch rows into small forwards changes nothing (batch_size is speed only)."""
    m = model("tiny-mdlm")
    whole = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2)
    chunked = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2, batch_size=7)
    assert torch.equal(whole.ie.nan_to_num(), chunked.ie.nan_to_num())
    assert torch.equal(whole.diverged, chunked.diverged)
    assert chunked.config["engine_stats"]["forwards"] > whole.config["engine_stats"]["forwards"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lp="frozen", temperature=0.7),
        dict(lp="frozen", block_length=2),
        dict(lp="raw"),
        dict(lp="raw", temperature=0.7),
    ],
    ids=["frozen-sampled", "frozen-blocks", "raw", "raw-sampled"],
)
def test_engine_equals_reference_under_each_reading(kwargs):
    """Frozen and raw readings, argmax and sampled commits, semi-AR blocks: engine = reference within 1e-5."""
    m = model("tiny-mdlm")
    result = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2, seed=3, **kwargs)
    assert result.config["lp"] == kwargs["lp"]
    for i, fact in enumerate(FACTS[:2]):
        ref = reference_ie(m, fact, steps=4, nu=2.0, n_noise=2, seed=3, **kwargs)
        assert torch.equal(torch.isnan(ref["ie"]), torch.isnan(result.ie[i]))
        torch.testing.assert_close(
            torch.nan_to_num(result.ie[i]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(result.lp_clean[i], ref["lp_clean"], atol=1e-5, rtol=0)
        torch.testing.assert_close(result.lp_corrupt[i], ref["lp_corrupt"], atol=1e-5, rtol=0)


def test_raw_reading_reproduces_the_previous_release():
    """lp='raw' gives the numbers of the release before frozen log-probabilities existed.

    ``tests/data/release_raw_tie.safetensors`` was written by that release's ``trace_tie`` on
    the same replica (argmax, sampled and semi-AR settings).
    """
    from safetensors.torch import load_file

    stored = load_file(str(Path(__file__).parents[1] / "data" / "release_raw_tie.safetensors"))
    m = model("tiny-mdlm")
    settings = {"t0": {}, "t07": {"temperature": 0.7}, "blocks": {"block_length": 2}}
    for name, kw in settings.items():
        r = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2, seed=3, lp="raw", **kw)
        for key in ("ie", "tie", "lp_clean", "lp_corrupt"):
            torch.testing.assert_close(
                getattr(r, key).nan_to_num(), stored[f"{name}.{key}"].nan_to_num(),
                atol=1e-6, rtol=0,
            )  # fmt: skip


def test_frozen_effects_differ_from_raw_even_on_shared_futures():
    """Under lp='frozen' a patch that commits as the corrupted run did still has later effects
    (its committed positions keep the patched forward's values), and the frozen map is not the raw one."""
    m = model("tiny-mdlm")
    frozen = trace(m, FACTS[:1], steps=4, nu=2.0, n_noise=1, seed=3)
    raw = trace(m, FACTS[:1], steps=4, nu=2.0, n_noise=1, seed=3, lp="raw")
    same = frozen.diverged[0] == 0  # [layer, step, module]
    later = frozen.ie[0, ..., 1:].nan_to_num().abs().sum(-1)  # effects at k' > k (and k' = k ≥ 1)
    assert bool((same & (later > 0)).any())
    assert not torch.equal(frozen.tie, raw.tie)


def test_idle_steps_have_exactly_zero_effect_and_constant_lp():
    """A step whose input holds no masked target position has TIE = 0 exactly; LP is constant after the last commit."""
    m = model("tiny-mdlm")
    with pytest.warns(UserWarning, match="no answer position left"):
        result = tt.trace_tie(m, FACTS[1:2], steps=4, nu=2.0, n_noise=2, progress=False)
    idle = result.idle_steps[0]  # one-token answer: committed at step 0
    assert idle.tolist() == [False, True, True, True]
    assert torch.equal(result.tie[0][:, idle], torch.zeros_like(result.tie[0][:, idle]))
    last = int(result.clean_commits[0].max())
    tail = result.lp_clean[0, last:]
    assert torch.equal(tail, tail[:1].expand_as(tail))


def test_target_object_sums_over_the_object_only():
    """target='object' reads LP at the object's tokens only and matches the reference."""
    m = model("tiny-mdlm")
    fact = tt.Fact(
        "ada vell", "where was ada vell born", "lisbon porto paris", object="porto", id="o0"
    )
    q = encode_query(m, fact)
    assert q.object_offsets == (1,)
    result = trace(m, [fact], steps=4, nu=2.0, n_noise=2, target="object")
    assert result.target_mask[0].tolist() == [False, True, False]
    assert result.object_mask[0].tolist() == [False, True, False]
    ref = reference_ie(m, fact, steps=4, nu=2.0, n_noise=2, target="object")
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    run = run_patched(m, q, steps=4, target="object", lp="raw")
    assert run.token_logprobs is not None
    torch.testing.assert_close(run.target_logprobs[0], run.token_logprobs[0, :, 1])


def test_commit_maps_agree_with_the_states():
    """Each answer position is masked before its commit step and keeps its token from then on."""
    m = model("tiny-mdlm")
    result = trace(m, FACTS[:2], steps=4, nu=2.0, n_noise=2, temperature=0.7)
    mask = result.config["mask_token_id"]
    for tokens, commits in (
        (result.clean_tokens, result.clean_commits),
        (result.corrupt_tokens, result.corrupt_commits),
    ):
        steps = torch.arange(tokens.shape[-2])[:, None]
        present = tokens[..., -1:, :] >= 0
        before = steps < commits[..., None, :]
        assert bool(((tokens == mask) == (before & present)).all())
        assert bool((tokens == tokens[..., -1:, :]).logical_or(before).logical_or(~present).all())
    rows = result.commit_map(0)
    assert [r["step"] for r in rows] == result.clean_commits[0, : len(rows)].tolist()
    q = encode_query(m, FACTS[0])
    run = run_patched(m, q, steps=4, temperature=0.7, seeds=[3])
    assert run.commits is not None and int(run.commits.min()) >= 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lp="stale"), r"lp must be one of \('frozen', 'raw'\)"),
        (dict(target="subject"), r"target must be one of \('object', 'answer', 'name'\)"),
    ],
)
def test_bad_reading_and_target_are_named(kwargs, message):
    """Unknown lp/target values list the choices."""
    with pytest.raises(ValueError, match=message):
        trace(model("tiny-mdlm"), FACTS[:1], steps=2, **kwargs)


def test_object_target_of_a_fact_without_object_is_its_answer_with_a_warning():
    """The default target is the object; a fact without one targets its whole answer (what
    Fact.object=None means), and one warning names it; target='answer' says so silently."""
    m = model("tiny-mdlm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = tt.trace_tie(m, FACTS[:1], steps=2, progress=False)
        said = [str(w.message) for w in caught if "record no object" in str(w.message)]
        assert len(said) == 1 and "1 of 1 facts" in said[0] and "'f0'" in said[0]
        n_before = len(caught)
        a = tt.trace_tie(m, FACTS[:1], steps=2, target="answer", progress=False)
        assert not any("record no object" in str(w.message) for w in caught[n_before:])
    assert r.config["target"] == "object"
    assert r.target_mask.all()
    torch.testing.assert_close(a.tie, r.tie, rtol=0, atol=0)


def test_object_not_in_answer_is_an_error():
    """An object that is not part of the answer is refused when the fact is made, naming it."""
    with pytest.raises(ValueError, match="'x1'.*not a substring"):
        tt.Fact("ada vell", "where was ada vell born", "lisbon", object="Paris", id="x1")


def test_engine_equals_reference_on_the_embedded_model():
    """On tiny-mdlm (3 known facts, all modules, 2 noise draws) the engine equals the slow reference within 1e-5.

    One CPU thread: multi-threaded BLAS picks batch-size-dependent kernels, so the batched
    sweep and the batch-1 reference then differ in the last float32 bits (~1e-5 nats).
    """
    m = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", split="forget01")[:3]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = tt.trace_tie(m, facts, steps=4, n_noise=2, seed=1, progress=False)
        assert result.config["unknown_facts"] == []
        for i, fact in enumerate(facts):
            ref = reference_ie(m, fact, steps=4, nu=result.config["nu"], n_noise=2, seed=1)
            torch.testing.assert_close(
                torch.nan_to_num(result.ie[i]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
            )
            torch.testing.assert_close(result.lp_corrupt[i], ref["lp_corrupt"], atol=1e-5, rtol=0)
        assert torch.nan_to_num(result.ie).abs().max() > 0.1  # a real effect was compared
    finally:
        torch.set_num_threads(threads)


def test_capture_sees_the_patched_value_and_the_hook_value():
    """A capture equals a plain hook's view of the site, and shows a patch made at the same site and step."""
    m = model("llada")
    q = encode_query(m, FACTS[0])
    seen = []
    handle = m.site_module(1, "attn").register_forward_hook(
        lambda _m, _i, o: seen.append(o[:, list(q.subject_positions)].clone())
    )
    try:
        run = run_patched(m, q, steps=3, capture=[Capture(layer=1, module="attn")])
    finally:
        handle.remove()
    assert torch.equal(run.captures[(1, "attn")][0], torch.stack([s[0] for s in seen]))
    value = torch.full((len(q.subject_positions), m.hidden_size), 0.25)
    patched = run_patched(
        m,
        q,
        steps=3,
        patches=[Patch(layer=1, module="attn", step=1, value=value)],
        capture=[Capture(layer=1, module="attn", at_steps=(1, 2))],
    )
    assert patched.capture_steps[(1, "attn")] == (1, 2)
    assert torch.equal(patched.captures[(1, "attn")][0, 0], value)


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=2.0, steps=4), dict(block_length=1, steps=6)],
    ids=["temperature", "blocks"],
)
def test_engine_equals_reference_when_sampling_or_in_blocks(kwargs):
    """With Gumbel sampling (noise keyed by seed and step) or semi-AR blocks the engine still equals the reference."""
    m = model("tiny-mdlm")
    result = trace(m, FACTS[:1], nu=2.0, n_noise=2, seed=4, **kwargs)
    ref = reference_ie(m, FACTS[0], nu=2.0, n_noise=2, seed=4, **kwargs)
    torch.testing.assert_close(
        torch.nan_to_num(result.ie[0]), torch.nan_to_num(ref["ie"]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(result.lp_clean[0], ref["lp_clean"], atol=1e-5, rtol=0)
    assert result.config["temperature"] == kwargs.get("temperature", 0.0)


def test_sampled_clean_run_is_the_sampler_s_sample():
    """At temperature > 0 the traced clean trajectory is what tt.diffuse samples with the same seed."""
    m = model("tiny-mdlm")
    result = trace(m, FACTS[:1], steps=4, nu=2.0, seed=7, temperature=50.0)
    q = encode_query(m, FACTS[0])
    out = m.denoise(
        q.input_ids(m.mask_token_id),
        answer_start=q.answer_start,
        steps=4,
        temperature=50.0,
        seeds=[7],
    )
    p = q.answer_start
    assert torch.equal(result.clean_tokens[0], out.states[0, :, p : p + len(q.answer_ids)])


def test_string_module_and_int_layer_are_accepted():
    """modules="mlp" and layers=1 mean one module and one layer."""
    r = trace(model("tiny-mdlm"), FACTS[:1], steps=2, nu=2.0, modules="mlp", layers=1)
    assert r.modules == ("mlp",) and r.layers == (1,)


def test_trace_with_neighbours_returns_a_pair_that_select_coordinate_takes(tmp_path):
    """trace_tie(..., neighbours=) traces both sets under one ν (resolved over both), into
    out/forget and out/neighbours; select_coordinate(pair, beta=...) equals the two-argument
    form, takes the mapping form too, and beta > 0 without neighbours stays an error."""
    m = model("tiny-mdlm")
    pair = trace(
        m, FACTS[:1], neighbours=FACTS[1:], steps=2, modules="resid", out=tmp_path, n_noise=2
    )
    assert isinstance(pair, tt.TIEPair) and sorted(pair) == ["forget", "neighbours"]
    assert pair.forget.fact_ids == ("f0",) and pair.neighbours.fact_ids == ("f1", "f2")
    expected = tt.tracing.Corruption().resolve_nu(m, [tt.tracing.encode_query(m, f) for f in FACTS])
    assert pair.forget.config["nu"] == pair.neighbours.config["nu"] == pytest.approx(expected)
    assert (tmp_path / "forget" / "config.json").is_file()
    assert len(list((tmp_path / "neighbours").glob("fact_*.safetensors"))) == 2
    apart = tt.select_coordinate(pair.forget, beta=1.0, neighbours=pair.neighbours)
    together = tt.select_coordinate(pair, beta=1.0)
    assert together.index == apart.index and together.score == pytest.approx(apart.score)
    as_mapping = {"forget": pair.forget, "neighbours": pair.neighbours}
    assert tt.select_coordinate(as_mapping, beta=1.0).index == apart.index
    assert tt.analysis.beta_tradeoff(pair, betas=[0.0, 1.0]).coordinates[1].index == apart.index
    assert (
        tt.analysis.selection_stability(pair, beta=1.0, n_boot=20).coordinate.index == apart.index
    )
    with pytest.raises(ValueError, match="needs neighbours="):
        tt.select_coordinate(pair.forget, beta=1.0)
    other_nu = trace(m, FACTS[1:], steps=2, modules="resid", n_noise=2)  # ν of its own facts
    with pytest.raises(ValueError, match="noise level ν"):
        tt.select_coordinate(pair.forget, beta=1.0, neighbours=other_nu)
