"""Layer 4, evaluation: SPEC §9 metrics and the §10.6 training-time unlearning baselines.

* :mod:`.metrics` — truth ratio, forget quality, exact match, ROUGE-L, paired tests and
  :func:`evaluate` (an :class:`Evaluation` per split, with bootstrap CIs);
* :mod:`.unlearning` — :func:`unlearn` (gradient ascent, NPO, SimNPO, RMU, … on the
  masked-diffusion loss) and its :class:`UnlearnConfig` / :class:`UnlearnLog`.

Evaluation does not import editing (an edited model is evaluated as any other model).
"""

from .metrics import (
    Evaluation,
    Metric,
    PairedTest,
    evaluate,
    exact_match,
    forget_quality,
    forget_tr_score,
    mean_ci,
    normalize_answer,
    paired_ttest,
    retain_tr_score,
    rouge_l_recall,
    significance_marker,
    truth_ratio,
)
from .unlearning import METHODS, LoraSpec, UnlearnConfig, UnlearningError, UnlearnLog, unlearn

__all__ = [
    "METHODS",
    "Evaluation",
    "LoraSpec",
    "Metric",
    "PairedTest",
    "UnlearnConfig",
    "UnlearnLog",
    "UnlearningError",
    "evaluate",
    "exact_match",
    "forget_quality",
    "forget_tr_score",
    "mean_ci",
    "normalize_answer",
    "paired_ttest",
    "retain_tr_score",
    "rouge_l_recall",
    "significance_marker",
    "truth_ratio",
    "unlearn",
]
