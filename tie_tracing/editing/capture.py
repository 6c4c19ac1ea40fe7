"""Capture: the activations an edit memory is built from, read on the frozen model.

For each fact ``f`` at site ``(l*, m*)`` (Eq. 6–9), from three cloze inputs:

* the query ``prompt + |answer| × [MASK]`` gives the subject key ``k_f`` (mean over the
  subject positions ``S``, Eq. 6) and the answer-slot key ``k^O_f`` (mean over the masked
  answer slots — the key a gated memory uses, where its update acts);
* ``prompt + answer`` gives ``v_f`` (mean over the answer span, Eq. 7);
* ``prompt + target`` gives ``v*_f`` (mean over the target span, its own length, Eq. 8).

:func:`capture_states` returns full per-token states of arbitrary sequences (the subject
gate's calibration prompts). Every capture runs batched traced forwards (``with
model.logits(x)``), rows grouped by length (no padding, so a batch equals its rows run
alone), with every installed edit suspended and a stand-alone context: a memory can
be grown while it, or another, is installed and still sees the frozen backbone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import nnsight
import torch

from ..core._nnsight import suspended_edits
from ..core.backbones import hidden_of
from ..core.context import STANDALONE
from ..core.defaults import BATCH_SIZE
from ..core.errors import ShapeError
from ..core.facts import Fact
from ..tracing.patching import encode_query
from .config import EditMemoryError

__all__ = [
    "Captured",
    "capture",
    "capture_keys_and_deltas",
    "capture_states",
    "capture_unknown",
    "query_ids",
]


@dataclass(frozen=True, eq=False)
class Captured:
    """Per-fact activations at one site, CPU float32 ``[N, d]`` (``subject_lengths``: ``[N]``).

    Attributes:
        subject_keys: ``k_f`` (Eq. 6).
        slot_keys: ``k^O_f``, the query's masked answer slots.
        answer_values: ``v_f`` (Eq. 7).
        target_values: ``v*_f`` (Eq. 8).
        subject_lengths: ``|S_f|``, the subject's token count (the gate's window length).
        subject_tokens: ``[N, L]`` int64, the token ids of the subject's first mention in the
            prompt, padded with ``-1`` (what the ``"tokens"`` gate matches).
    """

    subject_keys: torch.Tensor
    slot_keys: torch.Tensor
    answer_values: torch.Tensor
    target_values: torch.Tensor
    subject_lengths: torch.Tensor
    subject_tokens: torch.Tensor | None = None


def first_run(positions: Sequence[int]) -> list[int]:
    """The first maximal run of consecutive positions (a mention's tokens are consecutive)."""
    out: list[int] = []
    for p in sorted(positions):
        if out and p != out[-1] + 1:
            break
        out.append(int(p))
    return out


def pad_tokens(rows: Sequence[Sequence[int]], width: int = 0) -> torch.Tensor:
    """``[len(rows), max(width, longest row)]`` int64 token ids padded with ``-1``."""
    width = max([width, *(len(r) for r in rows)]) if rows else width
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.int64)
    return out


@contextmanager
def frozen(model) -> Iterator[None]:
    """Forwards with no installed edit, a stand-alone context and no autograd."""
    with model.at(STANDALONE), suspended_edits(model), torch.inference_mode():
        yield


def query_ids(model, fact: Fact) -> list[int]:
    """``prompt + |answer| × [MASK]`` (the answer itself on a causal model)."""
    prompt, answer = model.encode(fact.question, fact.answer)
    mask_id = model.mask_token_id
    return list(prompt) + (list(answer) if mask_id is None else [mask_id] * len(answer))


def _pooled(
    model,
    rows: Sequence[tuple[list[int], list[list[int]]]],
    *,
    layer: int,
    module: str,
    batch_size: int,
) -> list[torch.Tensor]:
    """For each row ``(ids, pools)``, ``[len(pools), d]`` means of the site's output over each
    pool of positions (float32, CPU)."""
    site = model.site(layer, module)
    device = model.param_device
    by_len: dict[int, list[int]] = {}
    for r, (ids, _pools) in enumerate(rows):
        by_len.setdefault(len(ids), []).append(r)
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    with frozen(model):
        for length, members in by_len.items():
            for lo in range(0, len(members), batch_size):
                chunk = members[lo : lo + batch_size]
                n_pools = max(len(rows[r][1]) for r in chunk)
                weights = torch.zeros(len(chunk), n_pools, length, device=device)
                for j, r in enumerate(chunk):
                    for p, positions in enumerate(rows[r][1]):
                        weights[j, p, positions] = 1.0 / len(positions)
                x = torch.tensor([rows[r][0] for r in chunk], device=device)
                with model.logits(x):
                    h = hidden_of(site.output)
                    pooled = nnsight.save(torch.einsum("bps,bsd->bpd", weights, h.float()))
                pooled = pooled.cpu()
                for j, r in enumerate(chunk):
                    out[r] = pooled[j, : len(rows[r][1])]
    return out


