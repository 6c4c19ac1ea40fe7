"""Layer 2, tracing: causal tracing of a model's facts (SPEC §5, §6), on the core only.

* :mod:`.config` — the settings as values (:class:`TraceConfig`, :class:`PositionalConfig`,
  :class:`Sites`, :class:`Budget`; :class:`Corruption` from :mod:`.patching`), applied
  overrides and all;
* :mod:`.patching` — the step-indexed patching API (:func:`run_patched`, :class:`Corruption`,
  :class:`Patch`, :class:`Capture`) and the sweeps' one forward (``patched_forward``);
* :mod:`.engine` — the one engine: facts → cells → rows within the memory budget → batched
  forwards → results, with resuming (by content) and fact shards;
* :mod:`.tie` — the TIE evaluators (:func:`trace_tie`: exact, horizon, immediate);
  :mod:`.attribution` — the attribution scan; :mod:`.budget` — rows per forward from a
  memory budget; :mod:`.ranks` and :mod:`.distributed` — ``torchrun`` fact shards;
* :mod:`.positional` — ROME's positional tracing (:func:`trace_positional`);
* :mod:`.reference` — the slow hook-based references the engine is checked against, sharing
  no commit rule and no ``LP`` bookkeeping with it.

Tracing never imports editing, analysis, evaluation or figures (``tests/test_layers.py``).
"""

from .config import Budget, PositionalConfig, Sites, TraceConfig, step_grid
from .distributed import trace_sharded
from .patching import (
    Capture,
    Corruption,
    Patch,
    PatchedRun,
    Query,
    encode_query,
    run_patched,
)
from .positional import trace_positional
from .reference import reference_ie, reference_positional, reference_tie
from .tie import SweepCache, structural_zeros, trace_tie

__all__ = [
    "Budget",
    "Capture",
    "Corruption",
    "Patch",
    "PatchedRun",
    "PositionalConfig",
    "Query",
    "Sites",
    "SweepCache",
    "TraceConfig",
    "encode_query",
    "reference_ie",
    "reference_positional",
    "reference_tie",
    "run_patched",
    "step_grid",
    "structural_zeros",
    "trace_positional",
    "trace_sharded",
    "trace_tie",
]
