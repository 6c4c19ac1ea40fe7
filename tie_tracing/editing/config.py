"""What an edit memory is asked to do: :class:`EditConfig`, its named choices and its error.

A config says *where* the memory acts (site, step set, positions) and *how* (update rule,
strength, ridge, sparsity, gate). It is frozen, keyword-built, validated on construction and
round-trips through :meth:`EditConfig.to_dict` / :meth:`EditConfig.from_dict` exactly; the
captured tensors it applies to live in :class:`~tie_tracing.editing.memory.EditMemory`.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..core._guards import as_int, as_real
from ..core._io import ResultFileError
from ..core.backbones import MODULES
from ..core.errors import TieTracingError

__all__ = [
    "APPLY_AT",
    "EDIT_MODES",
    "GATE_KINDS",
    "RIDGE_BLOCKS",
    "KEY_AT",
    "PACKAGE_DEFAULTS",
    "TARGET_KINDS",
    "EditConfig",
    "EditMemoryError",
    "EditMemoryFileError",
    "EditMemoryWarning",
    "normalize_steps",
]

#: Update rules: ``"ridge"`` (Eq. 11–12), ``"gated"`` (Eq. 10 per fact, summed), ``"steer"``.
EDIT_MODES: tuple[str, ...] = ("ridge", "gated", "steer")
#: Where the update is added: every position (the paper) or the answer's ``[MASK]`` slots.
APPLY_AT: tuple[str, ...] = ("all", "answer")
#: How the subject gate detects a fact's subject: the whitened residual cosine of the
#: subject's window (``"cosine"``), its exact token ids in the prompt (``"tokens"``), or
#: what the model computes at the answer's slots, against a codebook of keys (``"slots"``,
#: :mod:`~tie_tracing.editing.slot_gate`).
GATE_KINDS: tuple[str, ...] = ("cosine", "tokens", "slots")
#: How the ridge couples facts: one Gram matrix over the whole memory (Eq. 11) or one block
#: per subject (block-diagonal ``G``).
RIDGE_BLOCKS: tuple[str, ...] = ("memory", "subject")
#: Where the keys of ``G⁻¹K`` are pooled: the subject tokens (Eq. 6) or the answer slots.
KEY_AT: tuple[str, ...] = ("subject", "answer")
#: Named target choices of :meth:`EditMemory.build`.
TARGET_KINDS: tuple[str, ...] = ("auto", "refusal", "perturbed", "target", "unknown")
#: The defaults of a build without a config: :class:`EditConfig`'s (the paper's memory;
#: ``layer`` has none and must be given) and the cosine gate's ``gate_shrinkage``.
PACKAGE_DEFAULTS: dict[str, Any] = {
    "alpha": 1.0,
    "lam": 0.01,
    "q": None,
    "kappa": 1.0,
    "subject_gate": False,
    "gate_kind": "cosine",
    "gate_margin": 0.05,
    "gate_shrinkage": 0.1,
    "apply_at": "all",
    "key_at": "subject",
    "ridge_blocks": "memory",
}


class EditMemoryError(TieTracingError, ValueError):
    """A bad edit-memory request (duplicate or unknown ids, bad ``q``, singular Gram matrix,
    a memory installed twice or on a model it was not built on, a gate without calibration
    prompts, an unreadable memory file)."""


class EditMemoryFileError(EditMemoryError, ResultFileError):
    """A file that :meth:`EditMemory.load <tie_tracing.editing.EditMemory.load>` cannot read
    (truncated, corrupt, or another kind of object); both an :class:`EditMemoryError` and a
    :class:`~tie_tracing.core._io.ResultFileError`."""


class EditMemoryWarning(UserWarning):
    """Something an edit memory can do but probably should not (a stale operating point,
    a gate that can never fire on a fact)."""


@dataclass(frozen=True)
class EditConfig:
    """Where and how an :class:`~tie_tracing.editing.EditMemory` acts; validated on construction.

    The defaults are the paper's memory (Eq. 11–12 at every position, subject keys, no
    gate). The three options after ``cap_q`` make a *gated* memory (see the package docstring
    for the math).

    Attributes:
        layer: Block ``l*``.
        module: Site ``m*`` (``"resid"``, ``"attn"``, ``"mlp"``).
        alpha: Strength ``α``.
        lam: Scale-free ridge ``λ`` (``λ_abs = λ · mean(diag(K Kᵀ))``).
        q: Coefficients kept per token by ``top_q`` (``None``: all, dense).
        edit_steps: The edit's step set: the denoising steps it fires at, a sorted tuple of
            distinct ints ``≥ 0`` (an int given here is a one-step set; ``None``: every
            forward). Steps are numbered ``0 … T-1`` for a ``T``-step sampler; a step ``≥ T``
            never fires. Stand-alone forwards (context step ``None``) always fire. (Across the
            package ``steps`` means a number of denoising steps; ``EditConfig(steps=...)`` and
            ``config.steps`` are deprecated aliases of this field, for one release.)
        kappa: Gate cap ``κ`` of the ``"gated"`` mode (Eq. 10).
        mode: ``"ridge"`` (Eq. 11–12), ``"gated"`` (Eq. 10 per fact, summed) or ``"steer"``
            (``α`` times the mean delta; with a gate, the mean delta of the facts whose gate
            opened in the row).
        cap_q: ``q`` came from an operating point: use ``min(q, N)`` instead of refusing
            ``q > N``.
        subject_gate: Multiply each fact's coefficient by the subject-detection gate
            ``g_f = 1[score_f > τ_f]`` (needs calibration statistics; not with ``"steer"``).
        gate_kind: How the gate detects the subject: ``"cosine"`` (the whitened residual
            cosine of a window against the subject key, thresholded at ``τ_f``; needs
            calibration statistics), ``"tokens"`` (``g_f = 1`` when the subject's token ids
            occur consecutively in the prompt; needs no calibration) or ``"slots"`` (what the
            model computes at the answer's still-masked slots, against a codebook of the facts'
            object-slot keys with radii measured on calibration prompts; decided when the
            answer is all ``[MASK]`` and held along the trajectory; needs calibration and
            ``apply_at="answer"``; :mod:`~tie_tracing.editing.slot_gate`). See the package
            docstring.
        gate_margin: ``τ_f = max_{calibration prompts} score_f + gate_margin`` (cosine gate);
            a key's radius plus ``gate_margin`` (slots gate; negative values widen it).
        apply_at: ``"all"`` positions (the paper) or the ``"answer"`` slots (the positions
            whose input token is ``[MASK]``; MDLMs only).
        key_at: Keys of ``G⁻¹K`` (and of Eq. 10's gate): ``"subject"`` (Eq. 6) or the
            ``"answer"`` slots of the query. Detection always uses subject keys.
        ridge_blocks: ``"memory"`` (Eq. 11: ``G = K Kᵀ + λ_abs I`` over all facts) or
            ``"subject"`` (``G`` block-diagonal by subject, each block with its own
            scale-free ``λ``: a person's edit is the same whoever else is in the memory).
    """

    layer: int
    module: str = "resid"
    alpha: float = 1.0
    lam: float = 0.01
    q: int | None = None
    edit_steps: tuple[int, ...] | None = None
    kappa: float = 1.0
    mode: str = "ridge"
    cap_q: bool = False
    subject_gate: bool = False
    gate_kind: str = "cosine"
    gate_margin: float = 0.05
    apply_at: str = "all"
    key_at: str = "subject"
    ridge_blocks: str = "memory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", as_int(self.layer))
        object.__setattr__(self, "q", as_int(self.q))
        for name in ("alpha", "lam", "kappa", "gate_margin"):
            object.__setattr__(self, name, as_real(getattr(self, name)))
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be an integer ≥ 0, got {self.layer!r}")
        if self.module not in MODULES:
            raise ValueError(f"unknown module {self.module!r}; the sites are {MODULES}")
        for name, choices in (
            ("mode", EDIT_MODES),
            ("apply_at", APPLY_AT),
            ("key_at", KEY_AT),
            ("gate_kind", GATE_KINDS),
            ("ridge_blocks", RIDGE_BLOCKS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {choices}")
        for name in ("alpha", "lam", "kappa", "gate_margin"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.lam < 0:
            raise ValueError(f"lam must be ≥ 0, got {self.lam}")
        if self.kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {self.kappa}")
        for name in ("cap_q", "subject_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.gate_kind == "slots" and self.subject_gate and self.apply_at != "answer":
            raise EditMemoryError(
                "gate_kind='slots' decides at the answer's [MASK] slots and acts there: use "
                "apply_at='answer'"
            )
        if self.q is not None:
            if isinstance(self.q, bool) or not isinstance(self.q, int) or self.q < 1:
                raise EditMemoryError(
                    f"q must be an integer ≥ 1 (or None for dense), got {self.q!r}"
                )
        if self.edit_steps is not None:
            object.__setattr__(self, "edit_steps", normalize_steps(self.edit_steps))

    @property
    def is_paper_form(self) -> bool:
        """Eq. 11–12 as published: ridge, subject keys, every position, no gate."""
        return (
            self.mode == "ridge"
            and not self.subject_gate
            and self.apply_at == "all"
            and self.key_at == "subject"
            and self.ridge_blocks == "memory"
        )

    @property
    def needs_token_ids(self) -> bool:
        """Whether applying needs the forward's token ids (to find ``[MASK]`` slots)."""
        return self.subject_gate or self.apply_at == "answer"

    def fires_at(self, step: int | None) -> bool:
        """Whether the edit acts on a forward at denoising ``step`` (``None``: stand-alone)."""
        return step is None or self.edit_steps is None or step in self.edit_steps

    @property
    def steps(self) -> tuple[int, ...] | None:
        """Deprecated name of :attr:`edit_steps` (``steps`` is a step count elsewhere)."""
        warnings.warn(_STEPS_RENAMED, DeprecationWarning, stacklevel=2)
        return self.edit_steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["edit_steps"] = None if self.edit_steps is None else list(self.edit_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (no silent drops). A record
        written before the rename (a ``"steps"`` key) reads as ``edit_steps``."""
        d = dict(d)
        if "steps" in d and "edit_steps" not in d:
            d["edit_steps"] = d.pop("steps")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise EditMemoryError(f"unknown EditConfig fields {sorted(unknown)}")
        if d.get("edit_steps") is not None:
            d["edit_steps"] = tuple(d["edit_steps"])
        return cls(**d)


_STEPS_RENAMED = (
    "EditConfig.steps is now EditConfig.edit_steps (the edit's step set; `steps` means a "
    "number of denoising steps elsewhere): the old name goes in the next release"
)
_dataclass_init = EditConfig.__init__


@functools.wraps(_dataclass_init)
def _init_with_alias(self: EditConfig, *args: Any, steps: Any = None, **kwargs: Any) -> None:
    """``EditConfig(steps=...)``: the deprecated spelling of ``edit_steps=``."""
    if steps is not None:
        warnings.warn(_STEPS_RENAMED, DeprecationWarning, stacklevel=2)
        if kwargs.get("edit_steps") is not None:
            raise TypeError("give the step set once, as edit_steps= (steps= is its old name)")
        kwargs["edit_steps"] = steps
    _dataclass_init(self, *args, **kwargs)


EditConfig.__init__ = _init_with_alias  # type: ignore[method-assign]


def normalize_steps(steps: Any) -> tuple[int, ...]:
    """A step set as a sorted tuple of distinct integers ``≥ 0``; one integer is a one-step set.

    Raises:
        ValueError: a negative step, a non-integer (``1.5``, ``True``, a string), or an empty set.
    """

    def as_step(s: Any) -> int:
        if isinstance(s, torch.Tensor) and s.numel() == 1 and not s.is_floating_point():
            s = s.item()
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(
                f"steps must be denoising steps (integers ≥ 0), got {s!r} in steps={steps!r}"
            )
        if s < 0:
            raise ValueError(f"steps must be ≥ 0, got {int(s)} in steps={steps!r}")
        return int(s)

    if isinstance(steps, (str, bytes)) or not isinstance(steps, (numbers.Integral, Iterable)):
        raise ValueError(
            f"steps must be a denoising step (an integer ≥ 0), a set of them or None, got "
            f"{type(steps).__name__} {steps!r}"
        )
    if isinstance(steps, numbers.Integral) or (isinstance(steps, torch.Tensor) and steps.ndim == 0):
        items = [steps]
    else:
        items = list(steps)
    out = tuple(sorted({as_step(s) for s in items}))
    if not out:
        raise ValueError(f"steps must be a non-empty set of steps ≥ 0 (or None), got {steps!r}")
    return out
