"""Plotting: figure structure (panels, shared colour axis, hovers, dropdown), commit-aware
marks (idle steps, object-commit steps, CI crossing 0), trajectory views and save_figure."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from tie_tracing.analysis.figure2 import cluster_bootstrap_ci
from tie_tracing.analysis.selection import select_coordinate
from tie_tracing.analysis.stats import (
    beta_tradeoff,
    per_fact_optima,
    selection_stability,
)
from tie_tracing.core.results import Coordinate, PositionalResult, TIEResult
from tie_tracing.core.sampler import DiffusionResult
from tie_tracing.figures import plotting
from tie_tracing.figures.plotting import (
    DIVERGING,
    SEQUENTIAL,
    StaticExportError,
    plot_beta_tradeoff,
    plot_ie_by_later_step,
    plot_per_fact_optima,
    plot_positional,
    plot_selection_landscape,
    plot_selection_stability,
    plot_tie_heatmaps,
    plot_trajectory,
    save_figure,
    static_export_available,
    trajectory_table,
)


@pytest.fixture(scope="module")
def result() -> TIEResult:
    return TIEResult.synthetic(n_facts=3, n_layers=4, n_steps=5)


PANEL_TITLES = ["residual stream", "attention output", "MLP output"]


def test_tie_heatmaps_structure(result):
    """One heatmap per module on one shared diverging colour axis centred at 0, panels titled
    by module; then one idle overlay and one CI-marker trace per panel, the star, the commit
    legend line and one "zero by architecture" overlay per panel."""
    fig = plot_tie_heatmaps(result, n_resamples=200)
    assert isinstance(fig, go.Figure)
    assert [t.type for t in fig.data] == ["heatmap"] * 6 + ["scatter"] * 5 + ["heatmap"] * 3
    assert [t.name for t in fig.data[:9]] == ["resid", "attn", "mlp"] + ["idle step"] * 3 + [
        "95% CI crosses 0"
    ] * 3
    assert fig.data[9].name.startswith("Eq. 5 cell")
    assert fig.data[10].name == "object commit step (clean run)"
    assert {t.coloraxis for t in fig.data[:3]} == {"coloraxis"}
    assert {t.coloraxis for t in fig.data[3:6]} == {None}  # the grey overlay is not on it
    assert fig.layout.coloraxis.cmid == 0
    assert [a.text for a in fig.layout.annotations if not a.name] == PANEL_TITLES
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
    assert (
        len(fact2["z"]) == 14
    )  # 3 heatmaps, 3 idle overlays, None for the 5 scatters, 3 zero overlays
    assert fact2["z"][6:11] == [None] * 5
    np.testing.assert_allclose(
        np.asarray(fact2["z"][1], dtype=float), result.tie[2, :, :, 1].numpy(), rtol=1e-6
    )
    assert "f2" in fact2["text"][0][0][0]


def test_tie_heatmaps_modules_and_normalised_view(result):
    """modules= picks panels; normalized=True plots the normalised result."""
    fig = plot_tie_heatmaps(
        result, modules=["mlp", "resid"], normalized=True, n_resamples=100, title="custom"
    )
    assert [t.name for t in fig.data[:2]] == ["mlp", "resid"]
    assert [a.text for a in fig.layout.annotations if not a.name] == [
        "MLP output",
        "residual stream",
    ]
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
    out = save_figure(fig, tmp_path / "figs" / "fig2.html")
    assert out == (tmp_path / "figs" / "fig2.html",)
    assert "plotly" in out[0].read_text() and os.listdir(out[0].parent) == ["fig2.html"]
    with pytest.raises(ValueError, match="suffix"):
        save_figure(fig, tmp_path / "nosuffix")
    with pytest.raises(ValueError, match="unknown figure format"):
        save_figure(fig, tmp_path / "x.gif")


@pytest.mark.parametrize("option", ["cdn", "https://cdn.plot.ly/plotly-3.0.1.min.js", False])
def test_save_figure_refuses_html_that_is_blank_offline(tmp_path, option):
    """Options that load plotly.js from the network, or not at all, are refused by name and
    nothing is written."""
    with pytest.raises(ValueError, match="blank offline"):
        save_figure(go.Figure(), tmp_path / "x.html", include_plotlyjs=option)
    assert not list(tmp_path.iterdir())


def test_committed_figures_open_offline():
    """No HTML in figures/ loads a script from the network, and every local script it loads
    (plotly.min.js) is there beside it."""
    import re
    from pathlib import Path

    figures = Path(__file__).resolve().parents[2] / "figures"
    pages = sorted(figures.glob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert plotting.network_scripts(text) == [], page.name
        for src in re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", text):
            assert (page.parent / src).is_file(), (page.name, src)


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
    assert "(2 known of 3 facts)" in text
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


# ----------------------------------------------------------------------------- commit-aware


@pytest.fixture(scope="module")
def staggered() -> TIEResult:
    """Three facts with one-token objects at answer positions 1, 2 and 0, ``target="object"``.

    The synthetic clean run commits answer positions 0, 1, 2 at steps 0, 2, 5 (T = 8), so the
    objects are committed at steps 2, 5 and 0 and the facts' idle steps differ (3…7, 6…7,
    1…7). Noise draw 1 commits position 2 early, at step 3.
    """
    base = TIEResult.synthetic(n_facts=3, n_layers=4, n_steps=8, n_noise=2, seed=3)
    obj = torch.zeros(3, 3, dtype=torch.bool)
    obj[0, 1] = obj[1, 2] = obj[2, 0] = True
    corrupt = base.corrupt_tokens.clone()
    corrupt[:, 1, 3:5, 2] = base.clean_tokens[:, -1, 2][:, None]
    return dataclasses.replace(
        base,
        object_mask=obj,
        target_mask=obj.clone(),
        corrupt_tokens=corrupt,
        config=dict(base.config, target="object"),
    )


def _greyed(z) -> np.ndarray:
    return ~np.isnan(np.asarray(z, dtype=float))


def test_tie_heatmaps_grey_exactly_each_facts_idle_steps(staggered):
    """A fact's view greys (in every panel, every layer) exactly that fact's idle steps; the
    mean view greys the steps idle for every fact."""
    r = staggered
    idle = r.idle_steps.numpy()
    assert idle[:, 2:].tolist() != [idle[0, 2:].tolist()] * 3  # the facts really differ
    fig = plot_tie_heatmaps(r, n_resamples=100)
    buttons = fig.layout.updatemenus[0].buttons
    for f in range(r.n_facts):
        overlays = buttons[1 + f].args[0]["z"][3:6]
        for z in overlays:
            expected = np.broadcast_to(idle[f][list(r.steps)], (len(r.layers), len(r.steps)))
            np.testing.assert_array_equal(_greyed(z), expected)
    every = idle.all(0)
    assert every.tolist() == [False] * 6 + [True] * 2
    for z in [*buttons[0].args[0]["z"][3:6], *(t.z for t in fig.data[3:6])]:
        np.testing.assert_array_equal(_greyed(z)[0], every)
    hover = buttons[1].args[0]["text"][3][0][7]  # fact f0, resid overlay, layer 0, step 7
    assert "idle step (this fact)" in hover and "TIE is 0 exactly (lp='frozen')" in hover
    assert buttons[1].args[0]["text"][3][0][2] == ""  # step 2 is not idle for f0


def test_tie_heatmaps_outline_object_commit_steps(staggered):
    """Each fact's view outlines its object-commit column in every panel; the mean view
    outlines every commit step and lists the distribution."""
    r = staggered
    assert r.object_commit_step.tolist() == [2, 5, 0]
    fig = plot_tie_heatmaps(r, n_resamples=100)
    buttons = fig.layout.updatemenus[0].buttons
    for f, step in enumerate(r.object_commit_step.tolist()):
        shapes = [s for s in buttons[1 + f].args[1]["shapes"] if s["name"] == "object commit"]
        assert [(s["x0"], s["x1"]) for s in shapes] == [(step - 0.5, step + 0.5)] * 3
        assert [s["xref"] for s in shapes] == ["x", "x2", "x3"]
        assert f"object committed at step {step}" in buttons[1 + f].args[1]["title.subtitle.text"]
    mean_steps = sorted({s.x0 + 0.5 for s in fig.layout.shapes if s.name == "object commit"})
    assert mean_steps == [0, 2, 5]
    assert buttons[0].args[1]["shapes"] == [s.to_plotly_json() for s in fig.layout.shapes]
    assert "object committed (clean run): step 0 ×1, step 2 ×1, step 5 ×1" in (
        fig.layout.title.subtitle.text
    )


def test_tie_heatmaps_mark_cells_whose_ci_crosses_zero(staggered):
    """The "95% CI crosses 0" markers sit exactly on the cells with low < 0 < high of the
    bootstrap over people, and only the mean view shows them."""
    r = staggered
    fig = plot_tie_heatmaps(r, n_resamples=300, seed=4, min_ci_facts=3)
    low, high = cluster_bootstrap_ci(r.tie, r.subjects, n_resamples=300, seed=4)
    crosses = ((low < 0) & (high > 0)).numpy()
    assert 0 < crosses.sum() < crosses.size  # the test can tell markers from no markers
    for mi, trace in enumerate(fig.data[6:9]):
        marked = set(zip(trace.y, trace.x))
        expected = {(r.layers[li], r.steps[si]) for li, si in zip(*np.nonzero(crosses[:, :, mi]))}
        assert marked == expected
    assert sum(bool(t.showlegend) for t in fig.data[6:9]) == 1
    buttons = fig.layout.updatemenus[0].buttons
    assert buttons[0].args[0]["visible"] == [True] * 14
    assert all(b.args[0]["visible"] == [True] * 6 + [False] * 3 + [True] * 5 for b in buttons[1:])


def test_tie_heatmaps_title_states_provenance(staggered):
    """Title and subtitle state facts, noise draws, seed, lp, target, γ and model; a caller's
    title keeps the subtitle."""
    r = dataclasses.replace(staggered, config=dict(staggered.config, unknown_facts=["f1"]))
    fig = plot_tie_heatmaps(r, n_resamples=100)
    text = fig.layout.title.text + " " + fig.layout.title.subtitle.text
    for part in (
        "2 known of 3 facts",
        "2 noise draws",
        "seed 3",
        "lp=frozen",
        "target=object",
        "γ=0.5",
        "synthetic",
    ):
        assert part in text, part
    custom = plot_tie_heatmaps(r, n_resamples=100, title="My figure")
    assert custom.layout.title.text == "My figure"
    assert "lp=frozen · target=object" in custom.layout.title.subtitle.text
    assert "2 noise draws · seed 3" in custom.layout.title.subtitle.text
    fact_view = custom.layout.updatemenus[0].buttons[2].args[1]
    assert fact_view["title.text"].startswith("TIE (nats), fact f1")  # names its fact
    assert "target=object" in fact_view["title.subtitle.text"]


def test_tie_heatmaps_without_commit_maps(result):
    """A result that records no mask id (made before commit maps) plots without marks."""
    config = {k: v for k, v in result.config.items() if k != "mask_token_id"}
    fig = plot_tie_heatmaps(dataclasses.replace(result, config=config), n_resamples=50)
    assert not any(_greyed(t.z).any() for t in fig.data[3:6])
    assert not fig.layout.shapes
    assert "no commit maps recorded" in fig.layout.title.subtitle.text


# ----------------------------------------------------------------------------- colours


def _scale(name) -> tuple:
    return tuple(go.Heatmap(colorscale=name).colorscale)


def test_signed_figures_share_one_diverging_scale_red_positive(result):
    """Every signed figure uses DIVERGING (blue low, red high) centred at 0; a never-negative
    score uses SEQUENTIAL from 0."""
    first, last = _scale(DIVERGING)[0][1], _scale(DIVERGING)[-1][1]

    def rgb(c: str) -> list[int]:
        return [int(v) for v in c[c.index("(") + 1 : -1].split(",")]

    assert rgb(first)[2] > rgb(first)[0] and rgb(last)[0] > rgb(last)[2]  # blue → red
    heat = plot_tie_heatmaps(result, n_resamples=50)
    assert tuple(heat.layout.coloraxis.colorscale) == _scale(DIVERGING)
    assert heat.layout.coloraxis.cmid == 0
    eff = plot_positional(PositionalResult.synthetic(n_facts=2), effect=True)
    assert (
        tuple(eff.layout.coloraxis.colorscale) == _scale(DIVERGING)
        and eff.layout.coloraxis.cmid == 0
    )
    ie = plot_ie_by_later_step(result, 2, 0, "resid", n_resamples=50)
    assert (
        tuple(ie.data[-1].marker.colorscale) == _scale(DIVERGING) and ie.data[-1].marker.cmid == 0
    )
    tie_line = [s for s in ie.layout.shapes if s.line.dash == "dash"][0]
    mean_tie = float(result.tie[:, 2, 0, 0].mean())
    assert mean_tie > 0 and tie_line.line.color == plotting.POSITIVE_COLOUR
    scores = torch.arange(24, dtype=torch.float32).reshape(4, 2, 3) - 5.0  # some negative
    signed = Coordinate(
        layer=3,
        step=1,
        module="mlp",
        score=18.0,
        scores=scores,
        beta=1.0,
        layers=(0, 1, 2, 3),
        steps=(0, 1),
        modules=("resid", "attn", "mlp"),
    )
    land = plot_selection_landscape(signed)
    assert tuple(land.layout.coloraxis.colorscale) == _scale(DIVERGING)
    assert land.layout.coloraxis.cmid == 0
    plain = plot_selection_landscape(select_coordinate(result))  # β = 0: mean |TIE| ≥ 0
    assert tuple(plain.layout.coloraxis.colorscale) == _scale(SEQUENTIAL)
    assert plain.layout.coloraxis.cmin == 0


# ----------------------------------------------------------------------------- trajectories


class _Tokenizer:
    """Decodes id ``i`` as ``"w<i>"``."""

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(f"w{int(i)}" for i in ids)


def test_trajectory_table_agrees_with_commit_map(staggered):
    """Rows are commit_map's rows (clean and a noise draw) plus the decoded token."""
    r = staggered
    for fact, traj in (("f0", "clean"), (1, "clean"), (1, 1), (2, 0)):
        table = trajectory_table(r, fact=fact, trajectory=traj, tokenizer=_Tokenizer())
        cmap = r.commit_map(fact, traj)
        assert [{k: row[k] for k in cmap[0]} for row in table] == cmap
        assert [row["text"] for row in table] == [f"w{row['token']}" for row in cmap]
    assert [row["step"] for row in trajectory_table(r, 1, 1)] == [0, 2, 3]  # draw 1: early
    assert [row["object"] for row in trajectory_table(r, 1)] == [False, False, True]
    assert [row["text"] for row in trajectory_table(r, 0)] == [
        str(t) for t in r.clean_tokens[0, -1].tolist()
    ]


