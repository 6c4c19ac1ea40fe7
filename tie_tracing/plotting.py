"""Plotly figures of tracing results and of the coordinate choice (SPEC §10.1–3).

Every ``plot_*`` function takes a result object and returns a
``plotly.graph_objects.Figure``; none shows it or writes a file. :func:`save_figure` is the
one function that writes: interactive ``.html`` always works; static ``.png``/``.svg``/
``.pdf`` go through kaleido (>= 1.0), which drives a Chrome/Chromium browser.
:func:`static_export_available` says (cheaply, without starting a browser) whether one is
installed, so callers can skip static export with a message.

* :func:`plot_tie_heatmaps` — Figure 2: one panel per module over (layer × step), shared
  diverging colour scale centred at 0, mean over facts with a hover giving the bootstrap 95%
  CI and the per-fact values, and a dropdown switching to each fact's own map.
* :func:`plot_ie_by_later_step` — how one patch's effect unfolds over later steps (Eq. 3).
* :func:`plot_positional` — ROME-style positional map of one fact, tokens labelled, subject
  marked.
* :func:`plot_selection_landscape`, :func:`plot_beta_tradeoff`,
  :func:`plot_selection_stability`, :func:`plot_per_fact_optima` — the selection studies of
  :mod:`tie_tracing.analysis`.

Limits: the heatmap dropdown embeds one map per fact, so figures of hundreds of facts grow
large (use ``result.select_facts``); hovers list at most ``max_hover_facts`` per-fact values.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ._io import atomic_write_bytes
from .analysis import BetaTradeoff, PerFactOptima, SelectionStability, _np, bootstrap_ci
from .errors import TieTracingError
from .results import Coordinate, PositionalResult, TIEResult

__all__ = [
    "StaticExportError",
    "plot_beta_tradeoff",
    "plot_ie_by_later_step",
    "plot_per_fact_optima",
    "plot_positional",
    "plot_selection_landscape",
    "plot_selection_stability",
    "plot_tie_heatmaps",
    "save_figure",
    "static_export_available",
]

DIVERGING = "RdBu_r"
SEQUENTIAL = "Purples"
_STATIC_FORMATS = ("png", "svg", "pdf", "jpeg", "jpg", "webp")


class StaticExportError(TieTracingError, RuntimeError):
    """Static image export is impossible here (kaleido or a Chrome/Chromium is missing)."""


# ----------------------------------------------------------------------------- helpers


def _fmt(v: float) -> str:
    return "NaN" if v != v else f"{v:.4g}"


def _module_indices(names: Sequence[str], wanted: Sequence[str] | str | None) -> list[int]:
    if wanted is None:
        return list(range(len(names)))
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [m for m in wanted if m not in names]
    if unknown:
        raise ValueError(f"unknown module(s) {unknown}; the result has {list(names)}")
    return [names.index(m) for m in wanted]


def _fact_index(result: TIEResult | PositionalResult, fact: int | str) -> int:
    return result._fact_indices([fact])[0]


def _label_index(labels: Sequence[Any], value: Any, what: str) -> int:
    try:
        return list(labels).index(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} not among {list(labels)}") from None


def _facts_phrase(n_used: int, n_all: int, any_known: bool) -> str:
    """``"3 facts"``, ``"2 known of 3 facts"`` or ``"3 facts (none known to the model)"``."""
    if n_used < n_all:
        return f"{n_used} known of {n_all} facts"
    return f"{n_all} facts" + ("" if any_known else " (none known to the model)")


# ----------------------------------------------------------------------------- Figure 2


def plot_tie_heatmaps(
    result: TIEResult,
    *,
    normalized: bool = False,
    modules: Sequence[str] | str | None = None,
    title: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    max_hover_facts: int = 12,
) -> go.Figure:
    """TIE heatmaps, one panel per module over (layer rows × step columns) — Figure 2.

    The default view is the NaN-aware mean over facts; the hover of each cell gives the
    value, the percentile-bootstrap 95% CI over facts and the per-fact values. Mean, CI and
    hover values cover the same facts, those the model knows
    (:meth:`~tie_tracing.results.TIEResult.known_only`); when some are left out, the title,
    the hover and the "mean" entry say "n known of N facts". A dropdown ("mean" plus one
    entry per fact, unknown facts included and marked "(unknown)") switches every panel to
    that fact's own map. All panels share one diverging colour axis centred at 0 (it
    rescales with the view).

    Raw and normalised views are chosen by the ``normalized`` argument (one view per figure,
    so the dropdown stays ``1 + n_facts`` entries): ``normalized=True`` plots
    ``result.normalized()`` (clean = 1, corrupted = 0); a result that is already normalised
    is plotted as it is.

    Args:
        result: a :class:`~tie_tracing.results.TIEResult`.
        normalized: plot the normalised view.
        modules: module names to show (default: all, in the result's order).
        title: figure title (default: names the view, fact count and model).
        n_resamples, seed: of the bootstrap CI.
        max_hover_facts: per-fact values listed in a hover at most.

    Returns:
        A figure with one heatmap trace per module (``coloraxis="coloraxis"``).

    Example:
        >>> fig = plot_tie_heatmaps(TIEResult.synthetic(n_facts=2), n_resamples=200)
        >>> len(fig.data), len(fig.layout.updatemenus[0].buttons)
        (3, 3)
    """
    if not isinstance(result, TIEResult):
        raise TypeError(f"plot_tie_heatmaps needs a TIEResult, got {type(result).__name__}")
    if result.n_facts == 0:
        raise ValueError("plot_tie_heatmaps: the result holds no facts")
    r_all = result.normalized() if normalized else result
    r = r_all.known_only()  # mean, CI and hover values: the facts the model knows
    known = r_all.known.tolist()
    n_all, n_f = r_all.n_facts, r.n_facts
    kept = [i for i in range(n_all) if known[i]] if n_f < n_all else list(range(n_all))
    facts_phrase = _facts_phrase(n_f, n_all, any(known))
    mods = _module_indices(r.modules, modules)
    per_fact_all = _np(r_all.tie)  # [fact, layer, step, module], every fact (dropdown)
    per_fact = per_fact_all[kept]  # the averaged facts (hover)
    mean = _np(r.mean(include_unknown=True))  # r holds the known facts already
    low, high = (_np(t) for t in bootstrap_ci(r.tie, n_resamples=n_resamples, seed=seed))
    names_all = [r_all.fact_ids[i] or f"#{i}" for i in range(n_all)]
    names = [names_all[i] for i in kept]
    unit = "normalised TIE" if r.is_normalized else "TIE (nats)"
    steps, layers = list(r.steps), list(r.layers)

    def mean_text(mi: int) -> list[list[str]]:
        rows = []
        for li, layer in enumerate(layers):
            row = []
            for si, step in enumerate(steps):
                facts = "<br>".join(
                    f"  {html.escape(names[f])}: {_fmt(per_fact[f, li, si, mi])}"
                    for f in range(min(n_f, max_hover_facts))
                )
                more = f"<br>  … {n_f - max_hover_facts} more" if n_f > max_hover_facts else ""
                row.append(
                    f"layer {layer}, step {step}, {r.modules[mi]}<br>"
                    f"mean {unit}: {_fmt(mean[li, si, mi])}<br>"
                    f"95% CI [{_fmt(low[li, si, mi])}, {_fmt(high[li, si, mi])}] over {facts_phrase}<br>"
                    f"per fact:<br>{facts}{more}"
                )
            rows.append(row)
        return rows

    def fact_text(f: int, mi: int) -> list[list[str]]:
        """Hover of fact ``f`` (an index into all facts of ``r_all``)."""
        head = html.escape(f"fact {names_all[f]}: {r_all.subjects[f]} → {r_all.answers[f]}")
        if not known[f]:
            head += " (not known to the model" + ("; left out of the mean)" if n_f < n_all else ")")
        return [
            [
                f"{head}<br>layer {layer}, step {step}, {r.modules[mi]}<br>"
                f"{unit}: {_fmt(per_fact_all[f, li, si, mi])}<br>"
                f"mean over {facts_phrase}: {_fmt(mean[li, si, mi])} "
                f"(95% CI [{_fmt(low[li, si, mi])}, {_fmt(high[li, si, mi])}])"
                for si, step in enumerate(steps)
            ]
            for li, layer in enumerate(layers)
        ]

    fig = make_subplots(
        rows=1,
        cols=len(mods),
        shared_yaxes=True,
        subplot_titles=[r.modules[m] for m in mods],
        horizontal_spacing=0.03,
    )
    for col, mi in enumerate(mods, start=1):
        fig.add_trace(
            go.Heatmap(
                z=mean[:, :, mi],
                x=steps,
                y=layers,
                text=mean_text(mi),
                hovertemplate="%{text}<extra></extra>",
                coloraxis="coloraxis",
                name=r.modules[mi],
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="denoising step", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)
    default_title = title or (
        f"{unit}, mean over {facts_phrase} — {r.model_id} (γ={r.config.get('decay')})"
    )
    buttons = [
        dict(
            label=f"mean ({facts_phrase})",
            method="update",
            args=[
                {"z": [mean[:, :, mi] for mi in mods], "text": [mean_text(mi) for mi in mods]},
                {"title.text": default_title},
            ],
        )
    ]
    for f in range(n_all):
        mark = "" if known[f] else " (unknown)"
        buttons.append(
            dict(
                label=f"{names_all[f]}{mark}: {r_all.subjects[f]}"[:60],
                method="update",
                args=[
                    {
                        "z": [per_fact_all[f, :, :, mi] for mi in mods],
                        "text": [fact_text(f, mi) for mi in mods],
                    },
                    {
                        "title.text": title
                        or f"{unit}, fact {names_all[f]}{mark} ({r_all.subjects[f]} → "
                        f"{r_all.answers[f]}) — {r.model_id}"
                    },
                ],
            )
        )
    fig.update_layout(
        title=dict(text=default_title),
        coloraxis=dict(colorscale=DIVERGING, cmid=0.0, colorbar=dict(title=dict(text=unit))),
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                x=1.0,
                xanchor="right",
                y=1.3,
                yanchor="bottom",
                showactive=True,
            )
        ],
        margin=dict(t=130),
    )
    return fig


def plot_ie_by_later_step(
    result: TIEResult,
    layer: int,
    step: int,
    module: str,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> go.Figure:
    """How a patch at ``(layer, step, module)`` acts on later steps: ``IE_{k'}`` (Eq. 3).

    One thin line per fact, the mean over facts with its bootstrap 95% band, and the mean
    TIE (Eq. 4, the decay-weighted aggregate) as a dashed horizontal line. Mean, band and
    mean TIE cover the facts the model knows
    (:meth:`~tie_tracing.results.TIEResult.known_only`); unknown facts keep their thin line,
    dotted and marked "(unknown)". Arguments are
    labels (a layer number, a denoising step, a module name), e.g. those of a
    :class:`~tie_tracing.results.Coordinate`.

    Returns:
        A figure with ``n_facts + 2`` traces (facts, CI band, mean).

    Example:
        >>> fig = plot_ie_by_later_step(TIEResult.synthetic(n_facts=2), 2, 0, "resid", n_resamples=100)
        >>> len(fig.data)
        4
    """
    li = _label_index(result.layers, layer, "layer")
    si = _label_index(result.steps, step, "step")
    mi = _label_index(result.modules, module, "module")
    later = list(range(step, result.n_later_steps))
    used = result.known_only()  # mean, band and mean TIE: the facts the model knows
    known = result.known.tolist()
    facts_phrase = _facts_phrase(used.n_facts, result.n_facts, any(known))
    ie_all = result.ie[:, li, si, mi, step:]  # [fact, later], every fact (thin lines)
    ie = used.ie[:, li, si, mi, step:]
    ie_np = _np(ie_all)
    mean = _np(torch.nanmean(ie.float(), dim=0))
    low, high = (_np(t) for t in bootstrap_ci(ie, n_resamples=n_resamples, seed=seed))
    unit = "normalised IE" if result.is_normalized else "IE (nats)"
    fig = go.Figure()
    for f in range(result.n_facts):
        name = (result.fact_ids[f] or f"#{f}") + ("" if known[f] else " (unknown)")
        fig.add_trace(
            go.Scatter(
                x=later,
                y=ie_np[f],
                mode="lines+markers",
                name=name,
                legendgroup="facts",
                line=dict(width=1, dash="solid" if known[f] else "dot"),
                opacity=0.5,
                hovertemplate=f"{html.escape(name)}: {html.escape(result.subjects[f])}<br>"
                "later step %{x}: %{y:.4g}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=later + later[::-1],
            y=list(high) + list(low[::-1]),
            fill="toself",
            mode="lines",
            line=dict(width=0),
            fillcolor="rgba(31,119,180,0.2)",
            name="95% CI",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=later,
            y=mean,
            mode="lines+markers",
            name="mean",
            line=dict(width=3, color="rgb(31,119,180)"),
            hovertemplate=f"mean over {facts_phrase} at later step "
            "%{x}: %{y:.4g}<extra></extra>",
        )
    )
    tie_mean = float(torch.nanmean(used.tie[:, li, si, mi].float()))
    fig.add_hline(
        y=tie_mean,
        line_dash="dash",
        annotation_text=f"mean TIE = {_fmt(tie_mean)} (γ={result.config.get('decay')})",
    )
    fig.update_layout(
        title=f"{unit} of a patch at layer {layer}, step {step}, {module}, mean over "
        f"{facts_phrase} — {result.model_id}",
        xaxis_title="later step k'",
        yaxis_title=unit,
    )
    return fig


# ----------------------------------------------------------------------------- positional


def plot_positional(
    result: PositionalResult,
    *,
    fact: int | str = 0,
    modules: Sequence[str] | str | None = None,
    effect: bool = False,
    title: str | None = None,
) -> go.Figure:
    """ROME-style positional trace of one fact: tokens (rows) × layers (columns), per module.

    Subject tokens are bold and starred in the row labels (ROME's convention); the cell is
    the restored ``prob``/``lp`` (``result.metric``), or with ``effect=True`` the indirect
    effect ``result.effect()`` on a diverging scale centred at 0. Panels share a colour axis.

    Example:
        >>> fig = plot_positional(PositionalResult.synthetic(n_facts=2), fact="f1")
        >>> len(fig.data), fig.layout.yaxis.ticktext[1]
        (3, '<b>Ada*</b>')
    """
    f = _fact_index(result, fact)
    mods = _module_indices(result.modules, modules)
    tokens = result.tokens[f]
    n_tok = len(tokens)
    vals = result.effect() if effect else result.values
    z = _np(vals[f, :, :n_tok])  # [layer, position, module]
    subj = set(result.subject_positions[f])
    ticktext = [
        f"<b>{html.escape(t)}*</b>" if p in subj else html.escape(t) for p, t in enumerate(tokens)
    ]
    label = ("indirect effect on " if effect else "") + (
        "p(answer)" if result.metric == "prob" else "log p(answer)"
    )
    fig = make_subplots(
        rows=1,
        cols=len(mods),
        shared_yaxes=True,
        subplot_titles=[result.modules[m] for m in mods],
        horizontal_spacing=0.03,
    )
    for col, mi in enumerate(mods, start=1):
        text = [
            [
                f"{html.escape(tokens[p])} (pos {p}), layer {layer}, {result.modules[mi]}"
                for layer in result.layers
            ]
            for p in range(n_tok)
        ]
        fig.add_trace(
            go.Heatmap(
                z=z[:, :, mi].T,
                x=list(result.layers),
                y=list(range(n_tok)),
                text=text,
                hovertemplate="%{text}<br>" + label + ": %{z:.4g}<extra></extra>",
                coloraxis="coloraxis",
                name=result.modules[mi],
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=f"layer (window {result.window})", row=1, col=col)
    fig.update_yaxes(
        tickvals=list(range(n_tok)), ticktext=ticktext, autorange="reversed", row=1, col=1
    )
    coloraxis: dict[str, Any] = (
        dict(colorscale=DIVERGING, cmid=0.0) if effect else dict(colorscale=SEQUENTIAL)
    )
    coloraxis["colorbar"] = dict(title=dict(text=label))
    name = result.fact_ids[f] or f"#{f}"
    fig.update_layout(
        title=title
        or html.escape(
            f"Positional trace, fact {name}: {result.subjects[f]} → {result.answers[f]} "
            f"(clean p={math.exp(float(result.lp_clean[f])):.3g}, corrupted p={math.exp(float(result.lp_corrupt[f])):.3g}) — {result.model_id}"
        ),
        coloraxis=coloraxis,
    )
    return fig


# ----------------------------------------------------------------------------- selection


def _layer_step_panels(
    values: torch.Tensor,
    layers: Sequence[int],
    steps: Sequence[int],
    modules: Sequence[str],
    hover_label: str,
) -> go.Figure:
    """One heatmap panel per shown module; modules whose cells are all NaN are left out."""
    v = _np(values)
    shown = [mi for mi in range(len(modules)) if not np.all(np.isnan(v[:, :, mi]))]
    fig = make_subplots(
        rows=1,
        cols=len(shown),
        shared_yaxes=True,
        subplot_titles=[modules[mi] for mi in shown],
        horizontal_spacing=0.03,
    )
    for col, mi in enumerate(shown, start=1):
        m = modules[mi]
        fig.add_trace(
            go.Heatmap(
                z=v[:, :, mi],
                x=list(steps),
                y=list(layers),
                coloraxis="coloraxis",
                name=m,
                hovertemplate=f"layer %{{y}}, step %{{x}}, {m}<br>{hover_label}: %{{z:.4g}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            title_text="denoising step",
            dtick=1,
            range=[min(steps) - 0.5, max(steps) + 0.5],
            row=1,
            col=col,
        )
    fig.update_yaxes(
        title_text="layer", dtick=1, range=[min(layers) - 0.5, max(layers) + 0.5], row=1, col=1
    )
    fig.layout.meta = {"modules": [modules[mi] for mi in shown]}
    return fig


def _mark(fig: go.Figure, layer: int, step: int, module: str, name: str) -> None:
    shown = list(fig.layout.meta["modules"])
    fig.add_trace(
        go.Scatter(
            x=[step],
            y=[layer],
            mode="markers",
            name=name,
            showlegend=False,
            marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)),
            hovertemplate=f"{name}: layer {layer}, step {step}, {module}<extra></extra>",
        ),
        row=1,
        col=shown.index(module) + 1,
    )


def plot_selection_landscape(coordinate: Coordinate, *, title: str | None = None) -> go.Figure:
    """The Eq. 5 score landscape, one panel per module, the chosen cell starred.

    Cells excluded by the selection's restriction are NaN and show as gaps; a module
    excluded entirely gets no panel.

    Example:
        >>> from tie_tracing.selection import select_coordinate
        >>> fig = plot_selection_landscape(select_coordinate(TIEResult.synthetic()))
        >>> [t.type for t in fig.data]
        ['heatmap', 'heatmap', 'heatmap', 'scatter']
        >>> len(plot_selection_landscape(select_coordinate(TIEResult.synthetic(), modules="resid")).data)
        2
    """
    fig = _layer_step_panels(
        coordinate.scores, coordinate.layers, coordinate.steps, coordinate.modules, "score"
    )
    _mark(fig, coordinate.layer, coordinate.step, coordinate.module, "chosen")
    fig.update_layout(
        title=title
        or (
            f"Eq. 5 score (β={coordinate.beta:g}); chosen layer {coordinate.layer}, step "
            f"{coordinate.step}, {coordinate.module} (score {coordinate.score:.4g})"
        ),
        coloraxis=dict(colorscale=DIVERGING, cmid=0.0, colorbar=dict(title=dict(text="score"))),
    )
    return fig


def plot_beta_tradeoff(tradeoff: BetaTradeoff, *, title: str | None = None) -> go.Figure:
    """Mean ``|TIE|`` of forget and neighbour facts at the coordinate chosen for each β.

    Example:
        >>> from tie_tracing.analysis import beta_tradeoff
        >>> f, g = TIEResult.synthetic(seed=0), TIEResult.synthetic(seed=1)
        >>> len(plot_beta_tradeoff(beta_tradeoff(f, g, [0.0, 0.5, 1.0])).data)
        2
    """
    betas = _np(tradeoff.betas).tolist()
    text = [f"chosen: layer {c.layer}, step {c.step}, {c.module}" for c in tradeoff.coordinates]
    fig = go.Figure()
    for name, values in (
        ("forget facts", tradeoff.forget),
        ("neighbour facts", tradeoff.neighbour),
    ):
        fig.add_trace(
            go.Scatter(
                x=betas,
                y=_np(values).tolist(),
                mode="lines+markers",
                name=name,
                text=text,
                hovertemplate="β=%{x:.3g}<br>"
                + name
                + " mean |TIE|: %{y:.4g}<br>%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or "β trade-off of Eq. 5: forget strength versus neighbour effect",
        xaxis_title="β",
        yaxis_title="mean |TIE| at the chosen coordinate",
    )
    return fig


def plot_selection_stability(
    stability: SelectionStability, *, title: str | None = None
) -> go.Figure:
    """Bootstrap win frequency of every cell, one panel per module, full-set choice starred.

    Example:
        >>> from tie_tracing.analysis import selection_stability
        >>> fig = plot_selection_stability(selection_stability(TIEResult.synthetic(), n_boot=50))
        >>> len(fig.data)
        4
    """
    c = stability.coordinate
    fig = _layer_step_panels(
        stability.frequencies, stability.layers, stability.steps, stability.modules, "win frequency"
    )
    _mark(fig, c.layer, c.step, c.module, "full-set choice")
    fig.update_layout(
        title=title
        or (
            f"Selection stability over {stability.n_boot} fact resamples — full-set choice "
            f"({c.layer}, {c.step}, {c.module}) wins {stability.agreement:.0%}"
        ),
        coloraxis=dict(
            colorscale="Blues", cmin=0.0, cmax=1.0, colorbar=dict(title=dict(text="frequency"))
        ),
    )
    return fig


def plot_per_fact_optima(optima: PerFactOptima, *, title: str | None = None) -> go.Figure:
    """Each fact's ``|TIE|`` at the global coordinate (x) versus at its own optimum (y).

    Points on the diagonal are facts the global coordinate serves as well as their own.

    Example:
        >>> from tie_tracing.analysis import per_fact_optima
        >>> len(plot_per_fact_optima(per_fact_optima(TIEResult.synthetic())).data)
        2
    """
    x = _np(optima.at_global)
    y = _np(optima.at_own)
    text = [
        f"fact {html.escape(fid)}: own optimum layer {la}, step {k}, {m}"
        for fid, (la, k, m) in zip(optima.fact_ids, optima.coordinates)
    ]
    top = float(np.nanmax(np.concatenate([x, y]))) if len(x) else 1.0
    g = optima.global_coordinate
    fig = go.Figure(
        [
            go.Scatter(
                x=[0.0, top],
                y=[0.0, top],
                mode="lines",
                name="own = global",
                line=dict(dash="dash", color="grey"),
                hoverinfo="skip",
            ),
            go.Scatter(
                x=x.tolist(),
                y=y.tolist(),
                mode="markers",
                name="facts",
                text=text,
                marker=dict(size=10),
                hovertemplate="%{text}<br>|TIE| at global: %{x:.4g}<br>|TIE| at own: %{y:.4g}<extra></extra>",
            ),
        ]
    )
    fig.update_layout(
        title=title
        or (
            f"Per-fact optima vs global ({g.layer}, {g.step}, {g.module}): "
            f"{optima.agreement_rate:.0%} of facts agree"
        ),
        xaxis_title="|TIE| at the global coordinate",
        yaxis_title="|TIE| at the fact's own optimum",
    )
    return fig


# ----------------------------------------------------------------------------- export


def _static_export_problem() -> str | None:
    """Why static export cannot work here, or ``None`` if kaleido and a browser are present."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return (
            "static export needs kaleido >= 1.0: pip install 'kaleido>=1' "
            "(or pip install 'tie_tracing[export]'), plus a Chrome/Chromium browser"
        )
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:  # kaleido's browser finder moved: let kaleido itself decide
        return None
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - a broken finder should not break the probe
        path = None
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return None
    if path is None:
        path = shutil.which("chromium") or shutil.which("chromium-browser")
        if path:
            return None
    hint = (
        f" (BROWSER_PATH={os.environ['BROWSER_PATH']!r} is not an executable)"
        if "BROWSER_PATH" in os.environ
        else ""
    )
    return (
        "static export (png/svg/pdf) needs a Chrome or Chromium browser for kaleido and none was found"
        f"{hint}. Install one: `apt-get install chromium` (Debian/Ubuntu), or run "
        "`plotly_get_chrome` / `python -c 'import kaleido; kaleido.get_chrome_sync()'` to "
        "download Chrome, or set BROWSER_PATH=/path/to/chrome. Interactive .html export works without it."
    )


def static_export_available() -> bool:
    """Whether :func:`save_figure` can write ``.png``/``.svg``/``.pdf`` here.

    A cheap probe (kaleido importable and a Chrome/Chromium executable found, as kaleido
    would find it, ``BROWSER_PATH`` included); it starts no browser.

    Example:
        >>> isinstance(static_export_available(), bool)
        True
    """
    return _static_export_problem() is None


def save_figure(
    fig: go.Figure,
    path: str | os.PathLike,
    *,
    formats: Sequence[str] | None = None,
    include_plotlyjs: bool | str = True,
    scale: float = 2.0,
    width: int | None = None,
    height: int | None = None,
) -> tuple[Path, ...]:
    """Write a figure, atomically (temporary file in the same directory, then ``os.replace``).

    The format follows ``path``'s suffix (``.html``, ``.png``, ``.svg``, ``.pdf``, ``.jpeg``,
    ``.webp``), or ``formats`` lists several, each written next to ``path`` with that suffix
    (e.g. ``save_figure(fig, "figures/figure2", formats=("html", "png"))``). HTML is
    self-contained by default (``include_plotlyjs=True``, ~4 MB, opens offline); pass
    ``"cdn"`` for a small file that loads plotly.js from the network. Static formats need
    kaleido and a Chrome/Chromium; when either is missing :class:`StaticExportError` is raised
    before anything is written, saying what to install.

    Returns:
        The paths written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> [p.name for p in save_figure(go.Figure(), d / "empty.html", include_plotlyjs="cdn")]
        ['empty.html']
    """
    path = Path(path)
    if formats is None:
        if not path.suffix:
            raise ValueError(f"{path} has no suffix: give one (.html, .png, .svg, …) or formats=")
        formats = (path.suffix.lstrip("."),)
    fmts = [f.lower().lstrip(".") for f in formats]
    unknown = [f for f in fmts if f != "html" and f not in _STATIC_FORMATS]
    if unknown:
        raise ValueError(
            f"unknown figure format(s) {unknown}; use html or one of {_STATIC_FORMATS}"
        )
    if any(f != "html" for f in fmts):
        problem = _static_export_problem()
        if problem:
            raise StaticExportError(problem)
    targets = [
        path.with_suffix("." + f) if path.suffix.lstrip(".").lower() != f else path for f in fmts
    ]
    written = []
    for fmt, target in zip(fmts, targets):
        if fmt == "html":
            data = fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True).encode("utf-8")
        else:
            try:
                data = fig.to_image(format=fmt, scale=scale, width=width, height=height)
            except Exception as exc:  # noqa: BLE001 - kaleido/choreographer raise many kinds
                raise StaticExportError(
                    f"static export to {target} failed: {type(exc).__name__}: {exc}. "
                    "Check the Chrome/Chromium install (BROWSER_PATH) and kaleido >= 1.0."
                ) from exc
        atomic_write_bytes(target, data)
        written.append(target)
    return tuple(written)
