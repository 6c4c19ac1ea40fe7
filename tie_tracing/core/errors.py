"""Exceptions raised by tie_tracing. Each names the problem and the object it concerns."""

from __future__ import annotations


class TieTracingError(Exception):
    """Base class of every error the package raises on purpose."""


class UnsupportedModelError(TieTracingError, ValueError):
    """The model's architecture has no entry in the backbone table."""


class SubjectNotFoundError(TieTracingError, ValueError):
    """A fact's subject does not occur (as whole tokens) in its prompt."""


class CheckpointNotFoundError(TieTracingError, FileNotFoundError):
    """A model name is neither embedded nor a readable local checkpoint directory."""


class ShapeError(TieTracingError, ValueError):
    """A tensor's shape disagrees with what the function needs."""


class NonFiniteActivationError(TieTracingError, FloatingPointError):
    """NaN or inf appeared in activations or log-probabilities during a run."""


class ObjectNotFoundError(TieTracingError, ValueError):
    """A fact's object is not found among its answer's tokens."""


class CheckpointError(TieTracingError, ValueError):
    """A checkpoint directory exists but cannot be used: a truncated or corrupt weights file,
    or weights the model needs that the files lack (names the file or the weights)."""


class UnsupportedSamplerError(TieTracingError, ValueError):
    """A sampler or model carries state between denoising steps other than the committed
    tokens (a KV or prefix cache, self-conditioning, re-masking of committed tokens, a number
    of forwards that varies), so exact TIE cannot trace it; the message says which
    assumption fails and what to do."""


class DeviceNotAvailableError(TieTracingError, ValueError):
    """A ``device`` / ``device_map`` names a device this machine does not have."""
