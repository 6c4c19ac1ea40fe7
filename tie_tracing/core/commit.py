"""One denoising step's commit rule, shared by the diffusion loop and the sampler configs.

* :func:`transfer_schedule` — how many positions each step of a block commits (LLaDA's even
  split, the remainder to the first steps);
* :func:`step_noise_generator` — the generator behind every random choice, keyed by
  ``(row seed, step, stream)`` (see :mod:`tie_tracing.core.samplers`);
* :func:`commit` — one low-confidence-remasking update (argmax, or Gumbel-max with
  temperature > 0), the historical sampler's step (``LLaDASampler()``).

The rules themselves are described in :mod:`tie_tracing.core.sampler` (SPEC §4).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch


def transfer_schedule(
    answer_length: int, steps: int, block_length: int | None = None
) -> list[tuple[int, int, int]]:
    """Per step ``(block_start, block_end, n_commit)``, offsets within the answer span.

    Example:
        >>> transfer_schedule(3, 8)
        [(0, 3, 1), (0, 3, 1), (0, 3, 1), (0, 3, 0), (0, 3, 0), (0, 3, 0), (0, 3, 0), (0, 3, 0)]
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if answer_length < 1:
        raise ValueError(f"the answer span must hold at least one token, got {answer_length}")
    block = answer_length if block_length is None else int(block_length)
    if block < 1:
        raise ValueError(f"block_length must be ≥ 1, got {block_length!r}")
    n_blocks = math.ceil(answer_length / block)
    if steps % n_blocks:
        raise ValueError(
            f"steps={steps} must be divisible by the number of blocks ({n_blocks} blocks of "
            f"{block} over an answer of {answer_length} tokens)"
        )
    per_block = steps // n_blocks
    schedule = []
    for b in range(n_blocks):
        lo, hi = b * block, min((b + 1) * block, answer_length)
        base, extra = divmod(hi - lo, per_block)
        for s in range(per_block):
            schedule.append((lo, hi, base + (1 if s < extra else 0)))
    return schedule


def step_noise_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of row seed ``seed`` at step ``step``, for noise stream ``stream``.

    Every random choice of a sampler is keyed this way (stream 0: token noise; 1: random
    positions; 2: Dream's ``alg_temp`` position noise; see :mod:`tie_tracing.core.samplers`), so
    runs in the same state at the same step with the same seed draw the same numbers.

    Example:
        >>> a = torch.rand(3, generator=step_noise_generator(5, 2))
        >>> torch.equal(a, torch.rand(3, generator=step_noise_generator(5, 2)))
        True
    """
    if stream == 0:
        return torch.Generator().manual_seed((int(seed) * 1_000_003 + step) % (2**63))
    key = zlib.crc32(f"{int(seed)}:{int(step)}:{int(stream)}".encode())
    return torch.Generator().manual_seed(key)


def commit(
    x: torch.Tensor,
    logits: torch.Tensor,
    *,
    answer_start: int,
    block: tuple[int, int],
    n_commit: int,
    mask_id: int,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    step: int = 0,
    logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One low-confidence-remasking update; returns the new state (``x`` is not modified).

    Args:
        x: ``[batch, seq]`` current tokens.
        logits: ``[batch, answer_len, vocab]`` aligned logits of the answer span.
        block: ``(lo, hi)`` offsets of the current block within the answer span.
        n_commit: How many masked positions of the block each row commits.
        logprobs: ``log_softmax(logits)`` when the caller already has it (saves a pass).

    The mask token is excluded from the choice, so a commit always writes a real token.
    """
    x = x.clone()
    if n_commit == 0:
        return x
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1) if logprobs is None else logprobs
    # Never commit the mask token itself: that would be a silent re-mask (and break the
    # schedule's counts). Confidences still come from the full softmax.
    if temperature > 0:
        if seeds is None:
            raise ValueError("temperature > 0 needs per-row seeds")
        gumbel = torch.stack(
            [
                -torch.log(
                    -torch.log(
                        torch.rand(
                            logits.shape[1:], generator=step_noise_generator(s, step)
                        ).clamp_min(1e-20)
                    )
                )
                for s in seeds
            ]
        ).to(logits.device)
        scores = logits / temperature + gumbel
        scores[..., mask_id] = -math.inf
        choice = scores.argmax(-1)
    else:
        choice = logprobs.argmax(-1)
        wrong = choice == mask_id
        if bool(wrong.any()):  # rare: take the runner-up where the mask token won
            alternatives = logprobs[wrong].clone()
            alternatives[..., mask_id] = -math.inf
            choice[wrong] = alternatives.argmax(-1)
    confidence = logprobs.gather(-1, choice[..., None])[..., 0].exp()
    answer = x[:, answer_start:]
    eligible = answer == mask_id
    in_block = torch.zeros_like(eligible)
    in_block[:, block[0] : block[1]] = True
    eligible &= in_block
    confidence = torch.where(eligible, confidence, torch.full_like(confidence, -math.inf))
    available = int(eligible.sum(-1).min())
    k = min(n_commit, available)
    if k == 0:
        return x
    top = confidence.topk(k, dim=-1).indices
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    answer = answer.clone()
    answer[rows, top] = choice[rows, top]
    x[:, answer_start:] = answer
    return x
