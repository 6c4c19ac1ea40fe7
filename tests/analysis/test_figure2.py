"""Figure 2's analysis layer (cluster bootstrap over people, final-answer effect, immediate
part, commit alignment, contrast, structural zeros) and the figure that draws it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import tie_tracing as tt
from tie_tracing.analysis.figure2 import (
    cluster_bootstrap_ci,
    commit_aligned,
    figure2_data,
    final_effect,
    immediate_part,
)
from tie_tracing.core.errors import ShapeError
from tie_tracing.core.results import TIEResult
from tie_tracing.figures.figure2 import plot_figure2


def _people(r: TIEResult, subjects) -> TIEResult:
    return dataclasses.replace(r, subjects=tuple(subjects))


def test_cluster_bootstrap_resamples_people_not_facts():
    """Two people, each with many identical facts: every resampled mean is 0, 2 or 4 (all of
    a, half-half, all of b), so the interval is [0, 4]; the ordinary bootstrap over facts,
    which treats the 20 facts as independent, gives a much narrower one."""
    x = torch.tensor([[0.0]] * 10 + [[4.0]] * 10)
    groups = ["a"] * 10 + ["b"] * 10
    low, high = cluster_bootstrap_ci(x, groups, n_resamples=2000)
    assert (float(low[0]), float(high[0])) == (0.0, 4.0)
    n_low, n_high = tt.analysis.bootstrap_ci(x, n_resamples=2000)
    assert float(n_high[0] - n_low[0]) < 0.6 * float(high[0] - low[0])


def test_cluster_bootstrap_edge_cases():
    """One group: degenerate (mean, mean); constant cells: exactly the constant; NaN cells are
    left out of the mean; a label per fact is required."""
    x = torch.tensor([[1.0, 5.0, math.nan], [3.0, 5.0, 2.0]])
    low, high = cluster_bootstrap_ci(x, ["p", "p"])
    assert torch.equal(low, torch.tensor([2.0, 5.0, 2.0], dtype=torch.float64))
    assert torch.equal(low, high)
    low, high = cluster_bootstrap_ci(x, ["p", "q"], n_resamples=200)
    assert float(low[1]) == float(high[1]) == 5.0 and float(low[2]) == float(high[2]) == 2.0
    with pytest.raises(ShapeError, match="groups has 1 labels for 2 facts"):
        cluster_bootstrap_ci(x, ["p"])


def test_immediate_part_plus_later_terms_is_eq4():
    """TIE = immediate part + Σ_{k'>k} γ^{k'−k} IE_{k'} / Σ γ^j, computed here from the IE
    tensor with explicit loops; and the final-answer effect is IE at the last step."""
    r = TIEResult.synthetic(n_facts=2, n_layers=2, n_steps=5, decay=0.7, seed=1)
    imm = immediate_part(r)
    for f in range(2):
        for layer in range(2):
            for k in range(5):
                for m in range(3):
                    w = [0.7**j for j in range(5 - k)]
                    later = sum(w[j] * float(r.ie[f, layer, k, m, k + j]) for j in range(1, 5 - k))
                    want = float(r.tie[f, layer, k, m])
                    assert math.isclose(
                        float(imm[f, layer, k, m]) + later / sum(w), want, abs_tol=1e-5
                    )
    assert torch.equal(final_effect(r), r.ie[..., -1])


def test_commit_alignment_puts_each_facts_commit_at_zero():
    per_fact = torch.arange(2 * 1 * 4 * 1, dtype=torch.float32).view(2, 1, 4, 1)
    out, rel = commit_aligned(per_fact, [0, 1, 2, 3], torch.tensor([1, -1]), 4)
    assert rel == list(range(-3, 4))
    assert out[0, 0, rel.index(0), 0] == per_fact[0, 0, 1, 0]
    assert out[0, 0, rel.index(2), 0] == per_fact[0, 0, 3, 0]
    assert torch.isnan(out[0, 0, rel.index(3), 0]) and torch.isnan(out[1]).all()


def _pair(n=6, seed=0):
    obj = TIEResult.synthetic(n_facts=n, n_layers=3, n_steps=4, seed=seed)
    obj = dataclasses.replace(obj, config=obj.config | {"target": "object"})
    other = TIEResult.synthetic(n_facts=n, n_layers=3, n_steps=4, seed=seed + 1)
    name = dataclasses.replace(
        obj, tie=other.tie, ie=other.ie, config=obj.config | {"target": "name"}
    )
    return obj, name


def test_contrast_is_the_per_fact_difference_and_checks_its_partner():
    obj, name = _pair()
    d = figure2_data(obj, name, n_resamples=200)
    torch.testing.assert_close(
        d.maps["contrast"].mean, (obj.tie - name.tie).double().mean(0), rtol=0, atol=1e-9
    )
    with pytest.raises(ValueError, match="target='name'"):
        figure2_data(obj, obj)
    with pytest.raises(ValueError, match="same facts"):
        figure2_data(obj, name.select_facts([0, 1]))
    reseeded = dataclasses.replace(name, seeds=(7,))
    with pytest.raises(ValueError, match="seeds"):
        figure2_data(obj, reseeded)


def test_structural_zeros_come_from_the_recorded_config_not_the_values():
    """Cells recorded zero by architecture for every averaged fact are marked; a cell that is
    merely 0 in value is not, and a site recorded for only some facts is not."""
    obj, _ = _pair(n=2)
    zeros = {"f0": [[2, "resid"], [2, "mlp"]], "f1": [[2, "resid"]]}
    tie = obj.tie.clone()
    tie[:, 1] = 0.0  # zero values, no architectural reason
    r = dataclasses.replace(obj, tie=tie, config=obj.config | {"structural_zeros": zeros})
    d = figure2_data(r, n_resamples=100)
    assert d.structural[:, 0].tolist() == [False, False, True]  # resid: layer 2 only
    assert not d.structural[:, 2].any()  # mlp recorded for f0 alone


def test_figure2_data_resamples_people_and_summarises():
    obj, name = _pair(n=6)
    r = _people(obj, ["a", "a", "b", "b", "c", "c"])
    n = _people(name, ["a", "a", "b", "b", "c", "c"])
    d = figure2_data(r, n, n_resamples=300)
    assert d.n_people == 3
    low, high = cluster_bootstrap_ci(r.tie, r.subjects, n_resamples=300)
    assert torch.equal(d.maps["tie"].low, low) and torch.equal(d.maps["tie"].high, high)
    s = d.summary("resid")
    assert {"tie", "final", "contrast", "aligned_final"} <= set(s) and 0 <= s[
        "immediate_share"
    ] <= 1


def test_plot_figure2_draws_every_view_and_states_the_numbers():
    obj, name = _pair(n=6)
    zeros = {fid: [[2, "resid"]] for fid in obj.fact_ids}
    obj = dataclasses.replace(obj, config=obj.config | {"structural_zeros": zeros})
    d = figure2_data(obj, name, n_resamples=200)
    fig = plot_figure2(d)
    marks = ("zero by architecture", "idle step")
    heat = [t.name for t in fig.data if t.type == "heatmap" and t.name not in marks]
    assert heat == ["tie", "contrast", "final", "immediate", "aligned", "aligned_final"]
    tie_trace = next(t for t in fig.data if t.name == "tie")
    assert np.isnan(np.asarray(tie_trace.z, dtype=float)[2]).all()  # not drawn as a value
    assert any(t.name == "zero by architecture" and t.showlegend for t in fig.data)
    caption = next(a.text for a in fig.layout.annotations if a.name == "caption")
    assert "object − name contrast" in caption and "final-answer effect" in caption
    assert "patched forward's own effect" in caption
    assert any(t.name and t.name.startswith("Eq. 5 cell") for t in fig.data)
    few = figure2_data(_people(obj, ["a"] * 6), n_resamples=50)
    notes = [a.name for a in plot_figure2(few).layout.annotations if a.name]
    assert "CI note" in notes
    with pytest.raises(TypeError, match="Figure2Data"):
        plot_figure2(obj)
    with pytest.raises(ValueError, match="module 'ffn' is not traced"):
        plot_figure2(d, module="ffn")
