"""The AR-versus-diffusion figure (SPEC §10.3): three maps of the same facts side by side.

The maps and their statistics come from :mod:`tie_tracing.analysis.compare`
(:func:`~tie_tracing.analysis.compare.aligned_positional`,
:func:`~tie_tracing.analysis.compare.localisation_summary`); this module only draws them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import torch

from ..analysis.compare import (
    CATEGORIES,
    LocalisationSummary,
    _aligned_mean,
    _check_same_facts,
    _module_slice,
    localisation_summary,
)
from ..analysis.selection import _analysis_tensor
from ..analysis.stats import _np
from ..core.results import PositionalResult, TIEResult
from .plotting import COMMIT_LINE, DIVERGING, _commit_counts

__all__ = ["plot_ar_vs_diffusion"]


def plot_ar_vs_diffusion(
    ar_positional: PositionalResult,
    mdlm_positional: PositionalResult,
    mdlm_tie: TIEResult,
    *,
    module: str = "mlp",
    normalized: bool = False,
    title: str | None = None,
):
    """The three maps of one module side by side, statistics in the panel titles.

    Panels: AR positional and MDLM positional (fact-mean effect per token category × layer,
    see :func:`~tie_tracing.analysis.compare.aligned_positional`; categories fewer than a quarter of the facts have are
    dropped, partial ones are labelled with their fact count) and MDLM TIE (fact-mean
    Eq. 4 per denoising step × layer; the steps at which the clean trajectories committed the
    object's first token are outlined, dashed — shapes named "object commit", thicker for more
    facts — and counted in the panel title, SPEC §5). Each panel averages the facts its model knows
    (``known_only()``, as :func:`~tie_tracing.analysis.compare.localisation_summary`); a panel title says "n of N facts"
    when some are left out. Each panel has its own colour scale (the units differ
    unless ``normalized``). Returns a ``plotly.graph_objects.Figure``; shows and writes nothing.

    Example:
        >>> fig = plot_ar_vs_diffusion(PositionalResult.synthetic(), PositionalResult.synthetic(),
        ...                            TIEResult.synthetic(n_facts=3), module="resid")  # doctest: +SKIP
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _check_same_facts(ar_positional, mdlm_positional, mdlm_tie)
    sums = [
        localisation_summary(r, module=module, normalized=normalized)
        for r in (ar_positional, mdlm_positional, mdlm_tie)
    ]
    names = ("AR positional", "MDLM positional", "MDLM TIE")
    unit = "normalised effect" if normalized else None
    panels = []
    for r in (ar_positional.known_only(), mdlm_positional.known_only()):
        mi = _module_slice(r.modules, module)[0]
        m, support = _aligned_mean(r, normalized, [mi])
        m = m[..., 0]  # [layer, category]
        keep = [c for c in range(len(CATEGORIES)) if not torch.isnan(m[:, c]).all()]
        cats = [
            CATEGORIES[c] + (f" (n={int(support[c])})" if support[c] < r.n_facts else "")
            for c in keep
        ]
        label = unit or (
            "Δp (object's first token)" if r.metric == "prob" else "Δlog p (object's first token)"
        )
        panels.append((_np(m[:, keep]), cats, list(r.layers), label))
    known_tie = mdlm_tie.known_only()
    view = known_tie.normalized() if normalized else known_tie
    mi = _module_slice(view.modules, module)[0]
    commits = _object_commits(known_tie)
    panels.append(
        (
            _np(torch.nanmean(_analysis_tensor(view.tie[..., mi]), 0)),
            [f"step {k}" for k in view.steps],
            list(view.layers),
            unit or "TIE (nats)",
        )
    )

    def subtitle(name: str, s: LocalisationSummary) -> str:
        where = s.peak.get("category", s.peak.get("step"))
        where = f"step {where}" if "step" in s.peak else where
        facts = (
            f", {s.n_facts} known of {s.n_traced} facts"
            if s.n_traced is not None and s.n_facts < s.n_traced
            else ""
        )
        text = (
            f"{name} ({html.escape(s.model_id)}{facts})<br>peak L{s.peak['layer']} @ "
            f"{html.escape(str(where))}; top-1 {s.top_share.get(1, math.nan):.0%}, H={s.entropy:.2f}"
        )
        if "step" in s.peak:
            text += "<br>" + (
                f"object committed (clean run): {_commit_counts(commits)}"
                if commits is not None
                else "no commit maps recorded"
            )
        return text

    fig = make_subplots(
        rows=1,
        cols=3,
        horizontal_spacing=0.09,
        subplot_titles=[subtitle(n, s) for n, s in zip(names, sums)],
    )
    for col, (z, x, y, label) in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                colorscale=DIVERGING,
                zmid=0.0,
                name=names[col - 1],
                colorbar=dict(
                    title=dict(text=label.split(" (")[0] if col < 3 else label, side="right"),
                    x=0.285 + 0.355 * (col - 1),
                    len=0.8,
                    thickness=10,
                ),
                hovertemplate=f"{names[col - 1]}<br>layer %{{y}}, %{{x}}<br>{label}: %{{z:.4g}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(title_text="layer" if col == 1 else None, dtick=1, row=1, col=col)
    if commits is not None:
        for shape in _commit_outlines(commits, view.steps, col=3):
            fig.add_shape(shape)
    pos_sums = sums[:2]
    note = "<br>".join(
        f"{n}: |effect| share at last subject {s.share_last_subject:.0%}, at last prompt token "
        f"{s.share_last_prompt:.0%}, at the prediction position {s.share_prediction:.0%}; "
        f"peak at last subject for {s.frac_peak_at_last_subject:.0%} of facts"
        for n, s in zip(names[:2], pos_sums)
    )
    fig.add_annotation(
        text=note,
        xref="paper",
        yref="paper",
        x=0.0,
        y=-0.62,
        showarrow=False,
        xanchor="left",
        font=dict(size=11),
    )
    fig.update_layout(
        title=title
        or (
            f"AR versus diffusion on the same {ar_positional.n_facts} facts — module {module}"
            + (" (normalised)" if normalized else "")
        ),
        margin=dict(b=200, t=110),
        height=520,  # no fixed width: the figure fills its column (a 1280 px notebook, too)
    )
    fig.layout.meta = {"rows": [s.as_row(n) for n, s in zip(names, sums)]}
    return fig


