"""Control memories: an edit memory with its content replaced, for reference rows (SPEC §9).

:func:`random_directions` keeps everything that decides *where and when* a memory fires —
config, keys, gate statistics, subject patterns — and replaces *what it writes*: each fact's
update direction ``δ_f`` becomes a random direction of the same norm. If a memory forgets as
well with random directions as with its own, its effect comes from the gate and the strength,
not from the captured content (the ``random_directions`` row of an unlearning table).
"""

from __future__ import annotations

import torch

from .memory import EditMemory

__all__ = ["random_directions"]


def random_directions(memory: EditMemory, *, seed: int = 0) -> EditMemory:
    """A copy of ``memory`` whose deltas are random directions of equal norm, seeded.

    For each fact ``f``, ``δ'_f = ‖δ_f‖ · g_f / ‖g_f‖`` with ``g_f ~ N(0, I_d)`` drawn from a
    generator seeded by ``seed`` (row by row, in the memory's order); the target values become
    ``v_f + δ'_f`` so ``deltas`` of the copy is ``δ'``. Keys, answer values, gate,
    config and model fingerprint are shared, so the copy installs on the same model and fires
    exactly where the original does. The copy is a new value (the memory is unchanged) and is
    not installed.

    Raises:
        EditMemoryError: the memory is empty.

    Example:
        >>> control = random_directions(memory, seed=0)                      # doctest: +SKIP
        >>> torch.allclose(control.deltas.norm(dim=1), memory.deltas.norm(dim=1))  # doctest: +SKIP
        True
    """
    memory._require_facts()
    deltas = memory.deltas
    generator = torch.Generator().manual_seed(int(seed))
    g = torch.randn(deltas.shape, generator=generator, dtype=torch.float64)
    norms = deltas.double().norm(dim=1, keepdim=True)
    random = (g / g.norm(dim=1, keepdim=True) * norms).to(deltas.dtype)
    return memory._derived(target_values=memory.answer_values + random)
