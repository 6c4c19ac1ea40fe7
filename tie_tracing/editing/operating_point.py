"""What a build is asked for: a config, keyword overrides, and operating points loaded on request.

**A build is explicit.** :meth:`EditMemory.build(model, facts, config=None, **overrides)
<tie_tracing.editing.EditMemory.build>` computes one :class:`~.config.EditConfig`: ``config``
(default: none) with the keyword ``overrides`` (``layer=``, ``alpha=``, … — any field of
:class:`EditConfig`) replacing its fields. With no config the base is :class:`EditConfig`'s
defaults — the paper's memory (Eq. 11–12 at every position, subject keys, no gate) — and
``layer`` must be given: there is no default site. Nothing is read from the model's files.
An override of ``None`` where ``None`` is not a value of the field (everything but ``q`` and
``edit_steps``) leaves the base's value, so ``alpha=None`` means "not given".

**Operating points.** A model directory's ``tie_tracing.json`` may hold an
``"operating_point"``: a configuration a tuning command chose on validation facts, with its
provenance. It is used only when asked for, as a value::

    point = tt.editing.OperatingPoint.shipped(model)     # read, validated
    memory = tt.EditMemory.build(model, facts, point)    # its config, calibration, shrinkage
    stronger = tt.EditMemory.build(model, facts, point, alpha=4.0)

:class:`OperatingPoint` holds the :class:`EditConfig` (``.config``), the gate's covariance
shrinkage (``.gate_shrinkage``), its calibration prompts resolved to facts (``.calibration``;
a gated point names them by id), what the tuning measured (``.measured``) and the command that
wrote it (``.command``). A stored ``q`` is a ceiling (``cap_q``: ``min(q, N)`` for a memory of
``N`` facts); an explicit ``q=`` must satisfy ``1 ≤ q ≤ N``.

The stored record (:meth:`OperatingPoint.to_dict`)::

    {"layer": 4, "module": "resid", "alpha": 8.0, "lam": 0.1, "q": null, "edit_steps": null,
     "mode": "ridge", "subject_gate": true, "gate_kind": "cosine", "gate_margin": 0.05,
     "apply_at": "answer", "key_at": "answer", ..., "gate_shrinkage": 0.1,
     "calibration": {"corpus": "tiny", "split": "retain", "ids": ["p003-birthplace", ...]},
     "fingerprint": "…", "command": "python experiments/edit_tune_gate.py --write",
     "measured": {...}, "tuned_on": {...}, "rule": "…", "selected_by": "…", "date": "…"}

Required: ``layer``, ``alpha``, ``lam``, ``q``, ``subject_gate``, ``fingerprint``, ``command``
and ``measured``; a gated point also ``gate_kind``, and a cosine gate ``gate_margin``,
``gate_shrinkage`` and ``calibration``. Other :class:`EditConfig` fields default to
:class:`EditConfig`'s; ``steps`` is read as ``edit_steps``. A missing or unknown field is an
:class:`EditMemoryError` that names it; a point that records another model's fingerprint (the
model was retrained since) loads with an :class:`EditMemoryWarning` asking to re-run its
command.

**One writer.** :func:`write_operating_point` is the only code that stores a point: the tuning
commands (``python experiments/edit_tune.py --write``, ``edit_tune_gate.py --write``,
``edit_tune_token_gate.py --write``, through ``experiments/edit_common.py``) call it. It
validates the point, writes the JSON and regenerates the model card's "Edit operating point"
section from what it wrote (:mod:`tie_tracing.zoo.card`; training's card writer renders the
same section), so the card and the JSON say the same thing.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..core._guards import as_int
from ..core._io import atomic_write_text
from ..core.facts import Fact
from ..core.fingerprint import model_fingerprint
from ..zoo.card import card_with_operating_point
from .config import PACKAGE_DEFAULTS, EditConfig, EditMemoryError, EditMemoryWarning

__all__ = [
    "OperatingPoint",
    "resolve_calibration",
    "resolve_config",
    "write_operating_point",
]

#: How to make a model ship an operating point (for error messages).
_TUNE = (
    "tune one on validation facts with python experiments/edit_tune.py --write (the paper's "
    "memory), experiments/edit_tune_gate.py --write or experiments/edit_tune_token_gate.py "
    "--write (gated)"
)
_NULLABLE = ("q", "edit_steps")  # fields whose None is a value (dense, every step)
_REQUIRED = ("layer", "alpha", "lam", "q", "subject_gate", "fingerprint", "command", "measured")
_COSINE_REQUIRED = ("gate_margin", "gate_shrinkage", "calibration")
_PROVENANCE = ("fingerprint", "command", "measured", "tuned_on", "rule", "selected_by", "date")
_CALIBRATION_KEYS = ("corpus", "split", "ids", "note")


def _config_fields() -> tuple[str, ...]:
    """The :class:`EditConfig` fields a record stores (``cap_q`` follows from ``q``)."""
    return tuple(f.name for f in fields(EditConfig) if f.name != "cap_q")


@dataclass(frozen=True, repr=False)
class OperatingPoint:
    """A tuned edit-memory configuration with its provenance; pass it as ``EditMemory.build``'s
    config.

    Attributes:
        config: The :class:`EditConfig` (``cap_q`` set when ``q`` is: a ceiling).
        fingerprint: :func:`~tie_tracing.core.fingerprint.model_fingerprint` of the model it was
            tuned on.
        command: The command that wrote it (re-run it after retraining).
        measured: What the tuning measured on its validation facts.
        gate_shrinkage: ``s`` of the cosine gate's covariance (``None``: no cosine gate).
        calibration: The cosine gate's calibration prompts, resolved from ``calibration_spec``.
        calibration_spec: ``{"corpus", "split", "ids"}`` naming them (as stored).
        tuned_on, rule, selected_by, date: Further provenance, as stored.
        source: Where it was read from (for messages).

    Example:
        >>> point = tt.editing.OperatingPoint.shipped(model)          # doctest: +SKIP
        >>> memory = tt.EditMemory.build(model, facts, point)        # doctest: +SKIP
    """

    config: EditConfig
    fingerprint: str
    command: str
    measured: Mapping[str, Any]
    gate_shrinkage: float | None = None
    calibration: tuple[Fact, ...] | None = None
    calibration_spec: Mapping[str, Any] | None = None
    tuned_on: Mapping[str, Any] | None = None
    rule: str | None = None
    selected_by: str | None = None
    date: str | None = None
    source: str = field(default="an operating point", compare=False)

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def ships_with(model) -> bool:
        """Whether ``model``'s ``tie_tracing.json`` holds an operating point (nothing is read
        into a build unless :meth:`shipped` is called)."""
        return bool((getattr(model, "info", None) or {}).get("operating_point"))

    @classmethod
    def shipped(cls, model) -> OperatingPoint:
        """The operating point stored with ``model`` (its ``tie_tracing.json``), validated.

        Raises:
            EditMemoryError: the model ships none (the message says how to tune one); a
                missing or unknown field; calibration ids absent from their corpus.

        Warns:
            EditMemoryWarning: the point was tuned on another model (another fingerprint).
        """
        name = getattr(model, "name", "this model")
        record = (getattr(model, "info", None) or {}).get("operating_point")
        if not record:
            raise EditMemoryError(
                f"{name!r} ships no edit operating point (no 'operating_point' in its "
                f"tie_tracing.json): build with explicit settings, e.g. "
                f"tt.EditMemory.build(model, facts, layer=...), or {_TUNE}"
            )
        if not isinstance(record, Mapping):
            raise EditMemoryError(
                f"the operating point in {name!r}'s tie_tracing.json is a "
                f"{type(record).__name__}, not a record: re-run its tuning command ({_TUNE})"
            )
        point = cls.from_dict(record, source=f"the operating point in {name!r}'s tie_tracing.json")
        mine = model_fingerprint(model)
        if point.fingerprint != mine:
            warnings.warn(
                f"the operating point stored with {name!r} was tuned on another model "
                f"(fingerprint {point.fingerprint}, this model {mine}): it may no longer fit. "
                f"Re-run its tuning command: {point.command}",
                EditMemoryWarning,
                stacklevel=2,
            )
        return point

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], *, source: str = "") -> OperatingPoint:
        """Validate a stored record (see the module docstring) and resolve its calibration.

        Raises:
            EditMemoryError: a missing or unknown field, an invalid value, calibration ids
                absent from their corpus.
        """
        source = source or "the operating point"
        d = dict(record)
        if "steps" in d:
            if "edit_steps" in d:
                raise EditMemoryError(
                    f"{source} gives the step set twice ('steps' and 'edit_steps'): keep "
                    f"'edit_steps'"
                )
            d["edit_steps"] = d.pop("steps")
        known = {*_config_fields(), "gate_shrinkage", "calibration", *_PROVENANCE}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EditMemoryError(
                f"{source} has unknown fields {unknown}; the fields are {sorted(known)}. Re-run "
                f"its tuning command{_command_hint(d)}"
            )
        required = list(_REQUIRED)
        if d.get("subject_gate"):
            required.append("gate_kind")
            if d.get("gate_kind") in ("cosine", "slots"):
                required += _COSINE_REQUIRED
        missing = [k for k in required if k not in d]
        if missing:
            raise EditMemoryError(
                f"{source} lacks the fields {missing}. Re-run its tuning command{_command_hint(d)}"
            )
        for name, kind in (("fingerprint", str), ("command", str), ("measured", Mapping)):
            if not isinstance(d[name], kind) or not d[name]:
                raise EditMemoryError(
                    f"{source}: {name!r} must be a non-empty {kind.__name__}, got {d[name]!r}"
                )
        settings = {k: d[k] for k in _config_fields() if k in d}
        if settings.get("edit_steps") is not None:
            settings["edit_steps"] = tuple(settings["edit_steps"])
        try:
            config = EditConfig(**settings, cap_q=settings.get("q") is not None)
        except (TypeError, ValueError) as exc:
            raise EditMemoryError(f"{source}: {exc}") from exc
        cosine = config.subject_gate and config.gate_kind == "cosine"
        shrinkage = d.get("gate_shrinkage")
        if shrinkage is not None:
            shrinkage = _check_shrinkage(shrinkage, source)
        spec = d.get("calibration")
        facts = None
        if spec is not None:
            spec, facts = _resolve_spec(spec, source)
        elif cosine:  # required above; a null is as absent
            raise EditMemoryError(f"{source}: a cosine gate needs 'calibration' (got null)")
        return cls(
            config=config,
            fingerprint=d["fingerprint"],
            command=d["command"],
            measured=dict(d["measured"]),
            gate_shrinkage=shrinkage,
            calibration=facts,
            calibration_spec=spec,
            tuned_on=None if d.get("tuned_on") is None else dict(d["tuned_on"]),
            rule=d.get("rule"),
            selected_by=d.get("selected_by"),
            date=d.get("date"),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record :func:`write_operating_point` stores; :meth:`from_dict` reads it back equal."""
        config = self.config.to_dict()
        out: dict[str, Any] = {k: config[k] for k in _config_fields()}
        out["gate_shrinkage"] = self.gate_shrinkage
        out["calibration"] = None if self.calibration_spec is None else dict(self.calibration_spec)
        out.update(fingerprint=self.fingerprint, command=self.command, measured=dict(self.measured))
        for name in ("tuned_on", "rule", "selected_by", "date"):
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if isinstance(value, Mapping) else value
        return out

    def __repr__(self) -> str:
        c = self.config
        gate = "off"
        if c.subject_gate and c.gate_kind == "tokens":
            gate = "subject(tokens)"
        elif c.subject_gate:
            spec = self.calibration_spec or {}
            gate = (
                f"subject(margin={c.gate_margin:g}, shrinkage={self.gate_shrinkage}, calibration="
                f"{len(self.calibration or ())} '{spec.get('corpus')}/{spec.get('split')}' prompts)"
            )
        return (
            f"OperatingPoint(layer={c.layer}, module={c.module!r}, alpha={c.alpha:g}, "
            f"lam={c.lam:g}, q={c.q}, edit_steps={c.edit_steps}, mode={c.mode!r}, gate={gate}, "
            f"apply_at={c.apply_at!r}, key_at={c.key_at!r}, ridge_blocks={c.ridge_blocks!r}, "
            f"fingerprint={self.fingerprint!r}, command={self.command!r})"
        )


