"""Layer 1, the core: what every trace, edit and evaluation stands on.

* :mod:`.errors` — the error classes; :mod:`._io` — atomic writes and the one serialiser;
* :mod:`.backbones` — the architecture table (the only place that knows module paths);
  :mod:`._nnsight` — every touch of nnsight internals; :mod:`.model` — ``load_model`` and
  :class:`TracedModel`; :mod:`.context` — :class:`ForwardContext`, the state of a running
  forward (``model.at(ctx)``); :mod:`.fingerprint` — which model a saved object belongs to;
* :mod:`.prompting` — the token format; :mod:`.facts` — :class:`Fact` and the TOFU/RWKU
  loaders (the shipped files live in ``tie_tracing/data/``);
* :mod:`.sampler` — the diffusion loop (SPEC §4); :mod:`.samplers` — the sampler configs;
  :mod:`.commit` — the step rule both use (transfer schedule, keyed noise, the
  low-confidence commit); :mod:`.likelihood` — ``answer_logprob``;
* :mod:`.results` — the result values tracing constructs (:class:`TIEResult`,
  :class:`PositionalResult`, :class:`Coordinate`).

Nothing here imports another layer of the package (``tests/test_layers.py`` checks it).
"""

from .backbones import BACKBONES, MODULES, Backbone
from .context import STANDALONE, ForwardContext
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
from .facts import (
    Fact,
    draw_people,
    load_refusals,
    load_rwku,
    load_tofu,
    locate_name,
    locate_subject,
    rwku_targets,
)
from .fingerprint import describe_model, model_fingerprint
from .likelihood import answer_logprob
from .model import TracedModel, load_model
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

__all__ = [
    "BACKBONES",
    "MODULES",
    "SAMPLERS",
    "STANDALONE",
    "Backbone",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Coordinate",
    "DiffusionResult",
    "DreamSampler",
    "Fact",
    "ForwardContext",
    "FastDLLMSampler",
    "LLaDASampler",
    "NonFiniteActivationError",
    "ObjectNotFoundError",
    "PositionalResult",
    "ReMaskingSampler",
    "ResultFileError",
    "Sampler",
    "ShapeError",
    "SubjectNotFoundError",
    "TIEPair",
    "TIEResult",
    "TieTracingError",
    "TracedModel",
    "UnsupportedModelError",
    "UnsupportedSamplerError",
    "answer_logprob",
    "describe_model",
    "diffuse",
    "draw_people",
    "load_model",
    "load_refusals",
    "load_rwku",
    "load_tofu",
    "locate_name",
    "locate_subject",
    "make_sampler",
    "model_fingerprint",
    "rwku_targets",
    "tie_from_ie",
]
