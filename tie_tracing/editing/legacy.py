"""Reading edit memories saved before the package had one serialiser.

Those files are safetensors too, with their own layout: flat tensors (``keys``,
``answer_values``, ``target_values``, optional ``slot_keys``, ``subject_lengths``,
``subject_tokens``, ``gate_score_max``, and for a gated memory ``gate_mean``, ``gate_whiten``,
``gate_tau`` and the calibration prompts' token ids as ``calibration_tokens`` split by
``calibration_offsets``) and a JSON header (kind ``"EditMemory"``, format 2, the config, ids,
targets, subjects, model description, gate metadata and timings) with no ``"fields"`` entry.
:func:`read_legacy_memory` turns one into the fields of today's
:class:`~tie_tracing.editing.EditMemory`; nothing writes that layout any more (saving a loaded
memory writes the current one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import EditConfig, EditMemoryFileError
from .gate import CalibrationSet, SubjectGate

__all__ = ["read_legacy_memory"]

#: The format number those files carry.
LEGACY_FORMAT = 2


def read_legacy_memory(
    cls: type, meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path
) -> Any:
    """An ``cls`` (``EditMemory``) from an old-layout file's header ``meta`` and ``tensors``.

    Raises:
        EditMemoryFileError: another format number, a missing entry, or a stored ``gate_tau``
            that disagrees with ``gate_score_max + gate_margin``.
    """
    if meta.get("format") != LEGACY_FORMAT:
        raise EditMemoryFileError(
            f"{path}: edit-memory format {meta.get('format')!r} is not readable (memories of "
            "format 1 record no model fingerprint): rebuild it with EditMemory.build and save it"
        )
    try:
        gate = None
        if meta.get("gate") is not None:
            g = meta["gate"]
            offsets = tensors["calibration_offsets"].tolist()
            flat = tensors["calibration_tokens"].tolist()
            tokens = tuple(tuple(flat[a:b]) for a, b in zip(offsets[:-1], offsets[1:]))
            gate = SubjectGate(
                mean=tensors["gate_mean"],
                whiten=tensors["gate_whiten"],
                shrinkage=float(g["shrinkage"]),
                calibration=CalibrationSet(
                    ids=tuple(g["calibration_ids"]),
                    subjects=tuple(g["calibration_subjects"]),
                    tokens=tokens,
                ),
            )
        subjects = meta.get("subjects")
        memory = cls(
            EditConfig.from_dict(meta["config"]),
            ids=tuple(meta["ids"]),
            keys=tensors["keys"],
            answer_values=tensors["answer_values"],
            target_values=tensors["target_values"],
            targets=tuple(meta["targets"]),
            model_info=meta["model_info"],
            timings=meta.get("timings", {}),
            slot_keys=tensors.get("slot_keys"),
            subjects=None if subjects is None else tuple(subjects),
            subject_lengths=tensors.get("subject_lengths"),
            gate=gate,
            gate_score_max=tensors.get("gate_score_max"),
            subject_tokens=tensors.get("subject_tokens"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise EditMemoryFileError(
            f"{path}: corrupt or incomplete edit-memory file: {exc!r}"
        ) from exc
    stored_tau = tensors.get("gate_tau")
    tau = memory.gate_thresholds
    if stored_tau is not None and (tau is None or not torch.equal(stored_tau, tau)):
        raise EditMemoryFileError(f"{path}: stored gate_tau disagrees with gate_score_max + margin")
    return memory
