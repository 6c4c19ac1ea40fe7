"""Positional (ROME-style) tracing: the batched sweep against the slow hook reference, invariants."""

from __future__ import annotations

import pytest
import torch

import tie_tracing as tt
from tie_tracing.positional import (
    _trace_one,
    positional_query,
    reference_positional,
    restored_layers,
)

FACT = tt.Fact(
    subject="ada vell", question="where was ada vell born", answer="lisbon paris", id="f0"
)
FACT2 = tt.Fact(
    subject="mara", question="what book was mara the writer of", answer="orion", id="f1"
)

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
    """Causal: prompt positions, read at the last prompt token; MDLM: prompt + masks, read at the first mask."""
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
    config = tt.PositionalConfig(nu=0.5, window=2)
    noise = config.corruption().draws(FACT, len(pq.query.subject_positions), mdlm.hidden_size, 0.5)
    x = torch.tensor(pq.input_ids)[None]
    sites = [(layer, m) for layer in range(mdlm.num_layers) for m in ("attn", "mlp", "resid")]
    from tie_tracing.positional import _capture

    subject = torch.tensor(pq.query.subject_positions)
    _, corrupted = _capture(mdlm, x, noise, subject, False, sites)
    out = _trace_one(
        mdlm,
        pq,
        config,
        0.5,
        list(range(mdlm.num_layers)),
        restore_from={s: v[0] for s, v in corrupted.items()},
    )
    torch.testing.assert_close(
        out["lp"], torch.full_like(out["lp"], float(out["lp_corrupt"])), atol=1e-6, rtol=0
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
    q = tt.encode_query(mdlm, FACT)
    assert r.config["nu"] == pytest.approx(tt.Corruption(noise_scale=2.0).resolve_nu(mdlm, [q]))


def test_subject_not_found(mdlm):
    """A subject absent from the prompt raises SubjectNotFoundError naming the fact."""
    bad = tt.Fact(subject="kess tov", question="where was ada vell born", answer="lisbon", id="bad")
    with pytest.raises(tt.SubjectNotFoundError, match="bad"):
        _trace(mdlm, facts=(bad,))


def test_bad_settings(mdlm):
    """Invalid window or module names are refused."""
    with pytest.raises(ValueError, match="window"):
        _trace(mdlm, window=0)
    with pytest.raises(ValueError, match="modules"):
        _trace(mdlm, modules=("ffn",))


def test_sites_are_patching_all_sites_in_execution_order(mdlm):
    """_sites delegates to patching.all_sites: every layer, attn, mlp, resid within a layer."""
    from tie_tracing.patching import EXECUTION_ORDER, all_sites
    from tie_tracing.positional import _sites

    sites = _sites(mdlm, ("resid", "attn", "mlp"))
    assert sites == all_sites(mdlm, ("resid", "attn", "mlp"))
    assert sites == [(layer, m) for layer in range(mdlm.num_layers) for m in EXECUTION_ORDER]
    assert _sites(mdlm, ("mlp",)) == [(layer, "mlp") for layer in range(mdlm.num_layers)]