def _object_commits(result: TIEResult) -> list[int] | None:
    """Per fact, the clean trajectory's object-commit step (``None``: no commit maps)."""
    if "mask_token_id" not in result.config:
        return None
    return [int(k) for k in result.object_commit_step.tolist()]


def _commit_outlines(commits: Sequence[int], steps: Sequence[int], *, col: int) -> list[dict]:
    """Dashed outlines of the object-commit steps' columns in subplot ``col`` (SPEC §5: the
    figures mark the commit step); line width grows with the share of facts committing there.
    The x axis is categorical (``"step k"``), so a column's centre is its index in ``steps``."""
    counts: dict[int, int] = {}
    for k in commits:
        if k >= 0:
            counts[k] = counts.get(k, 0) + 1
    total = max(1, len(commits))
    order = list(steps)
    suffix = "" if col == 1 else str(col)
    return [
        dict(
            type="rect",
            name="object commit",
            xref=f"x{suffix}",
            yref=f"y{suffix} domain",
            x0=order.index(k) - 0.5,
            x1=order.index(k) + 0.5,
            y0=0,
            y1=1,
            line=dict(color=COMMIT_LINE, width=1.0 + 2.0 * n / total, dash="dash"),
            fillcolor="rgba(0,0,0,0)",
            layer="above",
        )
        for k, n in sorted(counts.items())
        if k in order
    ]
