"""Figure 2's companion views: what Eq. 4 hides, drawn from
:func:`~tie_tracing.analysis.figure2.figure2_data` (SPEC §5, §10.1).

:func:`plot_figure2` draws, for one site (``resid`` by default), one panel per view in a
grid: the Eq. 4 map of the traced target, the **contrast** object − name (when a
name-target trace was given), the **final-answer effect** ``IE_{T−1}``, the **immediate part**
(``k' = k``) of Eq. 4, and the **commit-aligned** Eq. 4 and final-answer maps (step axis
relative to each fact's object commit). Every number comes from the analysis layer; the
functions here only draw, one per panel kind:

* :func:`_map_panel` — a heatmap of a :class:`~tie_tracing.analysis.figure2.MapStats` mean
  with its own symmetric diverging colour axis, the hover giving the mean, the 95% CI over
  people and the number of facts;
* :func:`_ci_marks` — open circles on the cells whose CI over people crosses 0;
* :func:`_idle_marks` — grey columns over the steps idle for every averaged fact;
* :func:`_structural_marks` — the sites zero by architecture, hatched grey with an "×" and
  the reason in the hover, instead of drawn as measured zeros;
* :func:`_commit_marks` — dashed columns at the object-commit steps (unaligned panels) or at
  relative step 0 (aligned panels);
* :func:`_eq5_mark` — the Eq. 5 cell (β = 0, the traced target) as a gold star.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.figure2 import Figure2Data, MapStats
from .plotting import (
    COMMIT_LINE,
    DIVERGING,
    IDLE_GREY,
    MIN_CI_FACTS,
    MODULE_TITLES,
    STRUCTURAL_GREY,
)

__all__ = ["PANELS", "plot_figure2"]

#: The views of :func:`plot_figure2`, in drawing order: key of ``Figure2Data.maps`` → title.
PANELS: dict[str, str] = {
    "tie": "TIE (Eq. 4), {target} target",
    "contrast": "contrast: object − name TIE",
    "final": "final-answer effect IE(T−1)",
    "immediate": "immediate part of Eq. 4 (k′ = k)",
    "aligned": "TIE, steps relative to object commit",
    "aligned_final": "IE(T−1), steps relative to object commit",
}


def _fmt(v: float) -> str:
    return "NaN" if v != v else f"{v:.3g}"


def _zmax(stats: MapStats, mi: int, structural: np.ndarray) -> float:
    z = stats.mean[:, :, mi].numpy().copy()
    z[structural] = np.nan
    z = np.abs(z[np.isfinite(z)])
    return float(z.max()) if z.size and z.max() > 0 else 1.0


def _map_panel(
    fig: go.Figure,
    stats: MapStats,
    data: Figure2Data,
    mi: int,
    *,
    row: int,
    col: int,
    axis: str,
    colorbar: dict[str, Any],
) -> None:
    """The mean map of one view on its own colour axis (structural-zero layers left blank;
    :func:`_structural_marks` covers them)."""
    z = stats.mean[:, :, mi].numpy().copy()
    structural = data.structural[:, mi].numpy()
    z[structural] = np.nan
    zmax = _zmax(stats, mi, structural)
    text = [
        [
            f"layer {layer}, step {step}<br>{stats.name}: {_fmt(stats.mean[li, si, mi].item())} "
            f"nats<br>95% CI over people [{_fmt(stats.low[li, si, mi].item())}, "
            f"{_fmt(stats.high[li, si, mi].item())}]<br>"
            f"{int(stats.n_facts[li, si, mi])} facts of {data.n_people} people"
            for si, step in enumerate(stats.steps)
        ]
        for li, layer in enumerate(data.layers)
    ]
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=list(stats.steps),
            y=list(data.layers),
            text=text,
            hovertemplate="%{text}<extra></extra>",
            hoverongaps=False,
            coloraxis=axis,
            name=stats.name,
        ),
        row=row,
        col=col,
    )
    fig.layout[axis] = dict(
        colorscale=DIVERGING, cmid=0.0, cmin=-zmax, cmax=zmax, colorbar=colorbar
    )


def _ci_marks(
    fig: go.Figure, stats: MapStats, data: Figure2Data, mi: int, *, row: int, col: int, first: bool
) -> bool:
    """Open circles on the cells whose 95% CI over people crosses 0; returns whether any."""
    crosses = stats.crosses_zero[:, :, mi].numpy() & ~data.structural[:, mi].numpy()[:, None]
    li, si = np.nonzero(crosses)
    fig.add_trace(
        go.Scatter(
            x=[stats.steps[s] for s in si],
            y=[data.layers[la] for la in li],
            mode="markers",
            marker=dict(symbol="circle-open", size=7, color="black", line=dict(width=1)),
            name="95% CI over people crosses 0",
            legendgroup="ci",
            showlegend=first and len(li) > 0,
            hoverinfo="skip",
        ),
        row=row,
        col=col,
    )
    return len(li) > 0


def _structural_marks(
    fig: go.Figure,
    data: Figure2Data,
    steps: tuple[int, ...],
    mi: int,
    *,
    row: int,
    col: int,
    first: bool,
) -> None:
    """The layers whose site is zero by architecture at the subject positions: a grey band
    with an "×" per cell and the reason in the hover (not a measurement)."""
    layers = [data.layers[i] for i in np.nonzero(data.structural[:, mi].numpy())[0]]
    why = (
        "zero by architecture: this block's output at the subject positions reaches no "
        "answer position (final norm and LM head act per position); not a measurement"
    )
    fig.add_trace(
        go.Heatmap(
            z=[[1.0] * len(steps) for _ in layers],
            x=list(steps),
            y=layers,
            colorscale=[[0.0, STRUCTURAL_GREY], [1.0, STRUCTURAL_GREY]],
            showscale=False,
            zmin=0.0,
            zmax=1.0,
            text=[[f"layer {layer}, step {s}: {why}" for s in steps] for layer in layers],
            hovertemplate="%{text}<extra></extra>",
            name="zero by architecture",
            legendgroup="structural",
            showlegend=first and bool(layers),
        ),
        row=row,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=[s for _ in layers for s in steps],
            y=[layer for layer in layers for _ in steps],
            mode="markers",
            marker=dict(symbol="x-thin", size=8, line=dict(width=1, color="white")),
            legendgroup="structural",
            showlegend=False,
            hoverinfo="skip",
            name="zero by architecture",
        ),
        row=row,
        col=col,
    )


def _idle_marks(
    fig: go.Figure, data: Figure2Data, steps: tuple[int, ...], *, row: int, col: int, first: bool
) -> None:
    """Grey columns over the steps idle for every averaged fact (no masked target position
    left, so nothing is decided there; 0 exactly under ``lp="frozen"``)."""
    idle = [s for s, on in zip(steps, data.idle.tolist()) if on]
    layers = list(data.layers)
    fig.add_trace(
        go.Heatmap(
            z=[[1.0] * len(idle) for _ in layers],
            x=idle,
            y=layers,
            colorscale=[[0.0, IDLE_GREY], [1.0, IDLE_GREY]],
            showscale=False,
            zmin=0.0,
            zmax=1.0,
            opacity=0.75,
            text=[
                [f"step {s}: idle for every fact (no masked target position left)" for s in idle]
                for _ in layers
            ],
            hovertemplate="%{text}<extra></extra>",
            name="idle step",
            legendgroup="idle",
            showlegend=first and bool(idle),
        ),
        row=row,
        col=col,
    )


def _commit_marks(
    fig: go.Figure, steps: list[int], counts: dict[int, int], *, row: int, col: int
) -> None:
    """Dashed outlines of the columns at ``steps`` (width grows with ``counts``)."""
    total = sum(counts.values()) or 1
    for s in steps:
        fig.add_shape(
            type="rect",
            name="object commit",
            x0=s - 0.5,
            x1=s + 0.5,
            y0=0,
            y1=1,
            yref="y domain",
            line=dict(
                color=COMMIT_LINE, width=1.0 + 2.0 * counts.get(s, total) / total, dash="dash"
            ),
            fillcolor="rgba(0,0,0,0)",
            layer="above",
            row=row,
            col=col,
        )


def _eq5_mark(
    fig: go.Figure, stats: MapStats, data: Figure2Data, mi: int, *, row: int, col: int
) -> None:
    """The Eq. 5 cell (β = 0) of this site: max mean |TIE| over people's facts."""
    score = stats.per_fact[:, :, :, mi].abs().nanmean(0).numpy().copy()
    score[data.structural[:, mi].numpy()] = np.nan
    if not np.isfinite(score).any():
        return
    li, si = np.unravel_index(np.nanargmax(score), score.shape)
    label = f"Eq. 5 cell of this site (layer {data.layers[li]}, step {stats.steps[si]})"
    fig.add_trace(
        go.Scatter(
            x=[stats.steps[si]],
            y=[data.layers[li]],
            mode="markers",
            marker=dict(symbol="star", size=15, color="gold", line=dict(color="black", width=1)),
            name=label,
            text=[label],
            hovertemplate="%{text}<extra></extra>",
        ),
        row=row,
        col=col,
    )


