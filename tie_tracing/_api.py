"""The public names of :mod:`tie_tracing`, imported eagerly.

``import tie_tracing`` itself is cheap (the command line's ``--help`` loads no torch); the
package's ``__getattr__`` imports this module on the first access of a public name, so
``tt.load_model`` and the rest resolve here. Add a public name by importing it below and
listing it in ``__all__``.
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
    TIEPair,
    TIEResult,
    TieTracingError,
    UnsupportedModelError,
    UnsupportedSamplerError,
    answer_logprob,
    diffuse,
    draw_people,
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
    UnlearningReport,
    UnlearnLog,
    evaluate,
    evaluate_unlearning,
    unlearn,
    unlearning_depth,
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
    prose,
)
from .tracing import PositionalConfig, TraceConfig, trace_positional, trace_tie
from .zoo.corpus import load_facts

__all__ = [
    # models, facts, the diffusion loop
    "load_model",
    "load_facts",
    "draw_people",
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
    "TIEPair",
    "trace_positional",
    "PositionalConfig",
    "PositionalResult",
    "select_coordinate",
    "Coordinate",
    # figures
    "prose",
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
    "evaluate_unlearning",
    "UnlearningReport",
    "unlearning_depth",
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
