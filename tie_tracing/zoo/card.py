"""The model card's "Edit operating point" section, rendered from ``tie_tracing.json``.

A model directory's ``tie_tracing.json`` may hold an ``"operating_point"`` (see
:mod:`tie_tracing.editing.operating_point`). The card never states it independently: its
section is :func:`operating_point_text` of the stored record, written by training's card writer
(:func:`.train.write_card`) and by :func:`~tie_tracing.editing.operating_point.write_operating_point`
(through :func:`card_with_operating_point`), so the card and the JSON say the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CARD_SECTION",
    "card_operating_point",
    "card_with_operating_point",
    "operating_point_text",
]

#: The model card's heading of the section rendered from ``tie_tracing.json``.
CARD_SECTION = "## Edit operating point"


def card_operating_point(card: str) -> str | None:
    """The body of a card's "Edit operating point" section (``None`` without one)."""
    lines = card.split("\n")
    if CARD_SECTION not in lines:
        return None
    start = lines.index(CARD_SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()


def card_with_operating_point(card: str, record: Mapping[str, Any] | None) -> str:
    """``card`` with its "Edit operating point" section rendered from ``record`` (replacing
    one that is there; placed before the training curve, as training writes it), or removed
    when ``record`` is ``None``."""
    lines = card.split("\n")
    if CARD_SECTION in lines:
        start = lines.index(CARD_SECTION)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        del lines[start:end]
    if record is not None:
        section = [CARD_SECTION, "", operating_point_text(record), ""]
        at = next((i for i, line in enumerate(lines) if line.startswith("## Training curve")), None)
        if at is None:  # a card without a training curve: the section goes last
            return "\n".join(lines).rstrip("\n") + "\n\n" + "\n".join(section)
        lines[at:at] = section
    return "\n".join(lines)


def operating_point_text(op: Mapping[str, Any]) -> str:
    """The model card's paragraph on a stored operating point (ungated or gated), rendered from
    the record in ``tie_tracing.json``: the build settings, the gate and its calibration prompts,
    the validation measurements and the rule."""
    measured = op.get("measured") or {}

    def num(key: str) -> str:
        v = measured.get(key)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2f}"

    calibration = op.get("calibration") or {}
    if op.get("subject_gate") and op.get("gate_kind") == "tokens":
        form = (
            "gated memory: token gate (the subject's token ids stand consecutively in the prompt)"
        )
    elif op.get("subject_gate"):
        form = (
            f"gated memory: subject-detection gate (margin {op.get('gate_margin')}, covariance "
            f"shrinkage {op.get('gate_shrinkage')}, calibrated on "
            f"{len(calibration.get('ids', ()))} named "
            f"`{calibration.get('corpus', '?')}/{calibration.get('split', '?')}` prompts)"
        )
    else:
        form = "the paper's ungated memory"
    apply_at = op.get("apply_at") or "all"
    form += (
        f", update at {'every position' if apply_at == 'all' else f'the {apply_at} positions'}"
        f", keys at the {op.get('key_at') or 'subject'} positions"
    )
    if op.get("ridge_blocks", "memory") != "memory":
        form += f", one ridge per {op['ridge_blocks']}"
    steps = op.get("edit_steps", op.get("steps"))
    tuned = op.get("tuned_on") or {}
    text = (
        "Used only when asked: `point = tt.editing.OperatingPoint.shipped(model)`, then "
        "`tt.EditMemory.build(model, facts, point)` (stored in `tie_tracing.json`; "
        "`tt.EditMemory.build(model, facts, layer=...)` builds the paper's memory whatever is "
        f"stored). Settings: layer {op['layer']}, {op.get('module', 'resid')}, α = {op['alpha']}, "
        f"λ = {op['lam']}, q = {op['q'] if op.get('q') is not None else 'N (dense)'}, steps "
        f"{steps or 'all'}; {form}. Tuned by `{op.get('command', '?')}` on "
        f"{tuned.get('forget', 'the validation split')} (retain constraint: "
        f"{tuned.get('retain', '?')}). Measured there: ΔForgetLP {num('d_forget_lp')}, "
        f"ΔRetainLP {num('d_retain_lp')} nats per fact"
    )
    if "d_paraphrase_lp" in measured:
        text += f", paraphrased questions {num('d_paraphrase_lp')}"
    if "lookalike_open" in measured:
        text += (
            f"; some gate opens on {measured['lookalike_open']:.0%} of surname look-alike prompts"
        )
    if "retain_gate_open" in measured:
        text += f" and on {measured['retain_gate_open']:.0%} of the retain prompts"
    text += f" ({measured.get('estimator', '?')} estimator). Rule: {op.get('rule', '?')}."
    if op.get("date"):
        text += f" Written {op['date']}."
    return text
