"""Argument guards shared by the public functions: numbers of any numeric type, finite
settings, and the model argument.

* :func:`as_int` / :func:`as_real` accept a number of another numeric type where a Python
  ``int`` / ``float`` is expected (a NumPy ``int64`` from ``np.arange``, a ``float32`` from an
  array, a 0-d tensor from ``.sum()``) by converting it; anything else is returned unchanged,
  so the caller's own check rejects it with its own message. ``bool`` is never a number here.
* :func:`finite` rejects NaN and ±inf in a setting, naming it, before any forward runs.
* :func:`require_model` says what was passed when a function that needs a loaded model gets
  something else (a name, a path, a bare torch module, the facts).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any


def _scalar_tensor(value: Any) -> Any:
    """The Python number of a 0-d (or one-element) torch tensor or NumPy array, else ``None``."""
    shape = getattr(value, "shape", None)
    item = getattr(value, "item", None)
    if shape is None or not callable(item):
        return None
    try:
        size = math.prod(tuple(shape))
    except TypeError:
        return None
    if size != 1 or len(tuple(shape)) > 0:
        return None  # only 0-d values are scalars; a one-element vector is a list
    return item()


def as_int(value: Any) -> Any:
    """``int(value)`` for an integer of any numeric type (NumPy, 0-d tensor); else ``value``.

    Example:
        >>> import numpy as np
        >>> as_int(np.int64(3)), as_int(True), as_int(1.5)
        (3, True, 1.5)
    """
    if isinstance(value, bool) or (isinstance(value, int) and type(value) is int):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    inner = _scalar_tensor(value)
    if isinstance(inner, int) and not isinstance(inner, bool):
        return inner
    return value


def as_real(value: Any) -> Any:
    """``float(value)`` for a real number of another numeric type (NumPy float32 or int64, a
    0-d tensor); Python ``int``/``float`` and non-numbers are returned unchanged.

    Example:
        >>> import numpy as np
        >>> as_real(np.float32(0.5)), as_real(2), as_real("a")
        (0.5, 2, 'a')
    """
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    inner = _scalar_tensor(value)
    if isinstance(inner, (int, float)) and not isinstance(inner, bool):
        return float(inner)
    return value


def as_ints(values: Any) -> Any:
    """A sequence with every element passed through :func:`as_int` (a tuple), a single
    integer through :func:`as_int`, anything else unchanged."""
    single = as_int(values)
    if isinstance(single, int) and not isinstance(single, bool):
        return single
    if isinstance(values, (list, tuple)):
        return tuple(as_int(v) for v in values)
    if hasattr(values, "tolist") and getattr(values, "ndim", 0) == 1:
        return tuple(as_int(v) for v in values.tolist())
    return values


def finite(name: str, value: Any, what: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is a NaN or infinite number.

    ``what`` says what the setting controls, for the message.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    if not math.isfinite(float(value)):
        role = f" ({what})" if what else ""
        raise ValueError(f"{name} must be a finite number{role}, got {value!r}")


def require_model(model: Any, fn: str, *, needs: str = "a model loaded with tt.load_model") -> None:
    """Raise ``TypeError`` when ``model`` is not a :class:`~tie_tracing.core.model.TracedModel`
    (or an object with its interface), saying what was passed and what is expected.

    The check is structural (no import of :mod:`.model`, which sits above this module): a
    model is anything that is not a path, ``None``, a bare torch module or facts, and has a
    tokenizer."""
    if type(model).__name__ == "TracedModel":
        return
    kind = type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        hint = (
            f"got the {kind} {str(model)!r}; load it first: model = tt.load_model({str(model)!r})"
        )
    elif model is None:
        hint = "got None; load one first: model = tt.load_model('tiny-mdlm') or a checkpoint"
    elif _is_torch_module(model):
        hint = (
            f"got a bare torch module ({kind}); wrap it: tt.load_model(<checkpoint directory>) "
            "or tt.TracedModel.from_module(module, tokenizer)"
        )
    elif _looks_like_facts(model):
        hint = (
            f"got {kind} of facts where the model goes; the model comes first: "
            f"{fn}(model, facts, ...)"
        )
    elif hasattr(model, "tokenizer"):
        return  # a wrapper with (enough of) the TracedModel interface: duck-typed
    else:
        hint = f"got {kind}"
    raise TypeError(f"{fn} needs {needs} (a tie_tracing TracedModel); {hint}")


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, torch.nn.Module) or type(obj).__name__ == "Envoy"


def _looks_like_facts(obj: Any) -> bool:
    from .facts import Fact

    if isinstance(obj, Fact):
        return True
    return isinstance(obj, (list, tuple)) and bool(obj) and isinstance(obj[0], Fact)
