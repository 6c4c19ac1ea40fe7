"""Which model a memory belongs to: a fingerprint of the backbone's configuration and weights.

Keys and deltas are activations of one model; installed on another (a retrained checkpoint of
the same architecture, say) they are silently wrong. :func:`model_fingerprint` hashes the
family, layer count, hidden size, vocabulary size and, for every parameter tensor, its name,
shape and 64 evenly spaced entries rounded to bfloat16. The rounding makes the same checkpoint
loaded in float32 or bfloat16, on CPU or GPU, give one fingerprint; any retraining changes it.
Sampling keeps the cost at a few milliseconds even for multi-billion-parameter models (one
small gather per tensor); two models that agree on every sampled entry of every tensor would
collide, which no training run produces.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["describe_model", "model_fingerprint"]

_SAMPLES_PER_TENSOR = 64


def model_fingerprint(model) -> str:
    """A 16-hex-digit fingerprint of ``model``'s configuration and weights (see module doc)."""
    h = hashlib.sha256()
    module = model._module
    head = {
        "family": str(model.backbone.family),
        "num_layers": int(model.num_layers),
        "hidden_size": int(model.hidden_size),
        "mask_token_id": model.mask_token_id,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, param in module.named_parameters():
        h.update(name.encode())
        h.update(str(tuple(param.shape)).encode())
        if param.device.type == "meta" or param.numel() == 0:
            continue
        flat = param.detach().reshape(-1)
        n = flat.numel()
        idx = torch.linspace(0, n - 1, steps=min(n, _SAMPLES_PER_TENSOR)).round().long()
        sample = flat[idx.to(flat.device)].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def describe_model(model) -> dict[str, Any]:
    """``name, family, hidden_size, num_layers, mask_token_id, fingerprint`` of ``model``."""
    return {
        "name": str(getattr(model, "name", "")),
        "family": str(model.backbone.family),
        "hidden_size": int(model.hidden_size),
        "num_layers": int(model.num_layers),
        "mask_token_id": None if model.mask_token_id is None else int(model.mask_token_id),
        "fingerprint": model_fingerprint(model),
    }


def format_model(info: dict[str, Any]) -> str:
    """``'name' (family, d=…, L layers, fingerprint …)`` for error messages."""
    return (
        f"{info.get('name')!r} ({info.get('family')}, d={info.get('hidden_size')}, "
        f"{info.get('num_layers')} layers, fingerprint {info.get('fingerprint')})"
    )
