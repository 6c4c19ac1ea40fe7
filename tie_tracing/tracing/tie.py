"""Temporal Indirect Effect (TIE) tracing over the diffusion loop (SPEC §5), exact and fast.

For each fact the engine runs, as nnsight interventions:

1. one traced ``model.denoise`` loop whose row 0 is the **clean** trajectory (every site's
   output at the subject positions captured at every step through nnsight's cache, and
   ``LP_clean(k)``) and whose rows ``1 … N`` are the **corrupted** trajectories, one per noise
   draw, with the same draws ``ε`` added to the subject embeddings at every step
   (``LP_corrupt(k)`` and the state before each step);
2. the **patch forwards**: every patch ``(step k, draw, layer, module)`` starts from the
   corrupted state before ``k`` (a patch at ``k`` shares the corrupted trajectory up to
   ``k``), so all ``T·N·L·M`` of them run as rows of batched traced forwards (as many rows
   each as the memory budget allows, :mod:`tie_tracing.tracing.budget`; rows of different steps in
   one forward, each row's step in the forward's context, :mod:`tie_tracing.core.context`);
3. the **futures** of the patch runs whose commits at their step differ from the corrupted
   run's, step by step, batched — to the end, or at most ``horizon`` steps after the patch.

An MDLM carries nothing between steps but its committed tokens, so a patch run whose commits
at step ``k`` equal the corrupted run's has exactly the corrupted future (its later IE is 0:
it *is* the corrupted run's trajectory), and runs that reach the same state at the same step
with the same noise share one future. The engine memoises trajectories by
``(draw, step, state)``, so each distinct future is computed once. Under ``lp="frozen"`` a
patch at a step whose input has no masked answer position left commits nothing and reads
only frozen terms, so its IE is 0 at every later step exactly; such rows are not run (at
``T`` larger than the answer most steps are like that).

The three modes are evaluators on the shared engine (:mod:`tie_tracing.tracing.engine`: facts,
resuming, sharding, rows within the memory budget); a fact's trace is a few functions with
plain return values (:func:`_base_runs`, :func:`_run_patches`, :func:`_follow_futures`, then
the mode's effects). Settings come as a :class:`~tie_tracing.tracing.config.TraceConfig`,
resolved once into a :class:`TracePlan`.

Cheaper modes: ``mode="immediate"`` stops after step 2 and reports ``IE`` at the patched step
(exact); ``mode="attribution"`` replaces step 2 by one forward and one backward per step and
draw (:mod:`tie_tracing.tracing.attribution`), a first-order estimate of the same quantity. A
``horizon`` bounds the futures of step 3 (the weight Eq. 4 then leaves out is bounded, see
:func:`horizon_weight`). Facts shard over processes with :mod:`tie_tracing.tracing.distributed`.

Semantics are the paper's free-running ones: after the patched forward the run commits
autonomously with the noise still on. With temperature > 0 every run of the fact (clean,
corrupted, patched, continued) draws its Gumbel noise from ``(seed, step)``, so runs in the
same state at the same step commit identically and memoisation stays exact.

Cost per fact: ``T`` forwards of ``1 + N`` rows for the clean and corrupted runs, about
``T·N·L·M / batch_size`` patch forwards and one small forward per step that still has
divergent runs — against ``N·L·M·T`` full trajectories (``N·L·M·T²`` forwards) for the naive
protocol (``tie_tracing.tracing.reference``).

Limits: facts are traced one at a time in a process (rows of a forward share one prompt);
the clean captures of the exact and immediate modes hold every site's output at every step
(nnsight's cache keeps the whole output tensors of the traced loop, ``(1+N)·T·L·M·seq·d``
values, outside the memory budget); a fact whose
clean sample is wrong is traced, warned about and flagged (``known``), since tracing a model
that does not know a fact measures nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch

from .._version import __version__
from ..core._guards import require_model
from ..core.context import ForwardContext
from ..core.defaults import PROGRESS
from ..core.errors import NonFiniteActivationError
from ..core.facts import Fact, as_facts
from ..core.provenance import TraceProvenance
from ..core.results import TIEPair, TIEResult, tie_from_ie
from ..core.sampler import frozen_terms, target_logprob, warn_no_object
from ..core.samplers import Sampler, resolve_sampler
from .attribution import attribution_rows, site_outputs
from .config import MODES, TraceConfig, apply_overrides, check_facts, rows_for
from .engine import Work, check_shard, fact_record, run_batches, trace_facts
from .patching import Corruption, Query, encode_query, fact_key, patched_forward, traced_loop

__all__ = [
    "MODES",
    "SweepCache",
    "TracePlan",
    "fact_record",
    "horizon_weight",
    "plan_trace",
    "structural_zeros",
    "trace_tie",
]


def horizon_weight(steps: int, decay: float, horizon: int | None) -> float:
    """The largest share of Eq. 4's weight a horizon leaves out, over the cells' steps.

    A cell at step ``k`` weighs later step ``k'`` by ``γ^{k'-k}``; following its future only
    to ``k + h`` leaves out ``w_h(k) = Σ_{j=h+1}^{T-1-k} γ^j / Σ_{j=0}^{T-1-k} γ^j``, which is
    largest at ``k = 0`` and at most ``γ^{h+1}`` (for ``γ < 1``). ``0`` when nothing is left
    out (``horizon`` is ``None`` or ``≥ T - 1``).

    Example:
        >>> horizon_weight(8, 0.5, 1)   # (0.25 + … + 0.5^7) / (1 + … + 0.5^7)
        0.24705882352941178
    """
    if horizon is None or horizon >= steps - 1:
        return 0.0
    weights = [decay**j for j in range(steps)]
    return sum(weights[horizon + 1 :]) / sum(weights)


@dataclass(frozen=True, eq=False)
class TracePlan:
    """A :class:`~tie_tracing.tracing.config.TraceConfig` resolved once against a model and
    a fact set: what the engine takes (built by :func:`plan_trace`; nothing below re-checks it).

    Attributes:
        config: The config, its sampler bound to the model (the recorded settings).
        rule: The sampler the runs follow, one trajectory per row.
        layers: The traced layers; ``sites`` the ``(layer, module)`` sites in execution order.
        queries: The facts, encoded (subject mentions per ``config.corruption.mentions``).
        targets: Fact id → ``[answer_len]`` bool, the positions ``LP`` sums over.
        nu: ``ν``, resolved over the facts (or the fixed one).
        memory: The memory budget of one forward, in bytes.
    """

    config: TraceConfig
    rule: Sampler
    layers: tuple[int, ...]
    sites: tuple[tuple[int, str], ...]
    queries: tuple[Query, ...]
    targets: dict[str, torch.Tensor]
    nu: float
    memory: int
    reuse: SweepCache | None = None

    @property
    def corruption(self) -> Corruption:
        """The corruption with ``ν`` resolved."""
        return dataclasses.replace(self.config.corruption, nu=self.nu)

    def record(self) -> dict:
        """The settings a result (and a resumable directory) records."""
        return self.config.to_dict() | {"nu": self.nu}

    def rows(self, model, query: Query) -> int:
        """Rows per forward for ``query`` (a CFG sampler runs each row with its copy)."""
        if self.config.budget.batch_size is not None:
            return self.config.budget.batch_size
        grad = self.config.mode == "attribution"
        rows = rows_for(
            model, self.config.budget, self.memory, query.length, len(query.answer_ids), grad=grad
        )
        return max(1, rows // 2) if self.rule.doubles_batch else rows


def plan_trace(
    model, facts: Sequence[Fact], config: TraceConfig, *, reuse: SweepCache | None = None
) -> TracePlan:
    """Resolve ``config`` against ``model`` and ``facts``, once: the sampler checked against
    the model's family and bound to its tokens, the sites against the backbone, the facts
    encoded, their target positions located (under ``target="object"`` a fact without an
    object targets its whole answer, with one warning naming them), ``ν`` resolved; warns when
    steps have nothing to decide.

    Raises:
        ValueError: a causal model; a layer the model lacks; facts whose answer lacks their
            subject under ``target="name"`` (lists them); a sampler of another family.
        SubjectNotFoundError, ObjectNotFoundError: a fact that cannot be encoded (names it).
    """
    if model.is_causal:
        raise ValueError(
            f"{model.name} is causal (AR): use tt.trace_positional for ROME-style tracing"
        )
    bound = resolve_sampler(config.sampler, model=model)
    config = dataclasses.replace(config, sampler=bound)
    if config.target == "object":
        warn_no_object([fact_key(f) for f in facts if f.object is None], len(facts))
    layers, sites = config.sites.resolve(model)
    queries = tuple(encode_query(model, f, mentions=config.corruption.mentions) for f in facts)
    if config.target == "name":
        missing = [fact_key(q.fact) for q in queries if q.name_offsets is None]
        if missing:
            raise ValueError(
                f"target='name' reads the subject's name inside the answer; the answers of "
                f"{len(missing)} facts do not contain their subject: {missing[:10]}"
                f"{' …' if len(missing) > 10 else ''}. Use target='object' or 'answer' for them"
            )
    _warn_idle(queries, config)
    targets = {fact_key(q.fact): q.target_mask(config.target) for q in queries}
    return TracePlan(
        config=config,
        rule=bound.per_trajectory(),
        layers=layers,
        sites=sites,
        queries=queries,
        targets=targets,
        nu=config.corruption.resolve_nu(model, queries),
        memory=config.budget.bytes(model.param_device),
        reuse=reuse,
    )


def structural_zeros(
    model, query: Query, sites: Sequence[tuple[int, str]]
) -> tuple[tuple[int, str], ...]:
    """The ``(layer, module)`` sites whose patch at ``query``'s subject positions reaches no
    answer position, by architecture: every site of the **last block**, whose output at a
    position goes only through the final norm and the LM head of that position (both act
    per position) — unless the logits are shifted (``Backbone.shifted``: position ``i``
    scores token ``i + 1``) and a subject position sits right before the answer. Read from
    the backbone and the positions, never from measured values: such a cell's ``IE`` is 0 at
    every later step, since the patched forward's answer logits, and so its commits, are
    the corrupted run's. Results record them per fact in ``config["structural_zeros"]``.

    Example:
        >>> q = encode_query(model, fact)                                  # doctest: +SKIP
        >>> structural_zeros(model, q, [(5, "resid"), (4, "resid")])       # 6 blocks  # doctest: +SKIP
        ((5, 'resid'),)
    """
    shift = 1 if model.backbone.shifted else 0
    if any(s + shift >= query.answer_start for s in query.subject_positions):
        return ()
    return tuple(site for site in sites if site[0] == model.num_layers - 1)


# ----------------------------------------------------------------------------- one fact


@dataclass(frozen=True, eq=False)
class _Base:
    """One fact's clean and corrupted runs (step 1): what every patch row starts from.

    ``terms`` ``[1 + N, T, A]`` are the raw per-position terms of the clean run (row 0) and
    the corrupted runs; ``before`` ``[N, T, seq]`` the corrupted state before each step and
    ``clean_before`` ``[T, seq]`` the clean one; ``clean_h`` maps a site to its clean output
    at the subject positions ``[T, |S|, d]`` (empty for attribution, which reads its own).
    ``noise`` ``[N, |S|, d]``, ``subject`` and ``targets`` live on the model's device.
    """

    query: Query
    noise: torch.Tensor
    subject: torch.Tensor
    targets: torch.Tensor
    terms: torch.Tensor
    clean_states: torch.Tensor
    corrupt_states: torch.Tensor
    before: torch.Tensor
    clean_before: torch.Tensor
    clean_h: dict
    weight: torch.Tensor

    @property
    def answer_start(self) -> int:
        return self.query.answer_start


def _base_runs(model, query: Query, plan: TracePlan) -> tuple[_Base, Work]:
    """The traced loop of row 0 clean (capturing every site at S unless attribution) and rows
    ``1 … N`` corrupted, one per noise draw."""
    config, device = plan.config, model.param_device
    n_draws, steps = config.corruption.n_noise, config.steps
    fid = fact_key(query.fact)
    subject = torch.tensor(query.subject_positions, device=device)
    noise = plan.corruption.draws(query.fact, len(subject), model.hidden_size, plan.nu)
    noise = noise.to(device)
    every_step = set(range(steps))
    captures = (
        {}
        if config.mode == "attribution"  # attribution reads activations in its own forwards
        else {site: (every_step, subject) for site in plan.sites}
    )
    try:
        run = traced_loop(
            model,
            query,
            steps=steps,
            rows=1 + n_draws,
            sampler=plan.rule,
            seeds=[config.corruption.seed] * (1 + n_draws),
            lp=config.lp,
            target=config.target,
            target_mask=plan.targets[fid],
            noise=noise,
            noise_rows=torch.arange(1, 1 + n_draws, device=device),
            replace=config.corruption.replace,
            patches={},
            captures=captures,
        )
    except NonFiniteActivationError as error:
        raise NonFiniteActivationError(f"fact {fid!r}: {error}") from error
    assert run.token_logprobs is not None
    states = run.states.cpu()
    start = query.input_ids(model.mask_token_id)[0]
    corrupt = states[1:]  # [N, T, seq]
    base = _Base(
        query=query,
        noise=noise,
        subject=subject,
        targets=torch.tensor(query.answer_ids, device=device),
        terms=run.token_logprobs.float().cpu(),
        clean_states=states[0],
        corrupt_states=corrupt,
        before=torch.cat([start.expand(n_draws, 1, -1), corrupt[:, :-1]], dim=1),
        clean_before=torch.cat([start[None], states[0, :-1]]),
        clean_h={site: h[0] for site, h in run.captures.items()},
        weight=plan.targets[fid].float(),
    )
    return base, Work.forward(1 + n_draws, query.length, times=steps)


@dataclass(frozen=True)
class _Grid:
    """Every patch ``(step, draw, site)`` of a fact as one row, step-major.

    ``open_`` ``[N, T]``: the step's input still holds a masked answer position (always, under
    ``lp="raw"``); under ``lp="frozen"`` a patch at a closed step commits nothing and reads
    only frozen terms, so its effect is 0 exactly and its row is not run. ``wanted``: the
    row's step is among ``patch_steps``; other rows are neither run nor reported (NaN).
    ``zero`` ``[sites]``: the site is zero by architecture for this fact
    (:func:`structural_zeros`): its patch leaves the answer logits, hence every commit, as
    the corrupted run's, so its rows are not run either (effect 0 exactly).
    """

    step: torch.Tensor
    draw: torch.Tensor
    site: torch.Tensor
    open_: torch.Tensor
    wanted: torch.Tensor
    zero: torch.Tensor

    @property
    def active(self) -> torch.Tensor:
        """The rows run: wanted, at an open step, at a site that can reach the answer."""
        run = self.open_[self.draw, self.step] & ~self.zero[self.site]
        return (run & self.wanted).nonzero().flatten()

    @property
    def idle(self) -> torch.Tensor:
        """The wanted rows at a closed step or a structurally zero site: effect 0 at every
        later step, not run."""
        still = ~self.open_[self.draw, self.step] | self.zero[self.site]
        return (still & self.wanted).nonzero().flatten()


def _grid(model, plan: TracePlan, base: _Base) -> _Grid:
    config = plan.config
    steps, n_draws, n_sites = config.steps, config.corruption.n_noise, len(plan.sites)
    step = torch.arange(steps).repeat_interleave(n_draws * n_sites)
    if config.lp == "frozen":
        open_ = (base.before[:, :, base.answer_start :] == model.mask_token_id).any(-1)
    else:
        open_ = torch.ones(n_draws, steps, dtype=torch.bool)
    wanted = torch.ones_like(step, dtype=torch.bool)
    if config.patch_steps is not None:
        wanted = torch.isin(step, torch.tensor(config.patch_steps))
    zeros = set(structural_zeros(model, base.query, plan.sites))
    return _Grid(
        step=step,
        draw=torch.arange(n_draws).repeat_interleave(n_sites).repeat(steps),
        site=torch.arange(n_sites).repeat(steps * n_draws),
        open_=open_,
        wanted=wanted,
        zero=torch.tensor([site in zeros for site in plan.sites], dtype=torch.bool),
    )


def _forward(
    model, plan: TracePlan, base: _Base, x: torch.Tensor, draws, steps, writes: dict
) -> tuple[torch.Tensor, torch.Tensor, Work]:
    """One batched forward of rows at (possibly different) steps and their commits: the raw
    per-position terms ``[rows, A]``, the states after the step ``[rows, seq]``, the work."""
    device, p = model.param_device, base.answer_start
    unique = steps.unique()
    context = ForwardContext(
        step=int(unique[0]) if len(unique) == 1 else steps.to(device), answer_start=p
    )
    logits = patched_forward(
        model,
        x.to(device),
        context=context,
        noise=base.noise[draws.to(device)],
        subject=base.subject,
        replace=plan.config.corruption.replace,
        writes=writes,
        sampler=plan.rule,
    )[:, p:]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    tl = target_logprob(logits, base.targets.expand(x.shape[0], -1), logprobs).float().cpu()
    # a NaN or +inf logit makes its position's whole log-softmax NaN, so checking the
    # target terms catches it without a pass over [rows, answer, vocab]
    if not torch.isfinite(tl).all():
        fid = fact_key(base.query.fact)
        raise NonFiniteActivationError(f"fact {fid!r}: non-finite logits in the patch sweep")
    new = torch.empty_like(x)
    for k in unique.tolist():  # each step has its own commit rule
        rows = (steps == k).nonzero().flatten()
        new[rows] = plan.rule.update(
            x[rows].to(device),
            logits[rows.to(device)],
            answer_start=p,
            step=k,
            steps=plan.config.steps,
            mask_id=model.mask_token_id,
            seeds=[plan.config.corruption.seed] * len(rows),
            logprobs=logprobs[rows.to(device)],
        ).cpu()
    return tl, new, Work.forward(*x.shape)


def _run_patches(
    model, plan: TracePlan, base: _Base, grid: _Grid, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, Work]:
    """Step 2: every active patch row, batched; its raw terms ``[rows, A]`` and the state
    after its step ``[rows, seq]`` (rows not run keep the corrupted run's state)."""
    device = model.param_device
    terms = torch.empty(len(grid.step), len(base.query.answer_ids))
    after = base.corrupt_states[grid.draw, grid.step].clone()
    clean = [base.clean_h[site] for site in plan.sites]  # each [T, |S|, d]

    def forward(chunk: torch.Tensor) -> Work:
        k_, d_, s_ = grid.step[chunk], grid.draw[chunk], grid.site[chunk]
        writes = {}
        for si, site in enumerate(plan.sites):
            rows = (s_ == si).nonzero().flatten()
            if len(rows):
                index = (rows.to(device)[:, None], base.subject[None, :])
                writes[site] = (index, clean[si][k_[rows].to(device)])
        terms[chunk], after[chunk], work = _forward(
            model, plan, base, base.before[d_, k_], d_, k_, writes
        )
        return work

    return terms, after, run_batches(grid.active, batch_size, forward)


def _follow_futures(
    model,
    plan: TracePlan,
    base: _Base,
    grid: _Grid,
    sweep: _Sweep,
    after: torch.Tensor,
    batch_size: int,
) -> tuple[list[int | None], Work]:
    """Step 3: the distinct futures of the patch runs, step by step (runs reaching one state
    share it), each followed up to its patch step + ``horizon``; a node shared by several
    runs as far as the furthest of them needs. Returns each patch row's next node."""
    steps = plan.config.steps
    reach = steps if plan.config.horizon is None else plan.config.horizon
    deadline: dict[int, int] = {}
    following: list[int | None] = [None] * len(grid.step)
    for r in grid.active.tolist():
        nxt = sweep.successor(int(grid.draw[r]), int(grid.step[r]) + 1, after[r])
        following[r] = nxt
        if nxt is not None:
            deadline[nxt] = max(deadline.get(nxt, -1), int(grid.step[r]) + reach)
    work = []
    for j in range(1, steps):
        live = [i for i in sweep.live.pop(j, []) if deadline.get(i, -1) >= j]

        def forward(chunk: torch.Tensor, j: int = j) -> Work:
            nodes = chunk.tolist()
            x = torch.stack([sweep.nodes[i].state for i in nodes])  # type: ignore[misc]
            draws = torch.tensor([sweep.nodes[i].draw for i in nodes])
            tl, new, spent = _forward(model, plan, base, x, draws, torch.full((len(nodes),), j), {})
            for i, node_id in enumerate(nodes):
                sweep.nodes[node_id].tl = tl[i]
                nxt = sweep.successor(sweep.nodes[node_id].draw, j + 1, new[i])
                sweep.nodes[node_id].next = nxt
                if nxt is not None:
                    deadline[nxt] = max(deadline.get(nxt, -1), deadline[node_id])
            return spent

        work.append(run_batches(torch.tensor(live, dtype=torch.long), batch_size, forward))
    n_corrupt = plan.config.corruption.n_noise * steps
    ran = sum(n.tl is not None for n in sweep.nodes) - n_corrupt
    return following, Work.total([*work, Work(divergent_continuations=ran)])


def _patched_ie(
    plan: TracePlan,
    base: _Base,
    grid: _Grid,
    sweep: _Sweep,
    terms: torch.Tensor,
    following: list[int | None] | None,
    lp_corrupt: torch.Tensor,
    frozen_before: list,
) -> torch.Tensor:
    """``IE [N, sites, T, T]`` of the patch rows: ``LP_patched(k') − LP_corrupt(k')`` for the
    patched forward at ``k`` and, when ``following`` is given, its future (the corrupted
    nodes when it committed as the corrupted run did) with the frozen terms it carries:
    under ``lp="frozen"`` a position committed in the patched forward keeps that forward's
    value, so even a shared future can have a non-zero effect. Beyond a horizon a future
    ends where it was not followed (NaN there); idle rows are 0."""
    steps = plan.config.steps
    ie = torch.full((plan.config.corruption.n_noise, len(plan.sites), steps, steps), float("nan"))
    for r in grid.active.tolist():
        n, k, s = int(grid.draw[r]), int(grid.step[r]), int(grid.site[r])
        lp_k, frozen = sweep.step_lp(terms[r], base.before[n, k], frozen_before[n][k])
        lps = [lp_k] if following is None else [lp_k] + sweep.walk(following[r], frozen)[0]
        ie[n, s, k, k : k + len(lps)] = torch.tensor(lps) - lp_corrupt[n, k : k + len(lps)]
    for r in grid.idle.tolist():
        n, k, s = int(grid.draw[r]), int(grid.step[r]), int(grid.site[r])
        ie[n, s, k, k : (k + 1 if following is None else steps)] = 0.0
    return ie


def _attribution_ie(
    model, plan: TracePlan, base: _Base, grid: _Grid, batch_size: int
) -> tuple[torch.Tensor, Work]:
    """``IE [N, sites, T, T]`` estimated at ``k' = k`` (:mod:`.attribution`): one plain
    forward of the clean states of the steps needed, then one forward and one backward per
    open ``(draw, step)``."""
    config, device, p = plan.config, model.param_device, base.answer_start
    steps, seq = config.steps, base.query.length
    ie = torch.full((config.corruption.n_noise, len(plan.sites), steps, steps), float("nan"))
    wanted = torch.ones(steps, dtype=torch.bool)
    if config.patch_steps is not None:
        wanted = torch.isin(torch.arange(steps), torch.tensor(config.patch_steps))
    for k in wanted.nonzero().flatten().tolist():
        ie[:, :, k, k] = 0.0
    pairs = (grid.open_ & wanted[None, :]).nonzero()  # (draw, step) rows
    needed = pairs[:, 1].unique()  # the clean activations of those steps
    clean_at = torch.full((steps,), -1, dtype=torch.long)
    clean_at[needed] = torch.arange(len(needed))
    parts: list[list[torch.Tensor]] = []

    def clean_forward(chunk: torch.Tensor) -> Work:
        ks = needed[chunk]
        context = ForwardContext(step=ks, answer_start=p)
        parts.append(
            site_outputs(
                model,
                base.clean_before[ks],
                sites=plan.sites,
                subject=base.subject,
                context=context,
            )
        )
        return Work.forward(len(ks), seq)

    work = run_batches(torch.arange(len(needed)), batch_size, clean_forward)
    clean = (
        [torch.cat([part[i] for part in parts]) for i in range(len(plan.sites))] if parts else []
    )
    answer = torch.tensor(base.query.answer_ids)

    def forward(chunk: torch.Tensor) -> Work:
        d_, k_ = pairs[chunk].unbind(-1)
        x = base.before[d_, k_]
        weight = base.weight.expand(len(d_), -1)
        if config.lp == "frozen":  # committed positions keep earlier terms: no gradient
            weight = weight * (x[:, p:] == model.mask_token_id)
        ie[d_, :, k_, k_] = attribution_rows(
            model,
            x,
            noise=base.noise[d_.to(device)],
            subject=base.subject,
            replace=config.corruption.replace,
            sites=plan.sites,
            clean=[c[clean_at[k_].to(c.device)] for c in clean],
            targets=answer,
            weight=weight,
            context=ForwardContext(step=k_, answer_start=p),
            scales=ig_scales(config.ig_steps),
        )
        return Work.forward(len(d_), seq, times=config.ig_steps, backward=True)

    return ie, work + run_batches(torch.arange(len(pairs)), batch_size, forward)


class SweepCache:
    """The runs of exact and immediate sweeps, kept so that a trace of the same facts under
    the same settings with **another target** recomputes only the log-probabilities.

    Every forward of a sweep (clean, corrupted, patched, continued) and every commit is the
    same whatever ``target`` is: the target only chooses the answer positions ``LP`` sums
    over (SPEC §5). Pass one cache to both traces — ``trace_tie(model, facts,
    target="object", reuse=cache)`` then ``target="name"`` — and the second runs no forward
    (its ``engine_stats`` count none, ``reused_facts`` says how many were reused). A fact is
    reused only when the model object, the fact and every setting but ``target`` are the
    same. Attribution (whose backward depends on the target) is never cached. The cache
    holds each fact's trajectory states and per-position terms in memory until dropped.

    Example:
        >>> cache = tt.tracing.SweepCache()                                            # doctest: +SKIP
        >>> obj = tt.trace_tie(model, facts, target="object", reuse=cache)             # doctest: +SKIP
        >>> name = tt.trace_tie(model, facts, target="name", reuse=cache)              # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._runs: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return len(self._runs)

    @staticmethod
    def key(model, query: Query, plan: TracePlan) -> tuple:
        """What a cached sweep must share with the trace that reads it."""
        import json

        settings = {k: v for k, v in plan.record().items() if k != "target"}
        return (
            id(model),
            str(model.name),
            json.dumps(settings, sort_keys=True, default=str),
            repr(query.fact),
            query.prompt_ids,
            query.answer_ids,
            query.subject_positions,
        )

    def get(self, key: tuple) -> tuple | None:
        return self._runs.get(key)

    def put(self, key: tuple, runs: tuple) -> None:
        self._runs[key] = runs


def ig_scales(n: int) -> tuple[float, ...]:
    """Noise scales of the attribution scan: ``(1.0,)`` for ``n = 1`` (the corrupted point),
    else the midpoint rule ``(j − ½)/n``, ``j = 1 … n``."""
    return (1.0,) if n == 1 else tuple((j - 0.5) / n for j in range(1, n + 1))


def _trace_fact(model, query: Query, plan: TracePlan) -> tuple[TIEResult, Work]:
    """One fact's trace as a one-fact :class:`~tie_tracing.core.results.TIEResult`, and the
    work it ran: the base runs, the patch rows, then the mode's effects (or, with a
    :class:`SweepCache` holding the same sweep under another target, only the effects)."""
    config = plan.config
    cache = plan.reuse if config.mode != "attribution" else None
    key = SweepCache.key(model, query, plan) if cache is not None else None
    hit = cache.get(key) if cache is not None and key is not None else None
    weight = plan.targets[fact_key(query.fact)].float()
    if hit is not None:
        base, sweep, grid, terms, after, following = hit
        base = dataclasses.replace(base, weight=weight)
        sweep = sweep.reweighted(weight)
        work = Work(reused_facts=1)
    else:
        base, work = _base_runs(model, query, plan)
        sweep = _Sweep(base, mask_id=model.mask_token_id, lp=config.lp)
        grid = _grid(model, plan, base)
    lp_clean = torch.tensor(sweep.chain(base.terms[0], base.clean_before))
    walks = [sweep.walk(sweep.corrupt[n][0], None) for n in range(config.corruption.n_noise)]
    lp_corrupt = torch.tensor([lps for lps, _ in walks])  # [N, T]
    frozen_before = [before for _, before in walks]  # [N][T]
    changed = None  # whether each patch row committed otherwise than the corrupted run
    if config.mode == "attribution":
        batch_size = plan.rows(model, query)
        work = work + Work(rows_per_forward=(batch_size,))
        ie, spent = _attribution_ie(model, plan, base, grid, batch_size)
        work = work + spent
    else:
        if hit is None:
            batch_size = plan.rows(model, query)
            work = work + Work(rows_per_forward=(batch_size,))
            terms, after, spent = _run_patches(model, plan, base, grid, batch_size)
            work = work + spent
            following = None
            if config.mode == "exact":
                following, spent = _follow_futures(
                    model, plan, base, grid, sweep, after, batch_size
                )
                work = work + spent
            if cache is not None and key is not None:
                cache.put(key, (base, sweep, grid, terms, after, following))
        changed = (after != base.corrupt_states[grid.draw, grid.step]).any(-1)
        ie = _patched_ie(plan, base, grid, sweep, terms, following, lp_corrupt, frozen_before)
    return _result(model, plan, base, ie, changed, lp_clean, lp_corrupt), work


def _result(
    model,
    plan: TracePlan,
    base: _Base,
    ie_draws: torch.Tensor,
    changed: torch.Tensor | None,
    lp_clean: torch.Tensor,
    lp_corrupt: torch.Tensor,
) -> TIEResult:
    """One fact's tensors arranged as a one-fact :class:`TIEResult` (``[layer, step, module,
    later_step]``, the modules in result order)."""
    config, query = plan.config, base.query
    steps, n_draws, n_sites = config.steps, config.corruption.n_noise, len(plan.sites)
    if changed is None:  # attribution: divergence is not known
        diverged = torch.full((n_sites, steps), float("nan"))
    else:
        diverged = changed.view(steps, n_draws, n_sites).permute(1, 2, 0).float().mean(0)
        if config.patch_steps is not None:
            diverged[:, ~torch.isin(torch.arange(steps), torch.tensor(config.patch_steps))] = float(
                "nan"
            )
    layers, modules = plan.layers, config.sites.modules
    index = {site: i for i, site in enumerate(plan.sites)}
    order = [index[(layer, m)] for layer in layers for m in modules]
    n_l, n_m = len(layers), len(modules)
    ie = ie_draws.mean(0)[order].reshape(n_l, n_m, steps, steps).permute(0, 2, 1, 3)
    ie = ie[None].contiguous()  # [1, layer, step, module, later_step]
    diverged = diverged[order].reshape(n_l, n_m, steps).permute(0, 2, 1)
    record = plan.record() | {"normalized": False, "mask_token_id": int(model.mask_token_id)}
    zeros = structural_zeros(model, query, plan.sites)
    record["structural_zeros"] = {fact_key(query.fact): [list(site) for site in zeros]}
    if config.mode == "exact":
        record["horizon_weight"] = horizon_weight(steps, config.decay, config.horizon)
    # a horizon, a mode that reads the patched step only, or a subset of patch steps leaves
    # later steps NaN: Eq. 4 then weighs the steps it has (immediate modes: IE at k' = k)
    policy = "omit" if config.limited or config.mode != "exact" else "propagate"
    answer = slice(query.answer_start, query.answer_start + len(query.answer_ids))
    fact = query.fact
    return TIEResult(
        tie=tie_from_ie(ie, config.decay, nan_policy=policy),
        ie=ie,
        lp_clean=lp_clean[None],
        lp_corrupt=lp_corrupt.mean(0)[None],
        lp_corrupt_draws=lp_corrupt[None],
        clean_tokens=base.clean_states[:, answer][None].long(),
        corrupt_tokens=base.corrupt_states[:, :, answer][None].long(),
        diverged=diverged[None].contiguous(),
        target_mask=base.weight.bool()[None],
        object_mask=query.object_mask[None],
        fact_ids=(fact_key(fact),),
        subjects=(fact.subject,),
        questions=(fact.question,),
        answers=(fact.answer,),
        layers=tuple(layers),
        steps=tuple(range(steps)),
        modules=tuple(modules),
        config=TraceProvenance.from_record(record),
        seeds=(config.corruption.seed,),
        model_id=str(model.name),
        version=__version__,
    )


@dataclass
class _Node:
    """One forward of one trajectory: its input ``state`` before ``step``, the raw
    per-position terms ``tl`` of that forward and the node of the next step."""

    draw: int
    step: int
    state: torch.Tensor | None
    tl: torch.Tensor | None = None
    next: int | None = None


class _Sweep:
    """Bookkeeping of the patch sweep of one fact: memoised trajectory nodes.

    A node is keyed by ``(draw, step, state)``: the forward it stands for, and so its raw
    terms and its commits, depend on nothing else. Its ``LP`` may: with ``lp="frozen"`` a
    committed position reads the value of the forward that committed it, which depends on
    how the trajectory reached the state. :meth:`walk` therefore carries the frozen terms
    along a chain instead of memoising ``LP`` per node.
    """

    def __init__(self, base: _Base, *, mask_id: int, lp: str):
        self.nodes: list[_Node] = []
        self.memo: dict[tuple[int, int, bytes], int] = {}
        self.p, self.mask_id, self.weight, self.lp = base.answer_start, mask_id, base.weight, lp
        n_draws, steps, _ = base.corrupt_states.shape
        self.steps = steps
        self.corrupt: list[list[int]] = []
        for n in range(n_draws):
            ids = []
            for j in range(steps):
                ids.append(self._add(n, j, base.before[n, j], tl=base.terms[1 + n, j]))
            for j in range(steps - 1):
                self.nodes[ids[j]].next = ids[j + 1]
            self.corrupt.append(ids)
        self.live: dict[int, list[int]] = {}

    def _add(
        self, draw: int, step: int, state: torch.Tensor, tl: torch.Tensor | None = None
    ) -> int:
        key = (draw, step, state.numpy().tobytes())
        if key in self.memo:
            return self.memo[key]
        self.nodes.append(_Node(draw, step, state.clone(), tl))
        self.memo[key] = len(self.nodes) - 1
        if tl is None:
            self.live.setdefault(step, []).append(len(self.nodes) - 1)
        return len(self.nodes) - 1

    def reweighted(self, weight: torch.Tensor) -> _Sweep:
        """This sweep's trajectories (shared, not copied) read with other target weights."""
        other = copy.copy(self)
        other.weight = weight
        return other

    def successor(self, draw: int, step: int, state: torch.Tensor) -> int | None:
        """The node that continues from ``state`` before ``step`` (None past the end)."""
        if step >= self.steps:
            return None
        return self._add(draw, step, state)

    def step_lp(
        self, tl: torch.Tensor, state: torch.Tensor, frozen: torch.Tensor | None
    ) -> tuple[float, torch.Tensor]:
        """``LP`` of one forward and the frozen terms after it (SPEC §4).

        The package's one frozen rule (:func:`~tie_tracing.core.sampler.frozen_terms`) on one
        1-D step. Every ``LP`` of a fact's sweep (clean, corrupted, patched, continued) goes
        through here, so equal inputs give bit-equal values and an effect that is zero is
        exactly 0.
        """
        if self.lp == "frozen":
            frozen = frozen_terms(tl, state[self.p :] == self.mask_id, frozen)
            return float((frozen * self.weight).sum()), frozen
        return float((tl * self.weight).sum()), tl

    def chain(self, terms: torch.Tensor, before: torch.Tensor) -> list[float]:
        """``LP(k)`` of a whole trajectory from its raw terms ``[T, A]`` and its state before
        each step ``[T, seq]`` (the clean run)."""
        frozen, lps = None, []
        for k in range(len(terms)):
            lp_k, frozen = self.step_lp(terms[k], before[k], frozen)
            lps.append(lp_k)
        return lps

    def walk(
        self, node: int | None, frozen: torch.Tensor | None
    ) -> tuple[list[float], list[torch.Tensor | None]]:
        """``LP`` of each step from ``node`` to the end of its trajectory, starting from the
        frozen terms ``frozen`` of the steps before it; also the frozen terms before each
        step. A future cut by a horizon ends at its first node that was never run."""
        lps: list[float] = []
        before: list[torch.Tensor | None] = []
        while node is not None:
            n = self.nodes[node]
            assert n.state is not None, "a trajectory node has no state"
            if n.tl is None:  # beyond a horizon: not followed
                break
            before.append(frozen)
            lp, frozen = self.step_lp(n.tl, n.state, frozen)
            lps.append(lp)
            node = n.next
        return lps, before