def capture(
    model,
    facts: Sequence[Fact],
    targets: Sequence[str],
    *,
    layer: int,
    module: str = "resid",
    batch_size: int = BATCH_SIZE,
) -> Captured:
    """Eq. 6–8 (and the answer-slot keys) for ``facts`` at site ``(layer, module)``.

    Raises:
        ShapeError: ``targets`` and ``facts`` differ in length.
        SubjectNotFoundError: a fact's subject is not in its question.
        EditMemoryError: non-finite activations.
    """
    model.check_site(layer, module)
    if len(targets) != len(facts):
        raise ShapeError(f"{len(targets)} targets for {len(facts)} facts")
    rows: list[tuple[list[int], list[list[int]]]] = []
    lengths = []
    subject_ids: list[list[int]] = []
    for fact, target in zip(facts, targets):
        # the subject's first mention: the key of Eq. 6 and the gate's pattern are one span
        query = encode_query(model, fact, mentions="first")
        prompt, answer = list(query.prompt_ids), list(query.answer_ids)
        p = len(prompt)
        _, target_ids = model.encode(fact.question, target)
        slots = list(range(p, p + len(answer)))
        rows.append((query_ids(model, fact), [list(query.subject_positions), slots]))
        rows.append((prompt + answer, [slots]))
        rows.append((prompt + list(target_ids), [list(range(p, p + len(target_ids)))]))
        lengths.append(len(query.subject_positions))
        subject_ids.append([prompt[i] for i in first_run(query.subject_positions)])
    pooled = _pooled(model, rows, layer=layer, module=module, batch_size=batch_size)
    n = len(facts)
    d = int(model.hidden_size)
    q_pooled = torch.stack([pooled[3 * i] for i in range(n)]) if n else torch.zeros(0, 2, d)
    a_pooled = torch.stack([pooled[3 * i + 1][0] for i in range(n)]) if n else torch.zeros(0, d)
    t_pooled = torch.stack([pooled[3 * i + 2][0] for i in range(n)]) if n else torch.zeros(0, d)
    out = Captured(
        subject_keys=q_pooled[:, 0].contiguous(),
        slot_keys=q_pooled[:, 1].contiguous(),
        answer_values=a_pooled,
        target_values=t_pooled,
        subject_lengths=torch.tensor(lengths, dtype=torch.int64),
        subject_tokens=pad_tokens(subject_ids),
    )
    for name in ("subject_keys", "slot_keys", "answer_values", "target_values"):
        if not torch.isfinite(getattr(out, name)).all():
            raise EditMemoryError(
                f"non-finite activations at ({layer}, {module!r}) while capturing {name}"
            )
    return out


def capture_unknown(
    model,
    facts: Sequence[Fact],
    names: Sequence[str],
    *,
    layer: int,
    module: str = "resid",
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """``[N, d]`` the never-met values of ``targets="unknown"``: for each fact, the mean over
    ``names`` of the answer-slot mean of its question asked about that name
    (``prompt(subject → name) + |answer| × [MASK]``, the fact's own answer length).

    Raises:
        SubjectNotFoundError: a fact's subject is not in its question.
        EditMemoryError: non-finite activations.
    """
    mask = model.mask_token_id
    if mask is None:
        raise EditMemoryError("targets='unknown' needs a masked diffusion model ([MASK] slots)")
    rows: list[tuple[list[int], list[list[int]]]] = []
    for fact in facts:
        encode_query(model, fact, mentions="first")  # the subject must be in the question
        _, answer = model.encode(fact.question, fact.answer)
        for name in names:
            prompt, _ = model.encode(fact.question.replace(fact.subject, name), fact.answer)
            p = len(prompt)
            rows.append((list(prompt) + [mask] * len(answer), [list(range(p, p + len(answer)))]))
    pooled = _pooled(model, rows, layer=layer, module=module, batch_size=batch_size)
    k = len(names)
    out = torch.stack(
        [torch.stack([pooled[i * k + j][0] for j in range(k)]).mean(0) for i in range(len(facts))]
    ) if len(facts) else torch.zeros(0, int(model.hidden_size))  # fmt: skip
    if not torch.isfinite(out).all():
        raise EditMemoryError(f"non-finite activations at ({layer}, {module!r}) (unknown targets)")
    return out


def capture_keys_and_deltas(
    model,
    facts: Sequence[Fact],
    targets: Sequence[str],
    *,
    layer: int,
    module: str = "resid",
    batch_size: int = BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K, V, V*)``, each ``[N, d]`` float32 CPU: Eq. 6–8 (see :func:`capture`)."""
    c = capture(model, facts, targets, layer=layer, module=module, batch_size=batch_size)
    return c.subject_keys, c.answer_values, c.target_values


def capture_states(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    layer: int,
    module: str = "resid",
    batch_size: int = BATCH_SIZE,
) -> list[torch.Tensor]:
    """Per sequence, ``[len(seq), d]`` site outputs (float32, CPU) of the frozen model."""
    model.check_site(layer, module)
    site = model.site(layer, module)
    device = model.param_device
    by_len: dict[int, list[int]] = {}
    for r, ids in enumerate(sequences):
        by_len.setdefault(len(ids), []).append(r)
    out: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    with frozen(model):
        for members in by_len.values():
            for lo in range(0, len(members), batch_size):
                chunk = members[lo : lo + batch_size]
                x = torch.tensor([list(sequences[r]) for r in chunk], device=device)
                with model.logits(x):
                    states = nnsight.save(hidden_of(site.output).float().clone())
                states = states.cpu()
                for j, r in enumerate(chunk):
                    out[r] = states[j].clone()
    if any(not torch.isfinite(t).all() for t in out):
        raise EditMemoryError(f"non-finite activations at ({layer}, {module!r}) on calibration")
    return out
