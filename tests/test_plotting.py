"""Plotting: figure structure (panels, shared colour axis, hovers, dropdown) and save_figure."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from tie_tracing import plotting
from tie_tracing.analysis import beta_tradeoff, per_fact_optima, selection_stability
from tie_tracing.plotting import (
    StaticExportError,
    plot_beta_tradeoff,
    plot_ie_by_later_step,
    plot_per_fact_optima,
    plot_positional,
    plot_selection_landscape,
    plot_selection_stability,
    plot_tie_heatmaps,
    save_figure,
    static_export_available,
)
from tie_tracing.results import PositionalResult, TIEResult
from tie_tracing.selection import select_coordinate


@pytest.fixture(scope="module")
def result() -> TIEResult:
    return TIEResult.synthetic(n_facts=3, n_layers=4, n_steps=5)


def test_tie_heatmaps_structure(result):
    """One heatmap per module on one shared diverging colour axis centred at 0."""
    fig = plot_tie_heatmaps(result, n_resamples=200)
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert fig.layout.coloraxis.cmid == 0
    assert [a.text for a in fig.layout.annotations] == ["resid", "attn", "mlp"]
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (4, 5)  # layer rows x step columns
    np.testing.assert_allclose(z, result.mean()[:, :, 0].numpy(), rtol=1e-6)


def test_tie_heatmaps_hover_has_value_ci_and_per_fact_values(result):
    """The mean view's hover gives the value, the 95% CI and every fact's value."""
    fig = plot_tie_heatmaps(result, n_resamples=200)
    text = fig.data[2].text[1][3]  # mlp, layer 1, step 3
    assert "95% CI [" in text and "mean TIE (nats): " in text
    for f, fid in enumerate(result.fact_ids):
        assert f"{fid}: {float(result.tie[f, 1, 3, 2]):.4g}" in text


def test_tie_heatmaps_dropdown_switches_to_each_fact(result):
    """Dropdown: 'mean' plus one button per fact; a fact's button carries that fact's maps."""
    fig = plot_tie_heatmaps(result, n_resamples=200)
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 1 + result.n_facts
    assert buttons[0].label.startswith("mean")
    fact2 = buttons[3].args[0]
    assert len(fact2["z"]) == 3
    np.testing.assert_allclose(
        np.asarray(fact2["z"][1], dtype=float), result.tie[2, :, :, 1].numpy(), rtol=1e-6
    )
    assert "f2" in fact2["text"][0][0][0]


def test_tie_heatmaps_modules_and_normalised_view(result):
    """modules= picks panels; normalized=True plots the normalised result."""
    fig = plot_tie_heatmaps(
        result, modules=["mlp", "resid"], normalized=True, n_resamples=100, title="custom"
    )
    assert [t.name for t in fig.data] == ["mlp", "resid"]
    np.testing.assert_allclose(
        np.asarray(fig.data[1].z, dtype=float),
        result.normalized().mean()[:, :, 0].numpy(),
        rtol=1e-6,
    )
    assert "normalised" in fig.layout.coloraxis.colorbar.title.text
    assert fig.layout.title.text == "custom"
    with pytest.raises(ValueError, match="unknown module"):
        plot_tie_heatmaps(result, modules="ffn")


def test_ie_by_later_step(result):
    """One line per fact, a CI band and the mean, over later steps k' >= k."""
    fig = plot_ie_by_later_step(result, 2, 1, "attn", n_resamples=100)
    assert len(fig.data) == result.n_facts + 2
    assert list(fig.data[-1].x) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="layer"):
        plot_ie_by_later_step(result, 9, 0, "attn")


def test_positional():
    """Token rows with the subject starred, one panel per module, shared colour axis."""
    p = PositionalResult.synthetic(n_facts=2, n_layers=3)
    fig = plot_positional(p, fact="f1", modules=["resid", "mlp"])
    assert len(fig.data) == 2 and {t.coloraxis for t in fig.data} == {"coloraxis"}
    assert np.asarray(fig.data[0].z).shape == (6, 3)  # fact f1 has 6 tokens
    ticks = list(fig.layout.yaxis.ticktext)
    assert ticks[1] == "<b>Ada*</b>" and ticks[2] == "<b>Vell*</b>" and ticks[0] == "Where"
    eff = plot_positional(p, effect=True)
    assert eff.layout.coloraxis.cmid == 0


def test_selection_figures(result):
    """Landscape, stability, β trade-off and per-fact optima figures have the expected traces."""
    c = select_coordinate(result, modules=["resid", "attn"])
    land = plot_selection_landscape(c)
    assert [t.type for t in land.data] == ["heatmap", "heatmap", "scatter"]
    assert land.data[-1].x[0] == c.step and land.data[-1].y[0] == c.layer
    stab = plot_selection_stability(selection_stability(result, n_boot=50))
    assert [t.type for t in stab.data] == ["heatmap"] * 3 + ["scatter"]
    other = TIEResult.synthetic(n_facts=2, n_layers=4, n_steps=5, seed=9)
    bt = plot_beta_tradeoff(beta_tradeoff(result, other, [0.0, 1.0, 2.0]))
    assert len(bt.data) == 2 and list(bt.data[0].x) == [0.0, 1.0, 2.0]
    opt = plot_per_fact_optima(per_fact_optima(result))
    assert len(opt.data) == 2 and len(opt.data[1].x) == result.n_facts


