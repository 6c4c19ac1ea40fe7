"""Attribution patching: a first-order estimate of the immediate effect of every patch at once.

The immediate effect of patch ``(l, k, m)`` is ``IE_k(l, k, m) = LP_patch(k) − LP_corrupt(k)``
(SPEC §5, Eq. 3 at ``k' = k``): the corrupted forward at step ``k`` with site ``m`` of block
``l`` at the subject positions ``S`` set to the clean run's value. Attribution patching
(Nanda 2023; Syed et al. 2023) replaces the ``L·M`` patched forwards of a step by one forward
and one backward of the corrupted state, and a first-order Taylor expansion around the
**corrupted** activation, in the direction corrupted → clean:

    IE_k(l, k, m) ≈ Σ_{s∈S} (h_clean[l, k, m]_s − h_corrupt[l, k, m]_s) · ∂LP_k/∂h[l, m]_s

where the gradient is taken at the corrupted forward of step ``k`` (the noise on, nothing
patched) and ``LP_k`` is that forward's term of the trajectory log-probability: under
``lp="frozen"`` the sum over the target positions still masked in the step's input (committed
positions keep the frozen terms of earlier forwards, which a patch at ``k`` cannot change, so
they drop out of the difference); under ``lp="raw"`` every target position. The estimate is
exact when ``LP_k`` is linear in the patched activation, and good when the patch is a small
change; corruptions of 3σ are not small, so it is a *scan* that ranks cells for the exact
sweep, not a substitute for it (see below).

The gradients of every site come from one backward (nnsight's ``with metric.backward():``)
of the corrupted forward, whose noise leaf is the only tensor that requires a gradient; the
same forward gives the corrupted activations, and one plain forward of the clean states
(:func:`site_outputs`) the clean ones, so the traced trajectories need no capture of every
site at every step. The rows of all steps and noise draws of a fact are batched together
(they are independent), and the model's parameters are set not to require gradients for the
duration, so no weight gradient is computed or left behind.

**A first look, not a substitute.** ``ig_steps=n`` (integrated gradients over the
corruption: the gradient averaged at noise scales ``(j − ½)/n``, ``n`` forwards and
backwards) is the estimator's one refinement here. On the embedded 6-layer model, object
target, ``T = 32``, neither reaches the goals (Spearman ≥ 0.8, top-20 agreement ≥ 0.6, ≥ 5×
faster; ``benchmarks/attribution_agreement.py``, ``benchmarks/RESULTS.md``): plain
attribution ranks cells with Spearman 0.16 (top-20 0.00) on 4 retain people and 0.44 (top-20
0.15) on 4 forget01 facts, ``ig_steps=2`` 0.61 (top-20 0.10) and 0.32 (top-20 0.55),
``ig_steps=4`` 0.45 / 0.46; it is 1.6–2× faster at ``n = 1`` and slower than the exact scan
from ``n = 4``, as both share the traced clean and corrupted trajectories and the exact
scan needs only ``L·M = 18`` patch rows per step (the saving grows with ``L·M``: 96 on
LLaDA-8B). Corruptions of 3σ move the log-probabilities by tens of nats, far outside the
linear regime. Rank cells with it, then run the exact sweep on the ones that matter.

Limits: the estimate only covers the patched step (``k' = k``): later steps of a divergent
future are not linearised (a commit is a discrete choice).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..core.backbones import hidden_of
from ..core.context import ForwardContext
from .patching import apply_noise


@contextmanager
def _no_weight_grads(model) -> Iterator[None]:
    """Parameters stop requiring gradients for the duration (restored after)."""
    params = [p for p in model._module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def attribution_rows(
    model,
    x: torch.Tensor,
    *,
    noise: torch.Tensor,
    subject: torch.Tensor,
    replace: bool,
    sites: Sequence[tuple[int, str]],
    clean: Sequence[torch.Tensor],
    targets: torch.Tensor,
    weight: torch.Tensor,
    context: ForwardContext,
    scales: Sequence[float] = (1.0,),
) -> torch.Tensor:
    """Attribution estimates of the immediate effect for a batch of corrupted rows.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        x: ``[rows, seq]`` each row's state before its step.
        noise: ``[rows, |S|, d]`` each row's noise draw (added, or written if ``replace``).
        subject: ``[|S|]`` subject positions.
        sites: ``(layer, module)`` sites in execution order.
        clean: Per site, ``[rows, |S|, d]`` the clean activation at each row's step.
        targets: ``[answer_len]`` answer token ids.
        weight: ``[rows, answer_len]`` float weight of each position in ``LP_k`` (the target
            positions, times "still masked" under ``lp="frozen"``).
        context: The forward's context: each row's denoising step (``[rows]``) and the
            answer span's first position (read by interventions such as an installed edit
            memory; :mod:`tie_tracing.core.context`).
        scales: Noise scales ``α`` at which the gradient is taken (one forward and backward
            each, the noise ``α·ε``) and averaged: ``(1.0,)`` is plain attribution patching
            at the corrupted point; ``((j − ½)/n for j = 1 … n)`` the midpoint rule of
            integrated gradients along the corruption (clean → corrupted input). The
            corrupted activations always come from ``α = 1``.

    Returns:
        ``[rows, n_sites]`` float32 estimates of ``IE_k``.
    """
    device = model.param_device
    x = x.to(device)
    targets = targets.to(device)
    weight = weight.to(device)
    answer_start = context.answer_start
    scales = tuple(float(a) for a in scales)
    if replace and scales != (1.0,):
        raise ValueError(
            "integrated gradients over the corruption scale added noise; replace=True writes "
            "the embedding instead: use ig_steps=1 (plain attribution) with replace=True"
        )
    acts: list = []
    total: list[torch.Tensor] | None = None
    for alpha in sorted(scales, reverse=True):  # α = 1 first: it gives the activations
        # containers made before the trace and filled by plain loops (nnsight runs the body
        # of a `with` block apart from this frame; comprehensions there do not come back)
        hs: list = []
        grads: list = []
        keep = alpha == 1.0 and not acts
        leaf = (alpha * noise.to(device)).detach().clone().requires_grad_(True)
        with model.at(context), torch.enable_grad(), _no_weight_grads(model):
            with model.logits(x) as tracer:
                apply_noise(model, leaf, subject, replace)
                for site in sites:  # execution order
                    h = hidden_of(model.site(*site).output)
                    hs.append(h)
                    if keep:
                        acts.append(h[:, subject].detach().float().save())
                logits = tracer.result[:, answer_start:]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                terms = logprobs.gather(-1, targets.expand(x.shape[0], -1)[..., None])[..., 0]
                metric = (terms * weight).sum()
                with metric.backward():
                    for h in reversed(hs):  # gradients arrive in reverse execution order
                        grads.append(h.grad[:, subject].float().save())
        grads = grads[::-1]
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    if not acts:  # no α = 1 among the scales: the corrupted activations in a plain forward
        with torch.inference_mode(), model.at(context), model.logits(x):
            apply_noise(model, noise.to(device), subject, replace)
            for site in sites:
                acts.append(hidden_of(model.site(*site).output)[:, subject].float().save())
    assert total is not None
    out = torch.empty(x.shape[0], len(sites))
    for i in range(len(sites)):
        delta = clean[i].to(device).float() - acts[i]
        out[:, i] = (delta * total[i] / len(scales)).sum(dim=(1, 2)).cpu()
    return out


def site_outputs(
    model,
    x: torch.Tensor,
    *,
    sites: Sequence[tuple[int, str]],
    subject: torch.Tensor,
    context: ForwardContext,
) -> list[torch.Tensor]:
    """Each site's output at the subject positions in one plain forward of ``x`` (no noise),
    run in ``context`` (each row's step and the answer span's start).

    Returns:
        Per site, ``[rows, |S|, d]`` (float32 on the model's device).
    """
    outs: list = []
    with torch.inference_mode(), model.at(context), model.logits(x.to(model.param_device)):
        for site in sites:  # execution order
            outs.append(hidden_of(model.site(*site).output)[:, subject].float().save())
    return outs
