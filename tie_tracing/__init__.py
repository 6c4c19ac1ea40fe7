"""tie_tracing: diffusion-time causal tracing and edit memories for masked diffusion LMs.

Import as ``import tie_tracing as tt``. Each public name below is documented where it is
defined; ``docs/SPEC.md`` in the repository gives the equations. Data flows one way:
backbones → diffusion loop (model, sampler) → tracing / editing → analysis → plots and CLI.
"""

from ._version import __version__
from .analysis.compare import (
    aligned_positional,
    category_support,
    compare_paradigms,
    localisation_summary,
    pick_layers,
)
from .analysis.selection import select_coordinate
from .analysis.stats import (
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
from .core.backbones import BACKBONES, MODULES, Backbone
from .core.errors import (
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
from .core.facts import Fact, load_refusals, load_rwku, load_tofu, locate_subject, rwku_targets
from .core.likelihood import answer_logprob
from .core.model import TracedModel, load_model
from .core.results import Coordinate, PositionalResult, ResultFileError, TIEResult, tie_from_ie
from .core.sampler import DiffusionResult, diffuse
from .core.samplers import (
    SAMPLERS,
    DreamSampler,
    FastDLLMSampler,
    LLaDASampler,
    ReMaskingSampler,
    Sampler,
    make_sampler,
)
from .editing import EditConfig, EditHandle, EditMemory, EditMemoryError, edit_efficacy
from .evaluation.metrics import (
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
from .evaluation.unlearning import LoraSpec, UnlearnConfig, UnlearningError, UnlearnLog, unlearn
from .figures.compare import plot_ar_vs_diffusion
from .figures.plotting import (
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
from .tracing.patching import (
    Capture,
    Corruption,
    Patch,
    PatchedRun,
    Query,
    SweepSettings,
    encode_query,
    run_patched,
)
from .tracing.positional import PositionalConfig, reference_positional, trace_positional
from .tracing.reference import reference_ie
from .tracing.tie import TraceConfig, trace_tie
from .zoo.corpus import load_facts
