"""The trace summary that `tie-tracing figure2` reports, computed in analysis/ (SPEC §7)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import tie_tracing as tt
from tie_tracing.analysis import cell_ci, commit_summary, tie_concentration, trace_summary

TraceResult = tt.TIEResult


@pytest.fixture(scope="module")
def pair():
    """Two traces of one clean run posing as seeds 0 and 1 (the second's effects scaled)."""
    base = TraceResult.synthetic(n_facts=4, seed=0)
    return [base, dataclasses.replace(base, seeds=(1,), tie=0.5 * base.tie, ie=0.5 * base.ie)]


def test_concentration_shares_and_top_cells_match_a_loop(pair):
    """Shares by layer/step/module are the cell sums of |mean TIE| over the total (sum to 1);
    the top cells are the largest |mean TIE| cells, in order."""
    r = pair[0]
    mean = r.mean().abs().nan_to_num()
    total = sum(float(v) for v in mean.flatten())
    out = tie_concentration(r, top=3)
    for i, layer in enumerate(r.layers):
        expected = sum(float(mean[i, s, m]) for s in range(len(r.steps)) for m in range(3))
        assert out["share_by_layer"][str(layer)] == pytest.approx(expected / total)
    for key in ("share_by_layer", "share_by_step", "share_by_module"):
        assert sum(out[key].values()) == pytest.approx(1.0)
    values = sorted((float(v) for v in mean.flatten()), reverse=True)[:3]
    assert [c["mean_abs_tie"] for c in out["top_cells"]] == pytest.approx(values)
    c = out["top_cells"][0]
    li, si, mi = r.layers.index(c["layer"]), r.steps.index(c["step"]), r.modules.index(c["module"])
    assert float(mean[li, si, mi]) == c["mean_abs_tie"]


def test_cell_ci_is_the_eq5_score_with_a_ci_around_it(pair):
    """cell_ci's score is select_coordinate's (mean |TIE| over known facts); both CIs hold
    their means; the signed mean is the plain mean of the cell."""
    r = pair[0]
    best = tt.select_coordinate(r)
    out = cell_ci(r, best)
    li, si, mi = best.index
    cell = r.known_only().tie[:, li, si, mi].double()
    assert out["score"] == pytest.approx(float(cell.abs().mean()))
    assert out["mean_tie"] == pytest.approx(float(cell.mean()))
    assert out["ci95"][0] <= out["score"] <= out["ci95"][1]
    assert out["mean_tie_ci95"][0] <= out["mean_tie"] <= out["mean_tie_ci95"][1]
    assert out["n_facts"] == r.n_known


def test_commit_summary_agrees_with_the_commit_maps(pair):
    """Per-fact commit steps and idle counts are the result's own; min ≤ median ≤ max."""
    r = pair[1]
    out = commit_summary(r)
    assert list(out["object_commit"]["per_fact"].values()) == r.object_commit_step.tolist()
    assert list(out["idle_steps"]["per_fact"].values()) == r.idle_steps.sum(-1).tolist()
    oc = out["object_commit"]
    if oc["min"] is not None:
        assert oc["min"] <= oc["median"] <= oc["max"]
        assert sum(oc["histogram"].values()) == len(r.fact_ids) - len(oc["never_committed"])
    every = torch.nonzero(r.idle_steps.all(0)).flatten().tolist()
    assert out["idle_steps"]["idle_for_every_fact"] == every and out["idle_steps"]["T"] == 8


def test_trace_summary_pools_seeds_and_is_json(pair):
    """With two seeds the summary resamples seeds and reports seed stability; with one it does
    neither; either way it is plain JSON and its parts are the functions above."""
    pooled = TraceResult.pool_seeds(pair)
    two = trace_summary(pooled, pair)
    one = trace_summary(pair[0])
    assert two["selection_bootstrap"]["resampled"] == "facts and seeds"
    assert two["seed_stability"] is not None and one["seed_stability"] is None
    assert one["selection_bootstrap"]["resampled"] == "facts"
    assert two["selected"] == cell_ci(pooled, tt.select_coordinate(pooled))
    assert two["concentration"] == tie_concentration(pooled)
    assert two["lp_clean_final"] == pytest.approx(float(pooled.lp_clean[:, -1].mean()))
    assert json.loads(json.dumps(two, allow_nan=False)) == two
    assert two["facts"] == list(pooled.fact_ids) and not math.isnan(two["lp_corrupt_final"])