def test_trajectory_table_as_frame(staggered):
    """as_frame=True gives a DataFrame with the same rows (or a clear ImportError)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            trajectory_table(staggered, as_frame=True)
        return
    frame = trajectory_table(staggered, 1, as_frame=True)
    assert frame.to_dict("records") == trajectory_table(staggered, 1)


def test_plot_trajectory_highlights_exactly_the_object(staggered):
    """Object cells (z = 2) are exactly the object positions from their commit step on; their
    row labels, and only theirs, are bold; the object-commit column is outlined."""
    r = staggered
    for f in range(r.n_facts):
        fig = plot_trajectory(r, fact=f, tokenizer=_Tokenizer())
        z = np.asarray(fig.data[0].z)
        rows = r.commit_map(f)
        for row in rows:
            p, c = row["position"], row["step"]
            expected = [(2 if row["object"] else 1) if k >= c else 0 for k in range(8)]
            assert z[p].tolist() == expected
            assert fig.data[0].text[p][c] == f"<b>w{row['token']}</b>"
            if c > 0:
                assert fig.data[0].text[p][c - 1] == ""  # still masked before its step
        bold = [t.startswith("<b>") for t in fig.layout.yaxis.ticktext]
        assert bold == r.object_mask[f].tolist()
        outline = [s for s in fig.layout.shapes if s.name == "object commit"]
        assert [s.x0 + 0.5 for s in outline] == [int(r.object_commit_step[f])]
        assert r.questions[f] in fig.layout.title.text and r.answers[f] in fig.layout.title.text


@pytest.fixture(scope="module")
def sampled() -> DiffusionResult:
    """A hand-made tt.diffuse result: row 0 a fact (object at answer offsets 0 and 2), row 1 a
    plain prompt; mask id 3, T = 4."""
    tokens = torch.full((2, 4, 5), -1, dtype=torch.long)
    tokens[0, :, :2] = torch.tensor([10, 11])
    tokens[0, :, 2:] = torch.tensor([[3, 20, 3], [3, 20, 21], [22, 20, 21], [22, 20, 21]])
    tokens[1, :, :1] = 12
    tokens[1, :, 1:3] = torch.tensor([[3, 3], [30, 3], [30, 3], [30, 31]])
    return DiffusionResult(
        answers=["w22 w20 w21", "w30 w31"],
        tokens=tokens,
        target_logprobs=None,
        prompt_lengths=(2, 1),
        answer_lengths=(3, 2),
        config=dict(mask_token_id=3, target="answer", lp="frozen", steps=4),
        object_offsets=((0, 2), ()),
    )


def test_trajectory_of_a_diffuse_run(sampled):
    """A DiffusionResult row gives its commit map, object and question (decoded prompt)."""
    table = trajectory_table(sampled, fact=0, tokenizer=_Tokenizer())
    assert [row["step"] for row in table] == sampled.commits(0).tolist() == [2, 0, 1]
    assert [row["object"] for row in table] == [True, False, True]
    assert [row["text"] for row in table] == ["w22", "w20", "w21"]
    assert all(row["target"] for row in table)
    fig = plot_trajectory(sampled, 0, tokenizer=_Tokenizer())
    assert [s.x0 + 0.5 for s in fig.layout.shapes] == [sampled.object_commit_step(0)] == [2]
    assert "row 0: w10 w11 → w22 w20 w21" in fig.layout.title.text
    np.testing.assert_array_equal(np.asarray(fig.data[0].z)[:, 3], [2, 1, 2])
    plain = plot_trajectory(sampled, 1)
    assert not plain.layout.shapes and "no object recorded" in plain.layout.title.subtitle.text
    assert [row["step"] for row in trajectory_table(sampled, 1)] == [1, 3]


def test_trajectory_bad_inputs_are_clear_errors(staggered, sampled):
    """Bad fact index / id, trajectory, row, result type and tokenizer raise named errors."""
    with pytest.raises(IndexError, match="out of range"):
        plot_trajectory(staggered, fact=7)
    with pytest.raises(KeyError, match="no fact with id 'nope'"):
        trajectory_table(staggered, fact="nope")
    for bad in ("corrupt", 2, -1, True):
        with pytest.raises(ValueError, match="trajectory must be 'clean' or a noise draw"):
            trajectory_table(staggered, trajectory=bad)
    with pytest.raises(TypeError, match="by int index"):
        plot_trajectory(sampled, fact="f0")
    with pytest.raises(IndexError, match="row 2 out of range"):
        trajectory_table(sampled, fact=2)
    with pytest.raises(ValueError, match="one sampled trajectory per row"):
        trajectory_table(sampled, fact=0, trajectory=0)
    with pytest.raises(TypeError, match="TIEResult or a DiffusionResult"):
        plot_trajectory(PositionalResult.synthetic())
    with pytest.raises(TypeError, match="decode"):
        trajectory_table(staggered, tokenizer=object())


def test_directory_html_opens_offline(tmp_path):
    """include_plotlyjs="directory" writes plotly.min.js once beside the html and the html loads it."""
    from tie_tracing.figures.plotting import save_figure

    fig = plotting.plot_tie_heatmaps(TIEResult.synthetic(n_facts=2), n_resamples=50)
    first = save_figure(fig, tmp_path / "a.html", include_plotlyjs="directory")
    second = save_figure(fig, tmp_path / "b.html", include_plotlyjs="directory")
    assert [p.name for p in first] == ["plotly.min.js", "a.html"]
    assert [p.name for p in second] == ["b.html"]  # the bundle is already there
    html = (tmp_path / "a.html").read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def test_notebook_figures_add_a_static_rendering_when_it_works():
    """notebook_figures() keeps the interactive renderer and adds PNG when kaleido renders;
    static=False keeps only the interactive one; figures then carry image/png. (Outside a
    notebook kernel the plotly.js-injecting ``notebook`` renderer is left out.)"""
    import plotly.io as pio

    from tie_tracing.figures.plotting import _static_render_works, notebook_figures

    before = pio.renderers.default
    try:
        assert notebook_figures(static=False) == "plotly_mimetype"
        assert pio.renderers.default == "plotly_mimetype"
        with pytest.raises(ValueError, match="fmt"):
            notebook_figures(fmt="gif")
        chosen = notebook_figures()
        works = _static_render_works("png")
        assert chosen == "plotly_mimetype" + ("+png" if works else "")
        if works:
            bundle = pio._renderers.renderers._build_mime_bundle(go.Figure().to_dict())
            assert "image/png" in bundle
    finally:
        pio.renderers.default = before


# ----------------------------------------------------------------------------- Figure 2 reads itself


@pytest.fixture(scope="module")
def six() -> TIEResult:
    """Six facts of six subjects: enough for Figure 2 to draw CI marks."""
    base = TIEResult.synthetic(n_facts=6, n_layers=4, n_steps=5, seed=2)
    return dataclasses.replace(base, subjects=tuple(f"person {i}" for i in range(6)))


def test_tie_heatmaps_star_the_eq5_cell_in_every_view(six):
    """A gold star sits on select_coordinate's cell, in its module's panel, in every view."""
    fig = plot_tie_heatmaps(six, n_resamples=100)
    best = select_coordinate(six)
    star = fig.data[9]
    assert (list(star.x), list(star.y)) == ([best.step], [best.layer])
    assert star.xaxis == (
        "x" if best.module == "resid" else f"x{1 + six.modules.index(best.module)}"
    )
    assert star.name == f"Eq. 5 cell (layer {best.layer}, step {best.step}, {best.module})"
    assert all(b.args[0]["visible"][9] for b in fig.layout.updatemenus[0].buttons)
    only_mlp = plot_tie_heatmaps(six, modules="mlp", n_resamples=50).data[3]
    assert only_mlp.name.endswith("mlp)")  # the cell among the modules shown


def test_tie_heatmaps_every_mark_has_a_legend_entry(staggered, six):
    """Idle steps, CI circles, the Eq. 5 star and the commit outline each have a legend entry."""
    fig = plot_tie_heatmaps(
        dataclasses.replace(staggered, subjects=("a", "b", "c")), n_resamples=300, seed=4,
        min_ci_facts=3,
    )  # fmt: skip
    named = {t.name.split(" (")[0] for t in fig.data if t.showlegend}
    assert named == {"idle step", "95% CI crosses 0", "Eq. 5 cell", "object commit step"}


def test_tie_heatmaps_state_the_colour_and_keep_its_range(six):
    """The figure says what the colour means (unit, sign, target) and keeps one symmetric
    range, the largest |value| of any view, that no dropdown view changes."""
    fig = plot_tie_heatmaps(six, n_resamples=50)
    key = next(a.text for a in fig.layout.annotations if a.name == "colour key")
    assert "TIE (nats)" in key and "Red (+)" in key and "raises the answer's log-probability" in key
    assert "same scale" in key
    largest = max(float(six.tie.abs().max()), float(six.mean().abs().max()))
    assert fig.layout.coloraxis.cmax == pytest.approx(largest)
    assert fig.layout.coloraxis.cmin == pytest.approx(-largest)
    for b in fig.layout.updatemenus[0].buttons:
        assert not any(k.startswith("coloraxis") for k in b.args[1])
    obj = plot_tie_heatmaps(
        dataclasses.replace(six, config=dict(six.config, target="object")), n_resamples=50
    )
    assert "the object's log-probability" in obj.layout.annotations[-1].text


def test_tie_heatmaps_title_follows_the_dropdown(six):
    """Each fact's view is titled with that fact (and its draws are not called facts)."""
    fig = plot_tie_heatmaps(six, n_resamples=50, title="Figure 2 — 6 facts × 1 noise draw")
    buttons = fig.layout.updatemenus[0].buttons
    assert buttons[0].args[1]["title.text"] == "Figure 2 — 6 facts × 1 noise draw"
    for f, b in enumerate(buttons[1:]):
        title = b.args[1]["title.text"]
        assert f"fact {six.fact_ids[f]}" in title and "6 facts" not in title


