"""Plotly figures of tracing results and of the coordinate choice (SPEC §10.1–3).

Every ``plot_*`` function takes a result object and returns a
``plotly.graph_objects.Figure``; none shows it or writes a file. :func:`save_figure` is the
one function that writes: interactive ``.html`` always works; static ``.png``/``.svg``/
``.pdf`` go through kaleido (>= 1.0), which drives a Chrome/Chromium browser.
:func:`static_export_available` says (cheaply, without starting a browser) whether one is
installed, so callers can skip static export with a message.

* :func:`plot_tie_heatmaps` — Figure 2: one panel per module over (layer × step), shared
  diverging colour scale centred at 0, mean over facts with a hover giving the bootstrap 95%
  CI and the per-fact values, cells whose CI crosses 0 marked, and a dropdown switching to
  each fact's own map. Commit-aware: idle steps (nothing left to decide) are greyed and the
  step that committed the object is outlined.
* :func:`plot_ie_by_later_step` — how one patch's effect unfolds over later steps (Eq. 3).
* :func:`trajectory_table`, :func:`plot_trajectory` — one trajectory's commit map (which
  answer token was decided at which step, the object highlighted), from a traced
  :class:`~tie_tracing.core.results.TIEResult` or a plain :func:`tt.diffuse` run.
* :func:`plot_positional` — ROME-style positional map of one fact, tokens labelled, subject
  marked.
* :func:`plot_selection_landscape`, :func:`plot_beta_tradeoff`,
  :func:`plot_selection_stability`, :func:`plot_per_fact_optima` — the selection studies of
  :mod:`tie_tracing.analysis`.

Colours: one convention for every signed quantity, :data:`DIVERGING` (red positive, blue
negative) centred at 0; never-negative quantities use :data:`SEQUENTIAL`.

Limits: the heatmap dropdown embeds one map per fact, so figures of hundreds of facts grow
large (use ``result.select_facts``); hovers list at most ``max_hover_facts`` per-fact values.
The dropdown's views are plotly ``update`` calls checked here for their content, not
clicked in a browser by the tests.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..analysis.figure2 import structural_mask, tie_map_stats
from ..analysis.stats import BetaTradeoff, PerFactOptima, SelectionStability, _np, bootstrap_ci
from ..core._io import atomic_write_bytes
from ..core.errors import TieTracingError
from ..core.results import Coordinate, PositionalResult, TIEResult
from ..core.sampler import DiffusionResult

__all__ = [
    "StaticExportError",
    "network_scripts",
    "notebook_figures",
    "plot_beta_tradeoff",
    "plot_ie_by_later_step",
    "plot_per_fact_optima",
    "plot_positional",
    "plot_selection_landscape",
    "plot_selection_stability",
    "plot_tie_heatmaps",
    "plot_trajectory",
    "save_figure",
    "static_export_available",
    "trajectory_table",
]

#: The one colour scale of every signed quantity (TIE, IE, indirect effects, signed scores):
#: ColorBrewer RdBu reversed, so that **red is positive and blue negative**; figures centre
#: it at 0 (``cmid=0``). Plotly's plain ``"RdBu"`` runs the other way (red low).
DIVERGING = "RdBu_r"
#: The colour scale of never-negative quantities (probabilities, frequencies, ``|TIE|``
#: scores): light for small, dark for large.
SEQUENTIAL = "Purples"
#: Colours taken from the ends of :data:`DIVERGING`, for lines and markers coloured by sign.
POSITIVE_COLOUR = "rgb(178,24,43)"
NEGATIVE_COLOUR = "rgb(33,102,172)"
#: Grey of idle steps (no masked target position left, SPEC §5).
IDLE_GREY = "rgb(160,160,160)"
#: Dark grey of the sites zero by architecture (SPEC §5): not measurements.
STRUCTURAL_GREY = "rgb(90,90,90)"
#: Object tokens in a trajectory view, and the other committed tokens.
OBJECT_COLOUR = "rgb(241,163,64)"
COMMITTED_COLOUR = "rgb(254,235,200)"
MASKED_COLOUR = "rgb(238,238,238)"
COMMIT_LINE = "rgb(30,30,30)"
FACT_LINE = "rgb(120,120,120)"
MEAN_LINE = "rgb(40,40,40)"
#: Panel titles of the modules (``resid``, ``attn``, ``mlp``); other names are shown as they are.
MODULE_TITLES: dict[str, str] = {
    "resid": "residual stream",
    "attn": "attention output",
    "mlp": "MLP output",
}
_STATIC_FORMATS = ("png", "svg", "pdf", "jpeg", "jpg", "webp")
#: Fewest facts whose bootstrap CI Figure 2 draws: fewer give percentile intervals that
#: mean little, and the figure says so instead of circling cells.
MIN_CI_FACTS = 5
#: Widest fixed figure width (px): a notebook column of a 1280 px window.
MAX_FIGURE_WIDTH = 1280


class StaticExportError(TieTracingError, RuntimeError):
    """Static image export is impossible here (kaleido or a Chrome/Chromium is missing)."""


# ----------------------------------------------------------------------------- helpers


def _fmt(v: float) -> str:
    return "NaN" if v != v else f"{v:.4g}"


def _panel_title(module: str) -> str:
    return MODULE_TITLES.get(module, module)


def _sign_colour(v: float) -> str:
    """:data:`POSITIVE_COLOUR` for ``v > 0``, :data:`NEGATIVE_COLOUR` for ``v < 0``, else grey."""
    if v > 0:
        return POSITIVE_COLOUR
    if v < 0:
        return NEGATIVE_COLOUR
    return "grey"


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


def _commit_info(result: TIEResult) -> tuple[np.ndarray, np.ndarray] | None:
    """``(idle [fact, T] bool, object_commit_step [fact] int)``, or ``None`` for a result
    without commit maps (no ``config["mask_token_id"]``: made before commit maps existed)."""
    if "mask_token_id" not in result.config:
        return None
    return result.idle_steps.cpu().numpy(), result.object_commit_step.cpu().numpy()


def _provenance(result: TIEResult, facts_phrase: str) -> str:
    """The facts that define a TIE figure: facts, noise draws, seeds, lp, target, γ, model."""
    n_noise = int(result.lp_corrupt_draws.shape[1])
    seeds = ", ".join(str(s) for s in result.seeds) or "unrecorded"
    cfg = result.config
    return html.escape(
        f"{facts_phrase} · {n_noise} noise draw{'' if n_noise == 1 else 's'} · "
        f"seed{'s' if len(result.seeds) > 1 else ''} {seeds} · "
        f"lp={cfg.get('lp', 'unrecorded')} · target={cfg.get('target', 'unrecorded')} · "
        f"γ={cfg.get('decay')} · {result.model_id}"
    )


def _commit_counts(steps: Sequence[int]) -> str:
    """``"step 2 ×3, step 5 ×1"`` (``-1`` reads "never")."""
    counts = Counter(int(s) for s in steps)
    return ", ".join(
        f"{'never' if s < 0 else f'step {s}'} ×{n}"
        for s, n in sorted(counts.items(), key=lambda kv: (kv[0] < 0, kv[0]))
    )


def _axis_refs(col: int) -> tuple[str, str]:
    """``(xref, yref domain)`` of subplot column ``col`` (1-based) in a one-row grid."""
    suffix = "" if col == 1 else str(col)
    return f"x{suffix}", f"y{suffix} domain"


def _commit_shapes(step_counts: dict[int, int], n_cols: int) -> list[dict[str, Any]]:
    """A dashed outline of each object-commit step's column in every panel.

    The line width grows with the share of facts that committed their object at that step.
    """
    total = sum(step_counts.values()) or 1
    shapes = []
    for col in range(1, n_cols + 1):
        xref, yref = _axis_refs(col)
        for step, n in sorted(step_counts.items()):
            if step < 0:
                continue
            shapes.append(
                dict(
                    type="rect",
                    name="object commit",
                    xref=xref,
                    yref=yref,
                    x0=step - 0.5,
                    x1=step + 0.5,
                    y0=0,
                    y1=1,
                    line=dict(color=COMMIT_LINE, width=1.0 + 2.0 * n / total, dash="dash"),
                    fillcolor="rgba(0,0,0,0)",
                    layer="above",
                )
            )
    return shapes


def _require(obj: Any, cls: type, fn: str, maker: str) -> None:
    """A clear TypeError when a plotting function is handed something else than its result."""
    if not isinstance(obj, cls):
        raise TypeError(f"{fn} draws a {cls.__name__} (from {maker}), got {type(obj).__name__}")


def plot_tie_heatmaps(
    result: TIEResult,
    *,
    normalized: bool = False,
    modules: Sequence[str] | str | None = None,
    title: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    max_hover_facts: int = 12,
    min_ci_facts: int = MIN_CI_FACTS,
) -> go.Figure:
    """TIE heatmaps, one panel per module over (layer rows × step columns) — Figure 2.

    Panels are titled "residual stream", "attention output" and "MLP output" (``resid``,
    ``attn``, ``mlp``) and share one diverging colour axis, :data:`DIVERGING` centred at 0
    (red positive, blue negative). The colour range is **the same in every view** of the
    dropdown (symmetric, the largest ``|value|`` of the mean and of every fact), and a key
    under the panels states what the colour means: the unit and the sign ("+: restoring
    the clean state there raises the answer's log-probability").

    **Mean view** (the default): the NaN-aware mean over facts. The hover of each cell
    gives the value, the 95% CI over **people** (a percentile cluster bootstrap by subject,
    :func:`~tie_tracing.analysis.figure2.tie_map_stats`: a person's facts are not
    independent) and the per-fact values; cells whose CI contains 0 (``low < 0 < high``)
    carry a small open circle (legend entry "95% CI crosses 0"). With fewer than
    ``min_ci_facts`` facts, or facts of fewer than ``min_ci_facts`` people, the circles are
    left out and a note on the figure says why.

    **Zero by architecture**: the sites a trace recorded in ``config["structural_zeros"]`` for
    every averaged fact (the last block at the subject positions,
    :func:`~tie_tracing.tracing.tie.structural_zeros`) are not drawn as values (NaN in every
    view) and carry a dark overlay "zero by architecture" that says why.

    The statistics come from :mod:`tie_tracing.analysis.figure2`; this function draws, one
    helper per kind of trace (``_module_heatmaps``, ``_idle_overlays``, ``_ci_markers``,
    ``_eq5_star``, ``_commit_legend``, ``_structural_overlays``). Mean, CI and hover values cover the same facts, those
    the model knows (:meth:`~tie_tracing.core.results.TIEResult.known_only`); when some are left
    out, the title, the hover and the "mean" entry say "n known of N facts".

    **The Eq. 5 cell**: the cell :func:`~tie_tracing.analysis.selection.select_coordinate` picks
    (β = 0, over the modules shown, on the unnormalised TIE) carries a gold star in every
    view (legend entry "Eq. 5 cell (layer, step, module)").

    **Per-fact views**: a dropdown ("mean" plus one entry per fact, unknown facts included
    and marked "(unknown)") switches every panel to that fact's own map; the title names the
    fact (a caller's ``title`` is the mean view's).

    **Commit-aware marks** (SPEC §4–§5, from the result's commit maps):

    * idle steps — steps where no corrupted trajectory has a masked target position left
      (:attr:`~tie_tracing.core.results.TIEResult.idle_steps`), so nothing is decided there and,
      under ``lp="frozen"``, TIE is 0 exactly — are greyed: one grey overlay heatmap per
      panel (legend entry "idle step"), NaN where the step is not idle. Per-fact views grey
      that fact's idle steps; the mean view greys the steps idle for every averaged fact;
    * the object-commit step (the step whose forward committed the object's first token in
      the clean run) is outlined by a dashed column in every panel; the mean view outlines
      each step at which some averaged fact committed its object (thicker for more facts)
      and lists the distribution in the subtitle ("object committed (clean run): step 2 ×3,
      step 5 ×1"); a legend entry "object commit step" names the outline. A result without
      commit maps (no ``config["mask_token_id"]``) plots without these marks.

    The title names the view; the subtitle always states the facts (known of total), noise
    draws, seed(s), ``lp``, ``target``, ``γ`` and the model id, also under a caller's
    ``title``.

    Raw and normalised views are chosen by the ``normalized`` argument (one view per figure,
    so the dropdown stays ``1 + n_facts`` entries): ``normalized=True`` plots
    ``result.normalized()`` (clean = 1, corrupted = 0); a result that is already normalised
    is plotted as it is.

    Args:
        result: a :class:`~tie_tracing.core.results.TIEResult`.
        normalized: plot the normalised view.
        modules: module names to show (default: all, in the result's order).
        title: the mean view's title (default: names the view and the fact count); the
            provenance subtitle is kept either way.
        n_resamples, seed: of the bootstrap CI.
        max_hover_facts: per-fact values listed in a hover at most.
        min_ci_facts: fewest facts whose bootstrap CI is drawn (default
            :data:`MIN_CI_FACTS`).

    Returns:
        A figure whose traces are, for ``M`` panels: ``M`` TIE heatmaps
        (``coloraxis="coloraxis"``, named by module), ``M`` grey idle overlays (named
        "idle step"), ``M`` scatter traces of the CI-crosses-0 cells (named "95% CI
        crosses 0", visible in the mean view only), one star on the Eq. 5 cell (named
        "Eq. 5 cell …"; empty when no cell wins), one legend-only line named "object
        commit step" and ``M`` overlays named "zero by architecture" (empty where nothing
        is). Dropdown button ``0`` is the mean view, button ``1 + f`` fact ``f``;
        each sets ``z`` and ``text`` of the heatmaps and overlays, the traces' ``visible``,
        the title, subtitle and commit outlines (``shapes`` named "object commit").
        Annotations named "colour key" and "CI note" hold the colour's meaning and what the
        CI rests on; the panel titles are the unnamed ones.

    Example:
        >>> fig = plot_tie_heatmaps(TIEResult.synthetic(n_facts=2), n_resamples=200)
        >>> [t.name for t in fig.data][:4], len(fig.layout.updatemenus[0].buttons)
        (['resid', 'attn', 'mlp', 'idle step'], 3)
        >>> [a.text for a in fig.layout.annotations if not a.name]
        ['residual stream', 'attention output', 'MLP output']
        >>> "lp=frozen · target=answer" in fig.layout.title.subtitle.text
        True
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
    n_cols = len(mods)
    per_fact_all = _np(r_all.tie)  # [fact, layer, step, module], every fact (dropdown)
    per_fact = per_fact_all[kept]  # the averaged facts (hover)
    # mean and CI over people (a cluster bootstrap) come from the analysis layer
    stats = tie_map_stats(r, n_resamples=n_resamples, seed=seed)
    mean, low, high = _np(stats.mean), _np(stats.low), _np(stats.high)
    n_subjects = len(set(r.subjects))
    ci_shown = n_f >= min_ci_facts and n_subjects >= min_ci_facts
    crosses = (low < 0) & (high > 0) & ci_shown  # [layer, step, module]; NaN compares False
    if n_f < min_ci_facts:
        ci_note = (
            f"No CI marks: a bootstrap 95% CI over {n_f} fact{'' if n_f == 1 else 's'} "
            f"means little (fewer than {min_ci_facts}); trace more facts"
        )
    elif not ci_shown:
        ci_note = (
            f"No CI marks: the 95% CI resamples people, and {n_f} facts of {n_subjects} "
            f"subject{'' if n_subjects == 1 else 's'} (fewer than {min_ci_facts}) give one that "
            "means little: trace facts of more people"
        )
    else:
        ci_note = ""
    structural = _np(structural_mask(r)).astype(bool)  # [layer, module]
    if structural.any():  # zero by architecture: not drawn as a measured value
        mean = np.where(structural[:, None, :], np.nan, mean)
        per_fact_all = np.where(structural[None, :, None, :], np.nan, per_fact_all)
        per_fact = per_fact_all[kept]
    names_all = [r_all.fact_ids[i] or f"#{i}" for i in range(n_all)]
    names = [names_all[i] for i in kept]
    unit = "normalised TIE" if r.is_normalized else "TIE (nats)"
    steps, layers = list(r.steps), list(r.layers)
    provenance = _provenance(r_all, facts_phrase)
    shown = np.concatenate([mean[..., mods].ravel(), per_fact_all[..., mods].ravel()])
    shown = np.abs(shown[np.isfinite(shown)])
    zmax = float(shown.max()) if shown.size and shown.max() > 0 else 1.0
    read = "the object's" if r_all.config.get("target") == "object" else "the answer's"
    colour_key = (
        f"Colour: {unit}, the same scale (±{_fmt(zmax)}) in every view. Red (+): restoring "
        f"the clean state at that layer, step and site raises {read} log-probability; "
        "blue (−): lowers it."
        + ("  1 = all of the clean–corrupted gap." if r.is_normalized else "")
    )
    eq5, eq5_text = _eq5_cell(result, [r.modules[m] for m in mods])

    info = _commit_info(r_all)
    if info is not None:
        idle_all = info[0][:, steps]  # [fact, step column]
        idle_mean = np.asarray(idle_all[kept].all(0), dtype=bool)
        object_step: list[int] | None = [int(s) for s in info[1]]
    else:
        idle_all = np.zeros((n_all, len(steps)), dtype=bool)
        idle_mean = np.zeros(len(steps), dtype=bool)
        object_step = None
    lp_mode = r_all.config.get("lp", "unrecorded")
    idle_why = "no corrupted trajectory has a masked target position in this step's input" + (
        "; TIE is 0 exactly (lp='frozen')"
        if lp_mode == "frozen"
        else f"; under lp={lp_mode!r} the value only re-scores committed tokens"
    )

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
                    f"95% CI [{_fmt(low[li, si, mi])}, {_fmt(high[li, si, mi])}] over "
                    f"{n_subjects} people ({facts_phrase})"
                    f"{'' if ci_shown else ' (too few facts or people to rely on)'}<br>"
                    f"per fact:<br>{facts}{more}"
                )
            rows.append(row)
        return rows

    def fact_text(f: int, mi: int) -> list[list[str]]:
        """Hover of fact ``f`` (an index into all facts of ``r_all``)."""
        head = html.escape(f"fact {names_all[f]}: {r_all.subjects[f]} → {r_all.answers[f]}")
        if not known[f]:
            head += " (not known to the model" + ("; left out of the mean)" if n_f < n_all else ")")
        if object_step is not None:
            c = object_step[f]
            head += f"<br>object committed at step {c}" if c >= 0 else "<br>object never committed"
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

    def overlay(idle: np.ndarray, text: list[list[str]], who: str) -> tuple[np.ndarray, list]:
        """Grey overlay ``z`` (1 at idle columns, NaN elsewhere) and its hover text."""
        z = np.where(idle[None, :], 1.0, np.nan).repeat(len(layers), axis=0)
        hover = [
            [
                f"{cell}<br><i>idle step ({who}): {idle_why}</i>" if idle[si] else ""
                for si, cell in enumerate(row)
            ]
            for row in text
        ]
        return z, hover

    mean_texts = {mi: mean_text(mi) for mi in mods}
    fig = make_subplots(
        rows=1,
        cols=n_cols,
        shared_yaxes=True,
        subplot_titles=[_panel_title(r.modules[m]) for m in mods],
        horizontal_spacing=0.03,
    )
    modules_shown = [r.modules[m] for m in mods]
    _module_heatmaps(
        fig,
        [mean[:, :, mi] for mi in mods],
        [mean_texts[mi] for mi in mods],
        steps,
        layers,
        modules_shown,
    )
    mean_overlays = {mi: overlay(idle_mean, mean_texts[mi], "every averaged fact") for mi in mods}
    _idle_overlays(fig, [mean_overlays[mi] for mi in mods], steps, layers)
    ci_text = _ci_markers(
        fig, crosses[..., mods], low[..., mods], high[..., mods], steps, layers, modules_shown
    )
    eq5_col = 1 + modules_shown.index(eq5.module) if eq5 is not None else 1
    _eq5_star(fig, eq5, eq5_text, eq5_col)
    _commit_legend(fig, _commit_info(r_all) is not None)
    zero_z, zero_text = _structural_overlays(fig, structural[:, mods], steps, layers, modules_shown)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)

    def view(
        maps: dict[int, np.ndarray],
        texts: dict[int, list[list[str]]],
        overlays: dict[int, tuple[np.ndarray, list]],
        is_mean: bool,
    ) -> dict[str, list]:
        """Restyle of one dropdown view, one entry per trace (heatmaps, overlays, CI marks).

        The CI traces get ``z = None`` (plotly.js deletes the attribute, which a scatter
        does not have) and keep their text; they are visible in the mean view only.
        """
        return {
            "z": [maps[mi] for mi in mods]
            + [overlays[mi][0] for mi in mods]
            + [None] * (n_cols + 2)
            + zero_z,
            "text": [texts[mi] for mi in mods]
            + [overlays[mi][1] for mi in mods]
            + ci_text
            + [[] if eq5 is None else [eq5_text], None]
            + zero_text,
            "visible": [True] * (2 * n_cols) + [is_mean] * n_cols + [True, True] + [True] * n_cols,
        }

    if object_step is not None:
        kept_steps = [object_step[i] for i in kept]
        mean_commit = f"object committed (clean run): {_commit_counts(kept_steps)}"
        mean_shapes = _commit_shapes(dict(Counter(kept_steps)), n_cols)
    else:
        mean_commit, mean_shapes = "no commit maps recorded (config['mask_token_id'])", []
    mean_title = title or f"{unit}, mean over {facts_phrase}"
    mean_subtitle = f"{provenance}<br>{mean_commit}"
    buttons = [
        dict(
            label=f"mean ({facts_phrase})",
            method="update",
            args=[
                view({mi: mean[:, :, mi] for mi in mods}, mean_texts, mean_overlays, True),
                {
                    "title.text": mean_title,
                    "title.subtitle.text": mean_subtitle,
                    "shapes": mean_shapes,
                },
            ],
        )
    ]
    for f in range(n_all):
        mark = "" if known[f] else " (unknown)"
        texts = {mi: fact_text(f, mi) for mi in mods}
        if object_step is not None:
            c = object_step[f]
            commit = (
                f"object committed at step {c} (clean run)"
                if c >= 0
                else "object never committed in the clean run"
            )
            shapes = _commit_shapes({c: 1}, n_cols)
        else:
            commit, shapes = "no commit maps recorded (config['mask_token_id'])", []
        overlays = {mi: overlay(idle_all[f], texts[mi], "this fact") for mi in mods}
        buttons.append(
            dict(
                label=f"{names_all[f]}{mark}: {r_all.subjects[f]}"[:60],
                method="update",
                args=[
                    view({mi: per_fact_all[f, :, :, mi] for mi in mods}, texts, overlays, False),
                    {
                        "title.text": html.escape(
                            f"{unit}, fact {names_all[f]}{mark}: {r_all.subjects[f]} → "
                            f"{r_all.answers[f]}"
                        ),
                        "title.subtitle.text": f"{provenance}<br>{commit}",
                        "shapes": shapes,
                    },
                ],
            )
        )
    fig.update_layout(
        title=dict(
            text=mean_title,
            subtitle=dict(text=mean_subtitle),
            x=0.01,
            xanchor="left",
            y=0.98,
            yanchor="top",
        ),
        coloraxis=dict(
            colorscale=DIVERGING,
            cmid=0.0,
            cmin=-zmax,
            cmax=zmax,
            colorbar=dict(title=dict(text=f"{unit}<br>+ raises log p")),
        ),
        shapes=mean_shapes,
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                x=0.0,
                xanchor="left",
                y=1.16,
                yanchor="bottom",
                showactive=True,
            )
        ],
        legend=dict(orientation="h", x=0.0, xanchor="left", y=-0.2, yanchor="top"),
        height=650,
        margin=dict(t=170, b=170),
    )
    for name, text, y in (("colour key", colour_key, -0.36), ("CI note", ci_note, -0.43)):
        if text:
            fig.add_annotation(
                name=name,
                text=html.escape(text, quote=False),
                xref="paper",
                yref="paper",
                x=0.0,
                y=y,
                xanchor="left",
                yanchor="top",
                showarrow=False,
                align="left",
                font=dict(size=11),
            )
    return fig


