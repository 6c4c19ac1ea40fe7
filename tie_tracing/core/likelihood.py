"""Answer likelihoods ``log p(answer | question)`` for evaluation (SPEC §4), in nats.

Two estimators for MDLMs, always named by the caller:

* ``"masked"`` (deterministic): mask the whole answer once and sum the per-position
  log-probabilities of the answer tokens — one forward per fact; equal to the sampler's
  ``LP(0)``.
* ``"elbo"``: LLaDA's Monte-Carlo bound. Each of ``mc`` draws masks ``l`` of the ``A`` answer
  tokens, with the ``l`` values stratified over the draws (a random start, then evenly spaced,
  as LLaDA's estimator does) and the masked positions chosen at random; the draw contributes
  ``-(A / l) · CE(masked tokens)``; the estimate is the mean over draws. Seeded: the same seed
  gives the same number.

On a causal (AR) model both names are ignored in favour of the ordinary teacher-forced
log-probability (prompt + answer in one forward, answer tokens scored from the position before
each). Every forward goes through nnsight, so an installed edit memory acts on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ._guards import require_model
from .context import ForwardContext
from .defaults import BATCH_SIZE, PROGRESS
from .facts import Fact, as_facts
from .prompting import chunks_by_shape
from .sampler import check_finite, target_logprob

ESTIMATORS = ("masked", "elbo")


def _elbo_masks(answer_length: int, mc: int, generator: torch.Generator) -> torch.Tensor:
    """``[mc, answer_length]`` boolean masks with stratified masked counts (≥ 1 each)."""
    start = int(torch.randint(1, answer_length + 1, (), generator=generator))
    counts = torch.round(
        torch.linspace(float(start), start + (mc - 1) * (answer_length / mc), steps=mc)
    ).long()
    counts = (counts - 1) % answer_length + 1
    masks = torch.zeros(mc, answer_length, dtype=torch.bool)
    for j in range(mc):
        perm = torch.randperm(answer_length, generator=generator)[: int(counts[j])]
        masks[j, perm] = True
    return masks


def answer_logprob(
    model,
    facts: Sequence[Fact] | Fact,
    *,
    estimator: str = "masked",
    mc: int = 128,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    progress: bool = PROGRESS,
) -> torch.Tensor:
    """``log p(answer | question)`` per fact, in nats.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        facts: Facts whose ``answer`` is scored given their ``question``.
        estimator: ``"masked"`` or ``"elbo"`` (MDLMs); ignored for causal models.
        mc: Monte-Carlo draws of the ``elbo`` estimator (LLaDA uses 128).
        seed: Seed of the ``elbo`` draws (fact ``i`` uses ``seed + i``).
        batch_size: Rows per forward.
        progress: Show a progress bar.

    Returns:
        ``[n_facts]`` float tensor.

    Example:
        >>> tt.answer_logprob(model, facts[:3], estimator="masked")   # doctest: +SKIP
        tensor([-0.0123, -0.4511, -0.0007])
    """
    require_model(model, "answer_logprob")
    facts = as_facts(facts, "answer_logprob")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if estimator == "elbo" and mc < 1:
        raise ValueError(f"mc must be ≥ 1, got {mc}")
    pairs = [model.encode(f.question, f.answer) for f in facts]
    out = torch.empty(len(facts))
    device = model.param_device
    with torch.inference_mode():
        if model.is_causal or estimator == "masked":
            chunks = chunks_by_shape(pairs, batch_size)
            for chunk in tqdm(chunks, desc="answer_logprob", disable=not progress):
                p_len = len(pairs[chunk[0]][0])
                answers = torch.tensor([pairs[i][1] for i in chunk], device=device)
                if model.is_causal:
                    body = answers
                else:
                    body = torch.full_like(answers, model.mask_token_id)
                prompts = torch.tensor([pairs[i][0] for i in chunk], device=device)
                # a causal model sees the answer: interventions that read only the prompt
                # (the edit memory's token gate) are told where it begins
                with model.at(ForwardContext(step=None, answer_start=p_len)):
                    logits = model.logits(torch.cat([prompts, body], dim=1))[:, p_len:]
                check_finite(
                    logits, f"{model.name} logits for facts {[facts[i].id for i in chunk]}"
                )
                out[chunk] = target_logprob(logits, answers).sum(-1).cpu()
            return out
        for i, (prompt, answer) in enumerate(
            tqdm(pairs, desc="answer_logprob (elbo)", disable=not progress)
        ):
            generator = torch.Generator().manual_seed(seed + i)
            masks = _elbo_masks(len(answer), mc, generator)
            answer_t = torch.tensor(answer)
            total = 0.0
            for lo in range(0, mc, batch_size):
                m = masks[lo : lo + batch_size]
                body = torch.where(m, torch.full_like(answer_t, model.mask_token_id), answer_t)
                x = torch.cat([torch.tensor(prompt).expand(len(m), -1), body], dim=1).to(device)
                # the answer span is known: interventions that read only the prompt (the edit
                # memory's token gate) must not read the answer tokens left visible here
                with model.at(ForwardContext(step=None, answer_start=len(prompt))):
                    logits = model.logits(x)[:, len(prompt) :]
                check_finite(logits, f"{model.name} logits for fact {facts[i].id!r}")
                logp = target_logprob(logits, answer_t.expand(len(m), -1).to(device)).cpu()
                weight = len(answer) / m.sum(-1)
                total += float(((logp * m).sum(-1) * weight).sum())
            out[i] = total / mc
    return out
