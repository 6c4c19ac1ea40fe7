"""The public names of :mod:`tie_tracing`, imported eagerly.

``import tie_tracing`` itself is cheap (the command line's ``--help`` loads no torch); the
package's ``__getattr__`` imports this module on the first access of a public name, so
``tt.load_model`` and the rest resolve here. Add a public name by importing it below.
"""

from .analysis import (
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
from .backbones import BACKBONES, MODULES, Backbone
from .compare import (
    aligned_positional,
    category_support,
    compare_paradigms,
    edit_efficacy,
    localisation_summary,
    pick_layers,
    plot_ar_vs_diffusion,
)
from .editing import EditConfig, EditHandle, EditMemory, EditMemoryError
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    NonFiniteActivationError,
    ObjectNotFoundError,
    ShapeError,
    SubjectNotFoundError,
    TieTracingError,
    UnsupportedModelError,
    UnsupportedSamplerError,
)
from .evaluation import (
    Evaluation,
    Metric,
    PairedTest,
    evaluate,
    exact_match,
    forget_quality,
    forget_tr_score,
    mean_ci,
    paired_ttest,
    retain_tr_score,
    rouge_l_recall,
    truth_ratio,
)
from .facts import Fact, load_refusals, load_rwku, load_tofu, locate_subject, rwku_targets
from .likelihood import answer_logprob
from .model import TracedModel, load_model
from .notebook import figure_dir, prose
from .patching import (
    Capture,
    Corruption,
    Patch,
    PatchedRun,
    Query,
    SweepSettings,
    encode_query,
    run_patched,
)
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
from .positional import PositionalConfig, reference_positional, trace_positional
from .reference import reference_ie
from .results import (
    Coordinate,
    PositionalResult,
    ResultFileError,
    TIEPair,
    TIEResult,
    tie_from_ie,
)
from .sampler import DiffusionResult, diffuse
from .samplers import (
    SAMPLERS,
    DreamSampler,
    FastDLLMSampler,
    LLaDASampler,
    ReMaskingSampler,
    Sampler,
    make_sampler,
)
from .selection import select_coordinate
from .tie import TraceConfig, trace_tie
from .unlearning import LoraSpec, UnlearnConfig, UnlearningError, UnlearnLog, unlearn
from .zoo.corpus import load_facts