# -- Figure 2's panels: each function draws one kind of trace, from values it is given --------


def _module_heatmaps(
    fig: go.Figure,
    maps: list[np.ndarray],
    texts: list[list[list[str]]],
    steps: list[int],
    layers: list[int],
    modules: list[str],
) -> None:
    """One TIE heatmap per module panel on the shared colour axis."""
    for col, (z, text, module) in enumerate(zip(maps, texts, modules), start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=steps,
                y=layers,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                coloraxis="coloraxis",
                name=module,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="denoising step", dtick=1, row=1, col=col)


def _idle_overlays(
    fig: go.Figure, overlays: list[tuple[np.ndarray, list]], steps: list[int], layers: list[int]
) -> None:
    """The grey idle-step overlay of each panel (``z`` 1 at idle columns, NaN elsewhere)."""
    for col, (z, hover) in enumerate(overlays, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=steps,
                y=layers,
                text=hover,
                hovertemplate="%{text}<extra></extra>",
                hoverongaps=False,
                colorscale=[[0.0, IDLE_GREY], [1.0, IDLE_GREY]],
                zmin=0.0,
                zmax=1.0,
                showscale=False,
                opacity=0.75,
                name="idle step",
                legendgroup="idle",
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )


def _ci_markers(
    fig: go.Figure,
    crosses: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    steps: list[int],
    layers: list[int],
    modules: list[str],
) -> list[list[str]]:
    """Open circles on the cells whose CI crosses 0 (``crosses`` ``[layer, step, panel]``),
    one scatter per panel, one legend entry; returns each panel's hover texts."""
    ci_text: list[list[str]] = []
    for col, module in enumerate(modules, start=1):
        li_idx, si_idx = np.nonzero(crosses[:, :, col - 1])
        ci_text.append(
            [
                f"layer {layers[la]}, step {steps[s]}, {module}: 95% CI "
                f"[{_fmt(low[la, s, col - 1])}, {_fmt(high[la, s, col - 1])}] crosses 0"
                for la, s in zip(li_idx, si_idx)
            ]
        )
        fig.add_trace(
            go.Scatter(
                x=[steps[s] for s in si_idx],
                y=[layers[la] for la in li_idx],
                mode="markers",
                marker=dict(symbol="circle-open", size=7, color="black", line=dict(width=1)),
                name="95% CI crosses 0",
                legendgroup="ci",
                # one legend entry: on the first panel that has such cells
                showlegend=len(li_idx) > 0 and not any(ci_text[:-1]),
                text=ci_text[-1],
                hovertemplate="%{text}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    return ci_text


def _eq5_star(fig: go.Figure, eq5: Coordinate | None, label: str, col: int) -> None:
    """A gold star on the Eq. 5 cell (an empty trace when no cell wins)."""
    fig.add_trace(
        go.Scatter(
            x=[] if eq5 is None else [eq5.step],
            y=[] if eq5 is None else [eq5.layer],
            mode="markers",
            marker=dict(symbol="star", size=16, color="gold", line=dict(color="black", width=1)),
            name=label,
            legendgroup="eq5",
            showlegend=eq5 is not None,
            text=[] if eq5 is None else [label],
            hovertemplate="%{text}<extra></extra>",
        ),
        row=1,
        col=col,
    )


def _commit_legend(fig: go.Figure, show: bool) -> None:
    """A legend-only line naming the dashed commit outlines (layout shapes)."""
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            line=dict(color=COMMIT_LINE, width=2, dash="dash"),
            name="object commit step (clean run)",
            legendgroup="commit",
            showlegend=show,
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )


def _structural_overlays(
    fig: go.Figure,
    structural: np.ndarray,
    steps: list[int],
    layers: list[int],
    modules: list[str],
) -> tuple[list[np.ndarray], list[list[list[str]]]]:
    """A dark overlay on the sites zero by architecture (``structural`` ``[layer, panel]``),
    with the reason in its hover; returns each panel's ``z`` and text (for the dropdown)."""
    why = (
        "zero by architecture: this block's output at the subject positions reaches no "
        "answer position (the final norm and the LM head act per position); not a measurement"
    )
    zs, texts = [], []
    for col, module in enumerate(modules, start=1):
        on = structural[:, col - 1]
        z = np.where(on[:, None], 1.0, np.nan).repeat(len(steps), axis=1)
        text = [
            [f"layer {layer}, step {step}, {module}: {why}" if on[li] else "" for step in steps]
            for li, layer in enumerate(layers)
        ]
        zs.append(z)
        texts.append(text)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=steps,
                y=layers,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                hoverongaps=False,
                colorscale=[[0.0, STRUCTURAL_GREY], [1.0, STRUCTURAL_GREY]],
                zmin=0.0,
                zmax=1.0,
                showscale=False,
                name="zero by architecture",
                legendgroup="structural",
                showlegend=col == 1 and bool(structural.any()),
            ),
            row=1,
            col=col,
        )
    return zs, texts


