"""Positional (ROME-style) causal tracing along the token positions of one forward (SPEC §6).

The autoregressive side of the AR-versus-diffusion comparison. For each fact, three kinds of
single forward of the same query, as nnsight interventions on ``model.logits``:

1. **clean** — no noise; every site's output at every position is captured;
2. **corrupted** — the subject embeddings get the fact's noise draws ``ε`` (the same
   :class:`~tie_tracing.tracing.patching.Corruption` and common random numbers as TIE: a fact sees the
   same ``ε`` here as in :func:`~tie_tracing.tracing.tie.trace_tie` with the same seed and ``ν``);
3. **restorations** — the corrupted forward, except that the output of site ``m`` in layer
   ``l`` at one token position is overwritten with its clean value. For ``attn``/``mlp`` and
   ``window = w > 1`` the site is restored in layers ``l − w//2 … l + w − w//2 − 1`` (clipped to
   the model; ``w = 10`` is ROME's ``l−5 … l+4``); ``resid`` is always restored in one layer,
   as in ROME (restoring the residual stream in two layers is redundant).

Every ``(draw, layer, position, module)`` restoration is one row of a batched forward (rows
chunked within the memory budget, :class:`~tie_tracing.tracing.config.Budget`), so a fact
costs ``2 + ⌈rows / batch_size⌉`` forwards instead of one per cell.

**What is measured.** The probability (and log-probability) of the **object's first token**
where the model predicts it (SPEC §6). The object is ``Fact.object`` (a substring of the
answer, located by :func:`~tie_tracing.core.facts.locate_object`); a fact without an object
(``object=None``) has the whole answer as its object, so its first token is the answer's.

* Causal (AR) models read the question followed by the answer's tokens *before* the object,
  teacher-forced (``"Where was Ada Vell born?" + " Ada Vell was born in"`` for the object
  ``"Gdansk"``); the prediction position is the last token of that query and the scored
  token the object's first (index ``len(prompt) + k`` of the aligned logits of
  :meth:`~tie_tracing.core.model.TracedModel.logits`, ``k`` the object's offset in the answer).
  For a fact without an object the query is the question alone and the answer's first
  token is scored at the last prompt position (ROME's protocol). The forward is fed the
  whole teacher-forced answer: the causal mask keeps the tokens after the prediction
  position from changing it, and the traced positions stop there.
* MDLMs read ``prompt + |answer| × [MASK]`` (the whole answer span masked, one forward) and
  score the object's first token at the object's first slot (aligned index
  ``len(prompt) + k``; a shifted MDLM such as Dream computes it one position earlier).

**Which positions are traced.** Every input position that can influence the prediction: for a
causal model the positions ``0 … prediction_position``, i.e. the prompt and the answer prefix
(the answer tokens from the object on come after the prediction and cannot change it); for an
MDLM every position of the query, prompt *and* all masked answer slots (attention is
bidirectional: a later ``[MASK]`` can carry the fact too). ``result.tokens[f]`` labels the
traced positions (masks as the tokenizer spells them), ``result.prediction_position[f]`` is
the position whose output scores the object (causal and shifted models: the position before
the object's first token; unshifted MDLMs: the object's first slot) and
``result.config["prompt_length"][fact_id]`` the number of prompt tokens, so the positions
``prompt_length … `` of a fact are answer positions (the teacher-forced answer prefix of an AR
trace, the masked slots of an MDLM trace) and the object's first token sits at
``prediction_position + shifted``.

**Which subject mentions are corrupted.** The question's: the subject positions are found
in the prompt (:func:`~tie_tracing.core.facts.locate_subject`, whole-word matching), every
mention by default (``mentions="all"``; a question that names the subject twice is corrupted
at both places, as TIE does) or the first only (``mentions="first"``, ROME's rule). The answer prefix of an AR query often names the subject
again (``" Ada Vell was born in"``); that mention stays clean and is traced like any other
answer-prefix token.

**Noise draws.** With ``n_noise > 1`` the probabilities are averaged over draws (ROME) and
``lp`` is the log of that average, so ``prob == exp(lp)`` always and the indirect effects of
:meth:`~tie_tracing.core.results.PositionalResult.effect` (``p_restored − p_corrupt`` and
``log p_restored − log p_corrupt``) compare like with like. ``lp_corrupt`` is likewise
``log mean_n p_corrupt,n``.

Limits: facts are traced one at a time (rows of a forward share one query); only the object's
first token is scored (ROME's protocol; multi-token answers are what TIE is for); an object
whose first token the tokenizer merged with the preceding text (``"(Gdansk"``) is scored as
that merged token, and the answer prefix then ends before it; a fact the clean model does
not predict (top-1 at the prediction position is not the object's first token) is traced,
warned about and listed in ``result.config["unknown_facts"]``. ``config["prompt_length"]`` is
keyed by fact id, so :meth:`~tie_tracing.core.results.PositionalResult.concat` accepts parts of
one trace and of separate traces alike (the per-fact entries are joined).
The sweep is an evaluator on the shared engine (:mod:`tie_tracing.tracing.engine`): facts resume
from ``out``, shard over processes and batch their restoration rows within the memory budget,
as TIE's do. :func:`~tie_tracing.tracing.reference.reference_positional` is the deliberately
slow one-forward-per-cell reference (plain PyTorch hooks, its own query layout) that the
tests hold the batched sweep to.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from .._version import __version__
from ..core._guards import require_model
from ..core.backbones import hidden_of
from ..core.context import ForwardContext
from ..core.defaults import PROGRESS
from ..core.errors import NonFiniteActivationError
from ..core.facts import Fact
from ..core.provenance import PositionalProvenance
from ..core.results import PositionalResult
from .config import PositionalConfig, apply_overrides, check_facts, rows_for
from .engine import Work, check_shard, run_batches, trace_facts
from .patching import Corruption, Query, apply_noise, encode_query, fact_key, patched_forward

__all__ = [
    "PositionalConfig",
    "PositionalPlan",
    "PositionalQuery",
    "plan_positional",
    "positional_query",
    "restored_layers",
    "trace_positional",
]


def restored_layers(layer: int, module: str, window: int, num_layers: int) -> list[int]:
    """Layers whose ``module`` output a restoration "at layer ``layer``" overwrites.

    ``resid`` → ``[layer]``; ``attn``/``mlp`` → ``layer − window//2 … layer + window − window//2 − 1``
    clipped to ``0 … num_layers − 1`` (``window = 10``: ROME's ``l−5 … l+4``).

    Example:
        >>> restored_layers(1, "mlp", 10, 12), restored_layers(1, "resid", 10, 12)
        ([0, 1, 2, 3, 4, 5], [1])
    """
    if module == "resid" or window == 1:
        return [layer]
    lo = max(0, layer - window // 2)
    hi = min(num_layers, layer + window - window // 2)
    return list(range(lo, hi))


@dataclass(frozen=True)
class PositionalQuery:
    """A fact encoded for positional tracing on one model (see the module docstring).

    Attributes:
        query: The :class:`~tie_tracing.tracing.patching.Query` (prompt, answer, subject positions,
            object offsets).
        input_ids: The forward's input: ``prompt + answer`` (causal, teacher-forced; only the
            positions up to the prediction position are the traced query) or
            ``prompt + |answer| × [MASK]`` (MDLM).
        positions: The traced positions ``0 … n − 1`` (causal: prompt and answer prefix;
            MDLM: the whole input).
        object_start: Position of the object's first token, ``len(prompt) + k``: the index of
            the aligned logits that score it.
        prediction_position: Position whose output scores it (``object_start − 1`` for causal
            and shifted models, ``object_start`` for unshifted MDLMs).
        tokens: Token strings of the traced positions.

    Example:
        >>> pq = positional_query(ar, fact)     # "Where was Ada Vell born?" / object "Gdansk"  # doctest: +SKIP
        >>> pq.tokens[pq.prompt_length :]       # the teacher-forced answer prefix             # doctest: +SKIP
        (' Ada', ' Vell', ' was', ' born', ' in')
    """

    query: Query
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    object_start: int
    prediction_position: int
    tokens: tuple[str, ...]

    @property
    def prompt_length(self) -> int:
        """Number of prompt tokens; positions from here on are answer positions."""
        return len(self.query.prompt_ids)

    @property
    def object_offset(self) -> int:
        """Offset ``k`` of the object's first token within the answer (0 without an object)."""
        return self.object_start - self.prompt_length

    @property
    def target_token(self) -> int:
        """The scored token: the object's first token."""
        return self.query.answer_ids[self.object_offset]


