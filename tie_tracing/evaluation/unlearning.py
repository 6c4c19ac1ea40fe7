"""Training-time unlearning baselines on a masked diffusion LM (SPEC §10.6).

:func:`unlearn` runs one of open-unlearning's gradient methods — gradient ascent (``"ga"``),
gradient difference (``"gd"``), NPO, SimNPO and RMU — on a deep copy of a
:class:`~tie_tracing.core.model.TracedModel`, so the edit memory (a training-free intervention)
can be set beside them on the same model, facts and metrics. The definitions and defaults
follow open-unlearning; what changes is the likelihood they are written in:

* **The masked-diffusion loss** (LLaDA's SFT objective, ``objective="diffusion"``). For a fact
  with prompt ``p`` and answer ``a`` of ``L`` tokens, draw ``t ~ U(eps, 1)``, mask each answer
  token independently with probability ``t`` (the prompt is never masked), and score

      ℓ(a) = (1 / L) · Σ_{i masked} −log p_θ(a_i | p, a_masked) / t,

  a per-token negative log-likelihood bound (its expectation over the mask is the mean
  per-token cross-entropy of a fully-supervised position: ``E[1{masked}/t] = 1``). It plays
  the part of the causal LM's token-mean NLL in GA, GD and every retain term.
* **NPO and SimNPO's log-likelihoods** ``log π(a | p)`` come from the package's own estimators
  (:func:`tie_tracing.answer_logprob`), re-implemented differentiably in
  :func:`differentiable_logprob`: ``"masked"`` (the whole answer masked once, one forward —
  the sampler's ``LP(0)``, what ForgetLP reports; the default) or ``"elbo"`` (LLaDA's
  Monte-Carlo bound with ``mc`` stratified draws). NPO's reference model is the frozen base,
  scored on the same masks.
* On a causal model (``objective="ar"``) every term is the ordinary teacher-forced NLL.

Per step, with a batch of forget facts ``F`` and retain facts ``R`` (α = ``retain_weight``):

=========  ===========================================================================
``ga``     ``−mean_F ℓ``
``gd``     ``−mean_F ℓ + α · mean_R ℓ``
``npo``    ``mean_F −(2/β) log σ(β (NLL_θ − NLL_ref)) + α · mean_R ℓ``, ``NLL = −log π``, β = 0.1
``simnpo`` ``γ · mean_F −(2/β) log σ(β (NLL_θ / L − δ)) + α · mean_R ℓ``, β = 4.5, γ = 0.125, δ = 0
``rmu``    ``mean_F (h_l − c·u)² + rmu_alpha · mean_R (h_l − h_l^ref)²``, squares averaged over
           hidden units and answer positions,
           ``h_l`` the residual stream after block ``rmu_layer`` on the noised input, ``u`` a
           fixed random unit vector; only the MLP sub-layers of blocks ``l−2 … l`` train
=========  ===========================================================================

``converged=True`` is the paper's converged protocol: a retain-NLL anchor (``α · mean_R ℓ``,
added to the methods that lack one: ``ga`` and ``rmu``), gradient clipping at ``grad_clip``
(1.0), and early stopping when the mean RetainLP on the monitor set moves by more than
``max_retain_drift`` nats (default 1) from the base model's, in which case the parameters of
the last evaluation within the threshold are restored and returned. Unmitigated runs
(``converged=False``) are the methods as defined: no clipping, no stopping.

Full fine-tuning (``lora=None``) trains a deep copy of the model; ``lora=dict(r=..., alpha=...)``
injects a LoRA adapter through ``peft`` into a structural copy that *shares* the base weights
(frozen, so an 8B model is not duplicated; the base's ``requires_grad`` flags are restored
afterwards). Either way the base model's weights are never written to, and the result is a new
:class:`~tie_tracing.core.model.TracedModel` that every tracing, editing and evaluation function
accepts; :func:`adapter_state_dict` returns a LoRA run's adapter tensors.

Limits and choices, stated once:

* Rows of one forward share their prompt and answer lengths (the package never pads), so a
  batch of facts with many shapes costs one forward per shape.
* The model stays in ``eval()`` mode while it trains: the embedded models have no dropout, and
  this keeps runs bit-reproducible from the seed (LoRA dropout defaults to 0 for the same
  reason).
* Optimiser: AdamW (weight decay 0.01), constant learning rate after an optional linear warm-up.
* RMU's defaults (steering coefficient 300, retain weight 1000, layer 7 of 32 scaled to the
  model's depth) are open-unlearning's and depend strongly on the model: the steering
  coefficient is compared with the residual-stream norm, so tune it (``experiments/
  baselines.py`` scales it to the measured norm). Its trainable parameters are the whole MLP
  sub-layer of each block (open-unlearning trains the down-projection only; the backbone table
  names sub-layers, not their matrices).
* Peak memory on CPU is the process's peak resident set size (``resource.getrusage``), which
  includes whatever the process did before the run: run each configuration in a fresh process
  for a clean number. On a GPU it is ``torch.cuda.max_memory_allocated`` over the run.
* Converged runs keep one copy of the trainable parameters (the last evaluation within the
  threshold) to restore on early stopping: with full fine-tuning of a large model, use LoRA.
* A non-finite loss (a collapsed model) raises :class:`~tie_tracing.core.errors.NonFiniteActivationError`
  naming the step: failure is an exception, never a partial result.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._version import __version__
from ..core._guards import as_int, as_real, require_model
from ..core._io import ResultFileError, Saveable, load_object
from ..core.backbones import get_module, hidden_of
from ..core.defaults import PROGRESS
from ..core.errors import NonFiniteActivationError, TieTracingError
from ..core.facts import Fact
from ..core.likelihood import _elbo_masks, answer_logprob
from ..core.prompting import group_by_shape
from ..core.sampler import target_logprob
from ..tracing.patching import fact_key

__all__ = [
    "LIKELIHOODS",
    "METHODS",
    "OBJECTIVES",
    "LoraSpec",
    "UnlearnConfig",
    "UnlearnLog",
    "UnlearningError",
    "adapter_state_dict",
    "differentiable_logprob",
    "draw_answer_masks",
    "masked_diffusion_nll",
    "npo_loss",
    "rmu_loss",
    "simnpo_loss",
    "unlearn",
]

METHODS: tuple[str, ...] = ("ga", "gd", "npo", "simnpo", "rmu")
OBJECTIVES: tuple[str, ...] = ("diffusion", "ar")
LIKELIHOODS: tuple[str, ...] = ("masked", "elbo")

Pair = tuple[list[int], list[int]]


class UnlearningError(TieTracingError, ValueError):
    """Bad input to :func:`unlearn`: overlapping or empty fact sets, a model/objective mismatch."""


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


def _finite(name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> float:
    value = as_real(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, *, minimum: int) -> int:
    value = as_int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """A LoRA adapter for :func:`unlearn` (passed to ``peft.LoraConfig``).

    Attributes:
        r: Rank.
        alpha: ``lora_alpha`` (the update is scaled by ``alpha / r``).
        dropout: ``lora_dropout`` (0 keeps runs bit-reproducible).
        target_modules: Full dotted module names to adapt; ``None``: every linear layer inside
            the transformer blocks (for RMU: inside the MLP sub-layers it trains).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        _integer("lora r", self.r, minimum=1)
        object.__setattr__(self, "alpha", _finite("lora alpha", self.alpha, positive=True))
        object.__setattr__(self, "dropout", _finite("lora dropout", self.dropout, nonneg=True))
        if self.dropout >= 1:
            raise ValueError(f"lora dropout must be < 1, got {self.dropout}")
        if self.target_modules is not None:
            names = (
                (self.target_modules,)
                if isinstance(self.target_modules, str)
                else tuple(self.target_modules)
            )
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"lora target_modules must be module names, got {names!r}")
            object.__setattr__(self, "target_modules", names)

    @classmethod
    def coerce(cls, value: Any) -> LoraSpec | None:
        """``None``, a :class:`LoraSpec`, or a dict of its fields (``{"r": 8, "alpha": 16}``)."""
        if value is None or isinstance(value, LoraSpec):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(
                    f"unknown lora option(s) {sorted(unknown)}; "
                    f"known: {[f.name for f in dataclasses.fields(cls)]}"
                )
            return cls(**dict(value))
        raise ValueError(f"lora must be None, a dict or a LoraSpec, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.target_modules is not None:
            d["target_modules"] = list(self.target_modules)
        return d


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig(Saveable):
    """Everything that defines an :func:`unlearn` run; validated on construction.

    ``tt.unlearn(model, forget, retain, **config.to_dict())`` repeats a run.

    Attributes:
        method: One of :data:`METHODS`.
        lr: Learning rate (> 0).
        steps: Optimiser steps.
        batch_size: Forget facts per step (and as many retain facts); capped at the set sizes.
        objective: ``"diffusion"`` (MDLMs) or ``"ar"`` (causal models).
        lora: ``None`` (full fine-tuning) or a :class:`LoraSpec` (a dict is accepted).
        converged: The converged protocol (retain anchor, clipping, early stopping).
        max_retain_drift: Early-stopping threshold on ``|ΔRetainLP|`` in nats (converged only).
        grad_clip: Gradient-norm clip of the converged protocol.
        retain_weight: α, the weight of the retain NLL (gd, npo, simnpo, and the anchor).
        eval_every: Steps between evaluations (``None``: ``ceil(steps / 10)``); the base model
            (step 0) and the last step are always evaluated.
        eval_estimator: Estimator of the logged ForgetLP / RetainLP (``answer_logprob``).
        seed: Seeds batches, masks, RMU's direction and the LoRA initialisation.
        estimator: NPO / SimNPO likelihood estimator, ``"masked"`` or ``"elbo"``.
        mc: Monte-Carlo draws of the ``"elbo"`` estimator in the loss.
        npo_beta: NPO's β.
        simnpo_beta, simnpo_gamma, simnpo_delta: SimNPO's β, forget weight γ and margin δ.
        rmu_layer: RMU's block (``None``: open-unlearning's layer 7 of 32, scaled to depth).
        rmu_steering: RMU's steering coefficient ``c``.
        rmu_alpha: RMU's retain (activation-matching) weight.
        eps: Lowest masking ratio of the diffusion loss.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps of the learning rate.
    """

    method: str = "ga"
    lr: float = 1e-5
    steps: int = 50
    batch_size: int = 8
    objective: str = "diffusion"
    lora: LoraSpec | None = None
    converged: bool = False
    max_retain_drift: float = 1.0
    grad_clip: float = 1.0
    retain_weight: float = 1.0
    eval_every: int | None = None
    eval_estimator: str = "masked"
    seed: int = 0
    estimator: str = "masked"
    mc: int = 4
    npo_beta: float = 0.1
    simnpo_beta: float = 4.5
    simnpo_gamma: float = 0.125
    simnpo_delta: float = 0.0
    rmu_layer: int | None = None
    rmu_steering: float = 300.0
    rmu_alpha: float = 1000.0
    eps: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {OBJECTIVES}")
        for name in ("estimator", "eval_estimator"):
            if getattr(self, name) not in LIKELIHOODS:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {LIKELIHOODS}"
                )
        set_ = lambda n, v: object.__setattr__(self, n, v)  # noqa: E731
        set_("lr", _finite("lr", self.lr, positive=True))
        for name in ("npo_beta", "simnpo_beta", "max_retain_drift", "grad_clip"):
            set_(name, _finite(name, getattr(self, name), positive=True))
        for name in ("retain_weight", "simnpo_gamma", "rmu_steering", "rmu_alpha", "weight_decay"):
            set_(name, _finite(name, getattr(self, name), nonneg=True))
        set_("simnpo_delta", _finite("simnpo_delta", self.simnpo_delta))
        set_("eps", _finite("eps", self.eps, positive=True))
        if self.eps >= 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        _integer("steps", self.steps, minimum=1)
        _integer("batch_size", self.batch_size, minimum=1)
        _integer("mc", self.mc, minimum=1)
        _integer("seed", self.seed, minimum=0)
        _integer("warmup_steps", self.warmup_steps, minimum=0)
        if self.eval_every is not None:
            _integer("eval_every", self.eval_every, minimum=1)
        if self.rmu_layer is not None:
            _integer("rmu_layer", self.rmu_layer, minimum=0)
        if not isinstance(self.converged, bool):
            raise ValueError(f"converged must be True or False, got {self.converged!r}")
        set_("lora", LoraSpec.coerce(self.lora))

    @property
    def eval_interval(self) -> int:
        """The resolved ``eval_every``."""
        return self.eval_every or max(1, math.ceil(self.steps / 10))

    def replace(self, **changes) -> UnlearnConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (``lora`` as a dict or ``None``): the kwargs of :func:`unlearn`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["lora"] = None if self.lora is None else self.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnlearnConfig:
        """Inverse of :meth:`to_dict` (a ``"format"`` entry, as files of the earlier JSON
        format carry, is ignored)."""
        return cls(**{k: v for k, v in data.items() if k != "format"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnlearnConfig:
        """Read a config written by :meth:`save` (the package's one serialiser,
        :mod:`tie_tracing.core._io`); JSON files of the earlier format are read too."""
        return _load(cls, path, "tie_tracing.UnlearnConfig/1", cls.from_dict)


# ---------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------


def _jf(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)  # "nan", "inf", "-inf" as strings


@dataclass(frozen=True)
class UnlearnLog(Saveable):
    """What an :func:`unlearn` run did: losses per step, evaluations, time and memory.

    Attributes:
        config: The :class:`UnlearnConfig`.
        model: The base model's name.
        loss: Total loss per step (``values``; ``dims = ("step",)``).
        forget_loss: The forget term per step (before its weight).
        retain_loss: The retain term per step, before its weight: the retain NLL, or RMU's
            activation-matching term (``nan`` for unmitigated GA, which has none).
        eval_steps: Steps at which ForgetLP / RetainLP were measured (0 = the base model).
        forget_lp: Mean ``log p(answer | question)`` (nats) on the forget set at each evaluation.
        retain_lp: The same on the retain monitor set.
        returned_step: The step whose parameters were returned (earlier than the last step
            when early stopping restored a checkpoint).
        stopped_early: Whether early stopping fired.
        wall_seconds: Whole run (copy, training, evaluations).
        eval_seconds: Spent in evaluations (``wall_seconds − eval_seconds`` is training).
        peak_memory_bytes: Peak memory (see ``memory_source``) at the run's end.
        start_memory_bytes: The same measure before the run.
        memory_source: ``"cuda_max_memory_allocated"`` or ``"process_peak_rss"``.
        trainable_parameters: Number of parameters the optimiser updated.
        device: Where it ran.
        version: Package version.
    """

    config: UnlearnConfig
    model: str
    loss: tuple[float, ...]
    forget_loss: tuple[float, ...]
    retain_loss: tuple[float, ...]
    eval_steps: tuple[int, ...]
    forget_lp: tuple[float, ...]
    retain_lp: tuple[float, ...]
    returned_step: int
    stopped_early: bool
    wall_seconds: float
    eval_seconds: float
    peak_memory_bytes: int
    start_memory_bytes: int
    memory_source: str
    trainable_parameters: int
    device: str
    version: str = __version__

    dims = ("step",)

    @property
    def values(self) -> torch.Tensor:
        """``[step]`` float64 total loss."""
        return torch.tensor(self.loss, dtype=torch.float64)

    @property
    def steps_run(self) -> int:
        return len(self.loss)

    @property
    def train_seconds(self) -> float:
        return self.wall_seconds - self.eval_seconds

    @property
    def extra_memory_bytes(self) -> int:
        """Peak minus start (on CPU a lower bound: the process may have peaked before)."""
        return self.peak_memory_bytes - self.start_memory_bytes

    def _at_returned(self, values: tuple[float, ...]) -> float:
        return values[self.eval_steps.index(self.returned_step)]

    @property
    def delta_forget_lp(self) -> float:
        """ForgetLP of the returned model minus the base model's (nats; negative = forgot)."""
        return self._at_returned(self.forget_lp) - self.forget_lp[0]

    @property
    def delta_retain_lp(self) -> float:
        """RetainLP of the returned model minus the base model's (nats)."""
        return self._at_returned(self.retain_lp) - self.retain_lp[0]

    def __repr__(self) -> str:
        stop = f", stopped early at {self.steps_run}" if self.stopped_early else ""
        return (
            f"UnlearnLog(method={self.config.method!r}, model={self.model!r}, "
            f"steps={self.steps_run}{stop}, returned_step={self.returned_step}, "
            f"ΔForgetLP={self.delta_forget_lp:+.4g}, ΔRetainLP={self.delta_retain_lp:+.4g}, "
            f"wall={self.wall_seconds:.3g}s, peak={self.peak_memory_bytes / 2**20:.1f} MiB "
            f"({self.memory_source}), lr={self.config.lr:g}, lora={self.config.lora is not None}, "
            f"converged={self.config.converged}, seed={self.config.seed})"
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": "tie_tracing.UnlearnLog/1"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "config":
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [_jf(v) if isinstance(v, float) else v for v in value]
            elif isinstance(value, float):
                value = _jf(value)
            d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnlearnLog:
        data = dict(data)
        if data.pop("format", None) != "tie_tracing.UnlearnLog/1":
            raise ValueError("not a saved tie_tracing UnlearnLog")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = data[f.name]
            if f.name == "config":
                value = UnlearnConfig.from_dict(value)
            elif f.name == "eval_steps":
                value = tuple(int(v) for v in value)
            elif isinstance(value, list):
                value = tuple(float(v) for v in value)
            elif f.name in ("wall_seconds", "eval_seconds"):
                value = float(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnlearnLog:
        """Read a log written by :meth:`save` (exact: floats bit for bit, ``nan`` included);
        JSON files of the earlier format are read too."""
        return _load(cls, path, "tie_tracing.UnlearnLog/1", cls.from_dict)


def _load(cls: type, path: str | os.PathLike, legacy_format: str, from_dict: Any) -> Any:
    """``load_object(cls, path)``, or, for a JSON file of the earlier format (``legacy_format``
    in its ``"format"`` entry), ``from_dict`` of its content."""
    try:
        return load_object(cls, path)
    except ResultFileError as exc:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            raise exc from None
        if not isinstance(data, dict) or data.get("format") != legacy_format:
            raise
        try:
            return from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise ResultFileError(f"{path}: incomplete {cls.__name__} JSON file: {err!r}") from err


# ---------------------------------------------------------------------------------------
# The losses as pure functions on tensors
# ---------------------------------------------------------------------------------------


def draw_answer_masks(
    n: int, answer_length: int, generator: torch.Generator, *, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaDA's SFT noise for ``n`` rows: ``t ~ U(eps, 1)`` and answer masks with ratio ``t``.

    Returns:
        ``t`` ``[n]`` and the boolean ``mask`` ``[n, answer_length]`` (``True`` = masked),
        drawn on the CPU from ``generator`` (so a seed means the same draw on every device).
    """
    t = eps + (1.0 - eps) * torch.rand(n, generator=generator)
    mask = torch.rand(n, answer_length, generator=generator) < t[:, None]
    return t, mask


def masked_diffusion_nll(
    logits: torch.Tensor, answers: torch.Tensor, mask: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Per-row masked-diffusion NLL: ``(1/L) Σ_{i masked} −log softmax(logits_i)[a_i] / t``.

    Args:
        logits: ``[n, L, vocab]`` aligned logits at the answer positions.
        answers: ``[n, L]`` answer token ids.
        mask: ``[n, L]`` bool, the masked positions of the input.
        t: ``[n]`` masking ratios.

    Returns:
        ``[n]`` float32 (nats per answer token).
    """
    ce = -target_logprob(logits, answers)
    m = mask.to(ce.device, ce.dtype)
    return (ce * m).sum(-1) / t.to(ce.device, ce.dtype) / answers.shape[-1]


def npo_loss(nll: torch.Tensor, ref_nll: torch.Tensor, *, beta: float) -> torch.Tensor:
    """NPO's forget loss ``mean −(2/β) log σ(β (NLL − NLL_ref))`` over rows (sequence NLLs)."""
    return (-2.0 / beta * F.logsigmoid(beta * (nll - ref_nll))).mean()


def simnpo_loss(
    nll: torch.Tensor, lengths: torch.Tensor, *, beta: float, delta: float = 0.0
) -> torch.Tensor:
    """SimNPO's forget loss ``mean −(2/β) log σ(β (NLL / L − δ))`` (before its weight γ)."""
    per_token = nll / lengths.to(nll.device, nll.dtype)
    return (-2.0 / beta * F.logsigmoid(beta * (per_token - delta))).mean()


def rmu_loss(activations: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RMU's activation loss: squared error averaged over hidden units, positions and rows.

    ``activations`` ``[n, positions, d]``; ``target`` broadcastable to it (the steering
    vector ``c·u`` for forget rows, the frozen model's activations for retain rows).
    """
    return _rmu_rows(activations, target).mean()


def _rmu_rows(activations: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((activations - target) ** 2).mean(-1).mean(-1)


# ---------------------------------------------------------------------------------------
# The losses on a model (differentiable; rows grouped by shape, never padded)
# ---------------------------------------------------------------------------------------


def _groups(pairs: Sequence[Pair]) -> list[list[int]]:
    return list(group_by_shape(pairs).values())


def _stack(pairs: Sequence[Pair], idx: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = torch.tensor([pairs[i][0] for i in idx], device=device)
    answers = torch.tensor([pairs[i][1] for i in idx], device=device)
    return prompts, answers


def _ordered(values: dict[int, torch.Tensor], n: int) -> torch.Tensor:
    return torch.stack([values[i] for i in range(n)])


def _answer_logits(model, prompts: torch.Tensor, body: torch.Tensor) -> torch.Tensor:
    return model.forward_logits(torch.cat([prompts, body], dim=1))[:, prompts.shape[1] :]


def _token_nll(
    model, pairs: Sequence[Pair], generator: torch.Generator, *, objective: str, eps: float
) -> torch.Tensor:
    """``[n]`` per-token NLL: the masked-diffusion loss, or teacher-forced NLL for ``"ar"``."""
    device = model.param_device
    out: dict[int, torch.Tensor] = {}
    for idx in _groups(pairs):
        prompts, answers = _stack(pairs, idx, device)
        if objective == "ar":
            nll = -target_logprob(_answer_logits(model, prompts, answers), answers).mean(-1)
        else:
            t, mask = draw_answer_masks(len(idx), answers.shape[1], generator, eps=eps)
            mask = mask.to(device)
            body = torch.where(mask, torch.full_like(answers, model.mask_token_id), answers)
            nll = masked_diffusion_nll(_answer_logits(model, prompts, body), answers, mask, t)
        out.update(zip(idx, nll))
    return _ordered(out, len(pairs))


def _logprob_rows(
    model, pairs: Sequence[Pair], *, estimator: str, mc: int, seeds: Sequence[int]
) -> torch.Tensor:
    """``[n]`` differentiable ``log p(answer | prompt)`` (see :func:`differentiable_logprob`)."""
    device = model.param_device
    out: dict[int, torch.Tensor] = {}
    for idx in _groups(pairs):
        prompts, answers = _stack(pairs, idx, device)
        if model.is_causal or estimator == "masked":
            body = answers if model.is_causal else torch.full_like(answers, model.mask_token_id)
            lp = target_logprob(_answer_logits(model, prompts, body), answers).sum(-1)
            out.update(zip(idx, lp))
            continue
        length = answers.shape[1]
        masks = torch.cat(
            [_elbo_masks(length, mc, torch.Generator().manual_seed(int(seeds[i]))) for i in idx]
        ).to(device)
        rep_a = answers.repeat_interleave(mc, dim=0)
        rep_p = prompts.repeat_interleave(mc, dim=0)
        body = torch.where(masks, torch.full_like(rep_a, model.mask_token_id), rep_a)
        logp = target_logprob(_answer_logits(model, rep_p, body), rep_a)
        m = masks.to(logp.dtype)
        draws = (logp * m).sum(-1) * (length / m.sum(-1))
        out.update(zip(idx, draws.view(len(idx), mc).mean(-1)))
    return _ordered(out, len(pairs))


def differentiable_logprob(
    model, facts: Sequence[Fact] | Fact, *, estimator: str = "masked", mc: int = 128, seed: int = 0
) -> torch.Tensor:
    """:func:`tie_tracing.answer_logprob` with gradients: ``log p(answer | question)`` per fact.

    The same estimators and seeds (fact ``i``'s ``"elbo"`` draws use ``seed + i``), so the
    values equal ``answer_logprob``'s up to float summation order; the forwards run on the
    plain module (no nnsight trace, so installed edits do not act).

    Returns:
        ``[n_facts]`` float32 tensor that carries gradients to the model's parameters.

    Example:
        >>> lp = differentiable_logprob(model, facts[:2]); lp.sum().backward()  # doctest: +SKIP
    """
    facts = [facts] if isinstance(facts, Fact) else list(facts)
    if not facts:
        raise ValueError("differentiable_logprob needs at least one fact")
    if estimator not in LIKELIHOODS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {LIKELIHOODS}")
    pairs = [model.encode(f.question, f.answer) for f in facts]
    seeds = [seed + i for i in range(len(facts))]
    return _logprob_rows(model, pairs, estimator=estimator, mc=mc, seeds=seeds)


class _StopForward(Exception):
    """Raised by RMU's capture hook: nothing after the steered block is needed."""


def _activations(
    model, layer: int, pairs: Sequence[Pair], noise: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """Block ``layer``'s output at the answer positions, one tensor per shape group.

    ``noise`` holds one ``(t, mask)`` per group (``mask`` ``None`` for teacher forcing).
    """
    device = model.param_device
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(hidden_of(output))
        raise _StopForward

    out = []
    handle = model.site_module(layer, "resid").register_forward_hook(hook)
    try:
        for idx, (_t, mask) in zip(_groups(pairs), noise):
            prompts, answers = _stack(pairs, idx, device)
            body = answers
            if mask is not None:
                body = torch.where(
                    mask.to(device), torch.full_like(answers, model.mask_token_id), answers
                )
            captured.clear()
            try:
                model.forward_logits(torch.cat([prompts, body], dim=1))
            except _StopForward:
                pass
            out.append(captured[0][:, prompts.shape[1] :])
    finally:
        handle.remove()
    return out


def _rmu_noise(pairs: Sequence[Pair], generator, *, objective: str, eps: float) -> list[Any]:
    noise: list[Any] = []
    for idx in _groups(pairs):
        if objective == "ar":
            noise.append((None, None))
        else:
            noise.append(draw_answer_masks(len(idx), len(pairs[idx[0]][1]), generator, eps=eps))
    return noise


# ---------------------------------------------------------------------------------------
# Plumbing: copies, adapters, memory, batches
# ---------------------------------------------------------------------------------------


def _linear_names(module: torch.nn.Module, path: str) -> list[str]:
    """Full dotted names of the linear layers at or under ``path`` (GPT-2's ``Conv1D`` too)."""
    from transformers.pytorch_utils import Conv1D

    return [
        f"{path}.{name}" if name else path
        for name, mod in get_module(module, path).named_modules()
        if isinstance(mod, (torch.nn.Linear, Conv1D))
    ]


def _rmu_layers(cfg: UnlearnConfig, num_layers: int) -> tuple[int, list[int]]:
    layer = cfg.rmu_layer if cfg.rmu_layer is not None else (7 * num_layers) // 32
    if layer >= num_layers:
        raise UnlearningError(f"rmu_layer {layer} outside 0..{num_layers - 1}")
    return layer, list(range(max(0, layer - 2), layer + 1))


def _lora_targets(model, module: torch.nn.Module, cfg: UnlearnConfig) -> list[str]:
    """LoRA targets in ``module`` (the copy): the config's, or every linear layer of the blocks
    (RMU: of the MLP sub-layers it trains)."""
    assert cfg.lora is not None
    if cfg.lora.target_modules is not None:
        return list(cfg.lora.target_modules)
    if cfg.method == "rmu":
        _, layers = _rmu_layers(cfg, model.num_layers)
        paths = [model.backbone.site_path(i, "mlp") for i in layers]
    else:
        paths = [model.backbone.site_path(i, "resid") for i in range(model.num_layers)]
    names = [n for path in paths for n in _linear_names(module, path)]
    if not names:
        raise UnlearningError(
            f"{model.name}: no linear layers to adapt; pass lora=dict(target_modules=[...])"
        )
    return names


def _memory_now(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


class _Batches:
    """Seeded epochs over ``n`` items: a fresh permutation each time the last one runs out."""

    def __init__(self, n: int, size: int, generator: torch.Generator) -> None:
        self.n, self.size, self.generator = n, min(size, n), generator
        self.queue: list[int] = []

    def next(self) -> list[int]:
        while len(self.queue) < self.size:
            self.queue.extend(torch.randperm(self.n, generator=self.generator).tolist())
        batch, self.queue = self.queue[: self.size], self.queue[self.size :]
        return batch


def _check_inputs(model, forget: Sequence[Fact], retain: Sequence[Fact], cfg: UnlearnConfig):
    if not forget:
        raise UnlearningError("the forget set is empty: unlearn needs at least one fact to forget")
    if not retain:
        raise UnlearningError(
            "the retain set is empty: unlearn needs retain facts (retain terms and RetainLP)"
        )
    shared = sorted({fact_key(f) for f in forget} & {fact_key(f) for f in retain})
    if shared:
        more = f" and {len(shared) - 20} more" if len(shared) > 20 else ""
        raise UnlearningError(
            f"the forget and retain sets share {len(shared)} fact(s): {shared[:20]}{more}; "
            f"a fact cannot be both forgotten and retained"
        )
    if cfg.objective == "diffusion" and model.is_causal:
        raise UnlearningError(
            f"{model.name} is a causal (autoregressive) model; the masked-diffusion loss needs a "
            f"bidirectional MDLM. Pass objective='ar' for the teacher-forced next-token loss."
        )
    if cfg.objective == "ar" and not model.is_causal:
        raise UnlearningError(
            f"objective='ar' needs a causal model, but {model.name} is a bidirectional MDLM "
            f"(its outputs at visible positions are untrained); use objective='diffusion'"
        )


def _mean_lp(model, facts: Sequence[Fact], cfg: UnlearnConfig) -> float:
    return float(
        answer_logprob(
            model, facts, estimator=cfg.eval_estimator, seed=cfg.seed, progress=False
        ).mean()
    )


# ---------------------------------------------------------------------------------------
# unlearn
# ---------------------------------------------------------------------------------------


def unlearn(
    model,
    forget: Sequence[Fact],
    retain: Sequence[Fact],
    *,
    method: str = "ga",
    lr: float = 1e-5,
    steps: int = 50,
    batch_size: int = 8,
    objective: str = "diffusion",
    lora: Mapping[str, Any] | LoraSpec | None = None,
    converged: bool = False,
    max_retain_drift: float = 1.0,
    grad_clip: float = 1.0,
    retain_weight: float = 1.0,
    eval_every: int | None = None,
    eval_estimator: str = "masked",
    seed: int = 0,
    estimator: str = "masked",
    mc: int = 4,
    npo_beta: float = 0.1,
    simnpo_beta: float = 4.5,
    simnpo_gamma: float = 0.125,
    simnpo_delta: float = 0.0,
    rmu_layer: int | None = None,
    rmu_steering: float = 300.0,
    rmu_alpha: float = 1000.0,
    eps: float = 1e-3,
    weight_decay: float = 0.01,
    warmup_steps: int = 0,
    monitor: Sequence[Fact] | None = None,
    progress: bool = PROGRESS,
):
    """Unlearn ``forget`` from a copy of ``model`` with a training-time baseline (SPEC §10.6).

    The losses, the converged protocol and the limits are described in the module docstring;
    every keyword except ``monitor`` and ``progress`` is a field of :class:`UnlearnConfig`
    (documented there) and is recorded in the log.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` (an MDLM, or a causal LM with
            ``objective="ar"``). Never modified: its weights stay bit-identical.
        forget: Facts to forget.
        retain: Facts to keep (the retain terms' batches).
        monitor: Facts whose mean log-probability is logged as RetainLP and drives early
            stopping (default: ``retain``). Each evaluation scores ``forget`` and ``monitor``.
        progress: Show a progress bar.

    Returns:
        ``(unlearned, log)``: a new :class:`~tie_tracing.core.model.TracedModel` (named
        ``"<name>+<method>"``; with ``lora`` its LoRA layers are injected and it shares the
        base model's frozen weights — :func:`adapter_state_dict` gives the adapter) and an
        :class:`UnlearnLog`.

    Raises:
        UnlearningError: empty sets, facts in both sets (named), a causal model with
            ``objective="diffusion"`` (or an MDLM with ``"ar"``), an RMU layer out of range.
        ValueError: a config field out of range (``lr ≤ 0``, unknown ``method`` — the error
            lists :data:`METHODS` — ...).
        NonFiniteActivationError: the loss became NaN or infinite (a collapsed model).

    Example:
        >>> forget, retain = tt.load_facts("tiny", "forget01"), tt.load_facts("tiny", "retain")
        >>> model = tt.load_model("tiny-mdlm")                          # doctest: +SKIP
        >>> new, log = tt.unlearn(model, forget, retain, method="npo", lr=1e-4, steps=20,
        ...                       converged=True)                        # doctest: +SKIP
        >>> log.delta_forget_lp, log.delta_retain_lp                     # doctest: +SKIP
    """
    require_model(model, "unlearn")
    cfg = UnlearnConfig(
        method=method, lr=lr, steps=steps, batch_size=batch_size, objective=objective,
        lora=LoraSpec.coerce(lora), converged=converged, max_retain_drift=max_retain_drift,
        grad_clip=grad_clip, retain_weight=retain_weight, eval_every=eval_every,
        eval_estimator=eval_estimator, seed=seed, estimator=estimator, mc=mc,
        npo_beta=npo_beta, simnpo_beta=simnpo_beta, simnpo_gamma=simnpo_gamma,
        simnpo_delta=simnpo_delta, rmu_layer=rmu_layer, rmu_steering=rmu_steering,
        rmu_alpha=rmu_alpha, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
    )  # fmt: skip
    forget, retain = list(forget), list(retain)
    monitor = retain if monitor is None else list(monitor)
    _check_inputs(model, forget, retain, cfg)
    if not monitor:
        raise UnlearningError("the monitor set is empty")
    watched = sorted({fact_key(f) for f in forget} & {fact_key(f) for f in monitor})
    if watched:
        raise UnlearningError(f"the monitor set holds forget facts {watched[:20]}")
    if cfg.method == "rmu":
        _rmu_layers(cfg, model.num_layers)  # range check before any work
    return _run(model, forget, retain, monitor, cfg, progress=progress)


def _make_trainee(model, cfg: UnlearnConfig):
    """The copy that trains, its trainable parameters, and a restore-flags callback."""
    from ..core.model import TracedModel

    base = model._module
    shared = cfg.lora is not None
    memo: dict[int, Any] = {}
    if shared:  # share (frozen) weights and buffers; copy only the module structure
        memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
    module = copy.deepcopy(base, memo)
    flags = [(p, p.requires_grad) for p in module.parameters()]

    def restore_flags() -> None:
        for p, flag in flags:
            p.requires_grad_(flag)

    for p in module.parameters():
        p.requires_grad_(False)
    if cfg.lora is not None:
        from peft import LoraConfig, inject_adapter_in_model
        from transformers.pytorch_utils import Conv1D

        targets = _lora_targets(model, module, cfg)
        conv1d = all(isinstance(get_module(module, n), Conv1D) for n in targets)
        peft_cfg = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha,  # type: ignore[arg-type]
            lora_dropout=cfg.lora.dropout,
            target_modules=targets, bias="none", fan_in_fan_out=conv1d,
        )  # fmt: skip
        device = model.param_device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            inject_adapter_in_model(peft_cfg, module)
        trainable = [p for n, p in module.named_parameters() if "lora_" in n]
        for n, p in module.named_parameters():
            p.requires_grad_("lora_" in n)
    elif cfg.method == "rmu":
        _, layers = _rmu_layers(cfg, model.num_layers)
        paths = [model.backbone.site_path(i, "mlp") for i in layers]
        trainable = [p for path in paths for p in get_module(module, path).parameters()]
    else:
        trainable = list(module.parameters())
    for p in trainable:
        p.requires_grad_(True)
    module.eval()
    info = dict(model.info)
    info["unlearning"] = cfg.to_dict()
    trainee = TracedModel(
        module,
        model.tokenizer,
        backbone=model.backbone,
        name=f"{model.name}+{cfg.method}",
        template=model.template,
        info=info,
        mask_token_id=model.mask_token_id,
    )
    return trainee, trainable, restore_flags


def _run(model, forget, retain, monitor, cfg: UnlearnConfig, *, progress: bool):
    t_start = time.perf_counter()
    device = model.param_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_mem, source = _memory_now(device)
    base_flags = [(p, p.requires_grad) for p in model._module.parameters()]
    trainee, trainable, restore_flags = _make_trainee(model, cfg)
    try:
        log = _train(model, trainee, trainable, forget, retain, monitor, cfg, progress)
    finally:
        restore_flags()
        for p, flag in base_flags:
            p.requires_grad_(flag)
    peak_mem, _ = _memory_now(device)
    log = dataclasses.replace(
        log,
        wall_seconds=time.perf_counter() - t_start,
        peak_memory_bytes=peak_mem,
        start_memory_bytes=start_mem,
        memory_source=source,
    )
    return trainee, log


def _train(model, trainee, trainable, forget, retain, monitor, cfg: UnlearnConfig, progress):
    gen = torch.Generator().manual_seed(cfg.seed)
    f_pairs = [model.encode(f.question, f.answer) for f in forget]
    r_pairs = [model.encode(f.question, f.answer) for f in retain]
    f_batches, r_batches = (
        _Batches(len(forget), cfg.batch_size, gen),
        _Batches(len(retain), cfg.batch_size, gen),
    )
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: min(1.0, (k + 1) / warm) if warm else 1.0
    )
    objective = cfg.objective
    uses_retain_nll = cfg.method in ("gd", "npo", "simnpo") or (
        cfg.converged and cfg.method in ("ga", "rmu")
    )
    steer = None
    if cfg.method == "rmu":
        layer, _ = _rmu_layers(cfg, model.num_layers)
        u = torch.rand(trainee.hidden_size, generator=gen)
        steer = (u / u.norm() * cfg.rmu_steering).to(model.param_device)

    eval_seconds = 0.0
    eval_steps: list[int] = []
    forget_lp: list[float] = []
    retain_lp: list[float] = []

    def evaluate(step: int) -> float:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        eval_steps.append(step)
        forget_lp.append(_mean_lp(trainee, forget, cfg))
        retain_lp.append(_mean_lp(trainee, monitor, cfg))
        eval_seconds += time.perf_counter() - t0
        return abs(retain_lp[-1] - retain_lp[0])

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in trainable]

    evaluate(0)
    good = snapshot() if cfg.converged else None
    returned_step, stopped = 0, False
    losses: list[float] = []
    f_terms: list[float] = []
    r_terms: list[float] = []
    bar = tqdm(total=cfg.steps, desc=f"unlearn[{cfg.method}]", disable=not progress)
    try:
        for step in range(1, cfg.steps + 1):
            fb = [f_pairs[i] for i in f_batches.next()]
            rb = [r_pairs[i] for i in r_batches.next()]
            if cfg.method in ("ga", "gd"):
                f_term = -_token_nll(trainee, fb, gen, objective=objective, eps=cfg.eps).mean()
                loss = f_term
            elif cfg.method in ("npo", "simnpo"):
                seeds = torch.randint(0, 2**62, (len(fb),), generator=gen).tolist()
                kw: dict[str, Any] = dict(estimator=cfg.estimator, mc=cfg.mc, seeds=seeds)
                nll = -_logprob_rows(trainee, fb, **kw)
                if cfg.method == "npo":
                    with torch.no_grad():
                        ref = -_logprob_rows(model, fb, **kw)
                    f_term = npo_loss(nll, ref, beta=cfg.npo_beta)
                    loss = f_term
                else:
                    lengths = torch.tensor([len(a) for _, a in fb], dtype=torch.float32)
                    f_term = simnpo_loss(nll, lengths, beta=cfg.simnpo_beta, delta=cfg.simnpo_delta)
                    loss = cfg.simnpo_gamma * f_term
            else:
                assert steer is not None
                noise = _rmu_noise(fb, gen, objective=objective, eps=cfg.eps)
                acts = _activations(trainee, layer, fb, noise)
                f_term = torch.cat([_rmu_rows(a, steer) for a in acts]).mean()
                r_noise = _rmu_noise(rb, gen, objective=objective, eps=cfg.eps)
                r_acts = _activations(trainee, layer, rb, r_noise)
                with torch.no_grad():
                    r_ref = _activations(model, layer, rb, r_noise)
                act_r = torch.cat([_rmu_rows(a, b) for a, b in zip(r_acts, r_ref)]).mean()
                loss = f_term + cfg.rmu_alpha * act_r
            r_term = act_r.detach() if cfg.method == "rmu" else torch.tensor(math.nan)
            if uses_retain_nll:
                anchor = _token_nll(trainee, rb, gen, objective=objective, eps=cfg.eps).mean()
                loss = loss + cfg.retain_weight * anchor
                if cfg.method != "rmu":
                    r_term = anchor
            if not torch.isfinite(loss):
                raise NonFiniteActivationError(
                    f"unlearn[{cfg.method}] loss became {float(loss)} at step {step} "
                    f"(lr={cfg.lr:g}): the model collapsed"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.converged:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            f_terms.append(f_term.item())
            r_terms.append(r_term.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                drift = evaluate(step)
                if cfg.converged and drift > cfg.max_retain_drift:
                    with torch.no_grad():
                        for p, saved in zip(trainable, good or []):
                            p.copy_(saved)
                    stopped = True
                    break
                returned_step = step
                if cfg.converged:
                    good = snapshot()
    finally:
        bar.close()
    for p in trainable:
        p.grad = None
    return UnlearnLog(
        config=cfg,
        model=str(model.name),
        loss=tuple(losses),
        forget_loss=tuple(f_terms),
        retain_loss=tuple(r_terms),
        eval_steps=tuple(eval_steps),
        forget_lp=tuple(forget_lp),
        retain_lp=tuple(retain_lp),
        returned_step=returned_step,
        stopped_early=stopped,
        wall_seconds=0.0,
        eval_seconds=eval_seconds,
        peak_memory_bytes=0,
        start_memory_bytes=0,
        memory_source="",
        trainable_parameters=int(sum(p.numel() for p in trainable)),
        device=str(model.param_device),
    )


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a model returned by ``unlearn(..., lora=...)`` (CPU clones).

    Raises:
        UnlearningError: the model carries no LoRA adapter.
    """
    module = getattr(model, "_module", model)
    state = {n: p.detach().to("cpu").clone() for n, p in module.named_parameters() if "lora_" in n}
    if not state:
        raise UnlearningError(f"{getattr(model, 'name', model)!r} carries no LoRA adapter")
    return state
