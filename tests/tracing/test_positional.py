"""Positional (ROME-style) tracing: the batched sweep against the slow hook reference, invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core.errors import ObjectNotFoundError
from tie_tracing.tracing.positional import (
    _trace_fact,
    plan_positional,
    positional_query,
    restored_layers,
)
from tie_tracing.tracing.reference import reference_positional

FACT = tt.Fact(
    subject="ada vell", question="where was ada vell born", answer="lisbon paris", id="f0"
)
FACT2 = tt.Fact(
    subject="mara", question="what book was mara the writer of", answer="orion", id="f1"
)
# the object mid-answer, the subject named again in the answer prefix
OBJ = tt.Fact(
    subject="ada vell",
    question="where was ada vell born",
    answer="ada vell was born in lisbon city",
    object="lisbon",
    id="f2",
)
PREFIX = ("ada", "vell", "was", "born", "in")  # the answer's tokens before the object

pytestmark = pytest.mark.filterwarnings("ignore:.*top-1 prediction is not the answer")


def _trace(model, facts=(FACT,), **kw):
    kw.setdefault("nu", 0.5)
    kw.setdefault("progress", False)
    return tt.trace_positional(model, list(facts), **kw)


def test_restored_layers_window():
    """ROME's window: attn/mlp over l−w//2 … l+w−w//2−1 clipped; resid single layer."""
    assert restored_layers(5, "mlp", 10, 12) == list(range(0, 10))
    assert restored_layers(8, "attn", 10, 12) == list(range(3, 12))
    assert restored_layers(1, "mlp", 3, 3) == [0, 1, 2]
    assert restored_layers(0, "mlp", 2, 3) == [0]
    assert restored_layers(4, "resid", 10, 12) == [4]


