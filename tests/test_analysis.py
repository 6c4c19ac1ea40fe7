"""Analyses: bootstrap CIs, the β trade-off, selection stability, per-fact optima, localisation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tie_tracing.analysis import (
    beta_tradeoff,
    bootstrap_ci,
    localisation_stats,
    per_fact_optima,
    score_landscape,
    selection_stability,
)
from tie_tracing.errors import ShapeError
from tie_tracing.results import PositionalResult, TIEResult
from tie_tracing.selection import select_coordinate


def test_bootstrap_ci_shape_order_and_scipy_agreement():
    """CI per cell brackets the mean and equals scipy's percentile bootstrap on one cell."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 2, generator=g)
    low, high = bootstrap_ci(x, n_resamples=500, seed=3)
    assert low.shape == high.shape == (3, 2) and low.dtype == x.dtype
    m = x.mean(0)
    assert (low <= m + 1e-6).all() and (m <= high + 1e-6).all() and (low < high).all()
    ref = stats.bootstrap(
        (x[:, 1, 0].double().numpy(),),
        np.mean,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(3),
        confidence_level=0.95,
    )
    # Same statistic and method; resample draws differ (vectorised over cells), so compare loosely.
    assert float(low[1, 0]) == pytest.approx(ref.confidence_interval.low, abs=0.35)
    again = bootstrap_ci(x, n_resamples=500, seed=3)
    assert torch.equal(again[0], low) and torch.equal(again[1], high)


def test_bootstrap_ci_edge_cases():
    """One fact gives (value, value); constant cells are exact; all-NaN cells are NaN."""
    one = torch.tensor([[1.5, -2.0]])
    low, high = bootstrap_ci(one)
    assert torch.equal(low, one[0]) and torch.equal(high, one[0])
    x = torch.stack([torch.full((2,), 0.7), torch.full((2,), 0.7), torch.full((2,), 0.7)])
    x[:, 1] = float("nan")
    low, high = bootstrap_ci(x, n_resamples=200)
    assert low[0] == pytest.approx(0.7) and high[0] == pytest.approx(0.7)
    assert torch.isnan(low[1]) and torch.isnan(high[1])
    with pytest.raises(ValueError):
        bootstrap_ci(torch.zeros(0, 3))
    with pytest.raises(ValueError):
        bootstrap_ci(torch.zeros(3, 3), confidence=1.5)


def test_score_landscape_is_the_coordinates_scores():
    """score_landscape returns select_coordinate(...).scores."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=3)
    torch.testing.assert_close(
        score_landscape(r, steps=[0, 1]), select_coordinate(r, steps=[0, 1]).scores, equal_nan=True
    )


def test_beta_tradeoff_neighbour_effect_never_increases():
    """As β grows the chosen cell's neighbour |TIE| cannot increase (nor its forget |TIE|)."""
    g = torch.Generator().manual_seed(1)
    f = torch.randn(6, 4, 5, 3, generator=g)
    n = torch.randn(5, 4, 5, 3, generator=g)
    betas = [0.0, 0.25, 0.5, 1.0, 2.0, 8.0]
    t = beta_tradeoff(f, n, betas)
    assert len(t.coordinates) == 6 and t.values.shape == (6, 2) and t.dims == ("beta", "set")
    assert (t.neighbour.diff() <= 1e-12).all() and (t.forget.diff() <= 1e-12).all()
    c = t.coordinates[2]
    assert t.forget[2] == pytest.approx(
        float(f[:, c.index[0], c.index[1], c.index[2]].abs().mean())
    )
    assert "β=0" in repr(t)


def test_selection_stability_frequencies():
    """Frequencies sum to 1, are deterministic by seed, 1 for a clear winner, 0 where restricted."""
    clear = torch.zeros(5, 3, 2, 3)
    clear[:, 1, 1, 2] = 1.0
    s = selection_stability(clear, n_boot=100)
    assert float(s.frequencies.sum()) == pytest.approx(1.0)
    assert s.agreement == 1.0 and s.top[0] == (1, 1, "mlp", 1.0) and s.values is s.frequencies
    g = torch.Generator().manual_seed(2)
    noisy = torch.rand(6, 3, 2, 3, generator=g)
    a = selection_stability(noisy, n_boot=300, seed=4, modules="resid")
    b = selection_stability(noisy, n_boot=300, seed=4, modules="resid")
    assert torch.equal(a.frequencies, b.frequencies)
    assert float(a.frequencies[:, :, 1:].sum()) == 0.0 and float(
        a.frequencies.sum()
    ) == pytest.approx(1.0)
    assert [p for *_, p in a.top] == sorted([p for *_, p in a.top], reverse=True)
    nb = torch.rand(4, 3, 2, 3, generator=g)
    c = selection_stability(noisy, n_boot=200, beta=1.0, neighbours=nb)
    assert c.coordinate.index == select_coordinate(noisy, beta=1.0, neighbours=nb).index


def test_selection_stability_split_facts():
    """Two cells each favoured by half the facts split the wins roughly in half."""
    tie = torch.zeros(20, 1, 2, 1)
    tie[:10, 0, 0, 0] = 1.0
    tie[10:, 0, 1, 0] = 1.0
    s = selection_stability(tie, n_boot=2000, seed=0)
    assert 0.35 < float(s.frequencies[0, 0, 0]) < 0.65
    assert float(s.frequencies.sum()) == pytest.approx(1.0)


