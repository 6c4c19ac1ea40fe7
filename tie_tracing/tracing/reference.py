"""A deliberately slow reference for TIE tracing: plain PyTorch hooks, no nnsight, no sharing.

One full corrupted trajectory per coordinate ``(draw, layer, step, module)``, batch size 1,
exactly as SPEC §5 defines the patch run: the corrupted run except that at step ``k`` the
site's output at the subject positions is replaced by the clean run's. It costs
``L · M · T²`` forwards per fact and draw, which is why :func:`~tie_tracing.tracing.tie.trace_tie`
exists; the tests check the engine against it and ``benchmarks/tie_sweep.py`` times it as the
naive protocol. It shares with the engine only the model's forward, the sampler's commit rule
(any :mod:`~tie_tracing.core.samplers` config) and the noise draws (common random numbers make the two comparable draw for draw).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from ..core.backbones import MODULES, hidden_of
from ..core.sampler import target_logprob
from ..core.samplers import resolve_sampler
from .patching import Corruption, Query, encode_query


@contextmanager
def _hooks(pairs):
    handles = [module.register_forward_hook(fn) for module, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _trajectory(
    model,
    query: Query,
    steps: int,
    *,
    noise=None,
    replace=False,
    patch=None,
    record=None,
    sampler,
    seed: int = 0,
    lp: str = "frozen",
    target: str = "answer",
):
    """One batch-1 trajectory; returns ``LP(k)`` per step. ``patch = (module, step, value)``.

    ``sampler`` is a resolved :mod:`~tie_tracing.core.samplers` config; its random choices draw
    from ``(seed, step)``. Under CFG the forward holds the trajectory (row 0, the only row
    the hooks touch) and its unconditional copy (row 1).
    ``lp="frozen"``: a target position committed at step ``c`` contributes, at every later
    step, the log-probability it had at ``c`` (recorded here position by position).
    """
    subject = torch.tensor(query.subject_positions)
    state = {"step": 0}

    def add_noise(_module, _inputs, output):
        h = hidden_of(output)
        if replace:
            h[0, subject] = noise.to(h.dtype)
        else:
            h[0, subject] += noise.to(h.dtype)

    def write(_module, _inputs, output):
        if state["step"] == patch[1]:
            hidden_of(output)[0, subject] = patch[2].to(hidden_of(output).dtype)

    pairs = []
    if noise is not None:
        pairs.append((model.embedding_module(), add_noise))
    if patch is not None:
        pairs.append((patch[0], write))
    record_out: dict = {key: [] for key in (record or {})}

    def recorder(key):
        def hook(_module, _inputs, output):
            record_out[key].append(hidden_of(output)[0, subject].clone())

        return hook

    for key, module in (record or {}).items():
        pairs.append((module, recorder(key)))
    x = query.input_ids(model.mask_token_id)
    targets = query.targets()
    p = query.answer_start
    positions = [i for i, t in enumerate(query.target_mask(target).tolist()) if t]
    decided: dict[int, float] = {}  # target position -> log-prob of the forward that committed it
    lps = []
    with torch.inference_mode(), _hooks(pairs):
        for k in range(steps):
            state["step"] = k
            raw = model.forward_logits(sampler.model_input(x, p, model.mask_token_id))
            logits = sampler.combine(raw, 1)[:, p:]
            per_position = target_logprob(logits, targets)[0].tolist()
            was_masked = [int(x[0, p + i]) == model.mask_token_id for i in positions]
            total = 0.0
            for i, masked in zip(positions, was_masked):
                if lp == "raw" or masked:
                    total += per_position[i]
                else:
                    total += decided[i]
            lps.append(total)
            x = sampler.update(
                x,
                logits,
                answer_start=p,
                step=k,
                steps=steps,
                mask_id=model.mask_token_id,
                seeds=[seed],
            )
            for i, masked in zip(positions, was_masked):
                if masked and int(x[0, p + i]) != model.mask_token_id:
                    decided[i] = per_position[i]
    return torch.tensor(lps), record_out


def reference_ie(
    model,
    fact,
    *,
    steps: int = 8,
    modules=MODULES,
    layers=None,
    nu: float,
    n_noise: int = 1,
    seed: int = 0,
    replace: bool = False,
    temperature: float | None = None,
    block_length: int | None = None,
    lp: str = "frozen",
    target: str = "answer",
    mentions: str = "all",
    sampler=None,
) -> dict:
    """``IE`` ``[layer, step, module, later_step]`` (mean over draws), ``LP_clean``, ``LP_corrupt``.

    ``sampler`` (or the ``temperature`` / ``block_length`` shorthands) is the sampler of
    :func:`~tie_tracing.tracing.tie.trace_tie`; ``"sampler"`` in the returned dict is its ``to_dict()``.

    The subject positions (every mention, or the first with ``mentions="first"``; they need
    not be contiguous) come from :func:`~tie_tracing.tracing.patching.encode_query`, as in the engine.
    """
    rule = resolve_sampler(
        sampler, temperature=temperature, block_length=block_length, model=model
    ).per_trajectory()
    run: dict[str, Any] = dict(sampler=rule, seed=seed, lp=lp, target=target)
    query = encode_query(model, fact, mentions=mentions)
    layers = list(range(model.num_layers)) if layers is None else list(layers)
    modules = [m for m in MODULES if m in modules]
    sites = {(layer, m): model.site_module(layer, m) for layer in layers for m in modules}
    lp_clean, clean = _trajectory(model, query, steps, record=sites, **run)
    corruption = Corruption(nu=nu, n_noise=n_noise, seed=seed, replace=replace)
    draws = corruption.draws(query.fact, len(query.subject_positions), model.hidden_size, nu)
    ie = torch.full((n_noise, len(layers), steps, len(modules), steps), float("nan"))
    lp_corrupt = torch.empty(n_noise, steps)
    for n in range(n_noise):
        lp_corrupt[n], _ = _trajectory(model, query, steps, noise=draws[n], replace=replace, **run)
        for li, layer in enumerate(layers):
            for k in range(steps):
                for mi, m in enumerate(modules):
                    patch = (sites[(layer, m)], k, clean[(layer, m)][k])
                    patched, _ = _trajectory(
                        model, query, steps, noise=draws[n], replace=replace, patch=patch, **run
                    )
                    ie[n, li, k, mi, k:] = patched[k:] - lp_corrupt[n, k:]
    return {
        "ie": ie.mean(0),
        "lp_clean": lp_clean,
        "lp_corrupt": lp_corrupt.mean(0),
        "sampler": rule.to_dict(),
    }


def reference_tie(ie: torch.Tensor, decay: float) -> torch.Tensor:
    """Eq. 4 by explicit loops over ``[layer, step, module, later_step]``."""
    n_l, steps, n_m, _ = ie.shape
    out = torch.empty(n_l, steps, n_m, dtype=torch.float64)
    for layer in range(n_l):
        for k in range(steps):
            for m in range(n_m):
                num = sum(decay ** (j - k) * float(ie[layer, k, m, j]) for j in range(k, steps))
                den = sum(decay ** (j - k) for j in range(k, steps))
                out[layer, k, m] = num / den
    return out