def _unknown_answer(model, query: Query, clean_tokens: torch.Tensor) -> str | None:
    """The clean sample's text when it is not the fact's answer (the model does not know
    the fact), else ``None``."""
    final = clean_tokens[-1].tolist()
    if final == list(query.answer_ids):
        return None
    return str(model.tokenizer.decode(final, skip_special_tokens=True).strip())


def _warn_unknown(unknown: Sequence[tuple[str, str, str, float]], total: int) -> None:
    """One warning line for every fact the model does not know (after the progress bar)."""
    if not unknown:
        return
    fid, said, answer, lp = unknown[0]
    ids = [u[0] for u in unknown]
    listed = ", ".join(repr(i) for i in ids[:5]) + (" …" if len(ids) > 5 else "")
    warnings.warn(
        f"the model does not know {len(unknown)} of {total} facts ({listed}): their clean "
        f"samples are not their answers (e.g. {fid!r}: {said!r}, not {answer!r}; "
        f"LP_clean(T-1) = {lp:.2f} nats). Their TIE is reported but measures little; "
        "result.config['unknown_facts'] lists them",
        stacklevel=3,
    )


@overload
def trace_tie(
    model,
    facts: Sequence[Fact] | Fact,
    config: TraceConfig | None = None,
    *,
    neighbours: None = None,
    **settings: Any,
) -> TIEResult: ...