def test_tie_heatmaps_say_when_too_few_facts_for_a_ci(staggered, six):
    """Under MIN_CI_FACTS facts, or facts of fewer people, no cell is circled and a note says
    why (the CI resamples people)."""
    assert staggered.n_facts < plotting.MIN_CI_FACTS
    fig = plot_tie_heatmaps(staggered, n_resamples=100)
    assert all(len(t.x) == 0 for t in fig.data[6:9])
    note = next(a.text for a in fig.layout.annotations if a.name == "CI note")
    assert "3 facts" in note and "fewer than 5" in note
    assert "too few facts or people" in fig.data[0].text[0][0]
    one_person = dataclasses.replace(six, subjects=("ada vell",) * 6)
    fig = plot_tie_heatmaps(one_person, n_resamples=100)
    note = next(a.text for a in fig.layout.annotations if a.name == "CI note")
    assert "6 facts of 1 subject" in note and "resamples people" in note
    assert all(len(t.x) == 0 for t in fig.data[6:9])
    assert not any(
        a.name == "CI note" for a in plot_tie_heatmaps(six, n_resamples=100).layout.annotations
    )


def test_figures_fit_a_notebook_column(result, six):
    """No figure of the package fixes a width over a 1280 px notebook column."""
    from tie_tracing.figures.compare import plot_ar_vs_diffusion

    pos = PositionalResult.synthetic(n_facts=3)
    figures = [
        plot_tie_heatmaps(six, n_resamples=50),
        plot_ie_by_later_step(result, 2, 1, "attn", n_resamples=50),
        plot_positional(pos),
        plot_trajectory(result),
        plot_selection_landscape(select_coordinate(result)),
        plot_selection_stability(selection_stability(result, n_boot=20)),
        plot_per_fact_optima(per_fact_optima(result)),
        plot_ar_vs_diffusion(pos, pos, TIEResult.synthetic(n_facts=3), module="mlp"),
    ]
    for fig in figures:
        assert fig.layout.width is None or fig.layout.width <= plotting.MAX_FIGURE_WIDTH


