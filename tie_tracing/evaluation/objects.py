"""Object-level measurements of unlearning (SPEC §9): what the model says about the *object*.

Whole-answer metrics reward destruction (``log p(answer)`` is unbounded below, and an answer
that rewords the sentence or refers back by pronoun fails exact match while still writing the
object). These measurements look only at the object's tokens, taken from the fact's own
answer with :func:`tie_tracing.core.facts.locate_object`:

* :func:`object_token_ids` — the object's token ids within the encoded answer;
* :func:`object_leak` (pure) — a sampled answer *leaks* when the object's ids stand as a
  contiguous run anywhere in it; :func:`object_recall` is the same test read as recall (on
  facts a model should know, writing the object is success);
* :func:`object_logprob` — ``Σ_{i∈O} log p(a_i | x)`` over the object's positions ``O`` in one
  forward, with the whole answer masked (``mask="answer"``) or only the object's tokens masked,
  the rest of the answer visible (``mask="object"``: infilling probes, where the subject is
  written in the answer). Bounded by construction to the object, unlike whole-answer ΔLP;
* :func:`sample_masked` — the diffusion loop on such inputs under any sampler config, returning
  the tokens sampled at the initially masked positions, and :func:`sampled_leaks` its leak
  per fact;
* :func:`distance_flag` — the over-/under-forgetting flag of a distance to the retain-only
  model (``object LP(method) − object LP(retain model)`` per fact, with its CI).

Every forward goes through nnsight (``model.logits`` / ``model.denoise``), so installed edit
memories and the string-match interventions of :mod:`.references` act on it; each sets
``model.context.answer_start`` so interventions that read only the prompt know where it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.context import ForwardContext
from ..core.defaults import BATCH_SIZE
from ..core.facts import Fact, as_facts, locate_object
from ..core.prompting import chunks_by_shape
from ..core.sampler import check_finite, target_logprob

__all__ = [
    "FLAGS",
    "MASKS",
    "distance_flag",
    "object_leak",
    "object_logprob",
    "object_recall",
    "object_token_ids",
    "sample_masked",
    "sampled_leaks",
]

#: Which answer positions a query masks: the whole answer, or only the object's tokens.
MASKS: tuple[str, ...] = ("answer", "object")
#: Values of :func:`distance_flag`.
FLAGS: tuple[str, ...] = ("over-forgetting", "under-forgetting", "matched", "n/a")


def _check_mask(mask: str) -> str:
    if mask not in MASKS:
        raise ValueError(
            f"mask must be one of {MASKS} ('answer': the whole answer masked; 'object': only "
            f"the object's tokens, for infilling probes), got {mask!r}"
        )
    return mask


def object_token_ids(tokenizer, answer_ids: Sequence[int], fact: Fact) -> list[int]:
    """The token ids that spell ``fact.object`` inside its own encoded answer.

    Raises:
        ObjectNotFoundError: the object is not in the answer (names the fact).
        ValueError: the fact has no object (``object=None`` targets the whole answer; an
            object-level measurement needs an object).
    """
    if fact.object is None:
        raise ValueError(
            f"fact {fact.id or fact.question!r} has no object (Fact.object is None); object-level "
            "measurements need the object string inside the answer"
        )
    return [int(answer_ids[i]) for i in locate_object(tokenizer, answer_ids, fact)]


def object_leak(sampled_ids: Sequence[int], object_ids: Sequence[int]) -> bool:
    """Whether ``object_ids`` stand as a contiguous run anywhere in ``sampled_ids``.

    The object's ids come from the fact's own answer (:func:`object_token_ids`); a sampled
    answer that writes the object anywhere — after a pronoun, in a reworded sentence, twice —
    leaks, whatever the rest of it says.

    Raises:
        ValueError: ``object_ids`` is empty.

    Example:
        >>> object_leak([5, 9, 7, 8, 2], [7, 8])
        True
        >>> object_leak([5, 7, 9, 8], [7, 8])     # both tokens, not as a run
        False
    """
    obj = [int(t) for t in object_ids]
    if not obj:
        raise ValueError("object_ids is empty: an object has at least one token")
    seq = [int(t) for t in sampled_ids]
    n = len(obj)
    return any(seq[i : i + n] == obj for i in range(len(seq) - n + 1))


def object_recall(sampled_ids: Sequence[int], object_ids: Sequence[int]) -> float:
    """``1.0`` when the sampled answer writes the object (:func:`object_leak`), else ``0.0``:
    the base-recall reading of the same test (recall on facts a model should know, leak on
    facts it should have forgotten)."""
    return float(object_leak(sampled_ids, object_ids))


def _rows(model, facts: Sequence[Fact], mask: str):
    """Per fact ``(prompt_ids, answer_ids, object offsets, masked offsets)``."""
    rows = []
    for f in facts:
        prompt, answer = model.encode(f.question, f.answer)
        if f.object is None:
            raise ValueError(
                f"fact {f.id or f.question!r} has no object (Fact.object is None); object-level "
                "measurements need the object string inside the answer"
            )
        offsets = locate_object(model.tokenizer, answer, f)
        masked = list(range(len(answer))) if mask == "answer" else list(offsets)
        rows.append((prompt, answer, offsets, masked))
    return rows


def _inputs(model, rows, chunk, device) -> torch.Tensor:
    x = []
    for i in chunk:
        prompt, answer, _, masked = rows[i]
        body = list(answer)
        for j in masked:
            body[j] = model.mask_token_id
        x.append(list(prompt) + body)
    return torch.tensor(x, device=device)


def object_logprob(
    model,
    facts: Sequence[Fact] | Fact,
    *,
    mask: str = "answer",
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """``log p(object | question)`` per fact in nats, read from one forward.

    The query is the prompt followed by the answer with ``mask="answer"`` every answer token,
    or ``mask="object"`` only the object's tokens, replaced by ``[MASK]``; the result sums
    ``log softmax(logits)_i[a_i]`` over the object's positions ``O`` (the tokens that spell
    ``fact.object``, :func:`~tie_tracing.core.facts.locate_object`). Rows run batched by
    shape (no padding: a batch equals its rows run alone).

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` of an MDLM.
        facts: Facts with an ``object``.
        mask: ``"answer"`` or ``"object"`` (see above).
        batch_size: Rows per forward.

    Returns:
        ``[n_facts]`` float64 tensor (≤ 0).

    Raises:
        ValueError: a causal model, a fact without an object, an unknown ``mask``.

    Example:
        >>> object_logprob(model, facts[:2])  # doctest: +SKIP
        tensor([-0.0012, -0.0430], dtype=torch.float64)
    """
    facts = as_facts(facts, "object_logprob")
    _check_mask(mask)
    if model.is_causal or model.mask_token_id is None:
        raise ValueError(f"{model.name} is a causal model: object_logprob needs an MDLM")
    rows = _rows(model, facts, mask)
    out = torch.empty(len(facts), dtype=torch.float64)
    device = model.param_device
    shapes = [(p, a) for p, a, _, _ in rows]
    with torch.inference_mode():
        for chunk in chunks_by_shape(shapes, batch_size):
            p_len = len(rows[chunk[0]][0])
            x = _inputs(model, rows, chunk, device)
            answers = torch.tensor([rows[i][1] for i in chunk], device=device)
            with model.at(ForwardContext(step=None, answer_start=p_len)):
                logits = model.logits(x)[:, p_len:]
            check_finite(logits, f"{model.name} logits for facts {[facts[i].id for i in chunk]}")
            terms = target_logprob(logits, answers).double().cpu()
            for r, i in enumerate(chunk):
                out[i] = terms[r, rows[i][2]].sum()
    return out


def sample_masked(
    model,
    facts: Sequence[Fact] | Fact,
    *,
    mask: str = "answer",
    sampler=None,
    steps: int = 8,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> list[list[int]]:
    """Run the diffusion loop on each fact's query and return the tokens it sampled.

    The query is the one :func:`object_logprob` scores (``mask="answer"``: the prompt and
    ``|answer|`` masks, as :func:`tie_tracing.diffuse` builds it; ``mask="object"``: the
    answer with only the object's tokens masked). Exactly ``steps`` forwards per batch through
    ``model.denoise``; row ``i`` uses seed ``seed + i`` (as ``diffuse`` does), so a batch
    equals its rows run alone.

    Returns:
        Per fact, the token ids committed at the initially masked positions, in order (the
        whole sampled answer for ``mask="answer"``).
    """
    facts = as_facts(facts, "sample_masked")
    _check_mask(mask)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    rows = _rows(model, facts, mask)
    shapes = [(p, a) for p, a, _, _ in rows]
    out: list[list[int]] = [[] for _ in facts]
    device = model.param_device
    with torch.inference_mode():
        for chunk in chunks_by_shape(shapes, batch_size):
            p_len = len(rows[chunk[0]][0])
            x = _inputs(model, rows, chunk, device)
            result = model.denoise(
                x, answer_start=p_len, steps=steps, sampler=sampler, seeds=[seed + i for i in chunk]
            )
            final = result.states[:, -1, p_len:].cpu()
            for r, i in enumerate(chunk):
                out[i] = [int(final[r, j]) for j in rows[i][3]]
    return out


def sampled_leaks(
    model,
    facts: Sequence[Fact] | Fact,
    *,
    mask: str = "answer",
    sampler=None,
    steps: int = 8,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> torch.Tensor:
    """``[fact]`` float64 0/1: whether the sampled tokens (:func:`sample_masked`) leak the
    object (:func:`object_leak`, the object's ids taken from the fact's own answer)."""
    facts = as_facts(facts, "sampled_leaks")
    sampled = sample_masked(
        model, facts, mask=mask, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size
    )
    leaks = []
    for f, ids in zip(facts, sampled):
        _, answer = model.encode(f.question, f.answer)
        leaks.append(float(object_leak(ids, object_token_ids(model.tokenizer, answer, f))))
    return torch.tensor(leaks, dtype=torch.float64)


def distance_flag(low: float, high: float) -> str:
    """The forgetting flag of a distance to the retain-only model and its CI ``[low, high]``.

    The distance is ``object LP(method) − object LP(retain model)`` (mean over facts):
    ``"over-forgetting"`` when the whole interval lies below 0 (the method assigns the object
    less probability than a model that never saw the fact, by more than the CI),
    ``"under-forgetting"`` when it lies above 0 (the method still knows more than the retain
    model), ``"matched"`` when it covers 0, ``"n/a"`` for a NaN interval.

    Example:
        >>> distance_flag(-9.0, -2.5), distance_flag(-1.0, 0.4), distance_flag(3.0, 8.0)
        ('over-forgetting', 'matched', 'under-forgetting')
    """
    if low != low or high != high:  # NaN
        return "n/a"
    if high < 0:
        return "over-forgetting"
    if low > 0:
        return "under-forgetting"
    return "matched"