@overload
def trace_tie(
    model,
    facts: Sequence[Fact] | Fact,
    config: TraceConfig | None = None,
    *,
    neighbours: Sequence[Fact] | Fact,
    **settings: Any,
) -> TIEPair: ...


def trace_tie(  # type: ignore[misc]
    model,
    facts: Sequence[Fact] | Fact,
    config: TraceConfig | None = None,
    *,
    neighbours: Sequence[Fact] | Fact | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | str = PROGRESS,
    shard: tuple[int, int] | None = None,
    reuse: SweepCache | None = None,
    **overrides: Any,
) -> TIEResult | TIEPair:
    """Diffusion-time causal tracing: TIE of every ``(layer, step, module)`` for each fact.

    What is computed is one :class:`~tie_tracing.tracing.config.TraceConfig` (default
    ``TraceConfig()``); keyword ``overrides`` are applied to it, by field name or by the flat
    names below (``trace_tie(model, facts, steps=8, n_noise=4)``); an unknown name is a
    ``TypeError`` that lists the valid ones.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` of an MDLM.
        facts: Facts whose subject occurs in the question.
        config: The settings (:class:`~tie_tracing.tracing.config.TraceConfig`).
        neighbours: Facts to keep (Eq. 5's ``N``), traced with the same settings and the
            same ``ν`` (resolved over both sets unless ``nu`` is given); the call then
            returns a :class:`~tie_tracing.core.results.TIEPair` that
            ``select_coordinate(pair, beta=...)`` takes as it is. With ``out``, the two
            sweeps go to ``out/forget`` and ``out/neighbours``.
        out: Directory for a resumable sweep: each finished fact is written there as it
            completes; rerunning with the same ``out`` skips finished facts (with
            ``progress``, it says "resuming: 5/20 facts already traced"). Resuming is
            keyed by content: other settings, another model or retrained weights (a
            fingerprint of configuration and weights), or a fact whose fields changed are
            errors that say what changed.
        overwrite: Replace what no longer matches instead of raising: with other settings,
            model or weights every fact is traced again; otherwise only the facts whose
            fields changed are (a fact whose result sits at another position is reused), and
            result files of facts no longer in ``facts`` are removed.
        progress: Show a progress bar over facts (labelled with the mode and seed; a string
            is the label).
        shard: ``(rank, world)``: trace only the facts ``i`` with ``i % world == rank`` into
            ``out`` (required) and return those; the fact-sharded sweep of
            :mod:`tie_tracing.tracing.distributed` runs one shard per process and merges them by
            resuming ``out``. ``ν`` is still resolved on all ``facts``.
        reuse: A :class:`SweepCache`: sweeps of these facts under the same settings and
            another ``target`` are read from it instead of run again (exact and immediate
            modes), and this trace's sweeps are added to it; results are bit-equal to a
            trace without it.
        **overrides: Settings of the config:

            * ``steps``: ``T`` denoising steps (default 8).
            * ``sampler``: a :mod:`~tie_tracing.core.samplers` config, registry name or dict:
              LLaDA's (``remasking``, blocks, CFG, EOS switches, fixed-``T`` threshold,
              explicit counts) or Dream's (``alg``, ``alg_temp``, ``top_p``/``top_k``). Every
              sampler is traced exactly: its random choices are keyed by ``(seed, step)``, so
              runs in one state at one step commit identically. Samplers that carry state
              between steps (KV caches, re-masking, a varying number of forwards) raise
              :class:`~tie_tracing.core.errors.UnsupportedSamplerError`. Recorded in
              ``result.config["sampler"]``. ``temperature`` and ``block_length`` are
              shorthands of ``LLaDASampler(...)`` (beside ``sampler`` they must agree with it).
            * ``corruption`` or its fields: ``noise_scale`` (``ν = noise_scale · σ_emb`` with
              ``σ_emb`` pooled over the subject tokens of ``facts``, ROME's 3σ rule), ``nu``
              (a fixed ``ν``; give it when results of different fact sets must be
              comparable), ``replace`` (replace the subject embeddings instead of adding
              noise), ``n_noise`` (noise draws per fact, their IE averaged), ``seed`` (of the
              noise and of the sampler's random choices), ``mentions`` (``"all"``: every
              mention of the subject is corrupted and patched; ``"first"``: ROME's rule).
            * ``sites`` or its fields: ``modules`` (a subset of ``resid``, ``attn``, ``mlp``)
              and ``layers`` (default all).
            * ``target``: ``"object"`` (default): ``LP`` sums over the object's tokens (the
              paper's Eq. 4; a fact without ``Fact.object`` targets its whole answer, with a
              warning that names it); ``"answer"``: over the whole
              answer span; ``"name"``: over the subject's name inside the answer (the
              subject-identity part; Figure 2 subtracts it from the object's effect).
            * ``lp``: ``"frozen"`` (default): a committed answer position keeps the
              log-probability of the forward that committed it, so a step with no masked
              target position left has ``TIE = 0`` exactly; ``"raw"``: the literal reading at
              every position whatever its commit state (for comparison).
            * ``decay``: ``γ`` of Eq. 4 (default 0.5).
            * ``mode``: ``"exact"`` (default: Eq. 4 over every later step, each divergent
              future followed); ``"immediate"`` (``IE`` at the patched step only, exactly, no
              future run: ``.tie`` holds ``IE_k``, the ``γ → 0`` limit of Eq. 4, and ``.ie`` is
              NaN at ``k' > k``); ``"attribution"`` (a first-order estimate of the immediate
              effect, one forward and one backward per step and draw,
              :mod:`tie_tracing.tracing.attribution`; ``.diverged`` is NaN). Attribution is
              a first look: on the embedded model it ranks cells with Spearman 0.2–0.6
              against the exact scan (``benchmarks/RESULTS.md``).
            * ``ig_steps``: ``mode="attribution"`` only: average its gradient over ``n``
              noise scales along the corruption (integrated gradients; default 1).
            * ``horizon``: follow each divergent future at most ``h`` steps after its patch
              (``mode="exact"`` only). Non-divergent runs, and divergent ones that rejoin a
              followed trajectory, are still exact at every later step; where a future was
              not followed, ``.ie`` is NaN and ``.tie`` weighs the later steps it has (Eq. 4
              with the missing weights left out and the rest renormalised). A cell at step
              ``k`` then leaves out at most ``w_h(k) = Σ_{j=h+1}^{T-1-k} γ^j / Σ_{j=0}^{T-1-k}
              γ^j ≤ γ^{h+1}`` of its weight, and ``|TIE_h − TIE| ≤ w_h(k) · max_{k'>k+h}
              |IE_{k'} − TIE_h|``. ``result.config`` records ``horizon`` and
              ``horizon_weight`` (``max_k w_h(k)``, :func:`horizon_weight`). ``None``
              (default) or ``h ≥ T - 1`` is the exact sweep, bit for bit.
            * ``patch_steps``: patch only at these steps (default all); the other cells are
              NaN, and the final-answer effect of a cell is still ``ie[..., T-1]``.
            * ``budget`` or its fields: ``max_memory`` (bytes or a size such as ``"2GB"``;
              rows per forward are chosen from it, :mod:`tie_tracing.tracing.budget`; default
              90% of the free CUDA memory on a GPU, half the available RAM on CPU) and
              ``batch_size`` (rows per forward, overriding ``max_memory``). They change speed
              and memory, never results.

    Returns:
        A :class:`~tie_tracing.core.results.TIEResult`: ``.tie`` ``[fact, layer, step, module]``,
        ``.ie`` ``[fact, layer, step, module, later_step]``, baselines, tokens, config; with
        ``neighbours``, a :class:`~tie_tracing.core.results.TIEPair` of two of them.

    Warns:
        UserWarning: when ``steps`` exceeds the answer length of some facts, naming how many
            steps have nothing to decide (their TIE is 0 under ``lp="frozen"``), and once,
            listing them, for the facts the model does not know.

    Raises:
        TypeError: an unknown setting (lists the settings).
        SubjectNotFoundError: a fact's subject is not in its prompt (names the fact).
        ObjectNotFoundError: a fact's object is not in its encoded answer (names the fact).
        NonFiniteActivationError: NaN/inf appeared (names the fact).
        ValueError: bad ``steps``, ``modules``, ``layers``, ``decay``, ``lp``, ``target`` or
            noise settings; ``target="name"`` with facts whose answer lacks their subject
            (names them).

    Example:
        >>> model = tt.load_model("tiny-mdlm")                              # doctest: +SKIP
        >>> facts = tt.load_facts("tiny", split="forget01")[:8]             # doctest: +SKIP
        >>> result = tt.trace_tie(model, facts)                             # doctest: +SKIP
        >>> result.mean().shape   # [layer, step, module]                   # doctest: +SKIP
        torch.Size([6, 8, 3])
        >>> config = tt.TraceConfig(steps=4, sites=tt.tracing.Sites(modules=("resid",)))  # doctest: +SKIP
        >>> tt.trace_tie(model, facts, config, n_noise=4)                    # doctest: +SKIP
    """
    require_model(model, "trace_tie")
    config = apply_overrides(config, TraceConfig, overrides, "trace_tie")
    run = dict(out=out, overwrite=overwrite, progress=progress, shard=shard)
    if neighbours is not None:
        return _trace_pair(model, facts, neighbours, config, **run)
    facts = check_facts(facts, "trace_tie")
    shard = check_shard(shard, out, len(facts))
    if reuse is not None and not isinstance(reuse, SweepCache):
        raise TypeError(
            f"reuse= takes a tt.tracing.SweepCache(), got {type(reuse).__name__}: make one with "
            "cache = tt.tracing.SweepCache() and pass it to each trace that shares the sweep"
        )
    plan = plan_trace(model, facts, config, reuse=reuse)
    label = f"TIE {config.mode}, seed {config.corruption.seed}"
    results, work, resume = trace_facts(
        model,
        plan.queries,
        facts,
        lambda query: _trace_fact(model, query, plan),
        result_type=TIEResult,
        record=plan.record(),
        out=out,
        overwrite=overwrite,
        shard=shard,
        progress=progress,
        label=label,
    )
    unknown = []
    for query, done in zip([plan.queries[i] for i in _mine(len(facts), shard)], results):
        said = _unknown_answer(model, query, done.clean_tokens[0])
        if said is not None:
            unknown.append(
                (fact_key(query.fact), said, query.fact.answer, float(done.lp_clean[0, -1]))
            )
    _warn_unknown(unknown, len(results))
    result = TIEResult.concat(results)
    stats = work.to_dict() | resume
    extra = {"unknown_facts": [u[0] for u in unknown], "engine_stats": stats}
    return dataclasses.replace(result, config=result.config | extra)


