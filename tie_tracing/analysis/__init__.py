"""Layer 3, analysis: summaries of tracing results; nothing here runs a model.

* :mod:`.selection` — Eq. 5, :func:`select_coordinate` (SPEC §7);
* :mod:`.stats` — bootstrap CIs, the selection studies (landscape, β trade-off, stability,
  per-fact optima), seed stability and localisation statistics;
* :mod:`.compare` — the AR-versus-diffusion summaries (SPEC §6, §10.3).
"""

from .compare import (
    CATEGORIES,
    LocalisationSummary,
    Rows,
    aligned_positional,
    category_support,
    compare_paradigms,
    edit_efficacy,
    localisation_summary,
    pick_layers,
    plot_ar_vs_diffusion,
    token_categories,
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
    localisation_stats,
    per_fact_optima,
    score_landscape,
    seed_stability,
    selection_stability,
)

__all__ = [
    "CATEGORIES",
    "BetaTradeoff",
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
    "compare_paradigms",
    "edit_efficacy",
    "localisation_stats",
    "localisation_summary",
    "per_fact_optima",
    "pick_layers",
    "plot_ar_vs_diffusion",
    "score_landscape",
    "seed_stability",
    "select_coordinate",
    "selection_stability",
    "token_categories",
]
