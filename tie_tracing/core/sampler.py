"""The diffusion loop (SPEC §4) and its default sampler: LLaDA low-confidence remasking, batch-aware.

The loop runs any sampler config of :mod:`tie_tracing.core.samplers` (LLaDA's remasking modes,
blocks, CFG and EOS switches; Dream's algorithms; fixed-``T`` threshold decoding), passed as
``sampler=`` to :func:`diffuse`, ``model.denoise``, ``tt.tracing.run_patched`` and ``tt.trace_tie``;
``temperature=`` and ``block_length=`` remain shorthands of ``LLaDASampler``. What follows
describes the default, ``LLaDASampler()``.

A query is the prompt followed by ``|answer|`` mask tokens. At each of ``T`` steps the
backbone scores every position; among the still-masked positions of the current block, the
``n_k`` most confident are committed to their argmax token (temperature 0) or to a
Gumbel-max sample (temperature > 0, seeded per row and step). ``n_k`` splits the block's
masked count evenly over its steps, the remainder going to the first steps. Committed tokens
are never re-masked. The loop always performs exactly ``T`` forwards — steps after the answer
is complete still run and still report log-probs — so step ``k`` means the same thing in every
run, which is what step-indexed tracing relies on.

Each row commits independently: confidences, top-k and the Gumbel noise are per row (row
``r`` draws its noise from seed ``seeds[r]``), so a batch equals its rows run alone.

Limits: one block by default (``block_length=None``); semi-autoregressive blocks need ``T``
divisible by the number of blocks.

Per-step log-probabilities of given target tokens ``a`` over target positions ``O`` (SPEC §4),
in nats: ``LP(k) = Σ_{i∈O} ℓ_i(k)``. With ``lp="frozen"`` (the default) ``ℓ_i(k)`` is
``log softmax(logits_k)_i[a_i]`` while ``i`` is masked in step ``k``'s input and, once ``i``
was committed at step ``c_i < k``, the value it had in the forward that decided it, ``ℓ_i(c_i)``:
an MDLM is trained on masked positions only, so its output at a visible position says nothing
about the fact. ``lp="raw"`` reads ``log softmax(logits_k)_i[a_i]`` at every target position
whatever its commit state (the literal reading, kept for comparison). Every trajectory also
has a **commit map**: the step at which each answer position was committed
(:func:`commit_steps`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._guards import as_int, require_model
from ._io import Saveable
from .context import ForwardContext
from .defaults import BATCH_SIZE, PROGRESS
from .errors import NonFiniteActivationError
from .facts import Fact, locate_object, target_offsets
from .prompting import chunks_by_shape, encode_prompt
from .samplers import resolve_sampler

#: How ``LP(k)`` reads a committed position (SPEC §4).
LP_MODES: tuple[str, ...] = ("frozen", "raw")
#: Which answer positions ``LP`` sums over (SPEC §5).
#: ``"object"`` (the default): the object's tokens, the paper's Eq. 4; ``"answer"``: the whole
#: answer span (TOFU's convention); ``"name"``: the subject's name inside the answer, the
#: subject-identity part that Figure 2's contrast subtracts.
TARGETS: tuple[str, ...] = ("object", "answer", "name")


def warn_no_object(missing: Sequence[str], total: int, *, stacklevel: int = 3) -> None:
    """One warning for the facts that record no object under ``target="object"``: their
    object is their whole answer (what ``Fact.object=None`` means), so their ``LP`` includes
    the subject's name wherever the answer repeats it."""
    if not missing:
        return
    listed = ", ".join(repr(m) for m in list(missing)[:5]) + (" …" if len(missing) > 5 else "")
    warnings.warn(
        f"target='object' (the default): {len(missing)} of {total} facts record no object "
        f"(Fact.object is None: {listed}), so their object target is their whole answer. Set "
        "Fact.object to measure the fact apart from the subject's name, or pass "
        "target='answer' to say that the whole answer is meant",
        stacklevel=stacklevel + 1,
    )


def check_lp_mode(lp: str) -> str:
    """``lp`` if it is one of :data:`LP_MODES`, else a ``ValueError`` listing them."""
    if lp not in LP_MODES:
        raise ValueError(f"lp must be one of {LP_MODES}, got {lp!r}")
    return lp