def _mine(n: int, shard: tuple[int, int] | None) -> range:
    return range(n) if shard is None else range(shard[0], n, shard[1])


def _trace_pair(model, facts, neighbours, config: TraceConfig, **run: Any) -> TIEPair:
    """``trace_tie(model, facts, neighbours=...)``: both sets under one ν and one config,
    each in its own ``out`` subdirectory (``forget/``, ``neighbours/``)."""
    if run["shard"] is not None:
        raise ValueError(
            "neighbours= cannot be combined with shard=: trace each set in its own sharded run "
            "with the same nu= (tt.Corruption().resolve_nu over both sets)"
        )
    facts = as_facts(facts, "trace_tie")
    neighbours = as_facts(neighbours, "trace_tie(neighbours=...)")
    corruption = config.corruption
    if corruption.nu is None:  # one ν over both sets, so their effects are comparable
        both = [encode_query(model, f, mentions=corruption.mentions) for f in [*facts, *neighbours]]
        config = config.override(nu=corruption.resolve_nu(model, both))
    out, progress = run["out"], run["progress"]
    parts = {}
    for name, part in (("forget", facts), ("neighbours", neighbours)):
        parts[name] = trace_tie(
            model,
            part,
            config,
            out=None if out is None else Path(out) / name,
            overwrite=run["overwrite"],
            progress=f"TIE {name}, seed {corruption.seed}" if progress is True else progress,
        )
    return TIEPair(forget=parts["forget"], neighbours=parts["neighbours"])


def _warn_idle(queries: Sequence[Query], config: TraceConfig) -> None:
    """Warn when the schedule leaves steps with no answer position to commit (SPEC §4)."""
    idle = []
    for q in queries:
        config.sampler.check_shape(len(q.answer_ids), config.steps)
        counts = config.sampler.expected_counts(len(q.answer_ids), config.steps)
        if counts is None:  # data-dependent counts (threshold, Dream's origin)
            continue
        done, n_idle = 0, 0
        for n in counts:
            n_idle += done >= len(q.answer_ids)
            done += n
        if n_idle:
            idle.append((fact_key(q.fact), n_idle, len(q.answer_ids)))
    if not idle:
        return
    worst = max(idle, key=lambda t: t[1])
    warnings.warn(
        f"steps={config.steps} exceeds the answer length of {len(idle)} of {len(queries)} facts: "
        f"up to {worst[1]} of the {config.steps} steps have no answer position left to decide "
        f"(fact {worst[0]!r}: {worst[2]} answer tokens). Under lp='frozen' their TIE is 0 "
        f"exactly (greyed in Figure 2); under lp='raw' they read the model's untrained output "
        f"at visible positions. Use steps ≤ the answer length to give every step a decision.",
        stacklevel=4,
    )