def positional_query(model, fact: Fact, *, mentions: str = "all") -> PositionalQuery:
    """Encode ``fact`` for positional tracing on ``model`` (see the module docstring).

    ``mentions`` chooses the subject positions (every mention in the question, or the first).

    Raises:
        SubjectNotFoundError: the subject is not in the prompt (names the fact).
        ObjectNotFoundError: the object is not among the answer's tokens (names the fact).
    """
    q = encode_query(model, fact, mentions=mentions)
    p = q.answer_start
    k = min(q.object_offsets) if fact.object is not None else 0
    start = p + k
    pred = start - 1 if model.backbone.shifted else start
    if model.is_causal:
        ids = tuple(q.prompt_ids) + tuple(q.answer_ids)
        n_pos = pred + 1  # prompt + answer prefix: everything up to the prediction position
    else:
        ids = tuple(q.prompt_ids) + (int(model.mask_token_id),) * len(q.answer_ids)
        n_pos = len(ids)
    tokens = tuple(model.tokenizer.decode([t]) for t in ids[:n_pos])
    return PositionalQuery(q, ids, tuple(range(n_pos)), start, pred, tokens)


@dataclass(frozen=True, eq=False)
class PositionalPlan:
    """A :class:`~tie_tracing.tracing.config.PositionalConfig` resolved once against a model
    and a fact set (built by :func:`plan_positional`).

    Attributes:
        config: The config.
        layers: The layers of the map; ``sites`` every ``(layer, module)`` of every layer in
            execution order (a window restores layers outside ``layers``).
        queries: The facts, encoded for positional tracing.
        nu: ``ν``, resolved over the facts (or the fixed one).
        memory: The memory budget of one forward, in bytes.
    """

    config: PositionalConfig
    layers: tuple[int, ...]
    sites: tuple[tuple[int, str], ...]
    queries: tuple[PositionalQuery, ...]
    nu: float
    memory: int

    @property
    def corruption(self) -> Corruption:
        """The corruption with ``ν`` resolved."""
        return dataclasses.replace(self.config.corruption, nu=self.nu)

    def record(self) -> dict:
        """The settings a result (and a resumable directory) records."""
        return self.config.to_dict() | {"nu": self.nu}