def check_target(target: str) -> str:
    """``target`` if it is one of :data:`TARGETS`, else a ``ValueError`` listing them."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


def frozen_terms(
    terms: torch.Tensor, masked: torch.Tensor, frozen: torch.Tensor | None
) -> torch.Tensor:
    """The frozen-LP rule (SPEC §4) for one step: each position's term after this step.

    A position masked in the step's input reads this step's term; a committed one keeps the
    term it had in the forward that committed it (``frozen``, the terms after the previous
    step; ``None`` before the first step of a trajectory). Every frozen ``LP`` of the package
    goes through here.

    Example:
        >>> frozen_terms(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), torch.tensor([5.0, 6.0]))
        tensor([1., 6.])
    """
    return terms if frozen is None else torch.where(masked, terms, frozen)


def step_logprobs(
    token_logprobs: torch.Tensor,
    masked: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
    lp: str = "frozen",
    frozen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``LP`` of consecutive steps of trajectories from their per-position terms.

    Args:
        token_logprobs: ``[..., steps, answer_len]`` ``log softmax(logits_k)_i[a_i]``.
        masked: ``[..., steps, answer_len]`` bool, position ``i`` masked in step ``k``'s input.
        target_mask: ``[..., answer_len]`` bool target positions ``O`` (default: all).
        lp: ``"frozen"`` or ``"raw"`` (see the module docstring).
        frozen: ``[..., answer_len]`` the frozen terms before the first of these steps (a
            trajectory continued from the middle); default: the first step's own terms.

    Returns:
        ``(LP [..., steps], frozen terms after the last step [..., answer_len])``.
    """
    check_lp_mode(lp)
    steps = token_logprobs.shape[-2]
    f = token_logprobs[..., 0, :] if frozen is None else frozen.to(token_logprobs.dtype)
    if target_mask is None:
        weight = torch.ones_like(token_logprobs[..., 0, :])
    else:
        weight = target_mask.to(token_logprobs.dtype)
    out = []
    for k in range(steps):
        term = token_logprobs[..., k, :]
        if lp == "frozen":
            f = frozen_terms(term, masked[..., k, :], f)
            term = f
        out.append((term * weight).sum(-1))
    return torch.stack(out, -1), f


def commit_steps(tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Commit map: the step at which each position was committed (``-1``: never, or padding).

    Args:
        tokens: ``[..., steps, answer_len]`` the answer tokens after each step (``-1`` pads).
        mask_id: The mask token id.

    Returns:
        ``[..., answer_len]`` long: the first step after which the position holds a token.
    """
    done = (tokens != mask_id) & (tokens >= 0)
    first = done.float().argmax(-2)
    return torch.where(done.any(-2), first, torch.full_like(first, -1))


@dataclass(frozen=True)
class LoopOutput:
    """What one run of the diffusion loop returns.

    Attributes:
        states: ``[batch, steps, seq]`` tokens after each step's commits.
        target_logprobs: ``[batch, steps]`` ``LP(k)`` of the targets (``lp`` mode, over the
            target positions), or ``None``.
        token_logprobs: ``[batch, steps, answer_len]`` ``log softmax(logits_k)_i[a_i]`` at
            every answer position (the raw terms ``LP`` is built from).
        masked: ``[batch, steps, answer_len]`` bool, answer position masked in step ``k``'s input.
        config: The loop's settings: ``sampler`` (its ``to_dict()``), ``steps``, ``lp``.
    """

    states: torch.Tensor
    target_logprobs: torch.Tensor | None
    token_logprobs: torch.Tensor | None
    masked: torch.Tensor | None = None
    config: dict = field(default_factory=dict)


def target_logprob(
    logits: torch.Tensor, targets: torch.Tensor, logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-position ``log softmax(logits)[target]`` in float32: ``[batch, answer_len]``.

    ``logprobs`` (``log_softmax(logits)``) may be passed in to share it with :func:`commit`.
    """
    if logprobs is None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, targets[..., None].to(logprobs.device))[..., 0]