def test_tie_heatmaps_mark_structural_zeros_instead_of_drawing_them(six):
    """Sites recorded zero by architecture are not drawn as values (NaN in the heatmaps, in
    every view) and carry a "zero by architecture" overlay with the reason in its hover."""
    zeros = {fid: [[3, "resid"], [3, "attn"], [3, "mlp"]] for fid in six.fact_ids}
    r = dataclasses.replace(six, config=six.config | {"structural_zeros": zeros})
    fig = plot_tie_heatmaps(r, n_resamples=50)
    for mi in range(3):
        assert np.isnan(np.asarray(fig.data[mi].z, dtype=float)[3]).all()
        assert not np.isnan(np.asarray(fig.data[mi].z, dtype=float)[2]).any()
    overlays = [t for t in fig.data if t.name == "zero by architecture"]
    assert len(overlays) == 3 and sum(bool(t.showlegend) for t in overlays) == 1
    assert "reaches no answer position" in overlays[0].text[3][0] and overlays[0].text[2][0] == ""
    for b in fig.layout.updatemenus[0].buttons[1:]:
        assert np.isnan(np.asarray(b.args[0]["z"][0], dtype=float)[3]).all()
    plain = plot_tie_heatmaps(six, n_resamples=50)
    assert not any(t.showlegend for t in plain.data if t.name == "zero by architecture")
