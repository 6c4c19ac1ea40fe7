"""Step-indexed patching: corruptions, captures and patches as nnsight interventions.

This is the public, general-purpose layer under :func:`~tie_tracing.tracing.tie.trace_tie`. A user
names sites (``resid``/``attn``/``mlp`` of a layer), denoising steps and token positions and
gets back, from one traced run of the diffusion loop (``model.denoise``), the per-step
log-probabilities of the answer, the committed tokens, and any captured activations:

* :class:`Corruption` — Gaussian noise on the subject embeddings (SPEC §5): ``ν`` is
  ``noise_scale · σ_emb`` (ROME's 3σ rule, ``σ_emb`` the pooled standard deviation of the
  embedding outputs at the subject tokens of the fact set) or a fixed ``nu``; added (default)
  or replacing the embedding (``replace=True``). Draws are keyed by ``(seed, fact id, draw)``,
  so every run of a fact — clean capture aside — sees the same noise at every step (common
  random numbers), whatever else is in the batch.
* :class:`Patch` — overwrite a site's output at one step and some positions with given
  values (e.g. the clean run's activations).
* :class:`Capture` — record a site's output at chosen steps and positions.

Everything happens inside one ``with model.denoise(...) as tracer`` block with a bounded
``tracer.iter[:T]``; within a step, sites are visited in execution order (embedding, then per
layer ``attn``, ``mlp``, ``resid``), which nnsight requires.

Example:
    >>> fact = tt.load_facts("tiny", split="forget01")[0]                # doctest: +SKIP
    >>> q = encode_query(model, fact)                                      # doctest: +SKIP
    >>> clean = run_patched(model, q, capture=[Capture(layer=2, module="mlp")])  # doctest: +SKIP
    >>> h = clean.captures[(2, "mlp")]            # [rows, steps, positions, d]  # doctest: +SKIP
    >>> noisy = run_patched(model, q, corruption=Corruption(nu=0.5),        # doctest: +SKIP
    ...                     patches=[Patch(layer=2, module="mlp", step=3, value=h[0, 3])])
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core._guards import as_int, as_real, finite, require_model
from ..core.backbones import MODULES, hidden_of, module_names
from ..core.context import ForwardContext
from ..core.errors import ObjectNotFoundError, ShapeError, SubjectNotFoundError
from ..core.facts import Fact, check_mentions, locate_name, locate_object, locate_subject
from ..core.sampler import LoopOutput, check_finite, check_lp_mode, check_target, commit_steps

#: Order in which a block's sites run (nnsight must be asked in execution order).
EXECUTION_ORDER: tuple[str, ...] = ("attn", "mlp", "resid")


@dataclass(frozen=True)
class Query:
    """A fact encoded for one model: prompt, answer span and subject positions.

    Attributes:
        fact: The fact.
        prompt_ids, answer_ids: Token ids (see :mod:`tie_tracing.core.prompting`).
        subject_positions: Token positions ``S`` of the subject in the prompt: every mention
            by default (not necessarily contiguous), or the first (``mentions="first"``).
        object_offsets: Offsets within the answer span of the object's tokens (the whole
            answer for a fact without an object).
        name_offsets: Offsets within the answer span of the subject's name (its first
            whole-word occurrence there), ``None`` when the answer does not repeat it.
    """

    fact: Fact
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    subject_positions: tuple[int, ...]
    object_offsets: tuple[int, ...] = ()
    name_offsets: tuple[int, ...] | None = None

    def target_mask(self, target: str = "object") -> torch.Tensor:
        """``[answer_len]`` bool: the target positions ``O`` of ``target`` (SPEC §5).

        ``"object"`` on a fact that records no object is its whole answer (``object_mask``).

        Raises:
            ValueError: ``target="name"`` on a fact whose answer does not repeat its subject
                (names it).
        """
        check_target(target)
        mask = torch.zeros(len(self.answer_ids), dtype=torch.bool)
        if target == "answer":
            mask[:] = True
            return mask
        if target == "name":
            if self.name_offsets is None:
                raise ValueError(
                    f"target='name' reads the subject's name inside the answer; the answer of "
                    f"fact {fact_key(self.fact)!r} does not contain {self.fact.subject!r}: use "
                    "target='object' or 'answer'"
                )
            mask[list(self.name_offsets)] = True
            return mask
        return self.object_mask  # a fact without an object: its whole answer

    @property
    def object_mask(self) -> torch.Tensor:
        """``[answer_len]`` bool: the object's tokens (the whole answer for a fact without an
        object, whose object is its answer)."""
        mask = torch.zeros(len(self.answer_ids), dtype=torch.bool)
        mask[list(self.object_offsets or range(len(self.answer_ids)))] = True
        return mask

    @property
    def answer_start(self) -> int:
        return len(self.prompt_ids)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)

    def input_ids(self, mask_id: int, rows: int = 1) -> torch.Tensor:
        """``[rows, seq]``: the prompt followed by ``|answer|`` masks."""
        ids = list(self.prompt_ids) + [mask_id] * len(self.answer_ids)
        return torch.tensor(ids).expand(rows, -1).clone()

    def targets(self, rows: int = 1) -> torch.Tensor:
        return torch.tensor(self.answer_ids).expand(rows, -1).clone()


def encode_query(model, fact: Fact, *, mentions: str = "all") -> Query:
    """Encode ``fact`` for ``model`` and locate its subject.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        fact: The fact.
        mentions: ``"all"`` (default): the subject positions cover every mention of the
            subject in the prompt; ``"first"``: only its first mention (ROME's rule). See
            :func:`~tie_tracing.core.facts.locate_subject`.

    Raises:
        SubjectNotFoundError: the subject is not in the prompt as whole words, or is
            ambiguous there (names the fact).
        ObjectNotFoundError: the fact's object is not in its encoded answer (names the fact).
    """
    if not isinstance(fact, Fact):
        raise TypeError(f"expected a tie_tracing Fact, got {type(fact).__name__}: {fact!r}")
    if not fact.traceable:
        raise SubjectNotFoundError(
            f"fact {fact.id!r} is marked traceable=False: its subject {fact.subject!r} does "
            f"not occur in its question {fact.question!r}"
        )
    prompt, answer = model.encode(fact.question, fact.answer)
    positions = locate_subject(
        model.tokenizer,
        prompt,
        fact.subject,
        text=model.template.format(question=fact.question),
        fact_id=fact.id or fact.question,
        mentions=mentions,
    )
    objects = locate_object(model.tokenizer, answer, fact)
    try:
        name: tuple[int, ...] | None = tuple(locate_name(model.tokenizer, answer, fact))
    except ObjectNotFoundError:  # the answer does not repeat the name: no name target
        name = None
    return Query(
        fact,
        tuple(prompt),
        tuple(answer),
        tuple(int(p) for p in positions),
        tuple(objects),
        name,
    )


def fact_key(fact: Fact) -> str:
    """The key that seeds a fact's noise: its id, or its question when it has none."""
    return fact.id or fact.question


@dataclass(frozen=True, kw_only=True)
class Corruption:
    """Gaussian corruption of the subject embeddings (SPEC §5).

    Attributes:
        noise_scale: ``ν = noise_scale · σ_emb`` (ROME's rule: 3).
        nu: A fixed ``ν``; overrides ``noise_scale``.
        replace: Replace the subject embeddings by the noise instead of adding it.
        seed: Seed of the draws (and of a sampler's random choices in a trace).
        n_noise: Independent draws per fact (their effects are averaged).
        mentions: Which mentions of the subject are corrupted (and patched): ``"all"``
            (default) or ``"first"`` (ROME's rule; see
            :func:`~tie_tracing.core.facts.locate_subject`).
    """

    noise_scale: float = 3.0
    nu: float | None = None
    replace: bool = False
    seed: int = 0
    n_noise: int = 1
    mentions: str = "all"

    def __post_init__(self) -> None:
        for name in ("noise_scale", "nu"):
            object.__setattr__(self, name, as_real(getattr(self, name)))
        object.__setattr__(self, "n_noise", as_int(self.n_noise))
        object.__setattr__(self, "seed", as_int(self.seed))
        check_mentions(self.mentions)
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale}")
        finite("noise_scale", self.noise_scale, "ν = noise_scale · σ_emb, the noise level")
        if self.nu is not None and not self.nu > 0:
            raise ValueError(f"nu must be > 0, got {self.nu}")
        finite("nu", self.nu, "the noise level ν added to the subject embeddings")
        if not isinstance(self.n_noise, int) or isinstance(self.n_noise, bool) or self.n_noise < 1:
            raise ValueError(f"n_noise must be an integer ≥ 1, got {self.n_noise!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        """JSON-ready settings (recorded in results)."""
        return dict(
            noise_scale=self.noise_scale,
            nu=self.nu,
            replace=self.replace,
            n_noise=self.n_noise,
            seed=self.seed,
            mentions=self.mentions,
        )

    def resolve_nu(self, model, queries: Sequence[Query]) -> float:
        """``ν`` for this fact set: the fixed ``nu`` or ``noise_scale · σ_emb``."""
        if self.nu is not None:
            return float(self.nu)
        return self.noise_scale * embedding_std(model, queries)

    def draws(self, fact: Fact, n_positions: int, hidden: int, nu: float) -> torch.Tensor:
        """``[n_noise, n_positions, hidden]`` draws ``ε ~ N(0, ν² I)`` for ``fact`` (float32, CPU)."""
        out = torch.empty(self.n_noise, n_positions, hidden)
        for n in range(self.n_noise):
            key = zlib.crc32(f"{self.seed}:{fact_key(fact)}:{n}".encode())
            out[n] = torch.randn(n_positions, hidden, generator=torch.Generator().manual_seed(key))
        return out * nu


def embedding_std(model, queries: Sequence[Query]) -> float:
    """Pooled standard deviation of the embedding outputs at the subject tokens (``σ_emb``)."""
    if not queries:
        raise ValueError("embedding_std needs at least one fact")
    embedding = model.embedding_module()
    with torch.inference_mode():
        values = []
        for q in queries:
            ids = torch.tensor(
                [q.prompt_ids[p] for p in q.subject_positions], device=model.param_device
            )
            values.append(hidden_of(embedding(ids[None]))[0].float().reshape(-1))
        return float(torch.cat(values).std())


@dataclass(frozen=True)
class Patch:
    """Overwrite site ``(layer, module)`` at denoising ``step`` and ``positions``.

    Attributes:
        layer, module, step: Where and when.
        value: ``[len(positions), d]`` (every row) or ``[rows, len(positions), d]``.
        positions: Token positions (default: the subject positions).
        rows: Batch rows to patch (default: all).
    """

    layer: int
    module: str
    step: int
    value: torch.Tensor
    positions: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.module not in MODULES:
            raise ValueError(f"Patch module must be one of {MODULES}, got {self.module!r}")
        if not isinstance(self.value, torch.Tensor):
            raise TypeError(f"Patch value must be a tensor, got {type(self.value).__name__}")
        for name in ("layer", "step"):
            object.__setattr__(self, name, as_int(getattr(self, name)))
        if self.value.is_floating_point() and not bool(torch.isfinite(self.value).all()):
            bad = int((~torch.isfinite(self.value)).sum())
            raise ValueError(
                f"Patch value (layer {self.layer}, {self.module}, step {self.step}) holds {bad} "
                f"NaN/inf of {self.value.numel()} entries: a patch must write finite "
                "activations (check how the value was computed)"
            )
        for name in ("positions", "rows"):
            value = getattr(self, name)
            if value is not None and len(tuple(value)) == 0:
                raise ValueError(
                    f"Patch {name}=() selects nothing, so the patch would do nothing; give at "
                    f"least one, or {name}=None for the default"
                )


_RENAMED: Any = object()


@dataclass(frozen=True)
class Capture:
    """Record site ``(layer, module)`` at the steps ``at_steps`` (default all) and
    ``positions`` (default S).

    ``at_steps`` was called ``steps`` before ``steps`` came to mean ``T`` everywhere in
    tracing; the old spelling is an error that says so.
    """

    layer: int
    module: str
    at_steps: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    steps: Any = field(default=_RENAMED, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.steps is not _RENAMED:
            raise TypeError(
                "Capture(steps=...) is now Capture(at_steps=...): in tracing, steps is the "
                "number of denoising steps T"
            )


@dataclass(frozen=True, eq=False)
class PatchedRun:
    """What :func:`run_patched` returns.

    Attributes:
        target_logprobs: ``[rows, steps]`` ``LP(k)`` of the fact's answer over the target
            positions, in the run's ``lp`` mode.
        states: ``[rows, steps, seq]`` tokens after each step.
        captures: ``(layer, module) → [rows, n_captured_steps, n_positions, d]``.
        capture_steps: ``(layer, module) → the steps captured, in order``.
        token_logprobs: ``[rows, steps, answer_len]`` the raw per-position terms.
        masked: ``[rows, steps, answer_len]`` bool, answer position masked in step ``k``'s input.
        commits: ``[rows, answer_len]`` the commit map: the step each answer position was
            committed at (``-1``: never).
        config: The run's settings (``sampler`` as its ``to_dict()``, ``lp``, ``target``,
            ``steps``).
    """

    target_logprobs: torch.Tensor
    states: torch.Tensor
    captures: dict = field(default_factory=dict)
    capture_steps: dict = field(default_factory=dict)
    token_logprobs: torch.Tensor | None = None
    masked: torch.Tensor | None = None
    commits: torch.Tensor | None = None
    config: dict = field(default_factory=dict)

    dims = ("row", "step")

    @property
    def values(self) -> torch.Tensor:
        """``target_logprobs`` ``[row, step]``."""
        return self.target_logprobs


def _check_positions(
    positions: Sequence[int], length: int, what: str, fact_id: str
) -> torch.Tensor:
    for p in positions:
        if not 0 <= int(p) < length:
            raise IndexError(
                f"fact {fact_id!r}: {what} position {p} outside the sequence 0..{length - 1}"
            )
    return torch.tensor([int(p) for p in positions], dtype=torch.long)


def apply_noise(
    model, noise: torch.Tensor | None, positions: torch.Tensor, replace: bool, rows=None
) -> None:
    """Inside a trace step: add (or write) ``noise`` ``[rows, |S|, d]`` at the embedding output."""
    if noise is None:
        return
    emb = hidden_of(model.embedding.output)
    if rows is None:
        index = (slice(None), positions)
    else:
        index = (rows[:, None], positions[None, :])
    if replace:
        emb[index] = noise.to(emb.dtype)
    else:
        emb[index] += noise.to(emb.dtype)


def patched_forward(
    model,
    x: torch.Tensor,
    *,
    context: ForwardContext,
    noise: torch.Tensor | None,
    subject: torch.Tensor,
    replace: bool,
    writes: dict,
    sampler=None,
) -> torch.Tensor:
    """One traced forward (``model.logits``) with per-row writes: the sweeps' building block.

    The forward runs in ``context`` (its denoising step — an int, a ``[rows]`` tensor of
    per-row steps, or ``None`` — and the answer span's start), the state interventions such
    as the edit memory read (:mod:`tie_tracing.core.context`). Noise goes on every row's
    subject embeddings; then, site by site in execution order,
    ``writes[(layer, module)] = (index, values)`` does ``output[index] = values`` (``index`` an
    advanced-indexing tuple of rows and positions). Returns aligned logits ``[rows, seq, vocab]``.

    With a CFG ``sampler`` (``sampler.doubles_batch``) the forward runs each row and its
    unconditional copy (prompt masked, up to ``context.answer_start``) together, noise and
    writes act on the conditional rows only, and the guided logits are returned.
    """
    order = sorted(writes, key=lambda site: (site[0], EXECUTION_ORDER.index(site[1])))
    rows = x.shape[0]
    doubled = sampler is not None and sampler.doubles_batch
    noise_rows = None
    if doubled:
        if context.answer_start is None:
            raise ValueError("a CFG sampler needs the answer start to build the unconditional rows")
        x = sampler.model_input(x, context.answer_start, model.mask_token_id)
        noise_rows = torch.arange(rows, device=x.device)
        if isinstance(context.step, torch.Tensor):
            context = ForwardContext(
                step=torch.cat([context.step, context.step]), answer_start=context.answer_start
            )
    with torch.inference_mode(), model.at(context):
        with model.logits(x) as tracer:
            apply_noise(model, noise, subject, replace, rows=noise_rows)
            for site in order:
                index, values = writes[site]
                out = hidden_of(model.site(*site).output)
                out[index] = values.to(out.dtype)
            logits = tracer.result.save()
    return sampler.combine(logits, rows) if doubled else logits


def run_patched(
    model,
    query: Query | Fact,
    *,
    steps: int = 8,
    rows: int = 1,
    corruption: Corruption | None = None,
    noise: torch.Tensor | None = None,
    noise_rows: Sequence[int] | None = None,
    nu: float | None = None,
    patches: Sequence[Patch] = (),
    capture: Sequence[Capture] = (),
    block_length: int | None = None,
    temperature: float | None = None,
    seeds: Sequence[int] | None = None,
    lp: str = "frozen",
    target: str = "object",
    sampler=None,
) -> PatchedRun:
    """One traced diffusion run with corruption, patches and captures at chosen steps.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` (MDLM).
        query: A :class:`Query` or a :class:`~tie_tracing.core.facts.Fact` (encoded here).
        steps: ``T``.
        rows: Batch rows (identical queries; rows differ by their noise or patches).
        corruption: Noise on the subject embeddings at every step (its draw ``i`` goes to
            row ``i % n_noise``), or ``None`` for a clean run.
        noise: Explicit noise instead of drawing it from ``corruption``: ``[rows, |S|, d]``, or
            ``[len(noise_rows), |S|, d]`` for the rows listed in ``noise_rows`` (the other rows
            stay clean). Added, or written when ``corruption.replace`` is set.
        noise_rows: Rows that receive ``noise`` (default: all).
        nu: ``ν`` for ``corruption`` (default: resolved on this one fact).
        patches: :class:`Patch` es, applied after the noise.
        capture: :class:`Capture` s, recorded after any patch at the same site.
        block_length: Semi-autoregressive block size (default: one block); a shorthand of
            ``LLaDASampler(block_length=...)``.
        temperature: Sampler temperature (default 0: argmax commits); a shorthand of
            ``LLaDASampler(temperature=...)``.
        seeds: Per-row seeds of the sampler's noise (default ``0, 1, …``); rows with the same
            seed draw the same noise at each step.
        sampler: A :mod:`~tie_tracing.core.samplers` config (default ``LLaDASampler()``); each row
            is its own trajectory (no batch coupling). Under CFG the unconditional copies
            ride in the same forwards, and noise, patches and captures concern the
            conditional rows only. Recorded in ``.config["sampler"]``.
        lp: ``"frozen"`` (default: a committed position keeps the log-probability of the
            forward that decided it) or ``"raw"`` (SPEC §4).
        target: Positions ``LP`` sums over: ``"object"`` (default), ``"answer"`` or ``"name"``
            (SPEC §5).

    Returns:
        A :class:`PatchedRun`.
    """
    require_model(model, "run_patched")
    from ..core.samplers import resolve_sampler

    check_lp_mode(lp)
    check_target(target)
    rule = resolve_sampler(
        sampler, temperature=temperature, block_length=block_length, model=model
    ).per_trajectory()
    if isinstance(query, Fact):
        mentions = corruption.mentions if corruption is not None else "all"
        query = encode_query(model, query, mentions=mentions)
    fid = fact_key(query.fact)
    target_mask = query.target_mask(target)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    subject = _check_positions(query.subject_positions, query.answer_start, "subject", fid)
    device = model.param_device
    replace = bool(corruption.replace) if corruption is not None else False
    if noise is None and corruption is not None:
        nu = corruption.resolve_nu(model, [query]) if nu is None else nu
        draws = corruption.draws(query.fact, len(subject), model.hidden_size, nu)
        noise = draws[torch.arange(rows) % corruption.n_noise]
    if noise_rows is None and rule.doubles_batch:  # leave the unconditional copies alone
        noise_rows = range(rows)
    noisy = (
        None
        if noise_rows is None
        else _check_positions(noise_rows, rows, "noise row", fid).to(device)
    )
    if noise is not None:
        n_noisy = rows if noisy is None else len(noisy)
        if tuple(noise.shape) != (n_noisy, len(subject), model.hidden_size):
            raise ShapeError(
                f"fact {fid!r}: noise must be [rows={n_noisy}, |S|={len(subject)}, d={model.hidden_size}], "
                f"got {tuple(noise.shape)}"
            )
        noise = noise.to(device)
    plan: dict[tuple[int, int, str], list] = {}
    for p in patches:
        model.check_site(p.layer, p.module)
        if not 0 <= p.step < steps:
            raise ValueError(f"fact {fid!r}: patch step {p.step} outside 0..{steps - 1}")
        pos = _check_positions(p.positions or query.subject_positions, query.length, "patch", fid)
        prow = torch.arange(rows) if p.rows is None else _check_positions(p.rows, rows, "row", fid)
        value = p.value
        if value.ndim == 2:
            value = value.expand(len(prow), -1, -1)
        if tuple(value.shape) != (len(prow), len(pos), model.hidden_size):
            raise ShapeError(
                f"fact {fid!r}: patch value must be [{len(pos)}, d] or [{len(prow)}, {len(pos)}, d] "
                f"with d={model.hidden_size}, got {tuple(p.value.shape)}"
            )
        plan.setdefault((p.step, p.layer, p.module), []).append(
            (prow.to(device), pos.to(device), value.to(device))
        )
    wanted: dict[tuple[int, str], tuple[set, torch.Tensor]] = {}
    for c in capture:
        model.check_site(c.layer, c.module)
        pos = _check_positions(c.positions or query.subject_positions, query.length, "capture", fid)
        cs = set(range(steps) if c.at_steps is None else c.at_steps)
        if any(not 0 <= s < steps for s in cs):
            raise ValueError(f"fact {fid!r}: capture steps {sorted(cs)} outside 0..{steps - 1}")
        wanted[(c.layer, c.module)] = (cs, pos.to(device))
    return traced_loop(
        model,
        query,
        steps=steps,
        rows=rows,
        sampler=rule,
        seeds=seeds,
        lp=lp,
        target=target,
        target_mask=target_mask,
        noise=noise,
        noise_rows=noisy,
        replace=replace,
        patches=plan,
        captures=wanted,
    )


def traced_loop(
    model,
    query: Query,
    *,
    steps: int,
    rows: int,
    sampler,
    seeds: Sequence[int] | None,
    lp: str,
    target: str,
    target_mask: torch.Tensor,
    noise: torch.Tensor | None,
    noise_rows: torch.Tensor | None,
    replace: bool,
    patches: dict,
    captures: dict,
) -> PatchedRun:
    """One traced run of the diffusion loop with checked settings: :func:`run_patched`
    without its checks, for callers that resolved everything once (the sweeps).

    ``sampler`` is a resolved, bound sampler; ``noise`` ``[len(noise_rows) or rows, |S|, d]``
    on the model's device; ``patches[(step, layer, module)] = [(rows, positions, values)]``;
    ``captures[(layer, module)] = (steps, positions)``.
    """
    device = model.param_device
    fid = fact_key(query.fact)
    patch_sites = sorted(
        {(layer, m) for (_, layer, m) in patches},
        key=lambda lm: (lm[0], EXECUTION_ORDER.index(lm[1])),
    )
    capture_paths = {site: model.site(*site).path for site in captures}
    subject_d = torch.tensor(query.subject_positions, dtype=torch.long, device=device)
    x = query.input_ids(model.mask_token_id, rows).to(device)
    targets = query.targets(rows).to(device)
    with torch.inference_mode():
        with model.denoise(
            x,
            answer_start=query.answer_start,
            steps=steps,
            sampler=sampler,
            seeds=seeds,
            targets=targets,
            target_mask=target_mask,
            lp=lp,
        ) as tracer:
            # captures ride on nnsight's cache (a post-intervention observer, far cheaper
            # than one read per site and step); it keeps the live tensors, sliced below
            cache = (
                tracer.cache(modules=list(capture_paths.values()), device=None)
                if captures
                else None
            )
            for k in tracer.iter[:steps]:
                apply_noise(model, noise, subject_d, replace, rows=noise_rows)
                for layer, m in patch_sites:
                    todo = patches.get((k, layer, m))
                    if not todo:
                        continue
                    out = hidden_of(model.site(layer, m).output)
                    for prow, pos, value in todo:
                        out[prow[:, None], pos[None, :]] = value.to(out.dtype)
            result = tracer.result.save()
    assert isinstance(result, LoopOutput) and result.target_logprobs is not None
    check_finite(result.target_logprobs, f"log-probs of fact {fid!r}")
    captured, capture_steps = {}, {}
    for site, (cs, pos) in captures.items():
        assert cache is not None
        view = cache[capture_paths[site]]
        visits = view.output if len(view) > 1 else [view.output]
        if len(visits) != steps:  # pragma: no cover - a backbone calling a site twice per step
            raise RuntimeError(f"site {site} ran {len(visits)} times in {steps} steps")
        order = sorted(cs)
        captured[site] = torch.stack([hidden_of(visits[k])[:rows, pos] for k in order], dim=1)
        capture_steps[site] = tuple(order)
    start = query.answer_start
    return PatchedRun(
        result.target_logprobs,
        result.states,
        captured,
        capture_steps,
        token_logprobs=result.token_logprobs,
        masked=result.masked,
        commits=commit_steps(result.states[:, :, start:].cpu(), model.mask_token_id),
        config={"sampler": sampler.to_dict(), "lp": lp, "target": target, "steps": steps},
    )


def all_sites(
    model, modules: Sequence[str] | str = MODULES, layers: Sequence[int] | None = None
) -> list[tuple[int, str]]:
    """``(layer, module)`` pairs in execution order, checked against the backbone."""
    names = module_names(modules)
    layers = range(model.num_layers) if layers is None else layers
    sites = [(int(layer), m) for layer in layers for m in names]
    for layer, m in sites:
        model.check_site(layer, m)
    return sorted(sites, key=lambda lm: (lm[0], EXECUTION_ORDER.index(lm[1])))