def test_save_figure_html_is_atomic(tmp_path, result):
    """HTML is written in place with no temporary file left behind."""
    fig = plot_tie_heatmaps(result, n_resamples=50)
    out = save_figure(fig, tmp_path / "figs" / "fig2.html", include_plotlyjs="cdn")
    assert out == (tmp_path / "figs" / "fig2.html",)
    assert "plotly" in out[0].read_text() and os.listdir(out[0].parent) == ["fig2.html"]
    with pytest.raises(ValueError, match="suffix"):
        save_figure(fig, tmp_path / "nosuffix")
    with pytest.raises(ValueError, match="unknown figure format"):
        save_figure(fig, tmp_path / "x.gif")


def test_static_export_missing_browser_is_a_clear_error(tmp_path, monkeypatch):
    """Without a browser, the probe says False and save_figure names what to install, writing nothing."""
    chromium = pytest.importorskip("choreographer.browsers.chromium")
    monkeypatch.setattr(chromium.Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    monkeypatch.setattr(plotting.shutil, "which", lambda name: None)
    assert static_export_available() is False
    with pytest.raises(StaticExportError, match="apt-get install chromium"):
        save_figure(go.Figure(), tmp_path / "f", formats=("html", "png"))
    assert list(tmp_path.iterdir()) == []


def test_static_export_writes_png_when_available(tmp_path):
    """With kaleido and a browser, a PNG is written (skipped, with the reason, otherwise)."""
    if not static_export_available():
        pytest.skip(plotting._static_export_problem())
    out = save_figure(go.Figure(go.Heatmap(z=[[1, 2]])), tmp_path / "f.png", width=200, height=150)
    assert out[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def partly_known(result) -> TIEResult:
    """``result`` with fact f1 marked as not known to the model."""
    return dataclasses.replace(result, config=dict(result.config, unknown_facts=["f1"]))


def test_tie_heatmaps_average_only_known_facts(partly_known):
    """Mean, CI and hover values cover the known facts; title and hover say '2 known of 3'."""
    r = partly_known
    fig = plot_tie_heatmaps(r, n_resamples=200)
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_allclose(z, r.tie[[0, 2], :, :, 0].mean(0).numpy(), rtol=1e-6)
    text = fig.data[2].text[1][3]
    assert "over 2 known of 3 facts" in text
    assert f"f0: {float(r.tie[0, 1, 3, 2]):.4g}" in text and "f1:" not in text
    assert "2 known of 3 facts" in fig.layout.title.text
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 1 + r.n_facts  # the dropdown still lists every fact …
    assert "(unknown)" in buttons[2].label and "(unknown)" not in buttons[1].label
    unknown_z = np.asarray(buttons[2].args[0]["z"][0], dtype=float)
    np.testing.assert_allclose(unknown_z, r.tie[1, :, :, 0].numpy(), rtol=1e-6)
    assert "not known to the model" in buttons[2].args[0]["text"][0][0][0]  # … marked


def test_ie_by_later_step_mean_over_known_facts(partly_known):
    """The mean line and band average the known facts; the unknown fact's line is dotted."""
    r = partly_known
    fig = plot_ie_by_later_step(r, 2, 1, "attn", n_resamples=100)
    assert len(fig.data) == r.n_facts + 2
    li, si, mi = 2, 1, 1
    np.testing.assert_allclose(
        np.asarray(fig.data[-1].y, dtype=float),
        r.ie[[0, 2], li, si, mi, 1:].mean(0).numpy(),
        rtol=1e-6,
    )
    assert fig.data[1].line.dash == "dot" and "(unknown)" in fig.data[1].name
    assert "2 known of 3 facts" in fig.layout.title.text


def test_tie_heatmaps_of_a_bf16_result(result):
    """A bf16 result (a bf16 trace) plots: NumPy conversion goes through float64 on the CPU."""
    rb = dataclasses.replace(
        result, tie=result.tie.to(torch.bfloat16), ie=result.ie.to(torch.bfloat16)
    )
    fig = plot_tie_heatmaps(rb, n_resamples=100)
    np.testing.assert_allclose(
        np.asarray(fig.data[0].z, dtype=float), result.tie.mean(0)[:, :, 0].numpy(), atol=0.02
    )
    assert len(plot_ie_by_later_step(rb, 2, 0, "resid", n_resamples=50).data) == rb.n_facts + 2