def _caption(data: Figure2Data, module: str) -> str:
    """What the figure shows, in numbers: contrast, final-answer effect, immediate share."""
    s = data.summary(module)
    parts = []
    if "tie" in s:
        t = s["tie"]
        parts.append(
            f"the mean Eq. 4 map ({data.target}) is largest at layer {t['layer']}, step {t['step']}: "
            f"{t['mean']:.2f} nats [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}]"
        )
    if "contrast" in s:
        c = s["contrast"]
        parts.append(
            f"object − name contrast peaks at layer {c['layer']}, step {c['step']}: "
            f"{c['mean']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"
        )
    if "aligned_final" in s:
        f = s["aligned_final"]
        parts.append(
            f"final-answer effect peaks at commit{f['step']:+d} (layer {f['layer']}): "
            f"{f['mean']:.2f} nats [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}]"
        )
    share = data.immediate_share
    if share == share:
        parts.append(f"{share:.0%} of |TIE| is the patched forward's own effect (k′ = k)")
    if s["structural_zero_layers"]:
        parts.append(f"layer(s) {s['structural_zero_layers']} zero by architecture")
    return "<br>".join(html.escape(p, quote=False) for p in parts) + "."


def plot_figure2(
    data: Figure2Data,
    *,
    module: str = "resid",
    title: str | None = None,
    min_ci_people: int = MIN_CI_FACTS,
) -> go.Figure:
    """Figure 2's views of one site side by side (see the module docstring).

    Panels in :data:`PANELS` order, those whose map ``data`` holds (the contrast needs a
    name-target trace), three per row; each has its own symmetric diverging colour axis
    (red: restoring the clean state there raises the target's log-probability). Hovers give
    the mean, the 95% CI over people and the fact count; CI-crosses-0 circles are left out
    (with a note) when fewer than ``min_ci_people`` people stand behind the maps. Sites zero
    by architecture are hatched grey ("zero by architecture"), the object-commit steps
    outlined (relative step 0 in the aligned panels), the Eq. 5 cell starred in the first
    panel. A caption under the panels states the peaks of the Eq. 4 map, the contrast and the
    final-answer effect with their CIs, and the immediate share.

    Args:
        data: From :func:`~tie_tracing.analysis.figure2.figure2_data`.
        module: The site shown (``"resid"``, ``"attn"`` or ``"mlp"``).
        title: The figure's title (default names the site, facts and people).
        min_ci_people: Fewest people whose CI marks are drawn.

    Returns:
        A figure whose heatmaps are named by view (``"tie"``, ``"contrast"``, ``"final"``,
        ``"immediate"``, ``"aligned"``, ``"aligned_final"``), with an annotation named
        "caption" and, when the CI marks are left out, one named "CI note".

    Example:
        >>> from tie_tracing.analysis.figure2 import figure2_data
        >>> fig = plot_figure2(figure2_data(TIEResult.synthetic(n_facts=6), n_resamples=100))
        >>> marks = ("zero by architecture", "idle step")
        >>> [t.name for t in fig.data if t.type == "heatmap" and t.name not in marks]
        ['tie', 'final', 'immediate', 'aligned', 'aligned_final']
    """
    if not isinstance(data, Figure2Data):
        raise TypeError(
            f"plot_figure2 draws a Figure2Data (tt.analysis.figure2_data(result, name)), got "
            f"{type(data).__name__}"
        )
    if module not in data.modules:
        raise ValueError(f"module {module!r} is not traced; the result has {list(data.modules)}")
    mi = data.modules.index(module)
    views = [k for k in PANELS if k in data.maps]
    n_cols = 3
    n_rows = math.ceil(len(views) / n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[PANELS[k].format(target=data.target) for k in views],
        horizontal_spacing=0.09,
        vertical_spacing=0.16,
    )
    ci_shown = data.n_people >= min_ci_people
    commit = [int(c) for c in data.commit_steps if int(c) >= 0]
    counts = dict(Counter(commit))
    first_ci = True
    for i, key in enumerate(views):
        row, col = divmod(i, n_cols)
        row, col = row + 1, col + 1
        stats = data.maps[key]
        axis = f"coloraxis{'' if i == 0 else i + 1}"
        # each panel's colour bar sits at its right, one third of the width apart
        x_dom = fig.get_subplot(row, col).xaxis.domain
        y_dom = fig.get_subplot(row, col).yaxis.domain
        colorbar = dict(
            x=x_dom[1] + 0.005,
            y=(y_dom[0] + y_dom[1]) / 2,
            len=(y_dom[1] - y_dom[0]),
            thickness=10,
            title=dict(text="nats", side="right"),
        )
        _map_panel(fig, stats, data, mi, row=row, col=col, axis=axis, colorbar=colorbar)
        if ci_shown and _ci_marks(fig, stats, data, mi, row=row, col=col, first=first_ci):
            first_ci = False
        aligned = key.startswith("aligned")
        if not aligned and key != "contrast":  # idle for the object, not for the name
            _idle_marks(fig, data, stats.steps, row=row, col=col, first=i == 0)
        _structural_marks(fig, data, stats.steps, mi, row=row, col=col, first=i == 0)
        if aligned:
            _commit_marks(fig, [0], {0: 1}, row=row, col=col)
        elif commit:
            _commit_marks(fig, sorted(counts), counts, row=row, col=col)
        if key == "tie":
            _eq5_mark(fig, stats, data, mi, row=row, col=col)
        fig.update_xaxes(
            title_text="steps after object commit" if aligned else "denoising step",
            dtick=1 if len(stats.steps) <= 16 else None,
            row=row,
            col=col,
        )
        fig.update_yaxes(title_text="layer" if col == 1 else None, dtick=1, row=row, col=col)
    fig.add_trace(  # names the dashed outlines (layout shapes)
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            line=dict(color=COMMIT_LINE, width=2, dash="dash"),
            name="object commit step (clean run)",
            hoverinfo="skip",
            showlegend=bool(commit),
        ),
        row=1,
        col=1,
    )
    n_f, n_all = len(data.fact_ids), data.n_facts_all
    facts = f"{n_f} facts" if n_f == n_all else f"{n_f} known of {n_all} facts"
    cfg = data.config
    fig.update_layout(
        title=dict(
            text=title
            or f"Figure 2 — {MODULE_TITLES.get(module, module)}: {facts} of {data.n_people} people",
            subtitle=dict(
                text=html.escape(
                    f"target={data.target} · lp={cfg.get('lp')} · γ={cfg.get('decay')} · "
                    f"T={cfg.get('steps')} · {cfg.get('n_noise')} noise draw(s) per fact · "
                    f"CIs resample people (cluster bootstrap)"
                )
            ),
            x=0.01,
            xanchor="left",
        ),
        height=360 * n_rows + 280,
        width=1250,
        legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.12, yanchor="top"),
        margin=dict(t=110, b=250, r=60),
        plot_bgcolor="white",
    )
    notes = [("caption", _caption(data, module), -0.2)]
    if not ci_shown:
        notes.append(
            (
                "CI note",
                f"No CI marks: {data.n_people} people (fewer than {min_ci_people}) give a "
                "bootstrap over people that means little; trace facts of more people",
                -0.36,
            )
        )
    for name, text, y in notes:
        fig.add_annotation(
            name=name,
            text=text if name == "caption" else html.escape(text, quote=False),
            xref="paper",
            yref="paper",
            x=0.0,
            y=y,
            xanchor="left",
            yanchor="top",
            showarrow=False,
            align="left",
            font=dict(size=11),
            width=1150,
        )
    return fig
