"""Persistence: an edit memory as one ``.safetensors`` file (tensors + a JSON header), never pickle.

Tensors (float32 unless noted): ``keys``, ``answer_values``, ``target_values`` ``[N, d]``;
when present ``slot_keys`` ``[N, d]``, ``subject_lengths`` ``[N]`` (int64), ``subject_tokens``
``[N, L]`` (int64, ``-1``-padded subject token ids) and, for a memory
with gate statistics, ``gate_mean`` ``[d]``, ``gate_whiten`` ``[d, d]`` (``C_s^{-½}``),
``gate_score_max`` ``[N]``, ``gate_tau`` ``[N]`` (``τ_f``, stored for readers and checked
against ``gate_score_max + gate_margin`` on load) and the calibration prompts' token ids
(``calibration_tokens``, flat int64, split by ``calibration_offsets``). The header (metadata
key ``"tie_tracing"``) holds the kind, format, package version, config, ids, targets,
subjects, the model's description and fingerprint, the calibration prompts' ids and subjects,
the shrinkage and the timings. Writing is atomic; :func:`load_memory` returns a memory whose
:meth:`~tie_tracing.editing.EditMemory.equals` the saved one (bit-for-bit tensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..core._io import atomic_write_bytes
from .config import EditConfig, EditMemoryError
from .gate import CalibrationSet, SubjectGate

__all__ = ["FORMAT", "load_memory", "save_memory"]

FORMAT = 2
_META_KEY = "tie_tracing"
_KIND = "EditMemory"


def save_memory(memory: Any, path: str | os.PathLike) -> Path:
    """Write ``memory`` (an :class:`~tie_tracing.editing.EditMemory`) to ``path`` (see the module
    docstring); returns the path."""
    from safetensors.torch import save as st_save

    path = Path(path)
    tensors = {
        "keys": memory.keys,
        "answer_values": memory.answer_values,
        "target_values": memory.target_values,
    }
    for name in ("slot_keys", "subject_lengths", "subject_tokens", "gate_score_max"):
        if getattr(memory, name) is not None:
            tensors[name] = getattr(memory, name)
    gate_meta = None
    if memory.gate is not None:
        gate = memory.gate
        tensors["gate_mean"] = gate.mean
        tensors["gate_whiten"] = gate.whiten
        tau = memory.gate_thresholds
        if tau is not None:
            tensors["gate_tau"] = tau
        lengths = [len(t) for t in gate.calibration.tokens]
        tensors["calibration_tokens"] = torch.tensor(
            [tok for toks in gate.calibration.tokens for tok in toks], dtype=torch.int64
        )
        tensors["calibration_offsets"] = torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0)
        gate_meta = {
            "shrinkage": gate.shrinkage,
            "calibration_ids": list(gate.calibration.ids),
            "calibration_subjects": list(gate.calibration.subjects),
        }
    meta = {
        "kind": _KIND,
        "format": FORMAT,
        "version": __version__,
        "config": memory.config.to_dict(),
        "ids": list(memory.ids),
        "targets": list(memory.targets),
        "subjects": None if memory.subjects is None else list(memory.subjects),
        "model_info": memory.model_info,
        "gate": gate_meta,
        "timings": memory.timings,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(tensors, metadata={_META_KEY: json.dumps(meta)}))
    return path


def load_memory(path: str | os.PathLike, memory_class: Any) -> Any:
    """Read a memory written by :func:`save_memory`, as a ``memory_class`` (``EditMemory``).

    Raises:
        FileNotFoundError: no such file.
        EditMemoryError: truncated or corrupt file, not an edit memory, an older format, or a
            stored ``gate_tau`` that disagrees with ``gate_score_max + gate_margin``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; give the path of a file written by EditMemory.save"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no edit memory file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise EditMemoryError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    try:
        meta = json.loads(header[_META_KEY])
        if meta.get("kind") != _KIND:
            kind = meta.get("kind")
            raise EditMemoryError(
                f"{path} holds a {kind}, not an EditMemory"
                + (f"; load it with tt.{kind}.load" if isinstance(kind, str) else "")
            )
        if meta.get("format") != FORMAT:
            raise EditMemoryError(
                f"{path}: edit-memory format {meta.get('format')!r}, this version reads "
                f"format {FORMAT} (memories of format 1 record no model fingerprint: rebuild)"
            )
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
        memory = memory_class(
            EditConfig.from_dict(meta["config"]),
            ids=meta["ids"],
            keys=tensors["keys"],
            answer_values=tensors["answer_values"],
            target_values=tensors["target_values"],
            targets=meta["targets"],
            model_info=meta["model_info"],
            timings=meta.get("timings", {}),
            slot_keys=tensors.get("slot_keys"),
            subjects=meta.get("subjects"),
            subject_lengths=tensors.get("subject_lengths"),
            gate=gate,
            gate_score_max=tensors.get("gate_score_max"),
            subject_tokens=tensors.get("subject_tokens"),
        )
    except EditMemoryError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise EditMemoryError(f"{path}: corrupt or incomplete edit-memory file: {exc!r}") from exc
    stored_tau = tensors.get("gate_tau")
    tau = memory.gate_thresholds
    if stored_tau is not None and (tau is None or not torch.equal(stored_tau, tau)):
        raise EditMemoryError(f"{path}: stored gate_tau disagrees with gate_score_max + margin")
    return memory