def _eq5_cell(result: TIEResult, modules: list[str]) -> tuple[Coordinate | None, str]:
    """The Eq. 5 cell (β = 0) over ``modules`` of the unnormalised result, and its label;
    ``None`` when no cell wins (every score equal, or non-finite maps)."""
    import warnings

    from ..analysis.selection import select_coordinate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c = select_coordinate(result, modules=modules)
        except ValueError:
            return None, "Eq. 5 cell: none (non-finite maps)"
    if any("arbitrary" in str(w.message) for w in caught):
        return None, "Eq. 5 cell: none (every cell scores the same)"
    return c, f"Eq. 5 cell (layer {c.layer}, step {c.step}, {c.module})"


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

    One thin grey line per fact, the mean over facts with its bootstrap 95% band, and the
    mean TIE (Eq. 4, the decay-weighted aggregate) as a dashed horizontal line. Signs follow
    the package's one convention (:data:`DIVERGING`): the mean's markers are coloured by
    value, red positive, blue negative, centred at 0, and the mean-TIE line is red or blue
    by its sign. Later steps idle for every averaged fact (no masked target position left
    in any corrupted trajectory, :attr:`~tie_tracing.core.results.TIEResult.idle_steps`) are
    shaded grey. Mean, band and mean TIE cover the facts the model knows
    (:meth:`~tie_tracing.core.results.TIEResult.known_only`); unknown facts keep their thin line,
    dotted and marked "(unknown)". Arguments are labels (a layer number, a denoising step, a
    module name), e.g. those of a :class:`~tie_tracing.core.results.Coordinate`.

    Returns:
        A figure with ``n_facts + 2`` traces (facts, CI band, mean).

    Example:
        >>> fig = plot_ie_by_later_step(TIEResult.synthetic(n_facts=2), 2, 0, "resid", n_resamples=100)
        >>> len(fig.data), fig.data[-1].marker.cmid
        (4, 0.0)
    """
    _require(result, TIEResult, "plot_ie_by_later_step", "tt.trace_tie")
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
                line=dict(width=1, color=FACT_LINE, dash="solid" if known[f] else "dot"),
                marker=dict(size=4, color=FACT_LINE),
                opacity=0.6,
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
            fillcolor="rgba(0,0,0,0.12)",
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
            line=dict(width=3, color=MEAN_LINE),
            marker=dict(
                size=10,
                color=mean,
                colorscale=DIVERGING,
                cmid=0.0,
                line=dict(color=MEAN_LINE, width=1),
            ),
            hovertemplate=f"mean over {facts_phrase} at later step "
            "%{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.add_hline(y=0.0, line=dict(color="grey", width=1))
    tie_mean = float(torch.nanmean(used.tie[:, li, si, mi].float()))
    fig.add_hline(
        y=tie_mean,
        line_dash="dash",
        line_color=_sign_colour(tie_mean),
        annotation_text=f"mean TIE = {_fmt(tie_mean)} (γ={result.config.get('decay')})",
    )
    info = _commit_info(used)
    if info is not None:
        idle = np.asarray(info[0].all(0), dtype=bool)  # [T]: idle for every averaged fact
        for k in later:
            if idle[k]:
                fig.add_vrect(
                    x0=k - 0.5,
                    x1=k + 0.5,
                    fillcolor=IDLE_GREY,
                    opacity=0.35,
                    line_width=0,
                    layer="below",
                    name="idle step",
                )
    fig.update_layout(
        title=dict(
            text=f"{unit} of a patch at layer {layer}, step {step}, {module}, mean over "
            f"{facts_phrase} — {result.model_id}",
            subtitle=dict(
                text=_provenance(result, facts_phrase) + "; grey: idle later steps"
                if info is not None
                else _provenance(result, facts_phrase)
            ),
        ),
        xaxis_title="later step k'",
        xaxis=dict(dtick=1),  # steps are integers
        yaxis_title=unit,
        margin=dict(t=110),
    )
    return fig


# ----------------------------------------------------------------------------- trajectories


@dataclass(frozen=True)
class _Trajectory:
    """One trajectory's answer span, read from a TIEResult or a DiffusionResult."""

    states: np.ndarray  # [T, answer_pos] token ids after each step (-1 padding)
    rows: list[dict[str, Any]]  # commit map: position, step, token, object, target
    label: str  # "fact f0" / "row 0"
    which: str  # "clean trajectory" / "corrupted trajectory, noise draw 1" / …
    question: str | None
    answer: str | None


