"""Layer 2, tracing: causal tracing of a model's facts (SPEC §5, §6), on the core only.

* :mod:`.patching` — the step-indexed patching API (:func:`run_patched`, :class:`Corruption`,
  :class:`Patch`, :class:`Capture`, :class:`SweepSettings`);
* :mod:`.tie` — the TIE engine (:func:`trace_tie`: exact, horizon, immediate);
  :mod:`.attribution` — its attribution scan; :mod:`.budget` — rows per forward from a
  memory budget; :mod:`.ranks` and :mod:`.distributed` — ``torchrun`` fact shards;
* :mod:`.positional` — ROME's positional tracing (:func:`trace_positional`);
* :mod:`.reference` — the slow hook-based references the engines are checked against.

Tracing never imports editing, analysis, evaluation or figures (``tests/test_layers.py``).
"""

from .distributed import trace_sharded
from .patching import (
    Capture,
    Corruption,
    Patch,
    PatchedRun,
    Query,
    SweepSettings,
    encode_query,
    run_patched,
)
from .positional import PositionalConfig, reference_positional, trace_positional
from .reference import reference_ie, reference_tie
from .tie import TraceConfig, trace_tie

__all__ = [
    "Capture",
    "Corruption",
    "Patch",
    "PatchedRun",
    "PositionalConfig",
    "Query",
    "SweepSettings",
    "TraceConfig",
    "encode_query",
    "reference_ie",
    "reference_positional",
    "reference_tie",
    "run_patched",
    "trace_positional",
    "trace_sharded",
    "trace_tie",
]