def test_per_fact_optima():
    """Each fact's own argmax |TIE| versus the global coordinate."""
    tie = torch.zeros(3, 2, 2, 3)
    tie[:2, 0, 0, 0] = 1.0
    tie[2, 1, 1, 2] = -2.0
    o = per_fact_optima(tie)
    assert o.global_coordinate.index == (0, 0, 0)
    assert o.coordinates == ((0, 0, "resid"), (0, 0, "resid"), (1, 1, "mlp"))
    assert o.agreement_rate == pytest.approx(2 / 3) and o.layer_agreement_rate == pytest.approx(
        2 / 3
    )
    assert o.at_own.tolist() == [1.0, 1.0, 2.0] and o.at_global.tolist() == [1.0, 1.0, 0.0]
    assert o.values.shape == (3, 2) and o.fact_ids == ("0", "1", "2")
    r = per_fact_optima(TIEResult.synthetic(n_facts=2), modules="attn")
    assert all(m == "attn" for _, _, m in r.coordinates) and r.fact_ids == ("f0", "f1")


def test_localisation_stats_concentrated_and_uniform():
    """One hot cell: top-1 share 1, entropy 0; uniform map: entropy 1, top-k share k/n."""
    hot = torch.zeros(4, 3, 2)
    hot[1, 2, 0] = -3.0
    s = localisation_stats(hot, ("layer", "step", "module"), labels={"module": ("resid", "mlp")})
    assert s.peak == {"layer": 1, "step": 2, "module": "resid"} and s.peak_value == -3.0
    assert s.top_share == {1: 1.0, 3: 1.0, 5: 1.0} and s.entropy == 0.0 and s.n_cells == 24
    u = localisation_stats(torch.ones(4, 5), ("layer", "step"), top_k=(1, 5))
    assert u.entropy == pytest.approx(1.0) and u.top_share == {
        1: pytest.approx(0.05),
        5: pytest.approx(0.25),
    }
    nan = torch.ones(2, 2)
    nan[0, 0] = float("nan")
    assert localisation_stats(nan, ("a", "b")).n_cells == 3
    z = localisation_stats(torch.zeros(2, 2), ("a", "b"))
    assert math.isnan(z.entropy)


def test_localisation_stats_positional_and_results():
    """Peak position relative to the last subject token; results are accepted directly."""
    m = torch.zeros(3, 6)
    m[1, 4] = 1.0
    s = localisation_stats(m, ("layer", "position"), last_subject_position=2)
    assert s.peak_relative_position == 2
    p = PositionalResult.synthetic(n_facts=2, n_layers=4)
    per_fact = localisation_stats(p)
    assert len(per_fact) == 2
    assert per_fact[0].dims == ("layer", "position", "module")
    assert per_fact[0].peak["position"] == 2 and per_fact[0].peak_relative_position == 0
    t = localisation_stats(TIEResult.synthetic(n_facts=3, n_layers=4))
    assert t.peak == {"layer": 2, "step": 0, "module": "resid"}
    with pytest.raises(ShapeError, match="fact"):
        localisation_stats(torch.zeros(2, 3), ("fact", "layer"))
    with pytest.raises(ShapeError):
        localisation_stats(torch.zeros(2, 3), ("layer",))
    with pytest.raises(ValueError, match="dims"):
        localisation_stats(torch.zeros(2, 3))


def test_per_fact_optima_ids_follow_the_known_facts():
    """Unknown facts are left out and fact_ids name exactly the analysed rows."""
    r = TIEResult.synthetic(n_facts=3)
    r = dataclasses.replace(r, config=dict(r.config, unknown_facts=["f1"]))
    o = per_fact_optima(r)
    assert o.fact_ids == ("f0", "f2") and o.indices.shape == (2, 3)
    assert len(o.coordinates) == len(o.at_own) == len(o.at_global) == 2
    ref = per_fact_optima(r.tie[[0, 2]])
    assert torch.equal(o.indices, ref.indices) and torch.equal(o.at_own, ref.at_own)


def test_analyses_accept_bf16_input():
    """bootstrap_ci and the selection studies run on bf16 tensors (CUDA/bf16 traces)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, 3, generator=g).to(torch.bfloat16)
    low, high = bootstrap_ci(x, n_resamples=200)
    assert low.dtype == torch.bfloat16 and bool((low <= high).all())
    one_low, one_high = bootstrap_ci(x[:1])  # one fact: the degenerate interval (v, v)
    assert torch.equal(one_low, x[0]) and torch.equal(one_high, x[0])
    s = selection_stability(x, n_boot=20, beta=0.5, neighbours=x)
    assert float(s.frequencies.sum()) == pytest.approx(1.0)
    assert per_fact_optima(x).indices.shape == (5, 3)
    assert len(beta_tradeoff(x, x, [0.0, 1.0]).coordinates) == 2


def test_bootstrap_ci_of_one_scalar_fact():
    """A 1-D tensor with a single fact gives (v, v) as 0-d tensors, not an error."""
    low, high = bootstrap_ci(torch.tensor([3.0]))
    assert low.shape == () and float(low) == float(high) == 3.0