def _decoder(tokenizer: Any) -> Any:
    """A tokenizer with ``decode`` (a model wrapper's ``.tokenizer`` is taken), or ``None``."""
    if tokenizer is None or hasattr(tokenizer, "decode"):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "decode"):
        return inner
    raise TypeError(
        f"tokenizer must have a decode method (a Hugging Face tokenizer, or a model that "
        f"carries one as .tokenizer), got {type(tokenizer).__name__}"
    )


def _trajectory(
    result: TIEResult | DiffusionResult, fact: int | str, trajectory: str | int, tok: Any
) -> _Trajectory:
    if isinstance(result, TIEResult):
        i = _fact_index(result, fact)
        n_noise = int(result.corrupt_tokens.shape[1])
        if trajectory == "clean":
            states, which = result.clean_tokens[i], "clean trajectory"
        elif (
            isinstance(trajectory, int)
            and not isinstance(trajectory, bool)
            and 0 <= trajectory < n_noise
        ):
            states = result.corrupt_tokens[i, trajectory]
            which = f"corrupted trajectory, noise draw {trajectory}"
        else:
            raise ValueError(
                f"trajectory must be 'clean' or a noise draw index 0 … {n_noise - 1}, "
                f"got {trajectory!r}"
            )
        return _Trajectory(
            states=states.cpu().numpy(),
            rows=result.commit_map(i, trajectory),
            label=f"fact {result.fact_ids[i] or f'#{i}'}",
            which=which,
            question=result.questions[i],
            answer=result.answers[i],
        )
    if isinstance(result, DiffusionResult):
        n_rows = len(result.answers)
        if isinstance(fact, bool) or not isinstance(fact, int):
            raise TypeError(
                f"select a DiffusionResult's row by int index (0 … {n_rows - 1}), got {fact!r}"
            )
        if not -n_rows <= fact < n_rows:
            raise IndexError(f"row {fact} out of range for a DiffusionResult of {n_rows} rows")
        row = fact % n_rows
        if trajectory != "clean":
            raise ValueError(
                "a DiffusionResult holds one sampled trajectory per row: choose it with "
                f"fact=<row> and leave trajectory='clean', got trajectory={trajectory!r}"
            )
        if "mask_token_id" not in result.config:
            raise KeyError("this DiffusionResult does not record config['mask_token_id']")
        states = result.answer_tokens(row)
        commits = result.commits(row).tolist()
        offsets = set(result.object_offsets[row]) if result.object_offsets else set()
        object_target = result.config.get("target") == "object"
        rows = [
            {
                "position": p,
                "step": int(commits[p]),
                "token": int(states[-1, p]),
                "object": p in offsets,
                "target": (p in offsets) if object_target else True,
            }
            for p in range(states.shape[-1])
            if int(states[-1, p]) >= 0
        ]
        question = None
        if tok is not None:
            prompt = result.tokens[row, -1, : result.prompt_lengths[row]].tolist()
            question = tok.decode(prompt, skip_special_tokens=True).strip()
        return _Trajectory(
            states=states.cpu().numpy(),
            rows=rows,
            label=f"row {row}",
            which="sampled trajectory",
            question=question,
            answer=result.answers[row],
        )
    raise TypeError(f"expected a TIEResult or a DiffusionResult, got {type(result).__name__}")


