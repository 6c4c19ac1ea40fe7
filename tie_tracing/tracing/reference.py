"""A deliberately slow reference for TIE tracing: plain PyTorch hooks, no nnsight, no sharing.

One full corrupted trajectory per coordinate ``(draw, layer, step, module)``, batch size 1,
exactly as SPEC §5 defines the patch run: the corrupted run except that at step ``k`` the
site's output at the subject positions is replaced by the clean run's. It costs
``L · M · T²`` forwards per fact and draw, which is why :func:`~tie_tracing.tracing.tie.trace_tie`
exists; the tests check the engine against it and ``benchmarks/tie_sweep.py`` times it as the
naive protocol. It shares with the engine only the model's forward, the sampler's commit rule
(any :mod:`~tie_tracing.core.samplers` config) and the noise draws (common random numbers make the two comparable draw for draw).

:func:`reference_positional` is the positional counterpart (SPEC §6): one batch-1 forward per
cell, on its own query layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..core.backbones import MODULES, hidden_of
from ..core.facts import Fact
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


def reference_positional(
    model,
    fact: Fact,
    *,
    modules: Sequence[str] = MODULES,
    window: int = 1,
    nu: float,
    n_noise: int = 1,
    seed: int = 0,
    replace: bool = False,
    mentions: str = "all",
) -> dict:
    """A deliberately slow positional trace: plain PyTorch hooks, one batch-1 forward per cell.

    Builds its own query from the fact's encoding (:func:`~tie_tracing.tracing.patching.encode_query`:
    prompt and answer ids, subject positions in the question, object offsets) and shares with
    :func:`trace_positional` only that encoding, the model's forward and the noise draws. It
    follows SPEC §6 literally: a causal model is fed the question and the answer's tokens up to
    and including the object's first token (nothing after it, unlike the sweep, which feeds
    the whole teacher-forced answer), an MDLM the question and ``|answer|`` masks; the object's
    first token is scored where the aligned logits put it; the traced positions are those
    before the object's first token (causal) or every position (MDLM).

    Returns:
        ``{"lp": [layer, position, module], "lp_clean": float, "lp_corrupt": float,
        "positions": int, "prediction_position": int, "token": int}`` (probabilities averaged
        over draws, then logged; ``positions`` traced, the scored ``token``).
    """
    q = encode_query(model, fact, mentions=mentions)
    prompt, answer = list(q.prompt_ids), list(q.answer_ids)
    k = 0 if fact.object is None else sorted(q.object_offsets)[0]
    token = answer[k]
    if model.is_causal:
        ids = prompt + answer[: k + 1]  # the teacher-forced prefix, then the scored token
        n_pos = len(prompt) + k  # everything before the scored token
    else:
        ids = prompt + [int(model.mask_token_id)] * len(answer)
        n_pos = len(ids)
    read_at = len(prompt) + k  # aligned logits: index i scores token i
    modules = [m for m in MODULES if m in modules]
    n_layers = model.num_layers
    subject = list(q.subject_positions)
    x = torch.tensor(ids)[None]

    def read(logits):
        return float(torch.log_softmax(logits[0, read_at].float(), dim=-1)[token])

    clean: dict[tuple[int, str], torch.Tensor] = {}
    pairs = []
    for layer in range(n_layers):
        for m in modules:

            def rec(_mod, _inp, out, key=(layer, m)):
                clean[key] = hidden_of(out)[0].detach().clone()

            pairs.append((model.site_module(layer, m), rec))
    with torch.inference_mode(), _hooks(pairs):
        lp_clean = read(model.forward_logits(x))

    draws = Corruption(nu=nu, n_noise=n_noise, seed=seed, replace=replace).draws(
        fact, len(subject), model.hidden_size, nu
    )
    lp = torch.empty(n_noise, n_layers, n_pos, len(modules), dtype=torch.float64)
    lp_corrupt = torch.empty(n_noise, dtype=torch.float64)
    for n in range(n_noise):

        def add_noise(_mod, _inp, out, eps=draws[n]):
            h = hidden_of(out)
            for j, s in enumerate(subject):
                if replace:
                    h[0, s] = eps[j].to(h.dtype)
                else:
                    h[0, s] += eps[j].to(h.dtype)

        noise_hook = [(model.embedding_module(), add_noise)]
        with torch.inference_mode(), _hooks(noise_hook):
            lp_corrupt[n] = read(model.forward_logits(x))
        for layer in range(n_layers):
            for pos in range(n_pos):
                for mi, m in enumerate(modules):
                    if m == "resid" or window == 1:
                        span = [layer]
                    else:
                        span = [
                            j
                            for j in range(layer - window // 2, layer + window - window // 2)
                            if 0 <= j < n_layers
                        ]
                    pairs = list(noise_hook)
                    for j in span:

                        def write(_mod, _inp, out, key=(j, m), pos=pos):
                            hidden_of(out)[0, pos] = clean[key][pos]

                        pairs.append((model.site_module(j, m), write))
                    with torch.inference_mode(), _hooks(pairs):
                        lp[n, layer, pos, mi] = read(model.forward_logits(x))
    mean_lp = torch.logsumexp(lp, dim=0) - math.log(n_noise)
    corrupt = float(torch.logsumexp(lp_corrupt, dim=0) - math.log(n_noise))
    return {
        "lp": mean_lp,
        "lp_clean": lp_clean,
        "lp_corrupt": corrupt,
        "positions": n_pos,
        "prediction_position": read_at - int(model.backbone.shifted),
        "token": token,
    }
