"""What a result records about how it was made: typed, frozen provenance values.

:class:`TraceProvenance` (a :class:`~tie_tracing.core.results.TIEResult`'s ``config``) and
:class:`PositionalProvenance` (a :class:`~tie_tracing.core.results.PositionalResult`'s) declare
every entry a result carries: the settings of the trace (the flat record of
``tracing.config.TraceConfig.to_dict()`` / ``PositionalConfig.to_dict()`` with ``ν``
resolved) and what the run added (unknown facts, engine counters, seed pooling, the model's
mask id or position convention). Values are the JSON forms (lists, not tuples), as results
have always recorded them.

**No silent defaults.** A value is built from a record by :meth:`Provenance.from_record`:
an entry the class does not declare is an error naming it, and so is a missing entry —
except the entries added to the record over time, each listed with the value that records
made before it carried (:attr:`Provenance.ADDED`, e.g. ``mode="exact"``: the only mode there
was). A saved result stores the typed value itself (``core._io``), so a file missing a field
does not load (the error names the field). Code reads fields as attributes
(``result.config.shifted``); the read-only mapping view (``result.config["decay"]``,
``"mask_token_id" in result.config``) lists the declared fields, leaving out those whose
``None`` means "not recorded" (:attr:`Provenance.UNRECORDED_WHEN_NONE`: the engine counters,
a pool's parts, the mask id of a record older than commit maps, …).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import TieTracingError

__all__ = ["PositionalProvenance", "Provenance", "ProvenanceError", "TraceProvenance"]


class ProvenanceError(TieTracingError, ValueError):
    """A provenance record with an undeclared or a missing entry (both named)."""


def _json(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ProvenanceError(f"config entry {name!r} is not JSON-serialisable: {exc}") from exc


class Provenance(Mapping[str, Any]):
    """Base of the provenance values: a frozen dataclass with a read-only mapping view.

    Subclasses are ``@dataclass(frozen=True, kw_only=True, eq=False)`` whose fields are all
    required; :attr:`ADDED` names the fields records did not always carry, with the value a
    record without them means.
    """

    ADDED: ClassVar[dict[str, Any]] = {}
    #: Fields whose ``None`` means "not recorded": the mapping view leaves them out then.
    UNRECORDED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, _json(getattr(self, f.name), f.name))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every declared field."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Any:
        """The value of a flat record (a result's ``config`` dict, or the mapping view).

        Raises:
            ProvenanceError: an entry the class does not declare, or a missing entry that is
                not among :attr:`ADDED` (each named).
        """
        if isinstance(record, cls):
            return record
        names = set(cls.names())
        unknown = sorted(set(record) - names, key=str)
        if unknown:
            raise ProvenanceError(
                f"{cls.__name__} has no field {', '.join(map(repr, unknown))} (its fields: "
                f"{', '.join(sorted(names))})"
            )
        missing = sorted(names - set(record) - set(cls.ADDED))
        if missing:
            raise ProvenanceError(
                f"the {cls.__name__} record lacks {', '.join(map(repr, missing))}: a result must "
                "record every setting it was traced with"
            )
        values = {**cls.ADDED, **dict(record)}
        return cls(**values)

    # -- the mapping view ----------------------------------------------------------------
    def _recorded(self) -> list[str]:
        hide = self.UNRECORDED_WHEN_NONE
        return [n for n in self.names() if n not in hide or getattr(self, n) is not None]

    def __getitem__(self, key: str) -> Any:
        if key in self._recorded():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._recorded())

    def __len__(self) -> int:
        return len(self._recorded())

    def __or__(self, other: Mapping[str, Any]) -> Any:
        """A new value with ``other``'s entries set (named errors for undeclared ones)."""
        return type(self).from_record({**dict(self), **dict(other)})

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON record (the mapping view as a dict)."""
        return dict(self)


#: Entries added to the records over time, with what a record without them means.
_COMMON_ADDED: dict[str, Any] = {
    "mentions": "all",  # before mentions="first" existed every mention was corrupted
    "unknown_facts": [],
    "engine_stats": None,
    "pooled": None,  # set by pool_seeds
    "world_size": None,  # set by a sharded run
    "fact": None,  # the resume record of one fact's file in a resumable directory
}
_COMMON_UNRECORDED = frozenset({"engine_stats", "pooled", "world_size", "fact"})


@dataclass(frozen=True, kw_only=True, eq=False)
class TraceProvenance(Provenance):
    """The ``config`` of a :class:`~tie_tracing.core.results.TIEResult` (SPEC §5).

    Attributes:
        modules, layers: The traced sites (``layers=None``: every layer).
        noise_scale, nu, replace, n_noise, seed, mentions: The corruption (``nu`` resolved;
            ``seed``/``nu`` become lists when parts of several seeds are joined).
        steps, decay, temperature, block_length, lp, target, mode, horizon, sampler,
            patch_steps: The trace settings (``TraceConfig``); ``sampler`` is the sampler's
            ``to_dict()`` (``None``: a record older than sampler records).
        normalized, normalize_nan_policy: Whether ``ie``/``tie`` are normalised (Eq. 3) and how.
        mask_token_id: The model's mask id (commit maps; ``None``: a record older than them).
        horizon_weight: Eq. 4's weights for a horizon (exact mode).
        unknown_facts, engine_stats, pooled, world_size, fact: What the run added.
        ig_steps: Integrated-gradient scales of the attribution scan (1: plain attribution).
        structural_zeros: Per fact id, the sites whose patches at the subject positions reach
            no answer position by architecture (not run; ``None``: not recorded).
    """

    modules: list[str]
    layers: list[int] | None
    noise_scale: float
    nu: float | list[float] | None
    replace: bool
    n_noise: int
    seed: int | list[int]
    mentions: str
    steps: int
    decay: float
    temperature: float
    block_length: int | None
    lp: str
    target: str
    mode: str
    horizon: int | None
    sampler: dict[str, Any] | None
    patch_steps: list[int] | None
    normalized: bool
    normalize_nan_policy: str | None
    mask_token_id: int | None
    horizon_weight: list[float] | None
    unknown_facts: list[str]
    engine_stats: Any
    pooled: list[dict[str, Any]] | None
    world_size: int | None
    fact: dict[str, Any] | None
    ig_steps: int
    structural_zeros: dict[str, Any] | None

    ADDED: ClassVar[dict[str, Any]] = {
        "ig_steps": 1,  # plain attribution: the only estimator before integrated gradients
        "structural_zeros": None,  # records before the structural-zero mask
        **_COMMON_ADDED,
        "mode": "exact",  # the only mode before horizon / immediate / attribution
        "horizon": None,
        "sampler": None,
        "patch_steps": None,
        "normalized": False,
        "normalize_nan_policy": None,
        "mask_token_id": None,
        "horizon_weight": None,
    }
    UNRECORDED_WHEN_NONE: ClassVar[frozenset[str]] = _COMMON_UNRECORDED | {
        "structural_zeros",
        "sampler",
        "patch_steps",
        "normalize_nan_policy",
        "mask_token_id",
        "horizon_weight",
    }


@dataclass(frozen=True, kw_only=True, eq=False)
class PositionalProvenance(Provenance):
    """The ``config`` of a :class:`~tie_tracing.core.results.PositionalResult` (SPEC §6).

    Attributes:
        modules, layers, noise_scale, nu, replace, n_noise, seed, mentions, window: The
            ``PositionalConfig`` record (``nu`` resolved).
        causal, shifted: The model's position convention: an AR model, and whether logits at
            position ``i`` predict token ``i + 1`` (a positional trace reads both; required).
        prompt_length: Prompt tokens per fact id (after concatenation).
        normalized: Always ``False`` (kept for a uniform record).
        unknown_facts, engine_stats, pooled, world_size, fact: What the run added.
    """

    modules: list[str]
    layers: list[int] | None
    noise_scale: float
    nu: float | list[float] | None
    replace: bool
    n_noise: int
    seed: int | list[int]
    mentions: str
    window: int
    causal: bool
    shifted: bool
    prompt_length: dict[str, int] | None
    normalized: bool
    unknown_facts: list[str]
    engine_stats: Any
    pooled: list[dict[str, Any]] | None
    world_size: int | None
    fact: dict[str, Any] | None

    ADDED: ClassVar[dict[str, Any]] = {
        **_COMMON_ADDED,
        "prompt_length": None,
        "normalized": False,
    }
    UNRECORDED_WHEN_NONE: ClassVar[frozenset[str]] = _COMMON_UNRECORDED | {"prompt_length"}