def plan_positional(model, facts: Sequence[Fact], config: PositionalConfig) -> PositionalPlan:
    """Resolve ``config`` against ``model`` and ``facts``, once (layers and sites checked
    against the backbone, facts encoded, ``ν`` resolved)."""
    layers, _ = config.sites.resolve(model)
    _, sites = dataclasses.replace(config.sites, layers=None).resolve(model)
    queries = tuple(positional_query(model, f, mentions=config.corruption.mentions) for f in facts)
    nu = config.corruption.resolve_nu(model, [pq.query for pq in queries])
    memory = config.budget.bytes(model.param_device)
    return PositionalPlan(config, layers, sites, queries, nu, memory)


def _token_lp(logits: torch.Tensor, index: int, token: int) -> torch.Tensor:
    """``[rows]`` float32 ``log softmax(logits[:, index])[token]`` (aligned logits)."""
    return torch.log_softmax(logits[:, index].float(), dim=-1)[:, token].cpu()


def _capture(model, x, noise, subject, replace, sites, context) -> tuple[torch.Tensor, dict]:
    """One traced forward in ``context``: aligned logits and every site's output ``[rows, seq, d]``."""
    with torch.inference_mode(), model.at(context):
        with model.logits(x) as tracer:
            store = nnsight.save({})
            apply_noise(model, noise, subject, replace)
            for site in sites:
                store[site] = hidden_of(model.site(*site).output).detach().clone()
            logits = tracer.result.save()
    return logits, dict(store)


