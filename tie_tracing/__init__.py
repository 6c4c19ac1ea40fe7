"""tie_tracing: diffusion-time causal tracing and edit memories for masked diffusion LMs.

Import as ``import tie_tracing as tt``. The top level holds what a study needs (SPEC §12):
loading models and facts, the diffusion loop, tracing, the coordinate choice, the figures,
the edit memory, evaluation and unlearning, with their result, config and error classes.
Everything else lives in the layer it belongs to, each a namespace of its own::

    tt.core        models, backbones, facts, the diffusion loop and samplers, results, I/O
    tt.tracing     patching, the TIE engine, positional tracing, references, sharding
    tt.analysis    Eq. 5, bootstrap CIs, selection and seed stability, AR vs diffusion
    tt.editing     the edit memory (algebra, capture, gate, install, persistence, efficacy)
    tt.evaluation  SPEC §9 metrics and the unlearning baselines
    tt.figures     every figure (plot_*, save_figure, notebook_figures)
    tt.zoo         the embedded corpus, tokenizer and models

Each name is documented where it is defined; ``docs/SPEC.md`` gives the equations and
``docs/CONTRACTS.md`` the layers (a module imports only its own layer and lower ones).
"""

from . import analysis, core, editing, evaluation, figures, tracing, zoo
from ._version import __version__
from .analysis import select_coordinate
from .core import (
    CheckpointError,
    CheckpointNotFoundError,
    Coordinate,
    DiffusionResult,
    DreamSampler,
    Fact,
    LLaDASampler,
    NonFiniteActivationError,
    ObjectNotFoundError,
    PositionalResult,
    ResultFileError,
    ShapeError,
    SubjectNotFoundError,
    TIEResult,
    TieTracingError,
    UnsupportedModelError,
    UnsupportedSamplerError,
    answer_logprob,
    diffuse,
    load_model,
    load_rwku,
    load_tofu,
)
from .editing import EditConfig, EditMemory, EditMemoryError
from .evaluation import (
    Evaluation,
    LoraSpec,
    UnlearnConfig,
    UnlearningError,
    UnlearnLog,
    evaluate,
    unlearn,
)
from .figures import (
    StaticExportError,
    plot_ar_vs_diffusion,
    plot_beta_tradeoff,
    plot_ie_by_later_step,
    plot_per_fact_optima,
    plot_positional,
    plot_selection_landscape,
    plot_selection_stability,
    plot_tie_heatmaps,
    plot_trajectory,
)
from .tracing import PositionalConfig, TraceConfig, trace_positional, trace_tie
from .zoo.corpus import load_facts

__all__ = [
    # models, facts, the diffusion loop
    "load_model",
    "load_facts",
    "load_tofu",
    "load_rwku",
    "Fact",
    "diffuse",
    "DiffusionResult",
    "LLaDASampler",
    "DreamSampler",
    "answer_logprob",
    # tracing and the coordinate choice
    "trace_tie",
    "TraceConfig",
    "TIEResult",
    "trace_positional",
    "PositionalConfig",
    "PositionalResult",
    "select_coordinate",
    "Coordinate",
    # figures
    "plot_tie_heatmaps",
    "plot_ie_by_later_step",
    "plot_trajectory",
    "plot_positional",
    "plot_selection_landscape",
    "plot_beta_tradeoff",
    "plot_selection_stability",
    "plot_per_fact_optima",
    "plot_ar_vs_diffusion",
    # the edit memory
    "EditMemory",
    "EditConfig",
    # evaluation and unlearning
    "evaluate",
    "Evaluation",
    "unlearn",
    "UnlearnConfig",
    "LoraSpec",
    "UnlearnLog",
    # errors
    "TieTracingError",
    "UnsupportedModelError",
    "UnsupportedSamplerError",
    "SubjectNotFoundError",
    "ObjectNotFoundError",
    "ShapeError",
    "NonFiniteActivationError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ResultFileError",
    "EditMemoryError",
    "UnlearningError",
    "StaticExportError",
    # the layers
    "core",
    "tracing",
    "analysis",
    "editing",
    "evaluation",
    "figures",
    "zoo",
    "__version__",
]
