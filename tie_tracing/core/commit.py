"""One denoising step's commit rule, shared by the diffusion loop and the sampler configs.

* :func:`transfer_schedule` — how many positions each step of a block commits (LLaDA's even
  split, the remainder to the first steps);
* :func:`step_noise_generator` — the generator behind every random choice, keyed by
  ``(row seed, step, stream)`` (see :mod:`tie_tracing.core.samplers`, which also holds
  :func:`~tie_tracing.core.samplers.commit`, one low-confidence-remasking update).

The rules themselves are described in :mod:`tie_tracing.core.sampler` (SPEC §4).
"""

from __future__ import annotations

import math
import zlib

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
