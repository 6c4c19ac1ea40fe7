"""Analyses: bootstrap CIs, the β trade-off, selection stability, per-fact optima, localisation,
pooling noise seeds and seed stability."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import tie_tracing as tt
from tie_tracing.analysis.selection import select_coordinate
from tie_tracing.analysis.stats import (
    beta_tradeoff,
    bootstrap_ci,
    localisation_stats,
    per_fact_optima,
    score_landscape,
    selection_stability,
)
from tie_tracing.core.errors import ShapeError
from tie_tracing.core.results import PositionalResult, TIEResult, tie_from_ie


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


def test_score_landscape_is_eq5_written_out():
    """score_landscape is Eq. 5 cell by cell: mean_f |TIE_f| − β · mean_g |TIE_g|, NaN outside
    the step/module restriction, and its argmax is the selected coordinate."""
    g = torch.Generator().manual_seed(3)
    forget = torch.randn(4, 3, 5, 3, generator=g, dtype=torch.float64)
    neighbours = torch.randn(6, 3, 5, 3, generator=g, dtype=torch.float64)
    beta = 0.7
    land = score_landscape(forget, beta=beta, neighbours=neighbours, steps=[1, 3], modules="mlp")
    expected = torch.full((3, 5, 3), math.nan, dtype=torch.float64)
    for layer in range(3):
        for step in (1, 3):
            f = sum(abs(float(forget[i, layer, step, 2])) for i in range(4)) / 4
            n = sum(abs(float(neighbours[j, layer, step, 2])) for j in range(6)) / 6
            expected[layer, step, 2] = f - beta * n
    torch.testing.assert_close(land, expected, equal_nan=True)
    best = torch.nan_to_num(expected, nan=-math.inf).argmax()
    c = select_coordinate(forget, beta=beta, neighbours=neighbours, steps=[1, 3], modules="mlp")
    assert (c.layer, c.step, c.module) == (int(best // 15), int(best % 15 // 3), "mlp")


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


# ----------------------------------------------------------------------------- seeds

REPLICA_FACTS = [
    tt.Fact("ada vell", "where was ada vell born", "lisbon porto paris", id="f0"),
    tt.Fact("mara tov", "who wrote the book of mara tov", "orion", id="f1"),
]


def _reseeded(r: TIEResult, seed: int, tie: torch.Tensor | None = None, *, n_noise: int = 1):
    """A copy of ``r`` that poses as the trace of another noise seed (baselines kept).

    ``tie`` replaces the maps (``ie`` is set so that ``tie_from_ie(ie) == tie``: a constant
    over later steps); the noise axis gets ``n_noise`` draws.
    """
    draws = r.lp_corrupt_draws[:, :1].repeat(1, n_noise, 1)
    changes: dict = {
        "seeds": (seed,),
        "lp_corrupt_draws": draws,
        "lp_corrupt": draws.mean(1),
        "corrupt_tokens": r.corrupt_tokens[:, :1].repeat(1, n_noise, 1, 1),
    }
    if tie is not None:
        nan = torch.isnan(r.ie)
        changes["ie"] = tie[..., None].expand_as(r.ie).masked_fill(nan, math.nan).clone()
        changes["tie"] = tie
    return dataclasses.replace(r, **changes)


@pytest.fixture(scope="module")
def replica_traces(mdlm):
    """The tiny-mdlm replica traced under seed 3 (1 draw) and seed 4 (2 draws)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        return [
            tt.trace_tie(mdlm, REPLICA_FACTS, steps=4, nu=2.0, n_noise=n, seed=s, progress=False)
            for s, n in ((3, 1), (4, 2))
        ]


