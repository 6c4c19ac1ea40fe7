"""Memory budgets: how many rows one forward of a sweep may carry.

The sweeps (:func:`~tie_tracing.tracing.tie.trace_tie`,
:func:`~tie_tracing.tracing.positional.trace_positional`) batch independent rows (patch runs,
divergent futures, attribution passes, restorations) into forwards. Instead of a fixed row count, the batch size is
chosen from a memory budget: ``max_memory`` in bytes (an int) or a string such as ``"2GB"``,
``"512MiB"``; by default the free memory of the model's device (``torch.cuda.mem_get_info``
on CUDA, 90% of it) or half of the available RAM (``psutil``) on CPU.

The cost of one row is an **estimate**, not a measurement: the largest activations a forward
keeps alive at once (one block's hidden states, MLP intermediate and attention scores; the
logits of every position and the float32 log-softmax of the answer span), and with
``grad=True`` every block's saved activations for the backward pass. It errs high (a factor of
2 on top), so a budget is a ceiling rather than a target. A budget changes how rows are
grouped into forwards, never the results: every row is computed independently.

Limits: the model's weights, the clean captures of a fact and the allocator's fragmentation
are not counted; give ``max_memory`` below the free memory when they matter.
"""

from __future__ import annotations

import math
import numbers
import re

import torch

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
#: Most rows in one forward whatever the budget (larger batches gain nothing on any device).
MAX_ROWS = 4096


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``value``: an int/float of bytes or a string like ``"2GB"``, ``"1.5 GiB"``.

    Raises:
        ValueError: not a positive size, or an unknown unit (lists the units).

    Example:
        >>> parse_memory("2GB"), parse_memory("1KiB"), parse_memory(512)
        (2000000000, 1024, 512)
    """
    if isinstance(value, bool):
        raise ValueError(
            f"max_memory must be a size in bytes or a string like '2GB', got {value!r}"
        )
    if isinstance(value, numbers.Real):
        size = float(value)
        if not math.isfinite(size):
            raise ValueError(
                f"max_memory must be a finite size in bytes or a string like '2GB', got "
                f"{value!r}; leave it None for the default budget"
            )
    elif isinstance(value, str):
        found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = found.group(2).lower() if found else ""
        if found is None or unit not in _UNITS:
            raise ValueError(
                f"max_memory {value!r} is not a size: write bytes or a number with one of the "
                f"units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. '2GB')"
            )
        size = float(found.group(1)) * _UNITS[unit]
    else:
        raise ValueError(
            f"max_memory must be a size in bytes or a string like '2GB', got {value!r}"
        )
    if not size >= 1:
        raise ValueError(f"max_memory must be at least 1 byte, got {value!r}")
    return int(size)


def default_budget(device: torch.device) -> int:
    """The default budget on ``device``: 90% of free CUDA memory, else half the available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    import psutil

    return int(psutil.virtual_memory().available * 0.5)


def _config_value(model, names: tuple[str, ...], default: int) -> int:
    config = getattr(model._module, "config", None)
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def row_bytes(model, seq_len: int, answer_len: int, *, grad: bool = False) -> int:
    """Estimated peak bytes of one row of a forward over ``seq_len`` tokens (see the module doc).

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        seq_len: Tokens per row.
        answer_len: Answer positions whose float32 log-softmax the sweep computes.
        grad: Count the activations a backward pass keeps (attribution patching).
    """
    d = model.hidden_size
    ffn = _config_value(model, ("intermediate_size", "mlp_hidden_size", "n_inner"), 4 * d)
    heads = _config_value(model, ("num_attention_heads", "n_heads", "n_head"), max(1, d // 64))
    vocab = int(model.embedding_module().weight.shape[0])
    element = next(model._module.parameters()).element_size()
    block = seq_len * (8 * d + 3 * ffn) * element + heads * seq_len * seq_len * 4
    logits = seq_len * vocab * element * 2 + answer_len * vocab * 4 * 3
    total = block + logits
    if grad:
        total += model.num_layers * block + logits
    return 2 * total


def rows_per_forward(
    model, seq_len: int, answer_len: int, budget: int, *, grad: bool = False
) -> int:
    """How many rows one forward may carry within ``budget`` bytes (at least 1, at most
    :data:`MAX_ROWS`)."""
    per_row = row_bytes(model, seq_len, answer_len, grad=grad)
    return int(max(1, min(MAX_ROWS, budget // per_row)))
