"""Layer 4, evaluation: SPEC §9 metrics, the unlearning suite and the §10.6 training-time baselines.

* :mod:`.metrics` — truth ratio, forget quality, exact match, ROUGE-L, model utility, paired
  tests and :func:`evaluate` (an :class:`Evaluation` per split, with bootstrap CIs);
* :mod:`.objects` — object-level measurements: the object leak of a sampled answer, the
  object's log-probability, the over-/under-forgetting flag;
* :mod:`.references` — the :class:`Method` protocol (a row of an unlearning table is a context
  manager that yields the model to query) and the reference rows (no edit, the retain-only
  model, the two string-match filters, random update directions);
* :mod:`.depth` — :func:`unlearning_depth`, the UDS-style two-stage patching score;
* :mod:`.suite` — :func:`evaluate_unlearning` (an :class:`UnlearningReport`) on the standard
  splits of :func:`unlearning_splits`, with the sampler sweep and the recall gate;
* :mod:`.unlearning` — :func:`unlearn` (gradient ascent, NPO, SimNPO, RMU, … on the
  masked-diffusion loss) and its :class:`UnlearnConfig` / :class:`UnlearnLog`.

Evaluation does not import editing (an edited model is evaluated as any other model; a memory
is anything whose ``install(model)`` is a context manager).
"""

from .depth import DepthResult, depth_scores, unlearning_depth
from .metrics import (
    Evaluation,
    Metric,
    PairedTest,
    evaluate,
    exact_match,
    forget_quality,
    forget_tr_score,
    harmonic_mean,
    mean_ci,
    model_utility,
    normalize_answer,
    paired_ttest,
    retain_tr_score,
    rouge_l_recall,
    significance_marker,
    truth_ratio,
)
from .objects import (
    distance_flag,
    object_leak,
    object_logprob,
    object_recall,
    object_token_ids,
    sample_masked,
    sampled_leaks,
)
from .references import (
    Method,
    StringMatch,
    reference_methods,
    string_match_random,
    string_match_route,
)
from .suite import (
    SweepPoint,
    UnlearningReport,
    UnlearningSplit,
    default_sweep,
    evaluate_unlearning,
    probe_recall,
    unlearning_splits,
)
from .unlearning import METHODS, LoraSpec, UnlearnConfig, UnlearningError, UnlearnLog, unlearn

__all__ = [
    "METHODS",
    "DepthResult",
    "Evaluation",
    "LoraSpec",
    "Method",
    "Metric",
    "PairedTest",
    "StringMatch",
    "SweepPoint",
    "UnlearnConfig",
    "UnlearnLog",
    "UnlearningError",
    "UnlearningReport",
    "UnlearningSplit",
    "default_sweep",
    "depth_scores",
    "distance_flag",
    "evaluate",
    "evaluate_unlearning",
    "exact_match",
    "forget_quality",
    "forget_tr_score",
    "harmonic_mean",
    "mean_ci",
    "model_utility",
    "normalize_answer",
    "object_leak",
    "object_logprob",
    "object_recall",
    "object_token_ids",
    "paired_ttest",
    "probe_recall",
    "reference_methods",
    "retain_tr_score",
    "rouge_l_recall",
    "sample_masked",
    "sampled_leaks",
    "significance_marker",
    "string_match_random",
    "string_match_route",
    "truth_ratio",
    "unlearn",
    "unlearning_depth",
    "unlearning_splits",
]
