"""Layer 3, analysis: summaries of tracing results; nothing here runs a model.

* :mod:`.selection` — Eq. 5, :func:`select_coordinate` (SPEC §7);
* :mod:`.stats` — bootstrap CIs (per cell, and :func:`mean_ci` of a 1-D sample), the selection studies (landscape, β trade-off, stability,
  per-fact optima), seed stability and localisation statistics;
* :mod:`.compare` — the AR-versus-diffusion summaries (SPEC §6, §10.3);
* :mod:`.summary` — the summary of a trace that ``tie-tracing figure2`` reports
  (:func:`trace_summary`: selected cell with CIs, commit steps, concentration).
* :mod:`.figure2` — Figure 2's numbers: cluster-bootstrap CIs over people, the contrast
  object − name, the final-answer effect, the immediate share, the commit-aligned view and
  the cells zero by architecture (SPEC §5, §10.1).
"""

from .compare import (
    CATEGORIES,
    LocalisationSummary,
    Rows,
    aligned_positional,
    category_support,
    compare_paradigms,
    localisation_summary,
    pick_layers,
    token_categories,
)
from .figure2 import (
    Figure2Data,
    MapStats,
    cluster_bootstrap_ci,
    commit_aligned,
    figure2_data,
    final_effect,
    immediate_part,
)
from .selection import select_coordinate
from .stats import (
    BetaTradeoff,
    LocalisationStats,
    PerFactOptima,
    SeedStability,
    SelectionStability,
    beta_tradeoff,
    bootstrap_ci,
    cluster_mean_ci,
    localisation_stats,
    mean_ci,
    per_fact_optima,
    score_landscape,
    seed_stability,
    selection_stability,
)
from .summary import cell_ci, commit_summary, tie_concentration, trace_summary

__all__ = [
    "CATEGORIES",
    "BetaTradeoff",
    "Figure2Data",
    "MapStats",
    "LocalisationStats",
    "LocalisationSummary",
    "PerFactOptima",
    "Rows",
    "SeedStability",
    "SelectionStability",
    "aligned_positional",
    "beta_tradeoff",
    "bootstrap_ci",
    "category_support",
    "cell_ci",
    "cluster_bootstrap_ci",
    "cluster_mean_ci",
    "commit_aligned",
    "commit_summary",
    "compare_paradigms",
    "figure2_data",
    "final_effect",
    "immediate_part",
    "localisation_stats",
    "localisation_summary",
    "mean_ci",
    "per_fact_optima",
    "pick_layers",
    "score_landscape",
    "seed_stability",
    "select_coordinate",
    "selection_stability",
    "tie_concentration",
    "token_categories",
    "trace_summary",
]