def _mean_prob_lp(lp_draws: torch.Tensor) -> torch.Tensor:
    """``log mean_n exp(lp_n)`` over the leading draw axis (``lp`` itself for one draw)."""
    if lp_draws.shape[0] == 1:
        return lp_draws[0]
    return torch.logsumexp(lp_draws, dim=0) - math.log(lp_draws.shape[0])


def _trace_fact(
    model, pq: PositionalQuery, plan: PositionalPlan, *, restore_from: dict | None = None
) -> tuple[PositionalResult, Work]:
    """One fact's positional trace as a one-fact result, and the work it ran: the object's
    first token scored at ``pq.object_start`` of the aligned logits in every forward.

    ``restore_from`` replaces the clean activations as the restoration source
    (``site → [seq, d]``); the tests pass the corrupted run's own values (identity restoration).
    """
    config, device = plan.config, model.param_device
    fid = fact_key(pq.query.fact)
    n_draws, modules = config.corruption.n_noise, config.sites.modules
    subject = torch.tensor(pq.query.subject_positions, device=device)
    x1 = torch.tensor(pq.input_ids, device=device)[None]
    p, tok = pq.object_start, pq.target_token
    replace = config.corruption.replace
    noise = plan.corruption.draws(pq.query.fact, len(subject), model.hidden_size, plan.nu)
    noise = noise.to(device)
    # every forward reads the same query: its answer span starts after the prompt (the
    # teacher-forced prefix of a causal model, the masked slots of an MDLM)
    context = ForwardContext(step=None, answer_start=pq.prompt_length)
    clean_logits, clean = _capture(model, x1, None, subject, False, plan.sites, context)
    source = {s: v[0] for s, v in clean.items()} if restore_from is None else restore_from
    known = int(clean_logits[0, p].argmax()) == tok
    corrupt_logits = patched_forward(
        model, x1.expand(n_draws, -1), context=context, noise=noise, subject=subject,
        replace=replace, writes={},
    )  # fmt: skip
    work = Work.forward(1, x1.shape[1]) + Work.forward(n_draws, x1.shape[1])
    # the grid: every (draw, layer, position, module) restoration is one row
    cells = [(layer, pos, m) for layer in plan.layers for pos in pq.positions for m in modules]
    lp_rows = torch.empty(n_draws * len(cells))

    def forward(chunk: torch.Tensor) -> Work:
        start = int(chunk[0])
        spots: dict[tuple[int, str], tuple[list, list]] = {}
        for r in chunk.tolist():
            layer, pos, m = cells[r % len(cells)]
            for restored in restored_layers(layer, m, config.window, model.num_layers):
                rows, positions = spots.setdefault((restored, m), ([], []))
                rows.append(r - start)
                positions.append(pos)
        writes = {}
        for site, (rows, positions) in spots.items():
            pos_t = torch.tensor(positions, device=device)
            writes[site] = (
                (torch.tensor(rows, device=device), pos_t),
                source[site].to(device)[pos_t],
            )
        logits = patched_forward(
            model,
            x1.expand(len(chunk), -1),
            context=context,
            noise=noise[(chunk // len(cells)).to(device)],
            subject=subject,
            replace=replace,
            writes=writes,
        )
        if not torch.isfinite(logits[:, p]).all():
            raise NonFiniteActivationError(
                f"fact {fid!r}: non-finite logits in the positional sweep"
            )
        lp_rows[chunk] = _token_lp(logits, p, tok)
        return Work.forward(len(chunk), x1.shape[1])

    batch_size = rows_for(model, config.budget, plan.memory, x1.shape[1], 1)
    work = work + Work(rows_per_forward=(batch_size,))
    work = work + run_batches(torch.arange(len(lp_rows)), batch_size, forward)
    shape = (n_draws, len(plan.layers), len(pq.positions), len(modules))
    lp = _mean_prob_lp(lp_rows.reshape(shape))
    lp_clean = _token_lp(clean_logits, p, tok)[0]
    lp_corrupt = _mean_prob_lp(_token_lp(corrupt_logits, p, tok))
    return _result(model, plan, pq, lp, lp_clean, lp_corrupt, known), work


def _result(
    model, plan: PositionalPlan, pq: PositionalQuery, lp, lp_clean, lp_corrupt, known: bool
) -> PositionalResult:
    """One fact's tensors as a one-fact :class:`PositionalResult`; its config lists the fact
    among ``unknown_facts`` when the clean model does not predict the object."""
    fact = pq.query.fact
    lp = lp[None].contiguous()
    record = plan.record() | {
        "causal": bool(model.is_causal),
        "shifted": bool(model.backbone.shifted),
        "unknown_facts": [] if known else [fact_key(fact)],
    }
    return PositionalResult(
        prob=lp.exp(),
        lp=lp,
        lp_clean=lp_clean.reshape(1).float(),
        lp_corrupt=lp_corrupt.reshape(1).float(),
        tokens=(pq.tokens,),
        subject_positions=(tuple(pq.query.subject_positions),),
        prediction_position=(pq.prediction_position,),
        window=plan.config.window,
        fact_ids=(fact_key(fact),),
        subjects=(fact.subject,),
        questions=(fact.question,),
        answers=(fact.answer,),
        layers=tuple(plan.layers),
        modules=plan.config.sites.modules,
        config=PositionalProvenance.from_record(record),  # prompt_length: after concat
        seeds=(plan.config.corruption.seed,),
        model_id=str(model.name),
        version=__version__,
    )


def trace_positional(
    model,
    facts: Sequence[Fact] | Fact,
    config: PositionalConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | str = PROGRESS,
    shard: tuple[int, int] | None = None,
    **overrides: Any,
) -> PositionalResult:
    """ROME's causal trace along token positions: ``[fact, layer, position, module]``.

    Works on causal (AR) models and on MDLMs alike. Each cell scores the **object's first
    token** (the answer's first token for facts without an object) at its prediction
    position: an AR model reads the question followed by the teacher-forced answer prefix
    before the object and predicts at its last token; an MDLM reads the question followed by
    the fully masked answer and predicts at the object's first slot (one slot earlier for
    shifted MDLMs). Only the question's mentions of the subject are corrupted (all of them
    by default, the first with ``mentions="first"``), even when the answer prefix names the
    subject again. The module docstring has the details.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel`.
        facts: Facts whose subject occurs in the question (``Fact.object``, when given,
            chooses the scored token and, for AR models, the answer prefix).
        config: The settings (:class:`~tie_tracing.tracing.config.PositionalConfig`).
        out, overwrite, shard: A resumable, fact-sharded sweep directory, as in
            :func:`~tie_tracing.tracing.tie.trace_tie`.
        progress: Show a progress bar over facts (a string is its label).
        **overrides: Settings of the config, by field name or flat name:

            * ``sites`` or ``modules`` (a subset of ``resid``, ``attn``, ``mlp``; one name such
              as ``"resid"`` means that site alone) and ``layers`` (default all);
            * ``window``: layers restored together for ``attn``/``mlp`` (ROME: 10); ``resid``
              uses 1;
            * ``corruption`` or its fields: ``noise_scale`` (``ν = noise_scale · σ_emb``,
              ``σ_emb`` pooled over the subject tokens of ``facts``, ROME's 3σ rule), ``nu``
              (a fixed ``ν``: give the same ``nu`` to compare with a TIE trace of other
              facts), ``replace``, ``n_noise`` (draws per fact, probabilities averaged),
              ``seed`` (common random numbers, shared with TIE), ``mentions`` (``"all"``:
              every mention of the subject in the question is corrupted; ``"first"``: ROME's);
            * ``budget`` or ``max_memory`` / ``batch_size``: restoration rows per forward, as
              in :func:`~tie_tracing.tracing.tie.trace_tie` (speed and memory, never results).

    Returns:
        A :class:`~tie_tracing.core.results.PositionalResult`: ``prob``/``lp`` ``[fact, layer,
        position, module]`` (positions NaN-padded to the longest fact), ``lp_clean``,
        ``lp_corrupt``, token labels of the traced positions, subject positions (in the
        question), prediction positions, config. ``config["prompt_length"]`` maps each fact
        id to its number of prompt tokens: traced positions from there on are the answer
        prefix (AR) or the masked answer slots (MDLM); the object's first token sits at
        ``prediction_position + config["shifted"]``. ``result.effect()`` is the indirect effect ``p_restored − p_corrupt``
        (``result.with_metric("lp").effect()`` the log-probability version).

    Raises:
        TypeError: an unknown setting (lists the settings).
        SubjectNotFoundError: a fact's subject is not in its prompt (names the fact).
        ObjectNotFoundError: a fact's object is not among its answer's tokens (names the fact).
        NonFiniteActivationError: NaN/inf appeared (names the fact).
        ValueError: bad ``modules``, ``window``, ``layers`` or noise settings.

    Example:
        >>> ar = tt.load_model("tiny-ar")                                    # doctest: +SKIP
        >>> facts = tt.load_facts("tiny", "forget01")[:4]                    # doctest: +SKIP
        >>> facts[0].answer, facts[0].object                                 # doctest: +SKIP
        ('Datrastond Loho was born in Zurich, a city in Switzerland.', 'Zurich')
        >>> r = tt.trace_positional(ar, facts, modules=("mlp",), window=3)   # doctest: +SKIP
        >>> r.effect().shape          # [fact, layer, position, module]      # doctest: +SKIP
        torch.Size([4, 6, 18, 1])
        >>> r.tokens[0][r.config["prompt_length"][r.fact_ids[0]] :]         # doctest: +SKIP
        (' Datrastond', ' Loho', ' was', ' born', ' in')
    """
    require_model(model, "trace_positional")
    config = apply_overrides(config, PositionalConfig, overrides, "trace_positional")
    facts = check_facts(facts, "trace_positional")
    shard = check_shard(shard, out, len(facts))
    plan = plan_positional(model, facts, config)
    results, work, resume = trace_facts(
        model,
        plan.queries,
        facts,
        lambda pq: _trace_fact(model, pq, plan),
        result_type=PositionalResult,
        record=plan.record(),
        out=out,
        overwrite=overwrite,
        shard=shard,
        progress=progress,
        label="trace_positional",
    )
    unknown = [u for r in results for u in r.config["unknown_facts"]]
    if unknown:
        warnings.warn(
            f"{model.name}: the clean model's top-1 prediction is not the answer's object (its "
            f"first token, at the prediction position) for "
            f"{len(unknown)} of {len(results)} facts ({unknown[:5]}{' …' if len(unknown) > 5 else ''}); "
            f"their traces measure little. result.config['unknown_facts'] lists them.",
            stacklevel=2,
        )
    result = PositionalResult.concat(results)
    by_id = {fact_key(pq.query.fact): pq.prompt_length for pq in plan.queries}
    prompt_length = {fid: by_id[fid] for fid in result.fact_ids}
    extra = {
        "unknown_facts": unknown,
        "prompt_length": prompt_length,
        "engine_stats": work.to_dict() | resume,
    }
    return dataclasses.replace(result, config=result.config | extra)
