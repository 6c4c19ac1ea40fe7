"""The summary of a TIE trace that ``tie-tracing figure2`` prints and writes: plain JSON-ready
dictionaries computed from a :class:`~tie_tracing.core.results.TIEResult` (nothing here runs
a model or writes a file).

* :func:`tie_concentration` — where ``|mean TIE|`` concentrates: shares by layer, step and
  module, and the top cells;
* :func:`cell_ci` — the Eq. 5 score of one cell (mean ``|TIE|`` over known facts) and the
  signed mean, each with a 95% bootstrap CI;
* :func:`commit_summary` — where the clean trajectory commits the object and which steps are
  idle, over known facts;
* :func:`trace_summary` — all of the above for a pooled result (and its per-seed traces):
  the selected coordinate overall and on ``resid``, selection and seed stability, final
  ``LP`` values and the engine's work counters.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

from ..core.results import Coordinate, TIEResult
from .figure2 import cluster_bootstrap_ci
from .selection import select_coordinate
from .stats import seed_stability, selection_stability

__all__ = ["cell_ci", "commit_summary", "tie_concentration", "trace_summary"]


def tie_concentration(result: TIEResult, *, top: int = 5) -> dict[str, Any]:
    """Where ``|mean TIE|`` (over known facts, NaN as 0) concentrates.

    Returns:
        ``share_by_layer`` / ``share_by_step`` / ``share_by_module`` (each a dict of label →
        share of the total, summing to 1 unless the map is all zero) and ``top_cells``: the
        ``top`` largest cells as ``{layer, step, module, mean_abs_tie}``, largest first.
    """
    mean = result.mean().abs().nan_to_num()
    total = float(mean.sum()) or 1.0
    by_layer = (mean.sum(dim=(1, 2)) / total).tolist()
    by_step = (mean.sum(dim=(0, 2)) / total).tolist()
    by_module = (mean.sum(dim=(0, 1)) / total).tolist()
    flat = mean.flatten()
    best = torch.topk(flat, k=min(top, flat.numel())).indices.tolist()
    n_s, n_m = mean.shape[1], mean.shape[2]
    cells = [
        {
            "layer": result.layers[i // (n_s * n_m)],
            "step": result.steps[(i // n_m) % n_s],
            "module": result.modules[i % n_m],
            "mean_abs_tie": float(flat[i]),
        }
        for i in best
    ]
    return {
        "share_by_layer": dict(zip(map(str, result.layers), by_layer)),
        "share_by_step": dict(zip(map(str, result.steps), by_step)),
        "share_by_module": dict(zip(result.modules, by_module)),
        "top_cells": cells,
    }


def cell_ci(result: TIEResult, coordinate: Coordinate) -> dict[str, Any]:
    """The Eq. 5 score of ``coordinate``'s cell (mean ``|TIE|`` over known facts) and its
    signed mean, with 95% bootstrap CIs that resample people (the facts' subjects):
    ``coordinate.to_dict()`` plus ``n_facts``, ``n_people``, ``ci95``, ``mean_tie`` and
    ``mean_tie_ci95``."""
    known = result.known_only()
    li, si, mi = coordinate.index
    per_fact = known.tie[:, li, si, mi].detach().to("cpu", torch.float64)
    people = list(known.subjects)  # CIs resample people (cluster bootstrap)
    low, high = cluster_bootstrap_ci(per_fact.abs(), people)
    t_low, t_high = cluster_bootstrap_ci(per_fact, people)
    return coordinate.to_dict() | {
        "n_facts": int(per_fact.numel()),
        "n_people": len(set(people)),
        "ci95": [float(low), float(high)],
        "mean_tie": float(per_fact.mean()),
        "mean_tie_ci95": [float(t_low), float(t_high)],
    }


def _spread(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def commit_summary(result: TIEResult) -> dict[str, Any]:
    """Where the clean trajectory commits the object, and which steps are idle, over known facts.

    Returns:
        ``object_commit``: median/min/max of the commit step over facts whose object was
        committed, ``per_fact`` (``-1``: never), a ``histogram`` and ``never_committed``;
        ``idle_steps``: ``T``, median/min/max of idle steps per fact, ``per_fact`` and the
        steps idle for every fact.
    """
    known = result.known_only()
    steps = [int(s) for s in known.object_commit_step]
    committed = {fid: s for fid, s in zip(known.fact_ids, steps)}
    decided = [s for s in steps if s >= 0]
    idle = known.idle_steps  # [fact, T]
    per_fact_idle = [int(n) for n in idle.sum(-1)]
    return {
        "object_commit": {
            **_spread(decided),
            "per_fact": committed,
            "histogram": {str(k): decided.count(k) for k in sorted(set(decided))},
            "never_committed": [fid for fid, s in committed.items() if s < 0],
        },
        "idle_steps": {
            "T": known.n_later_steps,
            **_spread(per_fact_idle),
            "per_fact": dict(zip(known.fact_ids, per_fact_idle)),
            "idle_for_every_fact": [int(k) for k in torch.nonzero(idle.all(0)).flatten()],
        },
    }


def trace_summary(result: TIEResult, traces: Sequence[TIEResult] = ()) -> dict[str, Any]:
    """The summary of a (seed-pooled) TIE result, as ``tie-tracing figure2`` reports it.

    Args:
        result: The result (``TIEResult.pool_seeds(traces)`` for several seeds).
        traces: The per-seed results it pools; with two or more, selection stability
            resamples seeds too and seed stability is computed (else ``None``).

    Returns:
        ``facts``, ``unknown_facts``, ``selected`` / ``selected_resid`` (:func:`cell_ci` of
        the Eq. 5 coordinate overall and on ``resid``), ``selection_bootstrap``,
        ``seed_stability``, ``object_commit`` / ``idle_steps`` (:func:`commit_summary`),
        ``lp_clean_final`` / ``lp_corrupt_final`` (mean over facts at the last step),
        ``concentration`` (:func:`tie_concentration`) and ``engine_stats``.
    """
    traces = list(traces)
    several = len(traces) > 1
    best = select_coordinate(result)
    resid = select_coordinate(result, modules="resid")
    stability = seed_stability(traces) if several else None
    bootstrap = selection_stability(result, seeds=traces if several else None)
    return {
        "facts": list(result.fact_ids),
        "unknown_facts": list(result.config.get("unknown_facts") or []),
        "selected": cell_ci(result, best),
        "selected_resid": cell_ci(result, resid),
        "selection_bootstrap": {
            "resampled": "facts and seeds" if several else "facts",
            "n_boot": bootstrap.n_boot,
            "agreement": bootstrap.agreement,
            "top": [list(t) for t in bootstrap.top],
        },
        "seed_stability": stability.to_dict() if stability is not None else None,
        **commit_summary(result),
        "lp_clean_final": result.lp_clean[:, -1].mean().item(),
        "lp_corrupt_final": result.lp_corrupt[:, -1].mean().item(),
        "concentration": tie_concentration(result),
        "engine_stats": result.config.get("engine_stats"),
    }