def _token_text(tok: Any, token: int) -> str:
    return str(token) if tok is None else str(tok.decode([token]))


def trajectory_table(
    result: TIEResult | DiffusionResult,
    fact: int | str = 0,
    trajectory: str | int = "clean",
    tokenizer: Any = None,
    *,
    as_frame: bool = False,
) -> Any:
    """One trajectory's commit map as a table: which answer token was decided at which step.

    One row per answer position (padding left out), in answer order, with the keys of
    :meth:`~tie_tracing.core.results.TIEResult.commit_map` plus the decoded token:

    * ``position`` — offset within the answer span;
    * ``token`` — the token id after the last step;
    * ``text`` — the decoded token (``tokenizer.decode([id])``), or the id as a string
      without a tokenizer;
    * ``step`` — the step whose forward committed it (``-1``: never committed);
    * ``object`` — the position holds one of the object's tokens;
    * ``target`` — the position counts in ``LP`` (``config["target"]``).

    Args:
        result: a :class:`~tie_tracing.core.results.TIEResult`, or the
            :class:`~tie_tracing.core.sampler.DiffusionResult` of a plain :func:`tt.diffuse` run.
        fact: for a TIEResult a fact index or id; for a DiffusionResult the row index.
        trajectory: ``"clean"`` or (TIEResult only) the index of a corrupted noise draw.
        tokenizer: decodes token ids (a Hugging Face tokenizer, or a model wrapper whose
            ``.tokenizer`` is one); optional.
        as_frame: return a ``pandas.DataFrame`` (needs pandas) instead of a list of dicts.

    Returns:
        A list of dicts (or a DataFrame with those columns).

    Raises:
        IndexError, KeyError: no such fact index / id (row index for a DiffusionResult).
        ValueError: ``trajectory`` is neither ``"clean"`` nor a noise draw of the result.
        TypeError: ``result`` is of another kind, or a DiffusionResult row is not an int.
        ImportError: ``as_frame=True`` without pandas.

    Example:
        >>> r = TIEResult.synthetic(n_facts=2, n_steps=8, answer_len=3)
        >>> [(row["position"], row["step"]) for row in trajectory_table(r, fact="f1")]
        [(0, 0), (1, 2), (2, 5)]
        >>> trajectory_table(r, fact=0)[0]["text"] == str(trajectory_table(r, fact=0)[0]["token"])
        True
    """
    tok = _decoder(tokenizer)
    traj = _trajectory(result, fact, trajectory, tok)
    table = [
        {
            "position": row["position"],
            "token": row["token"],
            "text": _token_text(tok, row["token"]),
            "step": row["step"],
            "object": row["object"],
            "target": row["target"],
        }
        for row in traj.rows
    ]
    if not as_frame:
        return table
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "trajectory_table(..., as_frame=True) needs pandas: pip install pandas "
            "(or call it without as_frame for a list of dicts)"
        ) from None
    return pd.DataFrame(table, columns=["position", "token", "text", "step", "object", "target"])


