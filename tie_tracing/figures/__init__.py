"""Layer 5, figures: Plotly figures of results and summaries (SPEC §10.1–3).

Every ``plot_*`` function takes a result or a summary and returns a
``plotly.graph_objects.Figure``; none shows it or writes a file. :func:`save_figure` is the one
function that writes (see :mod:`.plotting`). :mod:`.compare` draws the AR-versus-diffusion
figure.
"""

from .compare import plot_ar_vs_diffusion
from .notebook import figure_dir, prose
from .plotting import (
    StaticExportError,
    notebook_figures,
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

__all__ = [
    "StaticExportError",
    "figure_dir",
    "prose",
    "notebook_figures",
    "plot_ar_vs_diffusion",
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