def check_finite(tensor: torch.Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteActivationError(f"non-finite values (NaN or inf) in {what}")


def run_loop(
    model,
    input_ids: torch.Tensor,
    *,
    answer_start: int,
    steps: int = 8,
    block_length: int | None = None,
    temperature: float | None = None,
    seeds: Sequence[int] | None = None,
    targets: torch.Tensor | None = None,
    target_mask: torch.Tensor | None = None,
    lp: str = "frozen",
    sampler=None,
) -> LoopOutput:
    """Run the diffusion loop on ``model`` (a :class:`~tie_tracing.core.model.TracedModel`).

    Exactly ``steps`` backbone forwards (one per step, CFG included: its unconditional copy
    rides in the same forward); see the module docstring. ``sampler`` is a
    :mod:`~tie_tracing.core.samplers` config (default :class:`~tie_tracing.core.samplers.LLaDASampler`
    built from the ``temperature`` / ``block_length`` shorthands). ``targets``
    ``[batch, answer_len]`` are scored at the positions of ``target_mask`` (``[answer_len]``
    or ``[batch, answer_len]`` bool; default all) in mode ``lp``.
    """
    check_lp_mode(lp)
    if model.is_causal:
        raise ValueError(f"{model.name} is a causal (AR) model; diffusion sampling needs an MDLM")
    rule = resolve_sampler(sampler, temperature=temperature, block_length=block_length, model=model)
    x = input_ids.clone()
    batch, seq = x.shape
    answer_length = seq - answer_start
    rule.check_shape(answer_length, steps)
    if seeds is None:
        seeds = list(range(batch))
    states, token_lps, masked = [], [], []
    for k in range(steps):
        masked.append(x[:, answer_start:] == model.mask_token_id)
        with model.at(ForwardContext(step=k, answer_start=answer_start)):
            raw = model.forward_logits(rule.model_input(x, answer_start, model.mask_token_id))
        logits = rule.combine(raw, batch)[:, answer_start:]
        check_finite(logits, f"{model.name} logits at step {k}")
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if targets is not None:
            token_lps.append(target_logprob(logits, targets, logprobs))
        x = rule.update(
            x,
            logits,
            answer_start=answer_start,
            step=k,
            steps=steps,
            mask_id=model.mask_token_id,
            seeds=seeds,
            logprobs=logprobs,
        )
        states.append(x)
    masked_t = torch.stack(masked, 1)
    config = {"sampler": rule.to_dict(), "steps": steps, "lp": lp}
    if targets is None:
        return LoopOutput(torch.stack(states, 1), None, None, masked_t, config)
    token_t = torch.stack(token_lps, 1)
    if target_mask is not None:
        target_mask = target_mask.to(token_t.device)
        if target_mask.ndim == 1:
            target_mask = target_mask.expand(batch, -1)
    lps, _ = step_logprobs(token_t, masked_t, target_mask, lp=lp)
    return LoopOutput(torch.stack(states, 1), lps, token_t, masked_t, config)


@dataclass(frozen=True, eq=False)
class DiffusionResult(Saveable):
    """Samples of :func:`diffuse`, in input order.

    Attributes:
        answers: Decoded answer spans after the last step.
        tokens: ``[batch, step, position]`` full sequences after each step (``-1`` pads rows
            shorter than the longest).
        target_logprobs: ``[batch, step]`` ``LP(k)`` of the facts' answers (``None`` for plain
            prompts).
        prompt_lengths, answer_lengths: Per row.
        config: Sampler settings (``lp``, ``target`` and ``mask_token_id`` included;
            ``config["sampler"]`` is the sampler's ``to_dict()``, which
            :func:`~tie_tracing.core.samplers.make_sampler` turns back into the config).
        object_offsets: Per row, the offsets within the answer of the object's tokens (the
            whole answer for facts without an object; empty for plain prompts).
    """

    answers: list[str]
    tokens: torch.Tensor
    target_logprobs: torch.Tensor | None
    prompt_lengths: tuple[int, ...]
    answer_lengths: tuple[int, ...]
    config: dict = field(default_factory=dict)
    object_offsets: tuple[tuple[int, ...], ...] = ()

    dims = ("batch", "step", "position")

    @property
    def values(self) -> torch.Tensor:
        return self.tokens

    def commits(self, row: int) -> torch.Tensor:
        """``[answer_len]`` the commit map of one row: the step each answer position was
        committed at (``-1``: never)."""
        return commit_steps(self.answer_tokens(row), int(self.config["mask_token_id"]))

    def object_commit_step(self, row: int) -> int:
        """The step at which row ``row`` committed its object's first token (``-1``: never)."""
        offsets = self.object_offsets[row] if self.object_offsets else ()
        if not offsets:
            raise ValueError(f"row {row} is a plain prompt: it has no object")
        return int(self.commits(row)[offsets[0]])

    def transfer_counts(self, row: int) -> tuple[int, ...]:
        """Per step, how many answer positions row ``row`` committed (``len == T``).

        Give them to ``LLaDASampler(transfer_counts=...)`` to trace a threshold run with its
        recorded schedule.
        """
        commits = self.commits(row).tolist()
        steps = self.tokens.shape[1]
        return tuple(sum(1 for c in commits if c == k) for k in range(steps))

    def answer_tokens(self, row: int) -> torch.Tensor:
        """``[step, answer_len]`` committed answer tokens of one row after each step."""
        p, a = self.prompt_lengths[row], self.answer_lengths[row]
        return self.tokens[row, :, p : p + a]

    def __repr__(self) -> str:
        return (
            f"DiffusionResult(batch={len(self.answers)}, steps={self.tokens.shape[1]}, "
            f"config={self.config}, answers={self.answers[:3]}{'...' if len(self.answers) > 3 else ''})"
        )


def _queries(model, items, answer_length):
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, Fact):
            prompt, answer = model.encode(item.question, item.answer)
            rows.append((prompt, answer))
        elif isinstance(item, str):
            if answer_length is None:
                raise ValueError(
                    f"prompt {i} is a plain string: give answer_length=<number of answer slots>"
                )
            rows.append((encode_prompt(model.tokenizer, item, template=model.template), None))
        else:
            raise TypeError(f"item {i}: expected a Fact or a str, got {type(item).__name__}")
    return rows