def test_pool_seeds_is_the_draw_weighted_mean_of_replica_traces(replica_traces, tmp_path):
    """Pooling seeds 3 (1 draw) and 4 (2 draws): ie is the 1:2 mean, tie is Eq. 4 of it, draws concatenated."""
    a, b = replica_traces
    assert not torch.equal(a.lp_corrupt_draws[:, 0], b.lp_corrupt_draws[:, 0])  # other noise
    p = TIEResult.pool_seeds([a, b])
    expected_ie = (a.ie.double() + 2 * b.ie.double()) / 3
    assert torch.equal(torch.isnan(p.ie), torch.isnan(a.ie))
    torch.testing.assert_close(p.ie.double(), expected_ie, equal_nan=True, atol=1e-6, rtol=0)
    torch.testing.assert_close(p.tie, tie_from_ie(p.ie, p.decay, steps=p.steps), atol=1e-6, rtol=0)
    assert torch.equal(p.lp_corrupt_draws, torch.cat([a.lp_corrupt_draws, b.lp_corrupt_draws], 1))
    torch.testing.assert_close(p.lp_corrupt, p.lp_corrupt_draws.mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(p.diverged.double(), (a.diverged.double() + 2 * b.diverged) / 3)
    assert p.corrupt_tokens.shape[1] == 3 and torch.equal(p.corrupt_tokens[:, 1:], b.corrupt_tokens)
    assert p.seeds == (3, 4) and p.config["n_noise"] == 3 and p.config["seed"] == [3, 4]
    assert p.config["pooled"] == [{"seeds": [3], "n_noise": 1}, {"seeds": [4], "n_noise": 2}]
    assert torch.equal(p.lp_clean, a.lp_clean) and p.idle_steps.shape == a.idle_steps.shape
    # order-independent up to the order of the draws
    q = TIEResult.pool_seeds([b, a])
    torch.testing.assert_close(q.tie, p.tie, atol=1e-6, rtol=0)
    assert torch.equal(q.lp_corrupt_draws, p.lp_corrupt_draws[:, [1, 2, 0]])
    # a pooled result saves and loads exactly, and pools again with a new seed
    back = TIEResult.load(p.save(tmp_path / "pooled.safetensors"))
    assert torch.equal(back.tie, p.tie) and back.config == p.config and back.seeds == p.seeds
    c = _reseeded(a, 9)
    again = TIEResult.pool_seeds([p, c])
    assert again.seeds == (3, 4, 9) and len(again.config["pooled"]) == 3
    assert TIEResult.pool_seeds([a]) is a


def test_pool_seeds_names_the_mismatch():
    """Other facts, fact order, a repeated seed, other settings, T or a normalised part are refused by name."""
    a = TIEResult.synthetic(n_facts=3, seed=0)
    b = _reseeded(a, 1)
    TIEResult.pool_seeds([a, b])  # the baseline pools
    other_facts = dataclasses.replace(b, fact_ids=("f0", "f1", "g2"))
    with pytest.raises(ValueError, match="fact_ids"):
        TIEResult.pool_seeds([a, other_facts])
    with pytest.raises(ValueError, match="fact_ids"):
        TIEResult.pool_seeds([a, b.select_facts([2, 1, 0])])
    with pytest.raises(ValueError, match="seed 0 appears in result 0 and result 1"):
        TIEResult.pool_seeds([a, _reseeded(a, 0)])
    for key, value in (("lp", "raw"), ("target", "object"), ("decay", 1.0), ("nu", 9.0)):
        changed = dataclasses.replace(b, config=dict(b.config, **{key: value}))
        with pytest.raises(ValueError, match=rf"config\['{key}'\]"):
            TIEResult.pool_seeds([a, changed])
    with pytest.raises(ValueError, match="steps="):
        TIEResult.pool_seeds([a, TIEResult.synthetic(n_facts=3, n_steps=4, seed=1)])
    with pytest.raises(ValueError, match="clean trajectory"):
        TIEResult.pool_seeds([a, dataclasses.replace(b, lp_clean=b.lp_clean + 1.0)])
    with pytest.raises(ValueError, match="normalised"):
        TIEResult.pool_seeds([a.normalized(), b.normalized()])
    with pytest.raises(ValueError, match="at least one"):
        TIEResult.pool_seeds([])


def test_seed_stability_of_scaled_copies_is_perfect():
    """Maps that differ only in scale correlate with r = 1 and select the same cells."""
    a = TIEResult.synthetic(n_facts=4, n_layers=5, seed=0)
    b = _reseeded(a, 1, 3.0 * a.tie)
    s = tt.analysis.seed_stability([a, b])
    assert s.values is s.correlation and s.dims == ("seed", "other_seed")
    assert s.correlation.shape == (2, 2) and s.mean_correlation == pytest.approx(1.0)
    assert s.mean_correlation_all == pytest.approx(1.0)
    assert s.same_cell == (True, True) and s.agreement == 1.0 and s.agreement_all == 1.0
    assert s.pooled.module == "resid" and all(c.module == "resid" for c in s.coordinates)
    assert s.seeds == ((0,), (1,)) and s.n_noise == (1, 1) and s.module == "resid"
    assert "SeedStability(seeds=[0, 1]" in repr(s) and "r[resid]=1.000" in repr(s)
    d = s.to_dict()
    assert json.loads(json.dumps(d))["same_cell"] == [True, True]
    anti = tt.analysis.seed_stability([a, _reseeded(a, 2, -a.tie)])
    assert anti.mean_correlation == pytest.approx(-1.0)


def test_seed_stability_of_independent_maps_is_near_zero():
    """Independent random maps correlate near 0; cells that are 0 in both maps are left out."""
    base = TIEResult.synthetic(n_facts=2, n_layers=30, n_steps=20, seed=0)
    g = torch.Generator().manual_seed(7)
    maps = [torch.randn(base.tie.shape, generator=g) for _ in range(3)]
    s = tt.analysis.seed_stability([_reseeded(base, i, m) for i, m in enumerate(maps)])
    assert s.correlation.shape == (3, 3)
    off = s.correlation[~torch.eye(3, dtype=torch.bool)]
    assert off.abs().max() < 0.2 and abs(s.mean_correlation) < 0.2
    assert torch.equal(s.correlation, s.correlation.T) and torch.all(s.correlation.diagonal() == 1)
    assert int(s.n_cells[0, 1]) == 30 * 20
    # shared zeros (idle steps) do not inflate r: zeroing steps 10… in both leaves r as on steps …9
    zeroed = [m.clone() for m in maps[:2]]
    for m in zeroed:
        m[:, :, 10:] = 0.0
    z = tt.analysis.seed_stability([_reseeded(base, i, m) for i, m in enumerate(zeroed)])
    means = [m[:, :, :10, 0].mean(0).flatten().double() for m in zeroed]
    assert z.correlation[0, 1] == pytest.approx(float(torch.corrcoef(torch.stack(means))[0, 1]))
    assert int(z.n_cells[0, 1]) == 30 * 10


def test_seed_stability_selection_per_seed_and_errors():
    """A seed that prefers another cell is flagged; mismatched facts, one trace, unknown module fail."""
    base = TIEResult.synthetic(n_facts=3, n_layers=3, n_steps=4, seed=0)
    one = torch.zeros(base.tie.shape)
    one[:, 0, 1, 0] = 3.0
    two = torch.zeros(base.tie.shape)
    two[:, 0, 1, 0] = 1.0
    two[:, 2, 3, 0] = 2.0
    s = tt.analysis.seed_stability([_reseeded(base, 0, one), _reseeded(base, 1, two)])
    assert (s.pooled.layer, s.pooled.step) == (0, 1)
    assert [(c.layer, c.step) for c in s.coordinates] == [(0, 1), (2, 3)]
    assert s.same_cell == (True, False) and s.agreement == 0.5
    with pytest.raises(ValueError, match="fact_ids"):
        tt.analysis.seed_stability([base, _reseeded(base, 1).select_facts([1, 0, 2])])
    with pytest.raises(ValueError, match="at least 2"):
        tt.analysis.seed_stability([base])
    with pytest.raises(ValueError, match="seed 0 appears"):
        tt.analysis.seed_stability([base, base])
    with pytest.raises(ValueError, match="'embed'"):
        tt.analysis.seed_stability([base, _reseeded(base, 1)], module="embed")
    all_modules = tt.analysis.seed_stability(
        [_reseeded(base, 0, one), _reseeded(base, 1, two)], module=None
    )
    torch.testing.assert_close(all_modules.correlation, all_modules.correlation_all)
    assert all_modules.correlation[0, 1] == -1.0  # two informative cells, opposite order


@pytest.mark.filterwarnings("ignore:TIEResult.*does not know")
def test_seed_stability_of_replica_traces(replica_traces):
    """Two noise seeds of a replica give a finite correlation in [-1, 1] over informative cells."""
    s = tt.analysis.seed_stability(replica_traces)
    r = s.mean_correlation
    assert -1.0 <= r <= 1.0 and int(s.n_cells[0, 1]) > 0
    assert s.n_noise == (1, 2) and s.fact_ids == ("f0", "f1")
    pooled = TIEResult.pool_seeds(replica_traces)
    assert s.pooled.index == select_coordinate(pooled, modules="resid").index


def test_selection_stability_over_identical_seeds_equals_facts_only():
    """Resampling seeds that are identical copies changes nothing: same frequencies as facts only."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 4, 3, generator=g)
    facts_only = selection_stability(x, n_boot=300, seed=5)
    with_seeds = selection_stability(x, n_boot=300, seed=5, seeds=[x, x.clone(), x.clone()])
    assert torch.equal(facts_only.frequencies, with_seeds.frequencies)
    assert with_seeds.n_seeds == 3 and facts_only.n_seeds == 1
    assert "n_seeds=3" in repr(with_seeds) and "n_seeds" not in repr(facts_only)


def test_selection_stability_reflects_seed_disagreement():
    """Two seeds preferring different cells: the facts-only bootstrap is sure, the seed bootstrap is not."""
    a = torch.zeros(5, 2, 2, 1)
    a[:, 0, 0, 0] = 3.0
    a[:, 1, 1, 0] = 1.0
    b = torch.zeros(5, 2, 2, 1)
    b[:, 1, 1, 0] = 2.0
    pooled = (a + b) / 2  # cell (0,0): 1.5, cell (1,1): 1.5 → ties go to the first cell
    assert selection_stability(pooled, n_boot=500).agreement == 1.0
    s = selection_stability(pooled, n_boot=2000, seed=1, seeds=[a, b])
    # resamples {a,a} and {a,b} pick (0,0); {b,b} (a quarter of them) picks (1,1)
    assert float(s.frequencies[1, 1, 0]) == pytest.approx(0.25, abs=0.04)
    assert s.agreement == pytest.approx(0.75, abs=0.04)


def test_selection_stability_seed_traces_are_weighted_and_validated():
    """TIEResult seeds weigh by their noise draws; other facts or shapes are refused."""
    base = TIEResult.synthetic(n_facts=4, n_layers=2, n_steps=2, modules=("resid",), seed=0)
    one = torch.zeros(base.tie.shape)
    one[:, 0, 0, 0] = 1.0
    two = torch.zeros(base.tie.shape)
    two[:, 1, 1, 0] = 1.2
    light, heavy = _reseeded(base, 0, one), _reseeded(base, 1, two, n_noise=3)
    pooled = TIEResult.pool_seeds([light, heavy])  # (1,1) wins: 0.9 against 0.25
    s = selection_stability(pooled, n_boot=2000, seed=2, seeds=[light, heavy])
    # {light, light}: (0,0); {heavy, heavy} and {light, heavy} (weights 1:3): (1,1)
    assert s.coordinate.index == (1, 1, 0)
    assert float(s.frequencies[0, 0, 0]) == pytest.approx(0.25, abs=0.04)
    with pytest.raises(ValueError, match="fact_ids"):
        selection_stability(pooled.select_facts([1, 0, 2, 3]), seeds=[light, heavy])
    with pytest.raises(ShapeError, match="seeds\\[1\\]"):
        selection_stability(one, seeds=[one, one[:3]])
    with pytest.raises(TypeError, match="all TIEResults or all tensors"):
        selection_stability(pooled, seeds=[light, two])
    with pytest.raises(ValueError, match="empty"):
        selection_stability(pooled, seeds=[])
