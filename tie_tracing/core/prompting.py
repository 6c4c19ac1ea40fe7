"""How a question and an answer become token ids: the one place that fixes the format.

A query is ``prompt_ids + answer_ids`` where ``prompt_ids`` are the tokens of the formatted
question (with the tokenizer's special tokens, e.g. BOS) and ``answer_ids`` are the tokens of
``" " + answer`` without special tokens. The two are encoded separately, so the answer span
is exact whatever the tokenizer would merge across the boundary (ROME does the same). The
embedded models were trained on exactly this format; for real checkpoints a ``template`` such
as ``"Question: {question}\\nAnswer:"`` or a chat template can be given.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TEMPLATE = "{question}"


def encode_prompt(tokenizer, question: str, *, template: str = DEFAULT_TEMPLATE) -> list[int]:
    """Token ids of the formatted question, with the tokenizer's special tokens.

    Example:
        >>> ids = encode_prompt(tok, "Where was Ada Vell born?")  # doctest: +SKIP
    """
    return list(tokenizer(template.format(question=question)).input_ids)


def encode_answer(tokenizer, answer: str) -> list[int]:
    """Token ids of ``" " + answer`` without special tokens (the object span ``O``)."""
    ids = list(tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids)
    if not ids:
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return ids


def encode_pair(
    tokenizer, question: str, answer: str, *, template: str = DEFAULT_TEMPLATE
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)`` for one question/answer pair."""
    return encode_prompt(tokenizer, question, template=template), encode_answer(tokenizer, answer)


def group_by_shape(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> dict[tuple[int, int], list[int]]:
    """Indices of ``pairs`` grouped by ``(len(prompt), len(answer))``.

    Rows of one group stack into a batch without padding, so a batched run equals the rows
    run alone exactly (no attention-mask approximations across architectures).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, a) in enumerate(pairs):
        groups.setdefault((len(p), len(a)), []).append(i)
    return groups


def chunks_by_shape(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int
) -> list[list[int]]:
    """Indices of ``pairs`` in batches of at most ``batch_size`` rows of one shape each."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    return [
        idx[i : i + batch_size]
        for idx in group_by_shape(pairs).values()
        for i in range(0, len(idx), batch_size)
    ]