def plot_trajectory(
    result: TIEResult | DiffusionResult,
    fact: int | str = 0,
    tokenizer: Any = None,
    trajectory: str | int = "clean",
    *,
    title: str | None = None,
) -> go.Figure:
    """When each answer token was decided: denoising step (x) × answer position (y).

    A cell shows the position's token from the step that committed it on (the token is
    bold at its commit step); still-masked cells are light grey. The object's tokens are
    highlighted (orange cells, bold ``★`` row labels), the other committed tokens pale; the
    object-commit step — the step that committed the object's first token — is outlined by
    a dashed column (a layout shape named "object commit"). The title gives the fact's
    question and answer. Read the table behind it with :func:`trajectory_table`.

    Works on a :class:`~tie_tracing.core.results.TIEResult` (the clean trajectory of a traced
    fact, or one of its corrupted noise draws) and on the
    :class:`~tie_tracing.core.sampler.DiffusionResult` of a plain :func:`tt.diffuse` run (``fact``
    is then the row; its question is decoded from the prompt when a tokenizer is given), so
    one can see when the object was decided without tracing.

    Args:
        result: a TIEResult or a DiffusionResult.
        fact: for a TIEResult a fact index or id; for a DiffusionResult the row index.
        tokenizer: decodes token ids (a Hugging Face tokenizer or a model wrapper with
            ``.tokenizer``); without one, cells show token ids.
        trajectory: ``"clean"`` or (TIEResult only) a corrupted noise draw index.
        title: replaces the default title (the question → answer line).

    Returns:
        A figure with one heatmap trace, ``z[position][step]`` = 0 (masked), 1 (committed)
        or 2 (committed object token), cell text the token.

    Raises:
        As :func:`trajectory_table`; ``ValueError`` for a trajectory without answer positions.

    Example:
        >>> r = TIEResult.synthetic(n_facts=2, n_steps=8, answer_len=3)
        >>> fig = plot_trajectory(r, fact="f0")
        >>> [int(v) for v in fig.data[0].z[1]]  # position 1 is committed at step 2
        [0, 0, 2, 2, 2, 2, 2, 2]
        >>> [s.x0 + 0.5 for s in fig.layout.shapes if s.name == "object commit"]
        [0.0]
    """
    tok = _decoder(tokenizer)
    traj = _trajectory(result, fact, trajectory, tok)
    if not traj.rows:
        raise ValueError(f"{traj.label}: the {traj.which} has no answer positions")
    n_steps = int(traj.states.shape[0])
    steps = list(range(n_steps))
    positions = [row["position"] for row in traj.rows]
    z: list[list[int]] = []
    text: list[list[str]] = []
    hover: list[list[str]] = []
    ticktext: list[str] = []
    for row in traj.rows:
        p, c, is_obj = row["position"], row["step"], row["object"]
        word = html.escape(_token_text(tok, row["token"]))
        role = (
            ", ".join(r for r, on in (("object token", is_obj), ("target", row["target"])) if on)
            or "not a target"
        )
        when = f"committed at step {c}" if c >= 0 else "never committed"
        z.append([(2 if is_obj else 1) if 0 <= c <= k else 0 for k in steps])
        text.append([(f"<b>{word}</b>" if k == c else word) if 0 <= c <= k else "" for k in steps])
        hover.append(
            [
                f"position {p}, after step {k}: "
                + (word if 0 <= c <= k else "[masked]")
                + f"<br>{word} {when} ({role})"
                for k in steps
            ]
        )
        ticktext.append(f"<b>{p}: {word} ★</b>" if is_obj else f"{p}: {word}")
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=steps,
            y=positions,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=[
                [0.0, MASKED_COLOUR],
                [0.25, MASKED_COLOUR],
                [0.25, COMMITTED_COLOUR],
                [0.75, COMMITTED_COLOUR],
                [0.75, OBJECT_COLOUR],
                [1.0, OBJECT_COLOUR],
            ],
            zmin=0,
            zmax=2,
            showscale=False,
            xgap=2,
            ygap=2,
            name=traj.which,
        )
    )
    object_rows = [row for row in traj.rows if row["object"]]
    object_step = object_rows[0]["step"] if object_rows else -1
    if object_step >= 0:
        fig.add_shape(
            type="rect",
            name="object commit",
            xref="x",
            yref="y domain",
            x0=object_step - 0.5,
            x1=object_step + 0.5,
            y0=0,
            y1=1,
            line=dict(color=COMMIT_LINE, width=2, dash="dash"),
            fillcolor="rgba(0,0,0,0)",
            layer="above",
        )
        decided = f"object committed at step {object_step}"
    elif object_rows:
        decided = "object never committed"
    else:
        decided = "no object recorded"
    question = traj.question if traj.question is not None else traj.label
    head = (
        f"{traj.label}: {question} → {traj.answer}"
        if traj.question
        else f"{traj.label} → {traj.answer}"
    )
    fig.update_layout(
        title=dict(
            text=title or html.escape(head),
            subtitle=dict(
                text=html.escape(f"{traj.which}, T={n_steps} steps; {decided}")
                + " · orange ★: object tokens · grey: still masked"
            ),
        ),
        xaxis=dict(
            title=dict(text="denoising step (state after the step's forward)"),
            dtick=1,
            range=[-0.5, n_steps - 0.5],
        ),
        yaxis=dict(
            title=dict(text="answer position"),
            tickvals=positions,
            ticktext=ticktext,
            autorange="reversed",
        ),
        height=max(300, 160 + 36 * len(positions)),
        margin=dict(t=100),
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
    _require(result, PositionalResult, "plot_positional", "tt.trace_positional")
    f = _fact_index(result, fact)
    mods = _module_indices(result.modules, modules)
    tokens = result.tokens[f]
    n_tok = len(tokens)
    vals = result.effect() if effect else result.restored
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
        subplot_titles=[_panel_title(result.modules[m]) for m in mods],
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
        subplot_titles=[_panel_title(modules[mi]) for mi in shown],
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


def _score_coloraxis(scores: torch.Tensor, label: str) -> dict[str, Any]:
    """:data:`SEQUENTIAL` from 0 for never-negative scores (β = 0: a mean ``|TIE|``),
    :data:`DIVERGING` centred at 0 when some score is negative (β > 0)."""
    values = _np(scores)
    finite = values[np.isfinite(values)]
    bar = dict(title=dict(text=label))
    if finite.size == 0 or float(finite.min()) >= 0.0:
        return dict(colorscale=SEQUENTIAL, cmin=0.0, colorbar=bar)
    return dict(colorscale=DIVERGING, cmid=0.0, colorbar=bar)


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
    excluded entirely gets no panel. A never-negative landscape (``β = 0``: mean ``|TIE|``)
    is drawn on :data:`SEQUENTIAL` from 0; one with negative scores (``β > 0``) on
    :data:`DIVERGING` centred at 0.

    Example:
        >>> from tie_tracing.analysis.selection import select_coordinate
        >>> fig = plot_selection_landscape(select_coordinate(TIEResult.synthetic()))
        >>> [t.type for t in fig.data]
        ['heatmap', 'heatmap', 'heatmap', 'scatter']
        >>> len(plot_selection_landscape(select_coordinate(TIEResult.synthetic(), modules="resid")).data)
        2
    """
    _require(coordinate, Coordinate, "plot_selection_landscape", "tt.select_coordinate")
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
        coloraxis=_score_coloraxis(coordinate.scores, "score"),
    )
    return fig


def plot_beta_tradeoff(tradeoff: BetaTradeoff, *, title: str | None = None) -> go.Figure:
    """Mean ``|TIE|`` of forget and neighbour facts at the coordinate chosen for each β.

    Example:
        >>> from tie_tracing.analysis.stats import beta_tradeoff
        >>> f, g = TIEResult.synthetic(seed=0), TIEResult.synthetic(seed=1)
        >>> len(plot_beta_tradeoff(beta_tradeoff(f, g, [0.0, 0.5, 1.0])).data)
        2
    """
    _require(tradeoff, BetaTradeoff, "plot_beta_tradeoff", "tt.analysis.beta_tradeoff")
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

    Frequencies lie in ``[0, 1]``: :data:`SEQUENTIAL` colours.

    Example:
        >>> from tie_tracing.analysis.stats import selection_stability
        >>> fig = plot_selection_stability(selection_stability(TIEResult.synthetic(), n_boot=50))
        >>> len(fig.data)
        4
    """
    _require(
        stability, SelectionStability, "plot_selection_stability", "tt.analysis.selection_stability"
    )
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
            colorscale=SEQUENTIAL, cmin=0.0, cmax=1.0, colorbar=dict(title=dict(text="frequency"))
        ),
    )
    return fig