@pytest.mark.parametrize("family", ["tiny-mdlm", "llama"])
@pytest.mark.parametrize("window", [1, 2])
def test_batched_sweep_equals_slow_reference(replicas, family, window):
    """The batched sweep equals one hooked forward per cell within 1e-6 (two draws, chunked rows)."""
    model = replicas[family]
    r = _trace(model, window=window, n_noise=2, batch_size=7)
    ref = reference_positional(model, FACT, window=window, nu=0.5, n_noise=2)
    assert r.lp.shape == (1, model.num_layers, len(r.tokens[0]), 3)
    torch.testing.assert_close(r.lp[0], ref["lp"].float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(r.prob[0], ref["lp"].exp().float(), atol=1e-6, rtol=0)
    assert abs(float(r.lp_clean[0]) - ref["lp_clean"]) < 1e-6
    assert abs(float(r.lp_corrupt[0]) - ref["lp_corrupt"]) < 1e-6


def test_window_changes_attn_mlp_only(mdlm):
    """A window > 1 changes attn/mlp cells, never resid cells."""
    r1, r3 = _trace(mdlm), _trace(mdlm, window=3)
    assert torch.equal(r1.lp[..., 0], r3.lp[..., 0])
    assert not torch.allclose(r1.lp[..., 1:], r3.lp[..., 1:])
    assert r3.window == 3 and r3.config["window"] == 3


def test_query_layout_causal_vs_mdlm(replicas):
    """No object: causal reads the prompt at its last token; MDLM prompt + masks at the first mask."""
    ar = positional_query(replicas["llama"], FACT)
    md = positional_query(replicas["tiny-mdlm"], FACT)
    n_prompt = len(ar.query.prompt_ids)
    assert ar.positions == tuple(range(n_prompt)) and ar.prediction_position == n_prompt - 1
    assert ar.input_ids[n_prompt:] == ar.query.answer_ids
    assert md.positions == tuple(range(n_prompt + 2)) and md.prediction_position == n_prompt
    assert md.tokens[n_prompt:] == ("[MASK]", "[MASK]")
    assert positional_query(replicas["dream"], FACT).prediction_position == n_prompt - 1


@pytest.mark.parametrize("family", ["tiny-mdlm", "gpt2"])
def test_last_layer_resid_at_prediction_restores_clean(replicas, family):
    """Restoring the last block's output at the prediction position gives back the clean log-prob."""
    model = replicas[family]
    r = _trace(model, modules=("resid",))
    lp = r.lp[0, -1, r.prediction_position[0], 0]
    assert abs(float(lp) - float(r.lp_clean[0])) < 1e-5
    assert float(r.lp_clean[0]) != pytest.approx(float(r.lp_corrupt[0]), abs=1e-4)


def test_identity_restoration_gives_zero_effect(mdlm):
    """Restoring the corrupted run's own values changes nothing: every effect is 0."""
    pq = positional_query(mdlm, FACT)
    config = tt.PositionalConfig().override(nu=0.5, window=2)
    plan = plan_positional(mdlm, [FACT], config)
    noise = plan.corruption.draws(FACT, len(pq.query.subject_positions), mdlm.hidden_size, 0.5)
    x = torch.tensor(pq.input_ids)[None]
    sites = [(layer, m) for layer in range(mdlm.num_layers) for m in ("attn", "mlp", "resid")]
    from tie_tracing.tracing.positional import _capture

    subject = torch.tensor(pq.query.subject_positions)
    context = tt.core.ForwardContext(step=None, answer_start=pq.prompt_length)
    _, corrupted = _capture(mdlm, x, noise, subject, False, sites, context)
    out, _ = _trace_fact(mdlm, pq, plan, restore_from={s: v[0] for s, v in corrupted.items()})
    torch.testing.assert_close(
        out.lp[0], torch.full_like(out.lp[0], float(out.lp_corrupt[0])), atol=1e-6, rtol=0
    )


def test_same_seed_same_tensor_other_seed_differs(mdlm):
    """Common random numbers: the same seed gives the same tensor, another seed another one."""
    a, b = _trace(mdlm, seed=3), _trace(mdlm, seed=3)
    c = _trace(mdlm, seed=4)
    assert torch.equal(a.lp, b.lp) and torch.equal(a.lp_corrupt, b.lp_corrupt)
    assert not torch.equal(a.lp, c.lp)


def test_multi_fact_result_labels_and_effect(mdlm):
    """Two facts: NaN-padded positions, subject marked, effect = p_restored − p_corrupt, saves exactly."""
    r = _trace(mdlm, facts=(FACT, FACT2), modules=("mlp", "resid"))
    assert r.modules == ("resid", "mlp") and r.fact_ids == ("f0", "f1")
    n0, n1 = len(r.tokens[0]), len(r.tokens[1])
    assert r.lp.shape[2] == max(n0, n1)
    short = 0 if n0 < n1 else 1
    assert torch.isnan(r.lp[short, :, min(n0, n1) :]).all()
    assert [r.tokens[0][p] for p in r.subject_positions[0]] == ["ada", "vell"]
    eff = r.effect()
    torch.testing.assert_close(eff[0], r.prob[0] - r.lp_corrupt[0].exp(), equal_nan=True)
    assert r.config["nu"] == 0.5 and r.config["unknown_facts"] == ["f0", "f1"]


def test_noise_scale_resolves_nu(mdlm):
    """Without nu, ν = noise_scale · σ_emb over the facts' subject tokens (as TIE)."""
    r = tt.trace_positional(mdlm, [FACT], noise_scale=2.0, progress=False, modules=("resid",))
    q = tt.tracing.encode_query(mdlm, FACT)
    assert r.config["nu"] == pytest.approx(
        tt.tracing.Corruption(noise_scale=2.0).resolve_nu(mdlm, [q])
    )


@pytest.mark.parametrize("family", ["tiny-mdlm", "llada", "dream", "llama", "qwen2", "gpt2"])
def test_sites_are_listed_in_the_order_the_backbone_runs_them(replicas, family):
    """nnsight must be asked for a forward's sites in execution order: the order in which
    forward hooks on every site module fire during one forward of each backbone equals the
    order of patching.all_sites (the sites every sweep visits) — attn, mlp, resid within each layer."""
    from tie_tracing.core.backbones import MODULES
    from tie_tracing.tracing.patching import all_sites as _sites

    model = replicas[family]
    fired: list[tuple[int, str]] = []
    handles = []
    for layer in range(model.num_layers):
        for m in MODULES:

            def hook(_module, _inputs, _output, site=(layer, m)):
                if site not in fired:
                    fired.append(site)

            handles.append(model.site_module(layer, m).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.forward_logits(torch.tensor([[1, 5, 6, 7, 8]]))
    finally:
        for h in handles:
            h.remove()
    assert fired == _sites(model, MODULES)
    assert _sites(model, ("mlp",)) == [(layer, "mlp") for layer in range(model.num_layers)]


# ----------------------------------------------------------------------- the object (SPEC §6)


def _aligned_lp(model, ids, index, token) -> float:
    """``log softmax`` of the aligned logits of one clean forward of ``ids`` at ``index``."""
    with torch.inference_mode():
        logits = model.forward_logits(torch.tensor(ids)[None])
    return float(torch.log_softmax(logits[0, index].float(), -1)[token])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ar_query_is_question_plus_answer_prefix(replicas, family):
    """AR, object mid-answer: the traced query is the question + the answer's tokens before the
    object, predicted at its last token; only the question's subject mention is corrupted."""
    model = replicas[family]
    pq = positional_query(model, OBJ)
    q = pq.query
    n_prompt = len(q.prompt_ids)
    assert pq.prompt_length == n_prompt and pq.object_offset == len(PREFIX)
    assert pq.positions == tuple(range(n_prompt + len(PREFIX)))
    assert pq.prediction_position == pq.positions[-1] == n_prompt + len(PREFIX) - 1
    assert pq.tokens[n_prompt:] == PREFIX
    assert pq.input_ids[: len(pq.positions)] == q.prompt_ids + q.answer_ids[: len(PREFIX)]
    assert model.tokenizer.decode([pq.target_token]) == "lisbon"
    assert all(p < n_prompt for p in q.subject_positions)  # not the prefix's "ada vell"
    r = _trace(model, facts=(OBJ,), modules=("resid",))
    assert r.tokens[0] == pq.tokens and r.prediction_position == (pq.prediction_position,)
    assert r.subject_positions == (q.subject_positions,)
    assert r.config["prompt_length"] == {"f2": n_prompt}


@pytest.mark.parametrize("family", ["llama", "tiny-mdlm", "dream"])
def test_measured_token_is_the_objects_first_token(replicas, family):
    """The clean baseline is log p(object's first token) at its aligned index of a plain forward,
    and restoring the last block's output at the prediction position gives it back."""
    model = replicas[family]
    pq = positional_query(model, OBJ)
    q = pq.query
    lisbon = model.tokenizer.convert_tokens_to_ids("lisbon")
    assert pq.target_token == lisbon == q.answer_ids[len(PREFIX)]
    index = len(q.prompt_ids) + len(PREFIX)
    if model.is_causal:
        ids = list(q.prompt_ids) + list(q.answer_ids[: len(PREFIX) + 1])
    else:
        ids = list(q.prompt_ids) + [model.mask_token_id] * len(q.answer_ids)
    r = _trace(model, facts=(OBJ,), modules=("resid",))
    assert float(r.lp_clean[0]) == pytest.approx(_aligned_lp(model, ids, index, lisbon), abs=1e-5)
    lp = r.lp[0, -1, r.prediction_position[0], 0]
    assert abs(float(lp) - float(r.lp_clean[0])) < 1e-5


def test_mdlm_reads_at_the_objects_first_slot(replicas):
    """MDLM, object mid-answer: the whole answer masked, every position traced, read at the
    object's first slot (one slot earlier for shifted Dream)."""
    for family, shift in (("tiny-mdlm", 0), ("dream", 1)):
        model = replicas[family]
        pq = positional_query(model, OBJ)
        n_prompt, n_answer = len(pq.query.prompt_ids), len(pq.query.answer_ids)
        assert pq.positions == tuple(range(n_prompt + n_answer))
        assert pq.tokens[n_prompt:] == ("[MASK]",) * n_answer
        assert pq.object_start == n_prompt + len(PREFIX)
        assert pq.prediction_position == n_prompt + len(PREFIX) - shift


@pytest.mark.parametrize("family", ["llama", "tiny-mdlm", "dream"])
def test_object_sweep_equals_slow_reference(replicas, family):
    """With an object mid-answer the batched sweep equals the slow reference within 1e-6,
    layout included (the reference feeds an AR model only the prefix and the object token)."""
    model = replicas[family]
    r = _trace(model, facts=(OBJ,), window=2, n_noise=2, batch_size=11)
    ref = reference_positional(model, OBJ, window=2, nu=0.5, n_noise=2)
    assert (
        ref["positions"] == len(r.tokens[0])
        and ref["prediction_position"] == (r.prediction_position[0])
    )
    assert model.tokenizer.decode([ref["token"]]) == "lisbon"
    torch.testing.assert_close(r.lp[0], ref["lp"].float(), atol=1e-6, rtol=0)
    assert abs(float(r.lp_clean[0]) - ref["lp_clean"]) < 1e-6
    assert abs(float(r.lp_corrupt[0]) - ref["lp_corrupt"]) < 1e-6


@pytest.mark.parametrize("family", ["llama", "tiny-mdlm"])
def test_fact_without_object_keeps_rome_protocol(replicas, family):
    """object=None scores the answer's first token on the question alone (AR) or at the first
    slot (MDLM): bit-identical to an object that starts the answer, and equal to the reference."""
    model = replicas[family]
    none = dataclasses.replace(OBJ, object=None)
    first = dataclasses.replace(OBJ, object="ada")  # the object starts the answer
    pq = positional_query(model, none)
    n_prompt = len(pq.query.prompt_ids)
    assert pq.object_start == n_prompt and pq.target_token == pq.query.answer_ids[0]
    if model.is_causal:
        assert pq.positions == tuple(range(n_prompt))
        assert pq.prediction_position == n_prompt - 1
    a, b = _trace(model, facts=(none,), n_noise=2), _trace(model, facts=(first,), n_noise=2)
    assert torch.equal(a.lp, b.lp) and torch.equal(a.lp_clean, b.lp_clean)
    assert torch.equal(a.lp_corrupt, b.lp_corrupt) and a.tokens == b.tokens
    with_obj = _trace(model, facts=(OBJ,), n_noise=2)
    assert not torch.equal(with_obj.lp_clean, a.lp_clean)
    ref = reference_positional(model, none, nu=0.5, n_noise=2)
    torch.testing.assert_close(a.lp[0], ref["lp"].float(), atol=1e-6, rtol=0)


def test_object_not_found_is_a_clear_error(replicas):
    """An object the answer's tokens do not spell raises ObjectNotFoundError naming the fact."""
    bad = tt.Fact(
        subject="ada vell",
        question="where was ada vell born",
        answer="ada vell was born in zurich",  # "zurich" is [UNK] to the replicas' tokenizer
        object="zurich",
        id="bad-object",
    )
    for family in ("llama", "tiny-mdlm"):
        with pytest.raises(ObjectNotFoundError, match="bad-object.*zurich"):
            _trace(replicas[family], facts=(bad,))
        with pytest.raises(ObjectNotFoundError, match="bad-object"):
            reference_positional(replicas[family], bad, nu=0.5)


def test_prompt_length_survives_selection_and_save(mdlm, tmp_path):
    """config["prompt_length"] (by fact id) travels through select_facts, concat of parts and save/load."""
    r = _trace(mdlm, facts=(FACT, OBJ), modules=("resid",))
    n = {f.id: len(tt.tracing.encode_query(mdlm, f).prompt_ids) for f in (FACT, OBJ)}
    assert r.config["prompt_length"] == n
    assert r.select_facts("f2").config["prompt_length"]["f2"] == n["f2"]
    back = tt.PositionalResult.concat([r.select_facts([1]), r.select_facts([0])])
    assert back.config["prompt_length"] == n
    loaded = tt.PositionalResult.load(r.save(tmp_path / "p.safetensors"))
    assert loaded.config["prompt_length"] == n


def test_embedded_ar_twin_predicts_the_object_after_the_prefix():
    """The embedded AR twin, on a corpus fact: the query ends with the answer prefix, the scored
    token is the object's first one and the twin predicts it (the fact is known)."""
    ar = tt.load_model("tiny-ar")
    fact = next(f for f in tt.load_facts("tiny", "forget01") if f.object is not None)
    pq = positional_query(ar, fact)
    prefix = ar.tokenizer.decode(list(pq.query.answer_ids[: pq.object_offset]))
    assert pq.object_offset > 0 and fact.answer.startswith(prefix.strip())
    first = ar.tokenizer.decode([pq.target_token]).strip()
    assert first and fact.object.startswith(first)
    r = tt.trace_positional(ar, [fact], modules=("resid",), progress=False)
    assert r.config["unknown_facts"] == []
    assert r.prediction_position[0] == len(r.tokens[0]) - 1


TWICE = tt.Fact(
    subject="mara", question="mara wrote orion was mara the writer", answer="lyra", id="f3"
)


@pytest.mark.parametrize("family", ["tiny-mdlm", "llama"])
def test_every_mention_is_corrupted_and_matches_the_reference(replicas, family):
    """A subject named twice is corrupted at both (non-contiguous) mentions by default, the
    first only with mentions='first'; both agree with the slow reference, and the choice is
    recorded in the result's config."""
    model = replicas[family]
    both = _trace(model, (TWICE,), n_noise=2)
    first = _trace(model, (TWICE,), n_noise=2, mentions="first")
    assert both.subject_positions[0] == (1, 5) and first.subject_positions[0] == (1,)
    assert both.config["mentions"] == "all" and first.config["mentions"] == "first"
    assert not torch.allclose(both.lp_corrupt, first.lp_corrupt)
    for r, mentions in ((both, "all"), (first, "first")):
        ref = reference_positional(model, TWICE, nu=0.5, n_noise=2, mentions=mentions)
        n = ref["positions"]
        torch.testing.assert_close(r.lp[0, :, :n].double(), ref["lp"], atol=1e-5, rtol=0)
        assert abs(float(r.lp_corrupt[0]) - ref["lp_corrupt"]) < 1e-5


def test_modules_may_be_one_name(mdlm):
    """modules='resid' traces that site alone, as in trace_tie (not the letters of the name)."""
    r = _trace(mdlm, modules="resid")
    assert r.modules == ("resid",) and r.lp.shape[-1] == 1


def test_values_are_the_effect_and_seeds_pool(mdlm):
    """.values is the effect (restored − corrupted); traces under two seeds pool into one with
    draw-weighted probabilities and both seeds recorded."""
    a = _trace(mdlm, seed=0)
    b = _trace(mdlm, seed=1)
    torch.testing.assert_close(a.values, a.prob - a.lp_corrupt.exp()[:, None, None, None])
    pooled = tt.PositionalResult.pool_seeds([a, b])
    assert pooled.seeds == (0, 1) and pooled.config["n_noise"] == 2
    torch.testing.assert_close(pooled.prob, (a.prob + b.prob) / 2)
    with pytest.raises(ValueError, match="seed 0 appears"):
        tt.PositionalResult.pool_seeds([a, a])