def diffuse(
    model,
    facts_or_prompts: Sequence[Fact] | Sequence[str] | Fact | str,
    *,
    steps: int = 8,
    block_length: int | None = None,
    temperature: float | None = None,
    seed: int = 0,
    answer_length: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = PROGRESS,
    lp: str = "frozen",
    target: str = "object",
    sampler=None,
) -> DiffusionResult:
    """Sample answers with the diffusion loop (SPEC §4).

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` of an MDLM.
        facts_or_prompts: Facts (their answers fix the answer length and are scored per step)
            or plain prompt strings (give ``answer_length``).
        steps: ``T``, the number of forwards (default 8, the paper's setting).
        block_length: Semi-autoregressive block size (default: one block); a shorthand of
            ``LLaDASampler(block_length=...)``.
        temperature: 0 (default) for argmax commits; > 0 samples with seeded Gumbel noise; a
            shorthand of ``LLaDASampler(temperature=...)``.
        seed: Row ``i`` (in input order) uses seed ``seed + i``, whatever the batching.
        answer_length: Number of answer slots for plain prompts.
        batch_size: Rows per forward.
        progress: Show a progress bar over batches.
        lp: How ``.target_logprobs`` reads committed positions: ``"frozen"`` (default, the
            value of the forward that committed them) or ``"raw"`` (SPEC §4).
        target: The positions ``.target_logprobs`` sums over: ``"object"`` (default, the
            object's tokens; a fact without ``Fact.object`` targets its whole answer, as
            ``Fact.object=None`` means — no warning here, where the answers are usually the
            point; :func:`~tie_tracing.trace_tie` warns), ``"answer"`` (the whole
            answer) or ``"name"`` (the subject's name inside the answer). Prompts have no
            targets and ignore it.
        sampler: A :mod:`~tie_tracing.core.samplers` config, registry name or dict (default
            ``LLaDASampler()``, low-confidence remasking); recorded as ``config["sampler"]``.
            A ``temperature`` / ``block_length`` given beside it must agree with it.

    Returns:
        A :class:`DiffusionResult` (``.answers``, ``.tokens``, ``.target_logprobs``, the
        commit maps through ``.commits(row)``).

    Raises:
        UnsupportedSamplerError: a sampler the package cannot run exactly (a KV cache, ...).
        ValueError: a shorthand that disagrees with ``sampler``; a Dream sampler on a model
            of another family; bad settings.

    Example:
        >>> facts = tt.load_facts("tiny", split="forget01")      # doctest: +SKIP
        >>> tt.diffuse(model, facts[:2]).answers                  # doctest: +SKIP
        ['Lisbon', '1962']
        >>> tt.diffuse(model, facts[:2], sampler=tt.LLaDASampler(remasking="random"))  # doctest: +SKIP
    """
    require_model(model, "diffuse")
    items = (
        [facts_or_prompts] if isinstance(facts_or_prompts, (Fact, str)) else list(facts_or_prompts)
    )
    if not items:
        raise ValueError("diffuse needs at least one fact or prompt")
    steps = as_int(steps)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if model.is_causal:
        raise ValueError(f"{model.name} is a causal (AR) model; diffusion sampling needs an MDLM")
    check_lp_mode(lp)
    check_target(target)
    rule = resolve_sampler(sampler, temperature=temperature, block_length=block_length, model=model)
    rows = _queries(model, items, answer_length)
    objects: list[tuple[int, ...]] = [
        tuple(locate_object(model.tokenizer, a, item)) if isinstance(item, Fact) else ()
        for item, (_, a) in zip(items, rows)
    ]
    target_at: list[tuple[int, ...] | None] = [
        tuple(target_offsets(model.tokenizer, a, item, target))
        if isinstance(item, Fact) and a is not None
        else None
        for item, (_, a) in zip(items, rows)
    ]
    shapes = [(p, a if a is not None else [0] * int(answer_length or 0)) for p, a in rows]
    device = model.param_device
    seq_max = max(len(p) + len(a) for p, a in shapes)
    tokens = torch.full((len(items), steps, seq_max), -1, dtype=torch.long)
    have_targets = all(a is not None for _, a in rows)
    lps = torch.zeros(len(items), steps) if have_targets else None
    chunks = chunks_by_shape(shapes, batch_size)
    with torch.inference_mode():
        for chunk in tqdm(chunks, desc="diffuse", disable=not progress):
            p_len, a_len = len(shapes[chunk[0]][0]), len(shapes[chunk[0]][1])
            x = torch.tensor(
                [shapes[i][0] + [model.mask_token_id] * a_len for i in chunk], device=device
            )
            targets = (
                torch.tensor([rows[i][1] for i in chunk], device=device) if have_targets else None
            )
            target_mask = torch.zeros(len(chunk), a_len, dtype=torch.bool)
            for r, i in enumerate(chunk):
                at = target_at[i]
                target_mask[r, slice(None) if at is None else list(at)] = True
            out = model.denoise(
                x,
                answer_start=p_len,
                steps=steps,
                sampler=rule,
                seeds=[seed + i for i in chunk],
                targets=targets,
                target_mask=target_mask.to(device),
                lp=lp,
            )
            tokens[chunk, :, : p_len + a_len] = out.states.cpu()
            if lps is not None:
                lps[chunk] = out.target_logprobs.cpu()
    answers = []
    for i, (p, a) in enumerate(shapes):
        ids = tokens[i, -1, len(p) : len(p) + len(a)].tolist()
        answers.append(model.tokenizer.decode(ids, skip_special_tokens=True).strip())
    return DiffusionResult(
        answers=answers,
        tokens=tokens,
        target_logprobs=lps,
        prompt_lengths=tuple(len(p) for p, _ in shapes),
        answer_lengths=tuple(len(a) for _, a in shapes),
        config=dict(
            steps=steps,
            block_length=getattr(rule, "block_length", None),
            temperature=getattr(rule, "temperature", 0.0),
            sampler=rule.to_dict(),
            seed=seed,
            lp=lp,
            target=target,
            mask_token_id=int(model.mask_token_id),
        ),
        object_offsets=tuple(objects),
    )