def plot_per_fact_optima(optima: PerFactOptima, *, title: str | None = None) -> go.Figure:
    """Each fact's ``|TIE|`` at the global coordinate (x) versus at its own optimum (y).

    Points on the diagonal are facts the global coordinate serves as well as their own.

    Example:
        >>> from tie_tracing.analysis.stats import per_fact_optima
        >>> len(plot_per_fact_optima(per_fact_optima(TIEResult.synthetic())).data)
        2
    """
    _require(optima, PerFactOptima, "plot_per_fact_optima", "tt.analysis.per_fact_optima")
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


def _static_render_works(fmt: str) -> bool:
    """Whether kaleido really renders here: a tiny figure is exported once (a probe that
    starts the browser, unlike :func:`static_export_available`)."""
    if not static_export_available():
        return False
    import plotly.io as pio

    try:
        pio.to_image(go.Figure(), format=fmt, width=20, height=20)
    except Exception:  # noqa: BLE001 - any failure means: no static rendering here
        return False
    return True


def notebook_figures(*, static: bool | None = None, fmt: str = "png") -> str:
    """Make figures shown in a notebook carry a static rendering next to the interactive one.

    Sets ``plotly.io.renderers.default`` to ``"plotly_mimetype+notebook"`` (interactive in
    JupyterLab, and with plotly.js inlined in the output, so exported HTML shows the figures
    offline) plus ``"+png"`` (or ``"+svg"``) when a static rendering works: GitHub and other
    viewers that run no JavaScript then show the image. With ``static=None`` (default) it
    tries kaleido once on a tiny figure and quietly keeps the interactive renderers alone
    when that fails (no kaleido, no Chrome); ``static=True``/``False`` forces the choice.
    Outside an IPython kernel the ``notebook`` part (which injects plotly.js into the
    notebook's output) is left out.

    Returns:
        The renderer string now in use.

    Example:
        >>> notebook_figures(static=False)  # in a plain Python process
        'plotly_mimetype'
    """
    import plotly.io as pio

    if fmt not in ("png", "svg"):
        raise ValueError(f"fmt must be 'png' or 'svg', got {fmt!r}")
    if static is None:
        static = _static_render_works(fmt)
    try:
        from IPython import get_ipython

        in_kernel = get_ipython() is not None
    except ImportError:
        in_kernel = False
    renderer = (
        "plotly_mimetype" + ("+notebook" if in_kernel else "") + (f"+{fmt}" if static else "")
    )
    pio.renderers.default = renderer
    return renderer


