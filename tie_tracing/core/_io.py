"""Atomic file writes and the one result serialiser: every file the package writes goes
through here.

A write goes to a temporary file in the target's folder, is flushed to disk, gets the usual
file mode, and replaces the target with ``os.replace`` — so a crash or a full disk leaves
either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import TieTracingError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; give a file path inside it (e.g. {path / 'result.safetensors'})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- results

#: Metadata key of the safetensors header that holds a saved object's JSON.
META_KEY = "tie_tracing"
#: Format written by :func:`save_object`; :func:`load_object` also reads format 1 (flat
#: results whose non-tensor fields are plain JSON).
FORMAT = 2
_PACKAGE = __name__.split(".")[0]


class ResultFileError(TieTracingError, ValueError):
    """A file is not a readable tie_tracing result (truncated, corrupt or another kind)."""


def _encode(value: Any, key: str, tensors: dict[str, Any]) -> Any:
    """JSON for ``value``; tensors go to ``tensors[key]`` and are referenced by key."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith(_PACKAGE + "."):
            raise TypeError(f"cannot save a {cls.__name__}: not a {_PACKAGE} type")
        return {
            "__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
            "fields": {
                f.name: _encode(getattr(value, f.name), f"{key}.{f.name}", tensors)
                for f in dataclasses.fields(value)
            },
        }
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
        if plain:
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
        return {
            "__dict__": [
                [_encode(k, f"{key}.k{i}", tensors), _encode(v, f"{key}.{i}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot save a value of type {type(value).__name__} ({key})")


#: Where the saved classes' modules moved when the package took its layered layout (files
#: written before name the old module; :func:`load_object` reads them as the new one).
MOVED_MODULES: dict[str, str] = {
    f"{_PACKAGE}.{old}": f"{_PACKAGE}.{new}"
    for old, new in {
        "results": "core.results",
        "sampler": "core.sampler",
        "samplers": "core.samplers",
        "facts": "core.facts",
        "patching": "tracing.patching",
        "tie": "tracing.tie",
        "positional": "tracing.positional",
        "selection": "analysis.selection",
        "analysis": "analysis.stats",
        "compare": "analysis.compare",
        "evaluation": "evaluation.metrics",
        "unlearning": "evaluation.unlearning",
    }.items()
}


def _resolve_class(name: str) -> type:
    module_name, _, qualname = name.partition(":")
    module_name = MOVED_MODULES.get(module_name, module_name)
    if module_name != _PACKAGE and not module_name.startswith(_PACKAGE + "."):
        raise ResultFileError(f"refusing to load {name!r}: not a {_PACKAGE} type")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ResultFileError(f"{name!r} is not a saveable {_PACKAGE} type")
    return obj


def _build(cls: type, fields: dict[str, Any]) -> Any:
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    obj = cls(**{k: v for k, v in fields.items() if k in init})
    for k, v in fields.items():
        if k not in init:
            object.__setattr__(obj, k, v)
    return obj


def _decode(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value and len(value) == 1:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value and len(value) == 1:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__dict__" in value and len(value) == 1:
        out = {}
        for k, v in value["__dict__"]:
            k = _decode(k, tensors)
            out[tuple(k) if isinstance(k, list) else k] = _decode(v, tensors)
        return out
    if "__dataclass__" in value and set(value) == {"__dataclass__", "fields"}:
        cls = _resolve_class(value["__dataclass__"])
        return _build(cls, {k: _decode(v, tensors) for k, v in value["fields"].items()})
    return {k: _decode(v, tensors) for k, v in value.items()}


def save_object(obj: Any, path: str | os.PathLike) -> Path:
    """Write a result dataclass to one ``.safetensors`` file, atomically; returns the path.

    The one serialiser of the package: tensors (at any depth: fields, tuples, dicts, nested
    results such as a :class:`~tie_tracing.core.results.Coordinate` inside an analysis) are
    stored as CPU safetensors; everything else goes, as JSON, into the safetensors header,
    with tuples, non-string dict keys and nested dataclasses tagged so that
    :func:`load_object` rebuilds an equal object. No pickle is involved: only dataclasses
    defined in this package are rebuilt.
    """
    from safetensors.torch import save as st_save

    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"save_object needs a result dataclass, got {type(obj).__name__}")
    tensors: dict[str, Any] = {}
    fields = {
        f.name: _encode(getattr(obj, f.name), f.name, tensors) for f in dataclasses.fields(obj)
    }
    kind = getattr(type(obj), "_KIND", "") or type(obj).__name__
    meta = {"kind": kind, "format": FORMAT, "fields": fields}
    data = st_save(tensors, metadata={META_KEY: json.dumps(meta, allow_nan=True)})
    return atomic_write_bytes(path, data)


def _not_safetensors(path: Path) -> str:
    """Why a file that safetensors cannot open is not a result, naming what it looks like."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        head = b""
    if head[:1] in (b"{", b"[") and b"\x00" not in head:  # (a safetensors length has NULs)
        return "is a JSON file, not a safetensors result file (a config or summary?)"
    if head.startswith(b"PK") or head[:2] == b"\x80\x02":
        return "is a zip/pickle file (a torch .pt/.bin checkpoint?), not a safetensors result"
    return "is not a readable safetensors file (truncated or corrupt?)"


def read_header_fields(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON fields of a file written by :func:`save_object`, decoded without reading its
    tensors (a tensor field reads as ``None``). Raises :class:`ResultFileError` when the file
    is unreadable or carries no such header."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
        fields = json.loads(header[META_KEY])["fields"]
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ResultFileError(f"{path}: no readable tie_tracing header ({exc})") from exc
    return _decode(fields, _NoTensors())


class _NoTensors(dict):
    """Tensor lookups of :func:`read_header_fields`: every tensor reads as ``None``."""

    def __missing__(self, key: str) -> None:
        return None


def _a(noun: object) -> str:
    return "an" if str(noun)[:1] in "AEIOU" else "a"


def load_object(cls: type, path: str | os.PathLike, *, legacy: Any = None) -> Any:
    """Read an object of type ``cls`` written by :func:`save_object`.

    ``legacy``: for a type that had its own safetensors layout before this serialiser,
    ``legacy(cls, meta, tensors, path)`` reads a file of the right kind whose header has no
    ``"fields"`` entry (that layout's files).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ResultFileError: the file is truncated or corrupt, or holds another kind of object
            (the message names the path and, for another kind, the class to load it with).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    expected = getattr(cls, "_KIND", "") or cls.__name__
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; give the path of a file written by {expected}.save"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no result file at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ResultFileError(f"{path} {_not_safetensors(path)}: {exc}") from exc
    if META_KEY not in header:
        raise ResultFileError(
            f"{path} has no {META_KEY!r} metadata: not a tie_tracing result but a plain "
            f"safetensors file (model weights?); {expected}.load reads files written by "
            f"{expected}.save"
        )
    try:
        meta = json.loads(header[META_KEY])
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultFileError(f"{path}: corrupt tie_tracing metadata: {exc}") from exc
    if kind != expected:
        raise ResultFileError(
            f"{path} holds {_a(kind)} {kind}, not {_a(expected)} {expected}; use {kind}.load"
        )
    if legacy is not None and isinstance(meta, dict) and "fields" not in meta:
        return legacy(cls, meta, tensors, path)
    try:
        fields = meta["fields"]
    except (KeyError, TypeError) as exc:
        raise ResultFileError(f"{path}: corrupt tie_tracing metadata: {exc}") from exc
    if meta.get("format") not in (1, FORMAT):
        raise ResultFileError(f"{path}: unsupported result format {meta.get('format')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = names - set(fields) - set(tensors)
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if missing & required:
        raise ResultFileError(f"{path}: missing fields {sorted(missing & required)}")
    try:
        values = {n: _decode(fields[n], tensors) for n in names if n in fields}
        values |= {n: tensors[n] for n in names if n not in fields and n in tensors}
        return _build(cls, values)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ResultFileError(f"{path}: stored {kind} is inconsistent: {exc}") from exc


_DIM_LABELS = {
    "fact": "fact_ids",
    "layer": "layers",
    "step": "steps",
    "module": "modules",
    "position": "positions",
    "seed": "seed_labels",
    "beta": "betas",
}


def to_dataframe(obj: Any, *, value_name: str = "value") -> Any:
    """A long ``pandas.DataFrame`` of ``obj.values``: one column per axis of ``obj.dims``
    (labelled by the result's axis labels where it has them) and one ``value_name`` column.

    Raises:
        ImportError: pandas is not installed (``pip install 'tie_tracing[pandas]'``).
    """
    pd = require_pandas()
    import torch

    if callable(getattr(obj, "table", None)):  # results that define their own rows
        return pd.DataFrame(obj.table())
    values = getattr(obj, "values", None)
    if values is None:  # a summary of scalars: one row
        row = {
            f.name: getattr(obj, f.name)
            for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), (bool, int, float, str, type(None)))
        }
        return pd.DataFrame([row])
    dims = tuple(obj.dims)
    if not isinstance(values, torch.Tensor) or values.ndim != len(dims):
        raise TypeError(f"{type(obj).__name__}.values does not match its dims {dims}")
    axes = []
    for i, d in enumerate(dims):
        labels = getattr(obj, _DIM_LABELS.get(d, d + "s"), None)
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
        if labels is None or isinstance(labels, str) or len(labels) != values.shape[i]:
            labels = list(range(values.shape[i]))
        axes.append(list(labels))
    index = pd.MultiIndex.from_product(axes, names=list(dims))
    flat = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    return pd.DataFrame({value_name: flat}, index=index).reset_index()


def require_pandas() -> Any:
    """Import pandas, or raise an ImportError that names the ``[pandas]`` extra."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "to_dataframe() needs pandas, an optional dependency: "
            "pip install 'tie_tracing[pandas]' (or pip install pandas)"
        ) from exc
    return pd


class Saveable:
    """Mixin: ``save(path)`` / ``cls.load(path)`` through :func:`save_object` /
    :func:`load_object`, and ``to_dataframe()``.

    Defining ``save`` on the class also keeps nnsight's process-wide ``object.save`` (mounted
    on every object when nnsight is imported, and valid only inside a trace) from answering
    ``result.save(path)``: a method on the class comes first in the lookup.
    """

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.safetensors`` file, atomically; ``type(self).load(path)`` reads it."""
        return save_object(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read an object written by :meth:`save` (see :func:`load_object`)."""
        return load_object(cls, path)

    def to_dataframe(self) -> Any:
        """A long ``pandas.DataFrame`` of ``.values`` (see :func:`to_dataframe`)."""
        return to_dataframe(self)
