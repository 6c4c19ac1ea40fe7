"""Operating points: the defaults :meth:`EditMemory.build` takes from the model's ``tie_tracing.json``.

An embedded model's ``tie_tracing.json`` may hold an ``"operating_point"`` written once by a
documented tuning command (``python experiments/edit_tune_token_gate.py --write``, which wrote
the shipped one, ``python experiments/edit_tune_gate.py --write`` or
``python experiments/edit_tune.py --write``; never as a side effect of an experiment)::

    {"layer": 4, "module": "resid", "alpha": 8.0, "lam": 0.1, "q": null, "steps": null,
     "subject_gate": true, "gate_kind": "cosine", "gate_margin": 0.05, "gate_shrinkage": 0.1,
     "apply_at": "answer", "key_at": "answer",
     "calibration": {"corpus": "tiny", "split": "retain", "ids": ["p003-birthplace", ...]},
     "fingerprint": "…", "tuned_on": …, "measured": …, "rule": …, "command": …, "date": …}

Every :meth:`~tie_tracing.editing.EditMemory.build` argument left ``None`` takes the value
stored there, else :data:`~tie_tracing.editing.config.PACKAGE_DEFAULTS`. A gated operating
point names its calibration prompts (fact ids of an embedded corpus), so
``EditMemory.build(model, facts)`` rebuilds the same gate without being handed them. An
operating point that records the fingerprint of another model (the model was retrained
since) still applies, with an :class:`EditMemoryWarning` asking for a re-tune.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ..core._guards import as_int
from ..core.facts import Fact
from ..core.fingerprint import model_fingerprint
from .config import (
    PACKAGE_DEFAULTS,
    EditConfig,
    EditMemoryError,
    EditMemoryWarning,
    normalize_steps,
)

__all__ = ["operating_point", "resolve_calibration", "resolve_config"]


def operating_point(model) -> dict[str, Any]:
    """The model's stored operating point (``{}`` when it has none)."""
    return dict((getattr(model, "info", None) or {}).get("operating_point") or {})


def _pick(name: str, given: Any, op: dict[str, Any]) -> Any:
    if given is not None:
        return given
    if op.get(name) is not None:
        return op[name]
    return PACKAGE_DEFAULTS[name]


def resolve_config(
    model,
    *,
    layer: int | None,
    module: str,
    alpha: float | None,
    lam: float | None,
    q: int | None,
    steps: Any,
    kappa: float | None,
    mode: str,
    subject_gate: bool | None,
    gate_margin: float | None,
    apply_at: str | None,
    key_at: str | None,
    n_facts: int,
    gate_kind: str | None = None,
    ridge_blocks: str | None = None,
) -> EditConfig:
    """The :class:`EditConfig` of a build: given arguments, then the operating point, then defaults.

    Raises:
        EditMemoryError: no ``layer`` and no operating point; an explicit ``q`` outside
            ``1 … N``.
    """
    op = operating_point(model)
    recorded = op.get("fingerprint")
    if recorded and recorded != model_fingerprint(model):
        warnings.warn(
            f"the operating point stored with {getattr(model, 'name', 'this model')!r} was tuned "
            f"on another model (fingerprint {recorded}); it may no longer fit. Re-run its "
            f"tuning command: {op.get('command', 'experiments/edit_tune*.py --write')}",
            EditMemoryWarning,
            stacklevel=3,
        )
    if layer is None:
        if "layer" not in op:
            raise EditMemoryError(
                f"{getattr(model, 'name', 'this model')!r} has no tuned operating point "
                f"(model.info['operating_point']); pass layer=..."
            )
        layer = int(op["layer"])
        if module == "resid" and op.get("module"):
            module = op["module"]
    cap_q = False
    q = as_int(q)
    if q is None and op.get("q") is not None and mode == "ridge":
        q, cap_q = int(op["q"]), True
    elif q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 1 or q > n_facts):
        raise EditMemoryError(
            f"q={q!r} must be an integer with 1 ≤ q ≤ N={n_facts} (or None for dense)"
        )
    if steps is None:  # an operating point records the step set as "edit_steps" (or "steps")
        steps = op.get("edit_steps", op.get("steps"))
    gate = bool(_pick("subject_gate", subject_gate, op)) and mode != "steer"
    return EditConfig(
        layer=int(layer),
        module=module,
        alpha=float(_pick("alpha", alpha, op)),
        lam=float(_pick("lam", lam, op)),
        q=q,
        edit_steps=None if steps is None else normalize_steps(steps),
        kappa=float(_pick("kappa", kappa, op)),
        mode=mode,
        cap_q=cap_q,
        subject_gate=gate,
        gate_kind=str(_pick("gate_kind", gate_kind, op)),
        gate_margin=float(_pick("gate_margin", gate_margin, op)),
        apply_at=str(_pick("apply_at", apply_at, op)),
        key_at=str(_pick("key_at", key_at, op)),
        ridge_blocks=str(_pick("ridge_blocks", ridge_blocks, op)),
    )


def resolve_calibration(
    model, calibration: Sequence[Fact] | None, *, needed: bool
) -> list[Fact] | None:
    """The calibration prompts of a build: given ones, else those named by the operating point.

    Raises:
        EditMemoryError: ``needed`` (a subject gate) and neither given nor named; a named id
            missing from its corpus.
    """
    if calibration is not None:
        facts: list[Fact] = [calibration] if isinstance(calibration, Fact) else list(calibration)
        if not facts:
            raise EditMemoryError("calibration= is empty: the subject gate needs prompts")
        return facts
    if not needed:
        return None
    spec = operating_point(model).get("calibration")
    if not spec:
        raise EditMemoryError(
            "subject_gate=True needs calibration prompts: pass calibration=facts (prompts the "
            "memory must leave alone, e.g. retain facts; never the facts you report on)"
        )
    from ..zoo.corpus import load_facts

    pool = {f.id: f for f in load_facts(spec["corpus"], spec["split"])}
    missing = [i for i in spec["ids"] if i not in pool]
    if missing:
        raise EditMemoryError(
            f"the operating point's calibration names ids absent from "
            f"{spec['corpus']!r}/{spec['split']!r}: {missing[:5]}"
        )
    return [pool[i] for i in spec["ids"]]


def gate_shrinkage(model, given: float | None) -> float:
    """``gate_shrinkage``: given, else the operating point's, else the package default."""
    return float(_pick("gate_shrinkage", given, operating_point(model)))