def _is_local_script(src: str) -> bool:
    """Whether a script path loads from disk (not ``cdn``, not ``http(s)://``, not ``//``)."""
    return src.endswith(".js") and not src.startswith(("http://", "https://", "//"))


def network_scripts(html_text: str) -> list[str]:
    """The ``<script src=...>`` URLs of an HTML page that load from the network (a figure
    that needs one is blank offline).

    Example:
        >>> network_scripts('<script src="https://cdn.plot.ly/plotly-3.0.1.min.js"></script>')
        ['https://cdn.plot.ly/plotly-3.0.1.min.js']
        >>> network_scripts('<script charset="utf-8" src="plotly.min.js"></script>')
        []
    """
    import re

    sources = re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", html_text, flags=re.I)
    return [src for src in sources if src.startswith(("http://", "https://", "//"))]


def _bundle_plotlyjs(directory: Path) -> list[Path]:
    """Write ``plotly.min.js`` (the installed plotly's bundle) into ``directory`` unless an
    identical copy is there; returns the path when it wrote one."""
    from plotly.offline import get_plotlyjs

    target = directory / "plotly.min.js"
    data = get_plotlyjs().encode("utf-8")
    if target.is_file() and target.read_bytes() == data:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    return [target]


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
    (e.g. ``save_figure(fig, "figures/figure2", formats=("html", "png"))``). Every HTML it
    writes opens offline: self-contained by default (``include_plotlyjs=True``, ~4 MB), or
    ``"directory"``, a small file that loads ``plotly.min.js`` from beside it (written there
    once: what a folder of figures wants). Options that load plotly.js from the network
    (``"cdn"``, a URL) or not at all (``False``) would write a page that is blank offline and
    are refused. Static formats need kaleido and a Chrome/Chromium; when either is missing
    :class:`StaticExportError` is raised before anything is written, saying what to install.

    Returns:
        The paths written.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> [p.name for p in save_figure(go.Figure(), d / "a.html", include_plotlyjs="directory")]
        ['plotly.min.js', 'a.html']
    """
    if include_plotlyjs is not True and include_plotlyjs != "directory":
        if not (isinstance(include_plotlyjs, str) and _is_local_script(include_plotlyjs)):
            raise ValueError(
                f"include_plotlyjs={include_plotlyjs!r} writes a figure that is blank offline "
                "(plotly.js from the network, or none); use 'directory' (plotly.min.js written "
                "beside the html) or True (embedded, ~4 MB)"
            )
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
            if include_plotlyjs == "directory":
                written.extend(_bundle_plotlyjs(target.parent))
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
