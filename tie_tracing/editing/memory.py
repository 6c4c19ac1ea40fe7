"""The edit memory as a value: captured tensors + a config + provenance, and the algebra on them.

:class:`EditMemory` is a frozen value. It composes the separate pieces of
:mod:`tie_tracing.editing` — it captures with :mod:`.capture`, fits a :class:`~.gate.SubjectGate`
on calibration prompts, solves with the pure functions of :mod:`.algebra` (:func:`solve`, run
once when the value is made) and installs through :mod:`.install`, which returns the handle that
holds the installed state. :meth:`EditMemory.insert` and :meth:`EditMemory.without` return new
memories; :meth:`~.install.EditHandle.insert` / :meth:`~.install.EditHandle.without` swap the
new value into an installed edit. Saving and loading go through the package's one serialiser
(:mod:`tie_tracing.core._io`). See the package docstring for the math.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from ..core._guards import require_model
from ..core._io import ResultFileError, Saveable, load_object
from ..core.defaults import BATCH_SIZE
from ..core.errors import ShapeError
from ..core.facts import Fact, as_facts, load_refusals
from ..core.fingerprint import describe_model
from ..tracing.patching import fact_key
from . import algebra
from .capture import capture, capture_states, capture_unknown, query_ids
from .config import (
    TARGET_KINDS,
    EditConfig,
    EditMemoryError,
    EditMemoryFileError,
    EditMemoryWarning,
)
from .gate import SubjectGate
from .install import EditHandle, check_model, install
from .legacy import read_legacy_memory
from .operating_point import (
    OperatingPoint,
    resolve_calibration,
    resolve_config,
    resolve_shrinkage,
)
from .slot_gate import SlotGate, row_prompts, slot_decisions

__all__ = ["EditMemory", "Solved", "solve"]

#: Per-fact row attributes, aligned with ``ids`` (``None`` where a memory lacks one).
_ROWS = (
    "ids",
    "targets",
    "subjects",
    "keys",
    "slot_keys",
    "answer_values",
    "target_values",
    "subject_lengths",
    "subject_tokens",
    "gate_score_max",
)


@dataclass(frozen=True)
class Solved:
    """What :func:`solve` precomputes from a memory's rows and config (CPU tensors).

    Attributes:
        tensors: ``deltas``, ``mean_delta``; ``coef`` (``G⁻¹K``) and, for ``N > d``,
            ``dense_map`` (ridge); ``gate_keys`` (Eq. 10); the gate's patterns (token gate) or
            whitening, directions and thresholds (cosine gate).
        groups: The cosine gate's facts grouped by subject length (``None`` otherwise).
        seconds: How long the solve took.
    """

    tensors: dict[str, torch.Tensor]
    groups: list[tuple[int, torch.Tensor]] | None
    seconds: float


def solve(memory: EditMemory) -> Solved:
    """Factorise ``G`` (ridge) or precompute Eq. 10's gate keys, and the gate's directions.

    A pure function of the memory's rows and config. Raises :class:`EditMemoryError` on a
    singular ``G`` (``λ = 0`` with dependent keys) or dependent Eq. 10 keys.
    """
    t0 = time.perf_counter()
    c = memory.config
    deltas = memory.deltas
    tensors: dict[str, torch.Tensor] = {"deltas": deltas, "mean_delta": deltas.mean(0)}
    groups = None
    keys = memory.active_keys
    if c.mode == "ridge":
        if c.ridge_blocks == "subject":
            coef = algebra.factorize_blocks(keys, c.lam, _subject_groups(memory.subjects))
        else:
            _chol, coef = algebra.factorize(keys, c.lam)
        tensors["coef"] = coef.float()
        if len(memory) > keys.shape[1]:
            tensors["dense_map"] = (coef.T @ deltas.double()).float()  # (G⁻¹K)ᵀD = W
    elif c.mode == "gated":
        try:
            tensors["gate_keys"] = algebra.eq10_gate_keys(keys).float()
        except EditMemoryError as exc:
            raise EditMemoryError(f"{exc} (facts {list(memory.ids)})") from exc
    if c.subject_gate and c.gate_kind == "slots":
        assert memory.slot_gate is not None
        tensors["slot_key_row"] = memory.slot_gate.key_index(memory.ids)
        tensors["slot_threshold"] = memory.slot_gate.radius + c.gate_margin
    elif c.subject_gate and c.gate_kind == "tokens":
        assert memory.subject_tokens is not None
        # facts about one subject share a pattern: match the distinct ones, then index
        distinct, inverse = torch.unique(memory.subject_tokens, dim=0, return_inverse=True)
        tensors["gate_patterns"], tensors["gate_inverse"] = distinct, inverse
    elif c.subject_gate:
        assert memory.gate is not None and memory.gate_thresholds is not None
        assert memory.subject_lengths is not None
        tensors.update(
            gate_mean=memory.gate.mean,
            gate_whiten=memory.gate.whiten,
            gate_directions=memory.gate.directions(memory.keys),
            gate_tau=memory.gate_thresholds,
        )
        groups = algebra.length_groups(memory.subject_lengths)
    return Solved(tensors, groups, time.perf_counter() - t0)


def _subject_groups(subjects: Sequence[str] | None) -> torch.Tensor:
    """``[N]`` one integer label per distinct subject (case- and space-insensitive)."""
    if subjects is None:
        raise EditMemoryError("ridge_blocks='subject' needs the facts' subjects (build it)")
    labels: dict[str, int] = {}
    keys = [" ".join(s.casefold().split()) for s in subjects]
    return torch.tensor([labels.setdefault(k, len(labels)) for k in keys], dtype=torch.int64)


@dataclass(frozen=True, eq=False)
class EditMemory(Saveable):
    """A multi-fact edit memory (SPEC §8), as an immutable value: keys, deltas, a config, the
    subject gate's statistics and per-fact thresholds (gated memories), and provenance.

    Build it with :meth:`build` (or :meth:`load`); derive new memories with :meth:`insert`,
    :meth:`without` and :meth:`with_config` (the original is never changed); apply it with
    :meth:`install`, which returns an :class:`~.install.EditHandle` holding the installed
    state. Constructing a memory validates it and solves it once (:func:`solve`). The tensors
    are CPU float32:

    Attributes:
        config: The :class:`EditConfig`.
        ids: Fact ids, aligned with the rows of every tensor (unique).
        keys: ``[N, d]`` subject keys ``k_f`` (Eq. 6).
        answer_values: ``[N, d]`` original-answer values ``v_f`` (Eq. 7).
        target_values: ``[N, d]`` target values ``v*_f`` (Eq. 8).
        targets: The target text of each fact.
        model_info: Provenance: name, family, hidden size, layer count, mask id and
            fingerprint of the model it was built on.
        slot_keys: ``[N, d]`` answer-slot keys ``k^O_f`` (``None`` for a hand-built memory).
        subjects: The subject of each fact.
        subject_lengths: ``[N]`` ``|S_f|`` in tokens (``None`` for a hand-built memory).
        gate: The :class:`SubjectGate` statistics (``None`` when built without calibration).
        gate_score_max: ``[N]`` each fact's highest score on calibration prompts about other
            subjects (``τ_f = gate_score_max + gate_margin``).
        subject_tokens: ``[N, L]`` int64 token ids of each subject's first mention, padded
            with ``-1`` (the ``"tokens"`` gate's patterns; ``None`` for a hand-built memory).
        slot_gate: The answer-slot gate's statistics and keys
            (:class:`~tie_tracing.editing.slot_gate.SlotGate`; ``gate_kind="slots"``).
        timings: Provenance: seconds spent in ``capture``, ``calibrate`` (gate fit),
            ``solve``, ``build`` (total) and per fact (``build_per_fact``); ``insert`` for a
            memory made by :meth:`insert`. (Install time is the handle's.)

    The deltas ``δ_f = v*_f − v_f`` are :attr:`values` (``dims = ("fact", "hidden")``).

    Example:
        >>> memory = EditMemory.build(model, facts, layer=3, alpha=2.0, lam=0.1, q=4)  # doctest: +SKIP
        >>> with memory.install(model) as handle:                               # doctest: +SKIP
        ...     handle = handle.insert(more_facts)   # the installed edit now holds both
    """

    config: EditConfig
    ids: tuple[str, ...] = field(kw_only=True)
    keys: torch.Tensor = field(kw_only=True)
    answer_values: torch.Tensor = field(kw_only=True)
    target_values: torch.Tensor = field(kw_only=True)
    targets: tuple[str, ...] = field(kw_only=True)
    model_info: dict[str, Any] = field(kw_only=True)
    slot_keys: torch.Tensor | None = field(default=None, kw_only=True)
    subjects: tuple[str, ...] | None = field(default=None, kw_only=True)
    subject_lengths: torch.Tensor | None = field(default=None, kw_only=True)
    gate: SubjectGate | None = field(default=None, kw_only=True)
    gate_score_max: torch.Tensor | None = field(default=None, kw_only=True)
    subject_tokens: torch.Tensor | None = field(default=None, kw_only=True)
    slot_gate: SlotGate | None = field(default=None, kw_only=True)
    timings: dict[str, float] = field(default_factory=dict, kw_only=True)

    dims: ClassVar[tuple[str, ...]] = ("fact", "hidden")
    _KIND: ClassVar[str] = "EditMemory"
    # Not fields (never saved, never compared), set once per instance by __post_init__ /
    # _derived: the model the memory was built on in this process (the default of
    # :meth:`insert`), the solve, and the solved tensors per device (a cache).
    _model: ClassVar[Any] = None
    _solved: ClassVar[Solved]
    _device_cache: ClassVar[dict[str, dict[str, torch.Tensor]]]

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("ids", tuple(str(i) for i in self.ids))
        n = len(self.ids)
        d = int(self.model_info["hidden_size"])
        for name in ("keys", "answer_values", "target_values", "slot_keys"):
            t = getattr(self, name)
            if t is None and name == "slot_keys":
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, d):
                raise ShapeError(
                    f"{name} must be [N={n}, d={d}], got {getattr(t, 'shape', type(t))}"
                )
            if not torch.isfinite(t).all():
                raise EditMemoryError(f"{name} holds non-finite values")
            set_(name, t.float())
        for name in ("subject_lengths", "gate_score_max"):
            t1 = getattr(self, name)
            if t1 is not None and (not isinstance(t1, torch.Tensor) or tuple(t1.shape) != (n,)):
                raise ShapeError(f"{name} must be [N={n}], got {getattr(t1, 'shape', type(t1))}")
        tokens = self.subject_tokens
        if tokens is not None and (
            not isinstance(tokens, torch.Tensor)
            or tokens.ndim != 2
            or tokens.shape[0] != n
            or tokens.is_floating_point()
        ):
            raise ShapeError(
                f"subject_tokens must be an integer [N={n}, L] tensor, got "
                f"{getattr(tokens, 'shape', type(tokens))}"
            )
        if len(self.targets) != n:
            raise ShapeError(f"{len(self.targets)} targets for {n} facts")
        if self.subjects is not None and len(self.subjects) != n:
            raise ShapeError(f"{len(self.subjects)} subjects for {n} facts")
        _check_unique(self.ids)
        set_("targets", tuple(str(t) for t in self.targets))
        if self.subjects is not None:
            set_("subjects", tuple(str(s) for s in self.subjects))
        if self.subject_lengths is not None:
            set_("subject_lengths", self.subject_lengths.long())
        if tokens is not None:
            set_("subject_tokens", tokens.long())
        if self.gate_score_max is not None:
            set_("gate_score_max", self.gate_score_max.float())
        set_("model_info", dict(self.model_info))
        set_("timings", {str(k): float(v) for k, v in self.timings.items()})
        self._check_config()
        if n:
            self._check_q()
        set_("_solved", solve(self) if n else Solved({}, None, 0.0))
        set_("_device_cache", {})

    @classmethod
    def build(
        cls,
        model,
        facts: Sequence[Fact] | Fact,
        config: EditConfig | OperatingPoint | None = None,
        *,
        targets: str | Sequence[str] = "auto",
        calibration: Sequence[Fact] | None = None,
        gate_shrinkage: float | None = None,
        unknown_names: Sequence[str] | None = None,
        batch_size: int = BATCH_SIZE,
        steps: Any = None,
        **overrides: Any,
    ) -> EditMemory:
        """Capture keys and deltas for ``facts`` on ``model`` and factorise the memory.

        What is built is one :class:`EditConfig`: ``config`` with the keyword ``overrides``
        replacing its fields (see :mod:`.operating_point`). With no config the base is
        :class:`EditConfig`'s defaults — the paper's memory (Eq. 11–12: ridge, subject keys,
        every position and step, no gate, ``α = 1``, ``λ = 0.01``, dense) — and ``layer=`` is
        required. Nothing is read from the model's files: a model's tuned operating point is
        used only when passed, ``build(model, facts, tt.editing.OperatingPoint.shipped(model))``
        (its config, calibration prompts and gate shrinkage; overrides still apply). An
        operating point's ``q`` is capped at ``N``; an explicit ``q`` must satisfy
        ``1 ≤ q ≤ N``.

        Args:
            model: A :class:`~tie_tracing.core.model.TracedModel` (MDLM, or causal for an AR edit).
            facts: The facts to forget or edit (unique ids; subjects must occur in questions).
            config: An :class:`EditConfig`, an
                :class:`~tie_tracing.editing.operating_point.OperatingPoint`, or ``None`` (the
                paper's memory; give ``layer=``).
            targets: ``"auto"`` (the fact's ``target`` when set — editing —, else a refusal —
                unlearning), ``"refusal"`` (a line of TOFU's ``idontknow.jsonl``, chosen by a
                hash of the fact id), ``"perturbed"`` (the fact's first perturbed answer),
                ``"target"`` (``Fact.target``, required), ``"unknown"`` (behave as if the
                person were never met: ``v*_f`` is the mean answer-slot state of the same
                question asked about each of ``unknown_names`` and ``v_f`` the fact's own
                answer-slot key, so ``δ_f`` moves the slots towards a person the model does not
                know), or one string per fact.
            calibration: Prompts (facts) the cosine or slots gate is fitted on — facts the memory must
                leave alone, never the facts reported on (default: the operating point's, if
                ``config`` is one). Given with ``subject_gate=False`` the statistics are still
                fitted, so ``with_config(subject_gate=True)`` works.
            gate_shrinkage: ``s`` of ``C_s = (1 − s) C + s (tr C / d) I`` (default: the
                operating point's, else 0.1).
            unknown_names: Names of people the model never met (e.g. the embedded corpus's
                held-out people, ``tt.zoo.corpus.holdout_names()``): the never-met values of
                ``targets="unknown"``, and the source of the slots gate's look-alikes (its
                keys' radii also cover the facts' questions about people who share a first
                name or a surname with the subject;
                :func:`~tie_tracing.editing.slot_gate.lookalikes`).
            batch_size: Rows per capture forward.
            steps: Not accepted: across the package ``steps`` is a count of denoising
                steps; the step set of an edit is ``edit_steps``. Passing it raises.
            **overrides: Fields of :class:`EditConfig` (``None`` leaves the base's value,
                except for ``q`` and ``edit_steps`` whose ``None`` means dense / every step):

                * ``layer``, ``module``: the site ``(l*, m*)`` (``module`` default ``"resid"``).
                * ``alpha``, ``lam``, ``q``, ``kappa``: hyper-parameters.
                * ``edit_steps``: the *set of denoising steps* the edit fires at — an int is a
                  one-step set (``edit_steps=3`` is ``{3}``), an iterable of ints a set,
                  ``None`` every step. It is not a step count, unlike ``trace_tie(steps=T)``
                  / ``diffuse(steps=T)``: the sampler's forwards are numbered ``0 … T-1``, so
                  the set should lie within that range — a step ``≥ T`` never fires (nothing
                  checks this, since ``T`` is chosen later, per run). Stand-alone forwards
                  (context step ``None``) always fire.
                * ``mode``: ``"ridge"``, ``"gated"`` (Eq. 10) or ``"steer"``.
                * ``subject_gate``: gate each fact by subject detection; ``gate_kind``:
                  ``"cosine"`` (whitened residual cosine against a threshold calibrated on
                  ``calibration`` prompts) or ``"tokens"`` (the subject's token ids in the
                  prompt; no calibration needed); ``gate_margin``: ``τ_f = max calibration
                  score + gate_margin`` (cosine gate).
                * ``ridge_blocks``: ``"memory"`` (one ridge over all facts, Eq. 11) or
                  ``"subject"`` (one ridge per subject).
                * ``apply_at``: ``"all"`` positions or the ``"answer"`` slots; ``key_at``:
                  keys of ``G⁻¹K``, ``"subject"`` (Eq. 6) or ``"answer"`` slots.
                * ``cap_q``: treat ``q`` as a ceiling (``min(q, N)``).

        Returns:
            An :class:`EditMemory` (``timings`` holds the capture, calibration and solve seconds;
            the model is remembered, in this process only, as the default of :meth:`insert`).

        Raises:
            EditMemoryError: no config and no ``layer``, duplicate ids, a bad ``q``, a fact
                lacking the requested target, a singular ``G``, a cosine gate without
                calibration prompts, answer slots on a causal model.
            TypeError: a config of another type; an unknown setting; ``steps=`` given (use
                ``edit_steps=``).
            ValueError: a negative, non-integer or empty ``edit_steps``; an invalid setting.
            SubjectNotFoundError: a fact's subject is not in its question.

        Example:
            >>> paper = tt.EditMemory.build(model, facts, layer=4)            # doctest: +SKIP
            >>> same = tt.EditMemory.build(model, facts, tt.EditConfig(layer=4))  # doctest: +SKIP
            >>> point = tt.editing.OperatingPoint.shipped(model)              # doctest: +SKIP
            >>> tuned = tt.EditMemory.build(model, facts, point, alpha=4.0)   # doctest: +SKIP
        """
        require_model(model, "EditMemory.build")
        if steps is not None:
            raise TypeError(
                f"EditMemory.build(steps={steps!r}): `steps` is a step count elsewhere in "
                "tie_tracing; the set of denoising steps an edit fires at is `edit_steps=` "
                f"(e.g. edit_steps={steps!r})"
            )
        start = time.perf_counter()
        if isinstance(facts, Sequence) and not isinstance(facts, (str, Fact)) and not facts:
            raise EditMemoryError("EditMemory.build needs at least one fact")
        facts = as_facts(facts, "EditMemory.build")
        config, point = resolve_config(model, config, overrides, n_facts=len(facts))
        model.check_site(config.layer, config.module)
        if config.apply_at == "answer" and (model.is_causal or model.mask_token_id is None):
            raise EditMemoryError("apply_at='answer' needs a masked diffusion model ([MASK] slots)")
        ids = [fact_key(f) for f in facts]
        _check_unique(ids)
        unknown = isinstance(targets, str) and targets == "unknown"
        if unknown:
            names = _check_unknown_names(unknown_names, facts)
            target_texts = [UNKNOWN_TARGET] * len(facts)
        else:
            if unknown_names is not None and not (
                config.subject_gate and config.gate_kind == "slots"
            ):
                raise EditMemoryError(
                    "unknown_names= is read with targets='unknown' or gate_kind='slots' only"
                )
            if unknown_names is not None:
                _check_unknown_names(unknown_names, facts)
            target_texts = _resolve_targets(facts, targets)
        calib = resolve_calibration(calibration, point, config)
        t0 = time.perf_counter()
        captured = capture(
            model, facts, target_texts, layer=config.layer, module=config.module,
            batch_size=batch_size,
        )  # fmt: skip
        answer_values, target_values = captured.answer_values, captured.target_values
        if unknown:
            answer_values = captured.slot_keys
            target_values = capture_unknown(
                model, facts, names, layer=config.layer, module=config.module,
                batch_size=batch_size,
            )  # fmt: skip
        capture_s = time.perf_counter() - t0
        gate, score_max, slot_gate, calibrate_s = None, None, None, 0.0
        subjects = [f.subject for f in facts]
        if calib is not None and config.gate_kind == "slots":
            t0 = time.perf_counter()
            slot_gate = SlotGate.fit(
                model, calib, layer=config.layer, module=config.module,
                shrinkage=resolve_shrinkage(gate_shrinkage, point), batch_size=batch_size,
            ).with_facts(
                model, facts, ids, layer=config.layer, module=config.module,
                lookalike_names=unknown_names or (), batch_size=batch_size,
            )  # fmt: skip
            calibrate_s = time.perf_counter() - t0
        elif calib is not None:
            t0 = time.perf_counter()
            gate = SubjectGate.fit(
                model, calib, layer=config.layer, module=config.module,
                shrinkage=resolve_shrinkage(gate_shrinkage, point),
                batch_size=batch_size,
            )  # fmt: skip
            score_max = gate.calibration_maxima(
                gate.directions(captured.subject_keys), captured.subject_lengths, subjects,
                mask_token_id=model.mask_token_id, fact_ids=ids,
            )  # fmt: skip
            calibrate_s = time.perf_counter() - t0
        memory = cls(
            config, ids=tuple(ids), keys=captured.subject_keys, slot_keys=captured.slot_keys,
            answer_values=answer_values, target_values=target_values,
            targets=tuple(target_texts), subjects=tuple(subjects), subject_lengths=captured.subject_lengths,
            gate=gate, gate_score_max=score_max, model_info=describe_model(model),
            subject_tokens=captured.subject_tokens, slot_gate=slot_gate,
        )  # fmt: skip
        memory._warn_blind()
        total = time.perf_counter() - start
        timings = dict(
            capture=capture_s, calibrate=calibrate_s, solve=memory._solved.seconds, build=total,
            build_per_fact=total / len(facts),
        )  # fmt: skip
        return memory._derived(model=model, timings=timings)

    # -- views -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def deltas(self) -> torch.Tensor:
        """``[N, d]`` ``δ_f = v*_f − v_f`` (Eq. 9)."""
        return self.target_values - self.answer_values

    @property
    def values(self) -> torch.Tensor:
        """The main tensor: ``[N, d]`` deltas (``dims = ("fact", "hidden")``)."""
        return self.deltas

    @property
    def active_keys(self) -> torch.Tensor:
        """``[N, d]`` the keys of ``G⁻¹K`` / Eq. 10: subject keys or answer-slot keys."""
        if self.config.key_at == "answer":
            assert self.slot_keys is not None  # checked by _check_config
            return self.slot_keys
        return self.keys

    @property
    def q_effective(self) -> int:
        """The ``q`` used by ``top_q`` for the current ``N``."""
        n = len(self)
        if self.config.q is None:
            return n
        return min(self.config.q, n) if self.config.cap_q else self.config.q

    @property
    def lam_abs(self) -> float:
        """``λ_abs = λ · mean(diag(K Kᵀ))`` of the active keys."""
        return algebra.lam_abs(self.active_keys, self.config.lam)

    @property
    def gate_thresholds(self) -> torch.Tensor | None:
        """``[N]`` ``τ_f = gate_score_max + gate_margin`` (``None`` without gate statistics)."""
        if self.gate_score_max is None:
            return None
        return self.gate_score_max + self.config.gate_margin

    @property
    def gate_blind(self) -> tuple[str, ...]:
        """Ids of facts whose ``τ_f ≥ 1``: a cosine never exceeds it, so their gate never opens."""
        tau = self.gate_thresholds
        if tau is None or self.config.gate_kind != "cosine":
            return ()
        return tuple(self.ids[i] for i in torch.nonzero(tau >= 1.0).flatten().tolist())

    def __repr__(self) -> str:
        c = self.config
        ids = list(self.ids[:3]) + (["…"] if len(self) > 3 else [])
        gate = "off"
        if c.subject_gate and c.gate_kind == "tokens":
            gate = "subject(tokens)"
        elif c.subject_gate and c.gate_kind == "slots" and self.slot_gate is not None:
            gate = (
                f"slots(margin={c.gate_margin:g}, keys={len(self.slot_gate.key_ids)}, "
                f"calibration={len(self.slot_gate.calibration)} prompts)"
            )
        elif c.subject_gate and self.gate is not None:
            gate = f"subject(margin={c.gate_margin:g}, calibration={len(self.gate)} prompts)"
        return (
            f"EditMemory(mode={c.mode!r}, site=({c.layer}, {c.module!r}), N={len(self)}, "
            f"d={self.model_info.get('hidden_size')}, alpha={c.alpha:g}, lam={c.lam:g}, "
            f"q={c.q}{'(cap)' if c.cap_q else ''}, edit_steps={'all' if c.edit_steps is None else list(c.edit_steps)}, "
            f"gate={gate}, apply_at={c.apply_at!r}, key_at={c.key_at!r}, "
            f"model={self.model_info.get('name')!r}, facts={ids})"
        )

    # -- the algebra -------------------------------------------------------------------------

    def _check_config(self) -> None:
        config = self.config
        if config.key_at == "answer" and self.slot_keys is None:
            raise EditMemoryError("key_at='answer' needs answer-slot keys (build the memory)")
        if config.subject_gate and config.gate_kind == "tokens" and self.subject_tokens is None:
            raise EditMemoryError(
                "gate_kind='tokens' needs the subjects' token ids: build the memory with "
                "EditMemory.build"
            )
        if (
            config.subject_gate
            and config.gate_kind == "cosine"
            and (self.gate is None or self.subject_lengths is None or self.gate_score_max is None)
        ):
            raise EditMemoryError(
                "subject_gate=True needs gate statistics: build with calibration=facts"
            )
        if config.subject_gate and config.gate_kind == "slots" and self.slot_gate is None:
            raise EditMemoryError(
                "gate_kind='slots' needs the answer-slot gate's keys: build the memory with "
                "gate_kind='slots' and calibration=facts"
            )
        if config.needs_token_ids and self.model_info.get("mask_token_id") is None:
            if config.apply_at == "answer":
                raise EditMemoryError("apply_at='answer' needs a model with a [MASK] token")

    def _check_q(self) -> None:
        q, n = self.config.q, len(self)
        if q is not None and not self.config.cap_q and q > n:
            raise EditMemoryError(
                f"q={q} exceeds the number of facts N={n}; use q ≤ N (or q=None for dense)"
            )

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The solved tensors on ``device`` (float32), moved once per device and cached."""
        key = str(device)
        cached = self._device_cache.get(key)
        if cached is None:
            cached = {
                k: v.to(device, torch.float32) if v.is_floating_point() else v.to(device)
                for k, v in self._solved.tensors.items()
            }
            self._device_cache[key] = cached
        return cached

    def _require_facts(self) -> None:
        if not len(self):
            raise EditMemoryError("the memory holds no facts")

    def coefficients(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` ridge fact-coefficients ``c_i = G⁻¹ K h_i`` (Eq. 11), before gate and ``top_q``."""
        if self.config.mode != "ridge":
            raise EditMemoryError(
                f"coefficients are defined for mode='ridge', not {self.config.mode!r}"
            )
        self._require_facts()
        return algebra.coefficients(hidden.float(), self._tensors(hidden.device)["coef"])

    def primal_map(self) -> torch.Tensor:
        """``[d, d]`` ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD`` (float64, via a Cholesky solve).

        Dense ungated ridge memories at every position satisfy ``update(h) = α hᵀW`` (the
        push-through identity ``Kᵀ(KKᵀ + λI)⁻¹ = (KᵀK + λI)⁻¹Kᵀ``); needs ``λ_abs > 0`` when
        ``N < d``.
        """
        self._require_facts()
        if self.config.ridge_blocks != "memory":
            raise EditMemoryError(
                "the primal map is the memory-wide ridge's (ridge_blocks='memory'); this memory "
                "solves one ridge per subject"
            )
        return algebra.primal_map(self.active_keys, self.deltas, self.lam_abs)

    def gate_scores(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` detection scores ``score_f`` of ``hidden [B, S, d]`` (ids ``[B, S]``).

        For ``gate_kind="tokens"``: ``1.0`` where the subject's tokens occur among the
        non-``[MASK]`` tokens, else ``0.0`` (the gate opens above ``0.5``).
        """
        if self.config.gate_kind == "tokens" and self.subject_tokens is not None:
            ids = self._check_token_ids(token_ids, hidden)
            mask_id = self.model_info.get("mask_token_id")
            valid = torch.ones_like(ids, dtype=torch.bool) if mask_id is None else ids != mask_id
            return algebra.token_matches(ids, valid, self.subject_tokens).float()
        if self.gate is None or self.subject_lengths is None:
            raise EditMemoryError("this memory has no gate statistics (build with calibration=)")
        ids = self._check_token_ids(token_ids, hidden)
        mask_id = self.model_info.get("mask_token_id")
        return self.gate.scores(
            hidden, ids, self.gate.directions(self.keys).to(hidden.device),
            self.subject_lengths, mask_token_id=mask_id,
        )  # fmt: skip

    def _check_token_ids(
        self, token_ids: torch.Tensor | None, hidden: torch.Tensor
    ) -> torch.Tensor:
        if token_ids is None:
            raise EditMemoryError(
                f"this memory (subject_gate={self.config.subject_gate}, apply_at="
                f"{self.config.apply_at!r}) needs the forward's token ids"
            )
        if (
            not isinstance(token_ids, torch.Tensor)
            or token_ids.is_floating_point()
            or tuple(token_ids.shape) != tuple(hidden.shape[:2])
        ):
            raise ShapeError(
                f"token ids must be an integer [B, S] = {tuple(hidden.shape[:2])} tensor, got "
                f"{getattr(token_ids, 'dtype', type(token_ids))} {tuple(getattr(token_ids, 'shape', ()))}"
            )
        return token_ids.to(hidden.device)

    def _plan(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor | None,
        s: dict[str, torch.Tensor],
        answer_start: int | None = None,
        held: dict | None = None,
        counts: dict | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(where, gate)``: the ``[B, S]`` positions to update (``None``: all) and the
        ``[B, N]`` subject gate (``None``: ungated). ``answer_start`` (known inside the
        diffusion loop) keeps the token gate to the prompt: a subject *written* into an
        answer does not open it. ``held``: the installed edit's held decisions of the slots
        gate (``None``: every row decides on its own slots)."""
        c = self.config
        if not c.needs_token_ids:
            return None, None
        ids = self._check_token_ids(token_ids, hidden)
        mask_id = self.model_info.get("mask_token_id")
        masked = torch.zeros_like(ids, dtype=torch.bool) if mask_id is None else ids == mask_id
        where = masked if c.apply_at == "answer" else torch.ones_like(masked)
        gate = None
        if c.subject_gate and c.gate_kind == "slots":
            assert self.slot_gate is not None and mask_id is not None
            decide = self.slot_gate.open_facts(
                hidden, masked, s["slot_key_row"], s["slot_threshold"], len(self)
            )
            gate = slot_decisions(ids, int(mask_id), answer_start, decide, held, counts)
            where = where & (gate > 0).any(-1)[:, None]
        elif c.subject_gate and c.gate_kind == "tokens":
            valid = ~masked
            if answer_start is not None:
                valid[:, answer_start:] = False
            matched = algebra.token_matches(ids, valid, s["gate_patterns"])
            gate = matched[:, s["gate_inverse"]].float()
            where = where & (gate > 0).any(-1)[:, None]
        elif c.subject_gate:
            assert self.subject_lengths is not None
            u = (hidden.float() - s["gate_mean"]) @ s["gate_whiten"]
            scores = algebra.window_scores(
                u, ~masked, s["gate_directions"], self.subject_lengths, self._solved.groups
            )
            gate = (scores > s["gate_tau"]).float()
            where = where & (gate > 0).any(-1)[:, None]
        return where, gate

    def _token_update(
        self, h: torch.Tensor, s: dict[str, torch.Tensor], gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The update for tokens ``h [..., d]`` (float32); ``gate`` ``[..., N]`` per token."""
        c = self.config
        if c.mode == "steer" and gate is not None:  # the mean delta of the opened facts
            mean = (gate @ s["deltas"]) / gate.sum(-1, keepdim=True).clamp(min=1.0)
            return c.alpha * mean
        if c.mode == "steer":
            return (c.alpha * s["mean_delta"]).expand(h.shape).clone()
        if c.mode == "gated":
            return algebra.eq10_update(
                h, s["gate_keys"], s["deltas"], alpha=c.alpha, kappa=c.kappa, gate=gate
            )
        return algebra.ridge_update(
            h, s["coef"], s["deltas"], alpha=c.alpha, q=self.q_effective, gate=gate,
            dense_map=s.get("dense_map"),
        )  # fmt: skip

    def update(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The additive update for hidden states ``[..., d]`` (float32, same shape).

        ``ridge``: ``α Dᵀ top_q(g ⊙ G⁻¹ K h)`` (Eq. 12; ``g = 1`` ungated); ``gated``:
        ``α Σ_f g_f clip(⟨h,k_f⟩/⟨k_f,k_f⟩, 0, κ) δ_f`` (Eq. 10); ``steer``: ``α mean_f δ_f``.
        Zero at positions the config does not update (``apply_at="answer"``: non-``[MASK]``
        tokens; a gated memory: rows where no gate opened). Memories that need token ids
        (gate or answer slots) take ``hidden [B, S, d]`` and ``token_ids [B, S]``. The step set
        is not consulted here (see :meth:`install`).
        """
        d = int(self.model_info["hidden_size"])
        if hidden.shape[-1] != d:
            raise ShapeError(f"hidden states must end in d={d}, got {tuple(hidden.shape)}")
        if not len(self):
            return torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        s = self._tensors(hidden.device)
        h = hidden.float()
        where, gate = self._plan(hidden, token_ids, s)
        if where is None:
            return self._token_update(h, s)
        out = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        if where.any():
            rows = torch.nonzero(where)[:, 0]
            out[where] = self._token_update(h[where], s, None if gate is None else gate[rows])
        return out

    def apply_(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor | None = None,
        answer_start: int | None = None,
        held: dict | None = None,
        counts: dict | None = None,
    ) -> None:
        """Add :meth:`update` to ``hidden`` in place, writing only the positions it changes
        (so every other position keeps its exact bits). ``answer_start``: where the answer
        span begins, when the caller knows it (the token gate then reads the prompt only).
        ``held`` / ``counts``: the installed edit's held slots-gate decisions and their
        tally (:class:`~.install.EditHandle`)."""
        if not len(self):
            return
        s = self._tensors(hidden.device)
        where, gate = self._plan(hidden, token_ids, s, answer_start, held, counts)
        if where is None:
            hidden += self._token_update(hidden.float(), s).to(hidden.dtype)
            return
        if not where.any():
            return
        rows = torch.nonzero(where)[:, 0]
        sel = hidden[where]
        upd = self._token_update(sel.float(), s, None if gate is None else gate[rows])
        hidden[where] = sel + upd.to(hidden.dtype)

    def slot_gate_opens(
        self, model, facts: Sequence[Fact] | Fact, *, batch_size: int = BATCH_SIZE
    ) -> torch.Tensor:
        """``[len(facts), N]`` 0/1: which of the memory's facts the answer-slot gate opens for
        on each fact's query ``prompt + |answer| × [MASK]`` — the first forward of the loop,
        where the decision is taken (``.any(-1)``: whether the query is edited at all).

        Raises:
            EditMemoryError: the memory has no answer-slot gate, or was built on another model.
        """
        if self.slot_gate is None:
            raise EditMemoryError("this memory has no answer-slot gate (gate_kind='slots')")
        check_model(self, model)
        facts = as_facts(facts, "EditMemory.slot_gate_opens")
        c = self.config
        seqs = [query_ids(model, f) for f in facts]
        states = capture_states(model, seqs, layer=c.layer, module=c.module, batch_size=batch_size)
        s = self._tensors(torch.device("cpu"))
        mask_id = int(self.model_info["mask_token_id"])
        rows = [
            self.slot_gate.open_facts(
                h[None], torch.tensor([q]) == mask_id, s["slot_key_row"], s["slot_threshold"],
                len(self),
            )[0]
            for q, h in zip(seqs, states)
        ]  # fmt: skip
        return torch.stack(rows) if rows else torch.zeros(0, len(self))

    def observe_(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor | None,
        answer_start: int | None,
        held: dict,
        counts: dict | None = None,
    ) -> None:
        """Record the slots gate's decisions for rows whose answer is all ``[MASK]``, without
        editing (a forward outside the step set: a step-set edit at a later step holds the
        decision taken on the prompt's first forward). A no-op for other memories."""
        c = self.config
        if not (c.subject_gate and c.gate_kind == "slots") or token_ids is None or not len(self):
            return
        ids = self._check_token_ids(token_ids, hidden)
        mask_id = int(self.model_info["mask_token_id"])
        masked = ids == mask_id
        prompts = row_prompts(ids, mask_id, answer_start)
        fresh = [b for b, p in enumerate(prompts) if p is not None and p[1]]
        if not fresh:
            return
        s = self._tensors(hidden.device)
        assert self.slot_gate is not None
        rows = torch.tensor(fresh, device=hidden.device)
        decide = self.slot_gate.open_facts(
            hidden[rows], masked[rows], s["slot_key_row"], s["slot_threshold"], len(self)
        )
        slot_decisions(ids[rows], mask_id, answer_start, decide, held, counts)

    # -- new values -------------------------------------------------------------------------

    def _derived(
        self, *, model: Any = None, timings: dict[str, float] | None = None, **changes: Any
    ) -> EditMemory:
        """A new memory with some fields changed (validated and solved again), carrying the
        model reference; ``changes`` empty and only ``timings`` given stamps this value's
        provenance without solving again."""  # fmt: skip
        if changes:
            if timings is not None:
                changes["timings"] = timings
            new = replace(self, **changes)
        else:  # same rows and config: share the solve, restamp the provenance
            new = object.__new__(type(self))
            new.__dict__.update(self.__dict__)
            object.__setattr__(new, "_device_cache", {})
            if timings is not None:
                object.__setattr__(new, "timings", dict(timings))
        object.__setattr__(new, "_model", model if model is not None else self._model)
        return new

    def insert(
        self,
        facts: Sequence[Fact] | Fact,
        *,
        model=None,
        targets: str | Sequence[str] = "auto",
        batch_size: int = BATCH_SIZE,
    ) -> EditMemory:
        """A new memory with ``facts`` captured and added (streaming; ``G`` refactorised).

        ``model`` defaults to the model the memory was built on in this process (it must be
        that model: same fingerprint). This memory is not changed: to grow an *installed*
        memory, use :meth:`EditHandle.insert <.install.EditHandle.insert>`, which swaps the
        new value into the edit. A gated memory calibrates the new facts' thresholds on its
        stored calibration prompts (the thresholds of the facts already in it do not move).

        Raises:
            EditMemoryError: no model to capture on, another model, or an id already in the
                memory (or repeated in ``facts``).
        """
        facts = [facts] if isinstance(facts, Fact) else list(facts)
        if not facts:
            return self
        model = model if model is not None else self._model
        if model is None:
            raise EditMemoryError(
                "insert needs the model to capture on: insert(facts, model=model)"
            )
        check_model(self, model)
        ids = [fact_key(f) for f in facts]
        _check_unique(list(self.ids) + ids)
        if any(t == UNKNOWN_TARGET for t in self.targets) or (
            isinstance(targets, str) and targets == "unknown"
        ):
            raise EditMemoryError(
                "insert does not capture targets='unknown' (the never-met names are not kept): "
                "rebuild the memory with EditMemory.build(..., targets='unknown')"
            )
        texts = _resolve_targets(facts, targets)
        t0 = time.perf_counter()
        c = self.config
        new = capture(model, facts, texts, layer=c.layer, module=c.module, batch_size=batch_size)
        capture_s = time.perf_counter() - t0
        subjects = [f.subject for f in facts]
        score_max = None
        if self.gate is not None:
            self.gate.ensure_states(model, layer=c.layer, module=c.module, batch_size=batch_size)
            score_max = self.gate.calibration_maxima(
                self.gate.directions(new.subject_keys), new.subject_lengths, subjects,
                mask_token_id=model.mask_token_id, fact_ids=ids,
            )  # fmt: skip
        slot_gate = self.slot_gate
        if slot_gate is not None:
            slot_gate = slot_gate.with_facts(
                model, facts, ids, layer=c.layer, module=c.module, batch_size=batch_size
            )
        grown = self._derived(
            model=model,
            slot_gate=slot_gate,
            ids=self.ids + tuple(ids),
            targets=self.targets + tuple(texts),
            subjects=_cat_tuple(self.subjects, subjects),
            keys=torch.cat([self.keys, new.subject_keys]),
            slot_keys=_cat(self.slot_keys, new.slot_keys),
            answer_values=torch.cat([self.answer_values, new.answer_values]),
            target_values=torch.cat([self.target_values, new.target_values]),
            subject_lengths=_cat(self.subject_lengths, new.subject_lengths),
            subject_tokens=_cat_tokens(self.subject_tokens, new.subject_tokens),
            gate_score_max=_cat(self.gate_score_max, score_max),
        )
        grown._warn_blind(ids)
        timings = {
            **self.timings, "capture": capture_s, "solve": grown._solved.seconds,
            "insert": time.perf_counter() - t0,
        }  # fmt: skip
        return grown._derived(timings=timings)

    def without(self, ids: str | Iterable[str]) -> EditMemory:
        """A new memory without the facts ``ids`` (``G`` refactorised); this one is unchanged.

        Raises:
            EditMemoryError: an id not in the memory (named), or an explicit ``q`` larger
                than the remaining ``N``.
        """
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        missing = [i for i in ids if i not in self.ids]
        if missing:
            raise EditMemoryError(f"cannot remove {missing}: not in the memory ({len(self)} facts)")
        drop = set(ids)
        keep = [j for j, i in enumerate(self.ids) if i not in drop]
        rows: dict[str, Any] = {}
        for name in _ROWS:
            value = getattr(self, name)
            if value is None:
                rows[name] = None
            elif isinstance(value, tuple):
                rows[name] = tuple(value[j] for j in keep)
            else:
                rows[name] = value[keep]
        if self.slot_gate is not None:
            rows["slot_gate"] = self.slot_gate.without(ids)
        return self._derived(**rows)

    def remove(self, ids: str | Iterable[str]) -> EditMemory:
        """Deprecated name of :meth:`without` (a memory is a value: this returns a new one)."""
        warnings.warn(
            "EditMemory.remove(ids) returns a new memory and leaves this one unchanged; call it "
            "`memory.without(ids)` (or `handle.without(ids)` for an installed memory). The "
            "name `remove` goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.without(ids)

    def with_config(self, **changes) -> EditMemory:
        """A copy sharing the captured tensors with some config fields changed (no recapture).

        Example: ``memory.with_config(alpha=4.0, q=8)`` or ``memory.with_config(
        subject_gate=True, apply_at="answer", key_at="answer")`` (the gate needs statistics:
        build with ``calibration=``); ``with_config(layer=...)`` is refused because keys and
        deltas belong to their site.
        """
        if {"layer", "module"} & set(changes):
            raise EditMemoryError(
                "keys and deltas belong to their site: rebuild to change layer/module"
            )
        if "steps" in changes:  # the deprecated name of edit_steps
            warnings.warn(
                "with_config(steps=...) is now with_config(edit_steps=...) (`steps` means a "
                "number of denoising steps elsewhere); the old name goes in the next release",
                DeprecationWarning,
                stacklevel=2,
            )
            changes = {("edit_steps" if k == "steps" else k): v for k, v in changes.items()}
        return self._derived(config=replace(self.config, **changes))

    def _warn_blind(self, among: Sequence[str] | None = None) -> None:
        if not self.config.subject_gate or self.config.gate_kind != "cosine":
            return
        blind = [i for i in self.gate_blind if among is None or i in among]
        if blind:
            warnings.warn(
                f"the subject gate can never open for facts {blind[:5]}"
                f"{' …' if len(blind) > 5 else ''}: a calibration prompt about another subject "
                f"scores as high as their own (τ ≥ 1). Lower gate_margin or remove the "
                f"look-alike from the calibration prompts",
                EditMemoryWarning,
                stacklevel=3,
            )

    # -- installing and persistence ------------------------------------------------------------

    def install(self, model) -> EditHandle:
        """Install the memory on ``model`` as an nnsight edit; returns an :class:`EditHandle`.

        The edit fires on every forward through nnsight whose context step is in the
        step set (stand-alone forwards always), at the positions the config selects. No
        weight changes. ``handle.remove()`` (or leaving ``with memory.install(model):``)
        takes exactly this edit out; ``handle.install_seconds`` is the time it took.

        Raises:
            EditMemoryError: the memory is empty, already installed on ``model`` (this very
                value), or was built on another model (different fingerprint; the message
                names both).
        """
        return install(self, model)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EditMemory:
        """Read a memory written by :meth:`save` (exact: tensors bit for bit, same config);
        files written by the package's earlier edit-memory format are read too.

        Raises:
            FileNotFoundError: no such file.
            EditMemoryFileError: truncated or corrupt file, or not an edit memory (an
                :class:`EditMemoryError` and a :class:`~tie_tracing.core._io.ResultFileError`).
        """
        try:
            return load_object(cls, path, legacy=read_legacy_memory)
        except EditMemoryFileError:
            raise
        except ResultFileError as exc:
            raise EditMemoryFileError(str(exc)) from exc

    def equals(self, other: EditMemory) -> bool:
        """Exact equality of config, per-fact rows, gate statistics, model info and tensors."""
        if not isinstance(other, EditMemory) or self.config != other.config:
            return False
        if self.model_info != other.model_info:
            return False
        for name in _ROWS:
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if isinstance(a, torch.Tensor):
                if not (a.dtype == b.dtype and torch.equal(a, b)):
                    return False
            elif a != b:
                return False
        sa, sb = self.slot_gate, other.slot_gate
        if (sa is None) != (sb is None) or (
            sa is not None and sb is not None and not sa.equals(sb)
        ):
            return False
        ga, gb = self.gate, other.gate
        if (ga is None) != (gb is None):
            return False
        if ga is not None and gb is not None:
            return (
                ga.shrinkage == gb.shrinkage
                and ga.calibration == gb.calibration
                and torch.equal(ga.mean, gb.mean)
                and torch.equal(ga.whiten, gb.whiten)
            )
        return True


# ------------------------------------------------------------------------------- helpers


def _cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else torch.cat([a, b])


def _cat_tokens(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Stack two ``-1``-padded token-id tables of possibly different widths."""
    if a is None or b is None:
        return None
    width = max(a.shape[1], b.shape[1])
    pad = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-1) for t in (a, b)]
    return torch.cat(pad)


def _cat_tuple(a: tuple[str, ...] | None, b: Sequence[str]) -> tuple[str, ...] | None:
    return None if a is None else a + tuple(b)


#: The target text recorded for ``targets="unknown"`` (its values are captured, not written).
UNKNOWN_TARGET = "<a person the model never met>"


def _check_unknown_names(names: Sequence[str] | None, facts: Sequence[Fact]) -> list[str]:
    """The never-met names of ``targets="unknown"``: at least one string, none of them a
    subject of ``facts``."""
    if names is None or isinstance(names, str):
        raise EditMemoryError(
            "targets='unknown' needs unknown_names=[...]: names of people the model never met "
            "(made-up names; for the embedded world, tt.zoo.corpus.holdout_names())"
        )
    out = [str(n) for n in names]
    if not out or any(not n.strip() for n in out):
        raise EditMemoryError(f"unknown_names must be non-empty strings, got {names!r}")
    subjects = {" ".join(f.subject.casefold().split()) for f in facts}
    clash = [n for n in out if " ".join(n.casefold().split()) in subjects]
    if clash:
        raise EditMemoryError(f"unknown_names {clash} are subjects of the facts being forgotten")
    return out


def _check_unique(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    dups = []
    for i in ids:
        if i in seen and i not in dups:
            dups.append(i)
        seen.add(i)
    if dups:
        raise EditMemoryError(f"duplicate fact ids {dups}: every fact in a memory needs its own id")


def _resolve_targets(facts: Sequence[Fact], targets: str | Sequence[str]) -> list[str]:
    if isinstance(targets, str):
        if targets not in TARGET_KINDS:
            raise EditMemoryError(
                f"targets={targets!r}: give one of {TARGET_KINDS} or one string per fact"
            )
        if targets == "unknown":
            raise EditMemoryError(
                "targets='unknown' is captured by EditMemory.build (with unknown_names=)"
            )
        refusals = load_refusals() if targets in ("auto", "refusal") else []
        out = []
        for f in facts:
            if targets == "target" or (targets == "auto" and f.target is not None):
                if f.target is None:
                    raise EditMemoryError(
                        f"fact {fact_key(f)!r} has no target (Fact.target is None)"
                    )
                out.append(f.target)
            elif targets == "perturbed":
                if not f.perturbed_answers:
                    raise EditMemoryError(f"fact {fact_key(f)!r} has no perturbed answers")
                out.append(f.perturbed_answers[0])
            else:
                out.append(refusals[zlib.crc32(fact_key(f).encode()) % len(refusals)])
        return out
    texts = list(targets)
    if len(texts) != len(facts):
        raise EditMemoryError(
            f"{len(texts)} targets given for {len(facts)} facts: give one target string per "
            f"fact, or one of {TARGET_KINDS}"
        )
    for f, t in zip(facts, texts):
        if not isinstance(t, str) or not t.strip():
            raise EditMemoryError(
                f"fact {fact_key(f)!r}: its target {t!r} is not a non-empty string; give "
                "the text the edited model should say instead"
            )
    return texts