def _command_hint(d: Mapping[str, Any]) -> str:
    command = d.get("command")
    return f": {command}" if isinstance(command, str) and command else f" ({_TUNE})"


def _check_shrinkage(value: Any, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise EditMemoryError(f"{source}: gate_shrinkage must lie in (0, 1], got {value!r}")
    return float(value)


def _resolve_spec(spec: Any, source: str) -> tuple[dict[str, Any], tuple[Fact, ...]]:
    """A calibration spec ``{"corpus", "split", "ids"}`` checked and resolved to its facts."""
    if not isinstance(spec, Mapping):
        raise EditMemoryError(
            f"{source}: 'calibration' must be {{'corpus', 'split', 'ids'}}, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(_CALIBRATION_KEYS))
    missing = [k for k in ("corpus", "split", "ids") if k not in spec]
    if unknown or missing:
        raise EditMemoryError(
            f"{source}: 'calibration' has unknown keys {unknown} / lacks {missing}; it names "
            f"its prompts as {{'corpus', 'split', 'ids'}} (and an optional 'note')"
        )
    ids = spec["ids"]
    if isinstance(ids, str) or not isinstance(ids, Sequence) or not ids:
        raise EditMemoryError(f"{source}: calibration 'ids' must be a non-empty list of fact ids")
    from ..zoo.corpus import load_facts

    try:
        pool = {f.id: f for f in load_facts(spec["corpus"], spec["split"])}
    except (ValueError, KeyError) as exc:
        raise EditMemoryError(
            f"{source}: calibration names an unknown corpus or split: {exc}"
        ) from exc
    absent = [i for i in ids if i not in pool]
    if absent:
        raise EditMemoryError(
            f"{source}: its calibration names ids absent from {spec['corpus']!r}/"
            f"{spec['split']!r}: {absent[:5]}"
        )
    return dict(spec), tuple(pool[i] for i in ids)


# ------------------------------------------------------------------------- build resolution


def resolve_config(
    model,
    config: EditConfig | OperatingPoint | None,
    overrides: Mapping[str, Any],
    *,
    n_facts: int,
) -> tuple[EditConfig, OperatingPoint | None]:
    """The :class:`EditConfig` of a build: ``config`` (default: none) with ``overrides`` applied,
    and the operating point it came from (``None`` unless ``config`` is one).

    Raises:
        TypeError: a config of another type; an unknown override (the message lists the valid
            ones).
        EditMemoryError: no config and no ``layer``; an explicit ``q`` outside ``1 … N``.
    """
    point = config if isinstance(config, OperatingPoint) else None
    base = point.config if point is not None else config
    if base is not None and not isinstance(base, EditConfig):
        raise TypeError(_bad_config(config))
    valid = [f.name for f in fields(EditConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        said = ", ".join(
            f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
            for u in unknown
            for h in [difflib.get_close_matches(u, valid, n=1)]
        )
        raise TypeError(
            f"EditMemory.build has no setting {said}; the settings are the fields of "
            f"EditConfig: {', '.join(valid)} (and targets=, calibration=, gate_shrinkage=, "
            f"batch_size=)"
        )
    given = {k: v for k, v in overrides.items() if v is not None or k in _NULLABLE}
    if "q" in given:
        given["q"] = as_int(given["q"])
        capped = given.get("cap_q", False) is True
        q = given["q"]
        if (
            q is not None
            and not capped
            and (isinstance(q, bool) or not isinstance(q, int) or q < 1 or q > n_facts)
        ):
            raise EditMemoryError(
                f"q={q!r} must be an integer with 1 ≤ q ≤ N={n_facts} (or None for dense)"
            )
        given.setdefault("cap_q", False)
    if base is None:
        if "layer" not in given:
            raise EditMemoryError(_no_layer(model))
        return EditConfig(**given), None
    if given.get("mode") == "steer" and "subject_gate" not in given:
        given["subject_gate"] = False  # the steer baseline is ungated
    return replace(base, **given), point


def _bad_config(config: Any) -> str:
    got = f"{type(config).__name__} {config!r}"[:80]
    if isinstance(config, bool) or not isinstance(config, (int, Mapping)):
        hint = "give settings as keywords (layer=..., alpha=...) or a tt.EditConfig(...)"
    elif isinstance(config, int):
        hint = f"give the site as layer={config}"
    else:
        hint = (
            "read a stored record with tt.EditConfig.from_dict(d) or "
            "tt.editing.OperatingPoint.from_dict(d)"
        )
    return (
        f"EditMemory.build takes an EditConfig or an OperatingPoint as its config, got {got}: "
        f"{hint}"
    )


def _no_layer(model) -> str:
    message = (
        "EditMemory.build needs a site: pass layer=... (e.g. layer=coord.layer, the "
        "coordinate tt.select_coordinate chose) or a config, tt.EditConfig(layer=...); every "
        "other setting defaults to the paper's memory (EditConfig's defaults)"
    )
    if OperatingPoint.ships_with(model):
        message += (
            f". {getattr(model, 'name', 'this model')!r} ships a tuned operating point, used "
            f"only when asked: tt.EditMemory.build(model, facts, "
            f"tt.editing.OperatingPoint.shipped(model))"
        )
    return message


def resolve_calibration(
    calibration: Sequence[Fact] | Fact | None,
    point: OperatingPoint | None,
    config: EditConfig,
) -> list[Fact] | None:
    """The calibration prompts of a build: given ones, else the operating point's where the
    config's cosine or answer-slot gate needs them.

    Raises:
        EditMemoryError: an empty ``calibration``; a cosine or slots gate with neither.
    """
    if calibration is not None:
        facts: list[Fact] = [calibration] if isinstance(calibration, Fact) else list(calibration)
        if not facts:
            raise EditMemoryError("calibration= is empty: the subject gate needs prompts")
        return facts
    if not (config.subject_gate and config.gate_kind in ("cosine", "slots")):
        return None
    if point is not None and point.calibration:
        return list(point.calibration)
    raise EditMemoryError(
        f"subject_gate=True (gate_kind={config.gate_kind!r}) needs calibration prompts: pass "
        "calibration=facts (prompts the memory must leave alone, e.g. retain facts; never the "
        "facts you report on)"
    )


def resolve_shrinkage(given: float | None, point: OperatingPoint | None) -> float:
    """``gate_shrinkage``: given, else the operating point's, else the package default."""
    if given is not None:
        return float(given)
    if point is not None and point.gate_shrinkage is not None:
        return point.gate_shrinkage
    return float(PACKAGE_DEFAULTS["gate_shrinkage"])


# --------------------------------------------------------------------------- the one writer


def write_operating_point(
    directory: str | os.PathLike, point: OperatingPoint | Mapping[str, Any] | None
) -> Path:
    """Store ``point`` as the shipped operating point of the model in ``directory`` and
    regenerate its card's "Edit operating point" section from the stored record (``None``
    removes both). Other keys of ``tie_tracing.json`` and the rest of the card are kept;
    both files are written atomically.

    Returns:
        The path of ``tie_tracing.json``.

    Raises:
        EditMemoryError: ``directory`` holds no ``tie_tracing.json``; ``point`` does not
            validate (:meth:`OperatingPoint.from_dict`) — nothing is written then.
    """
    directory = Path(directory)
    info_path = directory / "tie_tracing.json"
    if not info_path.is_file():
        raise EditMemoryError(
            f"{directory} holds no tie_tracing.json: give the directory of a model "
            f"(e.g. tie_tracing/zoo/models/tiny-mdlm)"
        )
    record = None
    if point is not None:
        if not isinstance(point, OperatingPoint):
            point = OperatingPoint.from_dict(point, source=f"the operating point for {directory}")
        record = point.to_dict()
    info = json.loads(info_path.read_text())
    if record is None:
        info.pop("operating_point", None)
    else:
        info["operating_point"] = record
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    card = directory / "MODEL_CARD.md"
    if card.is_file():
        atomic_write_text(card, card_with_operating_point(card.read_text(), record))
    return info_path
