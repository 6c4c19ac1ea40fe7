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

import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..core._guards import as_int, as_ints, as_real, finite, require_model
from ..core._io import atomic_write_text
from ..core.backbones import MODULES
from ..core.context import ForwardContext
from ..core.errors import NonFiniteActivationError
from ..core.facts import Fact, as_facts
from ..core.results import ResultFileError, TIEPair, TIEResult, tie_from_ie
from ..core.sampler import (
    check_lp_mode,
    check_target,
    target_logprob,
)
from .attribution import attribution_rows, site_outputs
from .budget import default_budget, parse_memory, rows_per_forward
from .patching import (
    Capture,
    Query,
    SweepSettings,
    all_sites,
    encode_query,
    fact_key,
    patched_forward,
    run_patched,
)
from .ranks import rank_zero_first

#: Sweep modes of :func:`trace_tie`.
MODES: tuple[str, ...] = ("exact", "immediate", "attribution")


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


@dataclass(frozen=True)
class TraceConfig(SweepSettings):
    """Settings of a TIE trace (validated on construction, recorded in the result).

    Attributes:
        modules, layers, noise_scale, nu, replace, n_noise, seed, mentions: Sites, corruption
            and the subject mentions corrupted (see
            :class:`~tie_tracing.tracing.patching.SweepSettings`).
        steps: ``T`` denoising steps.
        decay: ``γ`` of Eq. 4, in ``(0, 1]``.
        temperature: Sampler temperature (0: argmax commits; > 0: Gumbel noise from
            ``(seed, step)``, the same for every run of a fact).
        block_length: Semi-autoregressive block size of the sampler (default: one block).
        lp: ``"frozen"`` (default) or ``"raw"``: how ``LP`` reads committed positions (SPEC §4).
        target: ``"answer"`` (default) or ``"object"``: the positions ``LP`` sums over (SPEC §5).
        mode: ``"exact"`` (default: Eq. 4 over every later step), ``"immediate"`` (``IE`` at
            the patched step only, exact) or ``"attribution"`` (its first-order estimate);
            see :func:`trace_tie`.
        horizon: Follow each divergent future at most this many steps after its patch
            (``None``: to the end, exact); ``mode="exact"`` only.
        sampler: The sampler config (:mod:`tie_tracing.core.samplers`; default
            ``LLaDASampler(temperature=temperature, block_length=block_length)``), recorded
            as ``to_dict()["sampler"]``; ``temperature`` and ``block_length`` are set from it.
    """

    steps: int = 8
    decay: float = 0.5
    temperature: float = 0.0
    block_length: int | None = None
    lp: str = "frozen"
    target: str = "answer"
    mode: str = "exact"
    horizon: int | None = None
    sampler: Any = None

    def __post_init__(self) -> None:
        from ..core.samplers import resolve_sampler

        for name in ("steps", "block_length", "horizon"):
            object.__setattr__(self, name, as_int(getattr(self, name)))
        for name in ("decay", "temperature"):
            object.__setattr__(self, name, as_real(getattr(self, name)))
        finite("temperature", self.temperature, "of the sampler")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if self.block_length is not None and (
            not isinstance(self.block_length, int) or self.block_length < 1
        ):
            raise ValueError(
                f"block_length must be an integer ≥ 1 or None, got {self.block_length!r}"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        rule = resolve_sampler(
            self.sampler, temperature=self.temperature or None, block_length=self.block_length
        )
        object.__setattr__(self, "sampler", rule)
        object.__setattr__(self, "temperature", float(getattr(rule, "temperature", 0.0)))
        object.__setattr__(self, "block_length", getattr(rule, "block_length", None))
        super().__post_init__()
        if not isinstance(self.decay, (int, float)) or not 0 < self.decay <= 1:
            raise ValueError(f"decay must lie in (0, 1], got {self.decay}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        check_lp_mode(self.lp)
        check_target(self.target)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.horizon is not None:
            if isinstance(self.horizon, bool) or not isinstance(self.horizon, int):
                raise ValueError(f"horizon must be an integer ≥ 0 or None, got {self.horizon!r}")
            if self.horizon < 0:
                raise ValueError(f"horizon must be ≥ 0 (steps after the patch), got {self.horizon}")
            if self.mode != "exact":
                raise ValueError(
                    f"horizon applies to mode='exact' only (mode={self.mode!r} follows no future)"
                )
        if self.mode == "attribution" and rule.doubles_batch:
            raise ValueError(
                "mode='attribution' differentiates one plain forward; a CFG sampler "
                "(cfg_scale > 0) runs a guided pair: use mode='immediate' or 'exact'"
            )

    def to_dict(self) -> dict:
        """JSON-ready settings; ``"sampler"`` is the sampler's own ``to_dict()``."""
        d = super().to_dict()
        d["sampler"] = self.sampler.to_dict()
        return d

    @property
    def limited(self) -> bool:
        """Whether some later step may be left out (a horizon shorter than the trajectory)."""
        return self.horizon is not None and self.horizon < self.steps - 1


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

    def __init__(
        self,
        corrupt_states: torch.Tensor,
        query_ids: torch.Tensor,
        corrupt_terms: torch.Tensor,
        *,
        answer_start: int,
        mask_id: int,
        weight: torch.Tensor,
        lp: str,
    ):
        self.nodes: list[_Node] = []
        self.memo: dict[tuple[int, int, bytes], int] = {}
        self.p, self.mask_id, self.weight, self.lp = answer_start, mask_id, weight, lp
        n_draws, steps, _ = corrupt_states.shape
        self.steps = steps
        self.corrupt: list[list[int]] = []
        for n in range(n_draws):
            ids = []
            for j in range(steps):
                before = query_ids if j == 0 else corrupt_states[n, j - 1]
                ids.append(self._add(n, j, before, tl=corrupt_terms[n, j]))
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

    def successor(self, draw: int, step: int, state: torch.Tensor) -> int | None:
        """The node that continues from ``state`` before ``step`` (None past the end)."""
        if step >= self.steps:
            return None
        return self._add(draw, step, state)

    def step_lp(
        self, tl: torch.Tensor, state: torch.Tensor, frozen: torch.Tensor | None
    ) -> tuple[float, torch.Tensor]:
        """``LP`` of one forward and the frozen terms after it (SPEC §4).

        The rule of :func:`~tie_tracing.core.sampler.step_logprobs`, for one 1-D step: written out
        because it runs once per patch row and later step, where the general function's
        reshaping costs more than the arithmetic. Every ``LP`` of a fact's sweep (clean,
        corrupted, patched, continued) goes through here, so equal inputs give bit-equal
        values and an effect that is zero is exactly 0.
        """
        if self.lp == "frozen":
            masked = state[self.p :] == self.mask_id
            frozen = tl if frozen is None else torch.where(masked, tl, frozen)
            return float((frozen * self.weight).sum()), frozen
        return float((tl * self.weight).sum()), tl

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


def _trace_one(
    model,
    query: Query,
    config: TraceConfig,
    nu: float,
    sites,
    stats: dict,
    batch_size: int | None,
    budget: int,
) -> dict:
    """All tensors of one fact's trace (see :class:`~tie_tracing.core.results.TIEResult`).

    ``batch_size`` rows per forward, or (``None``) as many as ``budget`` bytes allow.
    """
    fid = fact_key(query.fact)
    steps, n_draws = config.steps, config.n_noise
    device = model.param_device
    p = query.answer_start
    subject = torch.tensor(query.subject_positions, device=device)
    corruption = config.corruption(nu)
    noise = corruption.draws(query.fact, len(subject), model.hidden_size, nu).to(device)
    # every run of the fact follows the sampler one trajectory per row, with noise keyed by
    # (seed, step): runs in one state at one step commit identically, so futures are shared
    rule = config.sampler.per_trajectory().bind(model)
    try:
        # one traced loop: row 0 clean (captures every site at S), rows 1..N corrupted
        both = run_patched(
            model,
            query,
            steps=steps,
            rows=1 + n_draws,
            corruption=corruption,
            noise=noise,
            noise_rows=range(1, 1 + n_draws),
            # attribution reads the activations in its own forwards: no capture needed
            capture=[]
            if config.mode == "attribution"
            else [Capture(layer=layer, module=m) for layer, m in sites],
            sampler=rule,
            seeds=[config.seed] * (1 + n_draws),
            lp=config.lp,
            target=config.target,
        )
    except NonFiniteActivationError as error:
        raise NonFiniteActivationError(f"fact {fid!r}: {error}") from error
    stats["forwards"] += steps
    stats["rows"] += steps * (1 + n_draws)
    stats["shapes"] += [[1 + n_draws, query.length]] * steps
    assert both.token_logprobs is not None
    terms = both.token_logprobs.float().cpu()  # [1 + N, T, A]
    clean_states = both.states[0].cpu()
    clean_h = {site: h[0] for site, h in both.captures.items()}  # [steps, |S|, d]
    corrupt_states = both.states[1:].cpu()  # [N, T, seq]
    query_ids = query.input_ids(model.mask_token_id)[0]
    weight = query.target_mask(config.target).float()
    sweep = _Sweep(
        corrupt_states,
        query_ids,
        terms[1:],
        answer_start=p,
        mask_id=model.mask_token_id,
        weight=weight,
        lp=config.lp,
    )
    clean_before = torch.cat([query_ids[None], clean_states[:-1]])  # state before each step
    frozen = None
    clean_lps = []
    for k in range(steps):
        lp_k, frozen = sweep.step_lp(terms[0, k], clean_before[k], frozen)
        clean_lps.append(lp_k)
    clean_lp = torch.tensor(clean_lps)
    corrupt_walks = [sweep.walk(sweep.corrupt[n][0], None) for n in range(n_draws)]
    lp_corrupt = torch.tensor([lps for lps, _ in corrupt_walks])
    frozen_before = [before for _, before in corrupt_walks]  # [N][T]
    targets = torch.tensor(query.answer_ids, device=device)
    n_sites = len(sites)

    def forward_rows(x, draws, row_steps, patches):
        """One traced forward of rows at (possibly different) steps; returns the raw
        per-position terms ``[rows, A]`` and the new states."""
        unique = row_steps.unique()
        logits = patched_forward(
            model,
            x.to(device),
            noise=noise[draws.to(device)],
            subject=subject,
            replace=corruption.replace,
            writes={
                site: ((rows[:, None], subject[None, :]), values)
                for site, (rows, values) in patches.items()
            },
            context=ForwardContext(
                step=int(unique[0]) if len(unique) == 1 else row_steps.to(device),
                answer_start=p,
            ),
            sampler=rule,
        )
        logits = logits[:, p:]
        stats["forwards"] += 1
        stats["rows"] += x.shape[0]
        stats["shapes"].append(list(x.shape))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        tl = target_logprob(logits, targets.expand(x.shape[0], -1), logprobs).float().cpu()
        # a NaN or +inf logit makes its position's whole log-softmax NaN, so checking the
        # target terms catches it without a pass over [rows, answer, vocab]
        if not torch.isfinite(tl).all():
            raise NonFiniteActivationError(f"fact {fid!r}: non-finite logits in the patch sweep")
        new = torch.empty_like(x)
        for k in row_steps.unique().tolist():  # each step has its own commit rule
            rows = (row_steps == k).nonzero().flatten()
            new[rows] = rule.update(
                x[rows].to(device),
                logits[rows.to(device)],
                answer_start=p,
                step=k,
                steps=steps,
                mask_id=model.mask_token_id,
                seeds=[config.seed] * len(rows),
                logprobs=logprobs[rows.to(device)],
            ).cpu()
        return tl, new

    def fact_tensors(ie_draws: torch.Tensor, changed: torch.Tensor | None) -> dict:
        """The fact's tensors from per-draw IE ``[N, sites, T, T]`` and, per patch row, whether
        its commits differed from the corrupted run's."""
        if changed is None:
            diverged = torch.full((n_sites, steps), float("nan"))
        else:
            shape = (steps, n_draws, n_sites)
            diverged = changed.view(shape).permute(1, 2, 0).float().mean(0)
        answer_slice = slice(p, p + len(query.answer_ids))
        return dict(
            ie=ie_draws.mean(0),
            diverged=diverged,
            lp_clean=clean_lp,
            lp_corrupt=lp_corrupt.mean(0),
            lp_corrupt_draws=lp_corrupt,
            clean_tokens=clean_states[:, answer_slice],
            corrupt_tokens=corrupt_states[:, :, answer_slice],
            target_mask=weight.bool(),
            object_mask=query.target_mask("answer" if query.fact.object is None else "object"),
        )

    # 2. every patch (step, draw, site) is a row: it starts from the corrupted state before
    # its step, so all of them run as rows of batched forwards (chunks of `batch_size`)
    row_step = torch.arange(steps).repeat_interleave(n_draws * n_sites)
    row_draw = torch.arange(n_draws).repeat_interleave(n_sites).repeat(steps)
    row_site = torch.arange(n_sites).repeat(steps * n_draws)
    before = torch.cat(
        [query_ids.expand(n_draws, 1, -1), corrupt_states[:, :-1]], dim=1
    )  # [N, T, seq]
    clean_by_site = [clean_h[site] for site in sites if site in clean_h]  # each [T, |S|, d]
    # under lp="frozen", a step whose input has no masked answer position commits nothing and
    # reads only frozen terms, so a patch there has IE = 0 at every later step exactly (the
    # engine would compute 0.0 for it): such rows are not run
    if config.lp == "frozen":
        open_step = (before[:, :, p:] == model.mask_token_id).any(-1)  # [N, T]
    else:
        open_step = torch.ones(n_draws, steps, dtype=torch.bool)
    active = open_step[row_draw, row_step].nonzero().flatten()
    if batch_size is None:
        batch_size = rows_per_forward(
            model, query.length, len(query.answer_ids), budget, grad=config.mode == "attribution"
        )
        if rule.doubles_batch:  # CFG runs each row with its unconditional copy
            batch_size = max(1, batch_size // 2)
    stats.setdefault("rows_per_forward", []).append(batch_size)
    if config.mode == "attribution":
        ie_draws = torch.full((n_draws, n_sites, steps, steps), float("nan"))
        ie_draws[:, :, range(steps), range(steps)] = 0.0
        pairs = open_step.nonzero()  # (draw, step) rows, each one forward + one backward
        targets_cpu = torch.tensor(query.answer_ids)
        needed = pairs[:, 1].unique()  # the clean activations of those steps, one forward
        clean_at = torch.full((steps,), -1, dtype=torch.long)
        clean_at[needed] = torch.arange(len(needed))
        clean_acts: list[torch.Tensor] = [torch.empty(0)] * len(sites)
        for lo in range(0, len(needed), batch_size):
            ks = needed[lo : lo + batch_size]
            part = site_outputs(
                model,
                clean_before[ks],
                sites=sites,
                subject=subject,
                context=ForwardContext(step=ks, answer_start=p),
            )
            clean_acts = [
                part[i] if lo == 0 else torch.cat([clean_acts[i], part[i]])
                for i in range(len(sites))
            ]
            stats["forwards"] += 1
            stats["rows"] += len(ks)
            stats["shapes"].append([len(ks), query.length])
        for lo in range(0, len(pairs), batch_size):
            d_, k_ = pairs[lo : lo + batch_size].unbind(-1)
            x = before[d_, k_]
            w = weight.expand(len(d_), -1)
            if config.lp == "frozen":
                w = w * (x[:, p:] == model.mask_token_id)
            est = attribution_rows(
                model,
                x,
                noise=noise[d_.to(device)],
                subject=subject,
                replace=corruption.replace,
                sites=sites,
                clean=[c[clean_at[k_].to(c.device)] for c in clean_acts],
                targets=targets_cpu,
                weight=w,
                context=ForwardContext(step=k_, answer_start=p),
            )
            stats["forwards"] += 1
            stats["backwards"] = stats.get("backwards", 0) + 1
            stats["rows"] += len(d_)
            stats["shapes"].append(list(x.shape))
            ie_draws[d_, :, k_, k_] = est
        return fact_tensors(ie_draws, None)  # divergence is not known: NaN
    patch_tl = torch.empty(len(row_step), len(query.answer_ids))
    patch_new = corrupt_states[row_draw, row_step].clone()  # idle rows commit nothing
    for lo in range(0, len(active), batch_size):
        chunk = active[lo : lo + batch_size]
        k_, d_, s_ = row_step[chunk], row_draw[chunk], row_site[chunk]
        patches = {}
        for si, site in enumerate(sites):
            rows = (s_ == si).nonzero().flatten()
            if len(rows):
                patches[site] = (rows.to(device), clean_by_site[si][k_[rows].to(device)])
        patch_tl[chunk], patch_new[chunk] = forward_rows(before[d_, k_], d_, k_, patches)
    # a patch run whose commits equal the corrupted run's continues on the corrupted nodes
    # (memoised by state); the others open new trajectories
    same = (patch_new == corrupt_states[row_draw, row_step]).all(-1)
    ie_draws = torch.full((n_draws, n_sites, steps, steps), float("nan"))
    if config.mode == "immediate":  # IE at the patched step only: no future is followed
        for r in active.tolist():
            n, k, s = int(row_draw[r]), int(row_step[r]), int(row_site[r])
            lp_k, _ = sweep.step_lp(patch_tl[r], before[n, k], frozen_before[n][k])
            ie_draws[n, s, k, k : k + 1] = torch.tensor([lp_k]) - lp_corrupt[n, k : k + 1]
        idle = (~open_step[row_draw, row_step]).nonzero().flatten()
        ie_draws[row_draw[idle], row_site[idle], row_step[idle], row_step[idle]] = 0.0
        return fact_tensors(ie_draws, ~same)
    # a divergent future is followed up to `deadline` (its patch step + horizon); a node shared
    # by several runs is followed as far as the furthest of them needs
    reach = steps if config.horizon is None else config.horizon
    deadline: dict[int, int] = {}
    patch_next: list[int | None] = [None] * len(row_step)
    for r in active.tolist():
        nxt = sweep.successor(int(row_draw[r]), int(row_step[r]) + 1, patch_new[r])
        patch_next[r] = nxt
        if nxt is not None:
            deadline[nxt] = max(deadline.get(nxt, -1), int(row_step[r]) + reach)
    # 3. the distinct futures of diverged runs, step by step (runs reaching one state share it)
    for j in range(1, steps):
        live = [i for i in sweep.live.pop(j, []) if deadline.get(i, -1) >= j]
        for lo in range(0, len(live), batch_size):
            nodes = live[lo : lo + batch_size]
            x = torch.stack([sweep.nodes[i].state for i in nodes])  # type: ignore[misc]
            draws = torch.tensor([sweep.nodes[i].draw for i in nodes])
            tl, new = forward_rows(x, draws, torch.full((len(nodes),), j), {})
            for i, node_id in enumerate(nodes):
                sweep.nodes[node_id].tl = tl[i]
                nxt = sweep.successor(sweep.nodes[node_id].draw, j + 1, new[i])
                sweep.nodes[node_id].next = nxt
                if nxt is not None:
                    deadline[nxt] = max(deadline.get(nxt, -1), deadline[node_id])
    stats["divergent_continuations"] += sum(n.tl is not None for n in sweep.nodes) - n_draws * steps
    # IE(k, k') = LP_patched(k') - LP_corrupt(k'): the patched forward at k, then its future
    # (the corrupted nodes when it committed as the corrupted run did) with the frozen terms
    # it carries: under lp="frozen" a position committed in the patched forward keeps that
    # forward's value, so even a shared future can have a non-zero effect. Beyond a horizon
    # the future of a divergent run ends where it was not followed: IE stays NaN there
    for r in active.tolist():
        n, k, s = int(row_draw[r]), int(row_step[r]), int(row_site[r])
        lp_k, frozen = sweep.step_lp(patch_tl[r], before[n, k], frozen_before[n][k])
        lps = [lp_k] + sweep.walk(patch_next[r], frozen)[0]
        ie_draws[n, s, k, k : k + len(lps)] = torch.tensor(lps) - lp_corrupt[n, k : k + len(lps)]
    idle = (~open_step[row_draw, row_step]).nonzero().flatten().tolist()
    for r in idle:
        n, k, s = int(row_draw[r]), int(row_step[r]), int(row_site[r])
        ie_draws[n, s, k, k:] = 0.0
    return fact_tensors(ie_draws, ~same)


def _to_result(
    model, query: Query, tensors: dict, config: TraceConfig, nu: float, sites, layers
) -> TIEResult:
    """Arrange one fact's tensors as a one-fact :class:`TIEResult`."""
    modules = config.modules
    n_l, n_m, steps = len(layers), len(modules), config.steps
    index = {site: i for i, site in enumerate(sites)}
    order = [index[(layer, m)] for layer in layers for m in modules]
    ie = tensors["ie"][order].reshape(n_l, n_m, steps, steps).permute(0, 2, 1, 3)  # [l, k, m, k']
    diverged = tensors["diverged"][order].reshape(n_l, n_m, steps).permute(0, 2, 1)
    ie = ie[None].contiguous()
    cfg = config.to_dict() | {
        "nu": nu,
        "normalized": False,
        "mask_token_id": int(model.mask_token_id),
    }
    if config.mode == "exact":
        cfg["horizon_weight"] = horizon_weight(steps, config.decay, config.horizon)
    # a horizon, or a mode that reads the patched step only, leaves later steps NaN: Eq. 4
    # then weighs the steps it has (for the immediate modes, TIE is IE at k' = k)
    policy = "omit" if config.limited or config.mode != "exact" else "propagate"
    fact = query.fact
    return TIEResult(
        tie=tie_from_ie(ie, config.decay, nan_policy=policy),
        ie=ie,
        lp_clean=tensors["lp_clean"][None],
        lp_corrupt=tensors["lp_corrupt"][None],
        lp_corrupt_draws=tensors["lp_corrupt_draws"][None],
        clean_tokens=tensors["clean_tokens"][None].long(),
        corrupt_tokens=tensors["corrupt_tokens"][None].long(),
        diverged=diverged[None].contiguous(),
        target_mask=tensors["target_mask"][None],
        object_mask=tensors["object_mask"][None],
        fact_ids=(fact_key(fact),),
        subjects=(fact.subject,),
        questions=(fact.question,),
        answers=(fact.answer,),
        layers=tuple(layers),
        steps=tuple(range(steps)),
        modules=tuple(modules),
        config=cfg,
        seeds=(config.seed,),
        model_id=str(model.name),
        version=__version__,
    )


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
    model, facts: Sequence[Fact] | Fact, *, neighbours: None = None, **settings: Any
) -> TIEResult: ...


@overload
def trace_tie(
    model, facts: Sequence[Fact] | Fact, *, neighbours: Sequence[Fact] | Fact, **settings: Any
) -> TIEPair: ...


def trace_tie(  # type: ignore[misc]
    model,
    facts: Sequence[Fact] | Fact,
    *,
    neighbours: Sequence[Fact] | Fact | None = None,
    steps: int = 8,
    modules: Sequence[str] | str = MODULES,
    layers: Sequence[int] | int | None = None,
    noise_scale: float = 3.0,
    nu: float | None = None,
    replace: bool = False,
    n_noise: int = 1,
    decay: float = 0.5,
    seed: int = 0,
    temperature: float | None = None,
    block_length: int | None = None,
    lp: str = "frozen",
    target: str = "answer",
    sampler=None,
    mentions: str = "all",
    mode: str = "exact",
    horizon: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | str = True,
    max_memory: int | str | None = None,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
) -> TIEResult | TIEPair:
    """Diffusion-time causal tracing: TIE of every ``(layer, step, module)`` for each fact.

    Args:
        model: A :class:`~tie_tracing.core.model.TracedModel` of an MDLM.
        facts: Facts whose subject occurs in the question.
        neighbours: Facts to keep (Eq. 5's ``N``), traced with the same settings and the
            same ``ν`` (resolved over both sets unless ``nu`` is given); the call then
            returns a :class:`~tie_tracing.core.results.TIEPair` that
            ``select_coordinate(pair, beta=...)`` takes as it is. With ``out``, the two
            sweeps go to ``out/forget`` and ``out/neighbours``.
        steps: ``T`` denoising steps (default 8).
        modules: Sites to patch (subset of ``resid``, ``attn``, ``mlp``).
        layers: Layers to patch (default all).
        noise_scale: ``ν = noise_scale · σ_emb`` with ``σ_emb`` pooled over the subject
            tokens of ``facts`` (ROME's 3σ rule). ``nu`` fixes ``ν`` instead; give it when
            results of different fact sets must be comparable.
        replace: Replace the subject embeddings with noise instead of adding it.
        n_noise: Noise draws per fact (their IE is averaged).
        decay: ``γ`` of Eq. 4.
        seed: Seed of the noise (and of the Gumbel noise when ``temperature > 0``).
        temperature: Sampler temperature (> 0: every run of a fact draws the same Gumbel
            noise at a step, keyed by ``(seed, step)``); a shorthand of
            ``LLaDASampler(temperature=...)``.
        block_length: Semi-autoregressive block size (LLaDA-Instruct style sampling); a
            shorthand of ``LLaDASampler(block_length=...)``.
        sampler: A :mod:`~tie_tracing.core.samplers` config, registry name or dict: LLaDA's
            (``remasking``, blocks, CFG, EOS switches, fixed-``T`` threshold, explicit
            counts) or Dream's (``alg``, ``alg_temp``, ``top_p``/``top_k``). Every sampler
            is traced exactly: its random choices are keyed by ``(seed, step)``, so runs in
            one state at one step commit identically. Samplers that carry state between
            steps (KV caches, re-masking, a varying number of forwards) raise
            :class:`~tie_tracing.core.errors.UnsupportedSamplerError`. Recorded in
            ``result.config["sampler"]``.
        lp: ``"frozen"`` (default): a committed answer position keeps the log-probability of
            the forward that committed it, so ``LP`` measures only what the trajectory still
            has to decide and a step with no masked target position left has ``TIE = 0``
            exactly. ``"raw"``: the literal reading at every position whatever its commit
            state (an MDLM's output at a visible position is untrained; for comparison).
        target: ``"answer"`` (default): ``LP`` sums over the whole answer span; ``"object"``:
            over the object's tokens only (facts must record ``Fact.object``).
        mentions: ``"all"`` (default): every mention of the subject in the question is
            corrupted and patched; ``"first"``: only the first (ROME's rule).
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
        mode: What is computed per cell:

            * ``"exact"`` (default): Eq. 4 over every later step, each divergent future
              followed (see ``horizon``).
            * ``"immediate"``: ``IE`` at the patched step only (``k' = k``), exactly; no future
              is run, so it costs the clean and corrupted runs plus ``T·N·L·M`` patch rows.
              ``.tie`` holds ``IE_k`` (the ``γ → 0`` limit of Eq. 4); ``.ie`` is NaN at
              ``k' > k``.
            * ``"attribution"``: a first-order estimate of the immediate effect, one forward
              and one backward per step and draw for all cells at once
              (:mod:`tie_tracing.tracing.attribution`: ``(h_clean − h_corrupt) · ∂LP_k/∂h`` at the
              corrupted forward). Same layout as ``"immediate"``; ``.diverged`` is NaN.
        horizon: Follow each divergent future at most ``h`` steps after its patch
            (``mode="exact"`` only). Non-divergent runs, and divergent ones that rejoin a
            followed trajectory, are still exact at every later step; where a future was not
            followed, ``.ie`` is NaN and ``.tie`` weighs the later steps it has (Eq. 4 with
            the missing weights left out and the rest renormalised). A cell at step ``k``
            then leaves out at most ``w_h(k) = Σ_{j=h+1}^{T-1-k} γ^j / Σ_{j=0}^{T-1-k} γ^j
            ≤ γ^{h+1}`` of its weight, and ``|TIE_h − TIE| ≤ w_h(k) · max_{k'>k+h}
            |IE_{k'} − TIE_h|``. ``result.config`` records ``horizon`` and
            ``horizon_weight`` (``max_k w_h(k)``, :func:`horizon_weight`). ``None`` (default)
            or ``h ≥ T - 1`` is the exact sweep, bit for bit. (With a horizon or an immediate
            mode, normalise with ``result.normalized(nan_policy="omit")``.)
        progress: Show a progress bar over facts (labelled with the mode and seed; a string
            is the label).
        max_memory: Memory budget of one forward, bytes or a string such as ``"2GB"``;
            rows per forward are chosen from it (:mod:`tie_tracing.tracing.budget`). Default: 90% of
            the free CUDA memory on a GPU, half the available RAM on CPU. It changes speed
            and memory, never results.
        batch_size: Rows per forward, overriding ``max_memory`` (results are the same).
        shard: ``(rank, world)``: trace only the facts ``i`` with ``i % world == rank`` into
            ``out`` (required) and return those; the fact-sharded sweep of
            :mod:`tie_tracing.tracing.distributed` runs one shard per process and merges them by
            resuming ``out``. ``ν`` is still resolved on all ``facts``.

    Returns:
        A :class:`~tie_tracing.core.results.TIEResult`: ``.tie`` ``[fact, layer, step, module]``,
        ``.ie`` ``[fact, layer, step, module, later_step]``, baselines, tokens, config; with
        ``neighbours``, a :class:`~tie_tracing.core.results.TIEPair` of two of them.

    Warns:
        UserWarning: when ``steps`` exceeds the answer length of some facts, naming how many
            steps have nothing to decide (their TIE is 0 under ``lp="frozen"``), and once,
            listing them, for the facts the model does not know.

    Raises:
        SubjectNotFoundError: a fact's subject is not in its prompt (names the fact).
        ObjectNotFoundError: a fact's object is not in its encoded answer (names the fact).
        NonFiniteActivationError: NaN/inf appeared (names the fact).
        ValueError: bad ``steps``, ``modules``, ``layers``, ``decay``, ``lp``, ``target`` or
            noise settings; ``target="object"`` with facts that record no object (names them).

    Example:
        >>> model = tt.load_model("tiny-mdlm")                              # doctest: +SKIP
        >>> facts = tt.load_facts("tiny", split="forget01")[:8]             # doctest: +SKIP
        >>> result = tt.trace_tie(model, facts)                             # doctest: +SKIP
        >>> result.mean().shape   # [layer, step, module]                   # doctest: +SKIP
        torch.Size([6, 8, 3])
    """
    require_model(model, "trace_tie")
    if neighbours is not None:
        return _trace_pair(model, facts, neighbours, dict(locals()))
    if model.is_causal:
        raise ValueError(
            f"{model.name} is causal (AR): use tt.trace_positional for ROME-style tracing"
        )
    batch_size = as_int(batch_size)
    if isinstance(max_memory, float) and not math.isfinite(max_memory):
        raise ValueError(
            f"max_memory must be a finite number of bytes or a size such as '2GB', got "
            f"{max_memory!r}; leave it None for the default budget"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer ≥ 1 or None, got {batch_size!r}")
    budget = (
        parse_memory(max_memory) if max_memory is not None else default_budget(model.param_device)
    )
    if shard is not None:
        rank, world = shard
        if not (
            isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world
        ):
            raise ValueError(f"shard must be (rank, world) with 0 ≤ rank < world, got {shard!r}")
        if out is None:
            raise ValueError("shard= writes its facts to `out`: give an output directory")
    facts = as_facts(facts, "trace_tie")
    if shard is not None and shard[0] >= len(facts):
        raise ValueError(
            f"shard {shard!r} holds none of the {len(facts)} facts: use at most {len(facts)} "
            "shards (processes)"
        )
    ids = [fact_key(f) for f in facts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate fact ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    layer_spec: Any = as_ints(layers)  # NumPy integers are layers too
    config = TraceConfig(
        steps=steps,
        modules=(modules,) if isinstance(modules, str) else tuple(modules),
        layers=None
        if layer_spec is None
        else ((layer_spec,) if isinstance(layer_spec, int) else tuple(layer_spec)),
        noise_scale=noise_scale,
        nu=nu,
        replace=replace,
        n_noise=n_noise,
        decay=decay,
        seed=seed,
        lp=lp,
        target=target,
        mentions=mentions,
        mode=mode,
        horizon=horizon,
        **_sampler_settings(model, sampler, temperature, block_length),
    )
    if target == "object":
        missing = [fact_key(f) for f in facts if f.object is None]
        if missing:
            raise ValueError(
                f"target='object' needs facts that record an object (Fact.object); "
                f"{len(missing)} do not: {missing[:10]}{' …' if len(missing) > 10 else ''}. "
                "Use target='answer' for them"
            )
    layer_list = list(range(model.num_layers)) if config.layers is None else list(config.layers)
    sites = all_sites(model, config.modules, layer_list)
    queries = [encode_query(model, f, mentions=config.mentions) for f in facts]
    _warn_idle(queries, config)
    nu_value = config.corruption().resolve_nu(model, queries)
    facts_all = [q.fact for q in queries]
    store = None
    if out is not None and shard is None:
        store = _Store(out, config, nu_value, model, facts=facts_all, overwrite=overwrite)
    elif out is not None and shard is not None:  # one shard: rank 0 prepares `out` first
        with rank_zero_first():
            first = shard[0] == 0  # the others leave the files of running writes alone
            store = _Store(
                out,
                config,
                nu_value,
                model,
                facts=facts_all,
                overwrite=overwrite and first,
                clean=first,
            )
    stats: dict = {"forwards": 0, "rows": 0, "divergent_continuations": 0, "shapes": []}
    results, unknown = [], []
    mine = range(len(queries)) if shard is None else range(shard[0], len(queries), shard[1])
    if store is not None:
        stats["resumed"] = sum(store.has(i) for i in mine)
        stats["removed"] = [p.name for p in store.removed]
        if progress:
            _note_resume(store, stats["resumed"], len(mine))
    label = progress if isinstance(progress, str) else f"TIE {config.mode}, seed {config.seed}"
    for i in tqdm(mine, desc=label, unit="fact", disable=not progress):
        query = queries[i]
        done = store.get(i, query.fact) if store else None
        if done is None:
            tensors = _trace_one(model, query, config, nu_value, sites, stats, batch_size, budget)
            done = _to_result(model, query, tensors, config, nu_value, sites, layer_list)
            if store:
                done = dataclasses.replace(
                    done, config=done.config | {"fact": fact_record(query.fact)}
                )
                store.put(i, done)
        if "fact" in done.config:  # the resume record; the facts are in the result's fields
            done = dataclasses.replace(
                done, config={k: v for k, v in done.config.items() if k != "fact"}
            )
        said = _unknown_answer(model, query, done.clean_tokens[0])
        if said is not None:
            unknown.append((ids[i], said, query.fact.answer, float(done.lp_clean[0, -1])))
        results.append(done)
    _warn_unknown(unknown, len(mine))
    result = TIEResult.concat(results)
    extra = {"unknown_facts": [u[0] for u in unknown], "engine_stats": stats}
    return dataclasses.replace(result, config=result.config | extra)


def _note_resume(store: _Store, done: int, total: int) -> None:
    """Say, before the bar starts, how far a resumed sweep already is and what was replaced."""
    if store.removed:
        tqdm.write(
            f"overwrite: removed {len(store.removed)} outdated file(s) from {store.dir} "
            "(their facts or settings changed); tracing them again",
            file=sys.stderr,
        )
    if done:
        tqdm.write(f"resuming: {done}/{total} facts already traced in {store.dir}", file=sys.stderr)


def _trace_pair(model, facts, neighbours, settings: dict) -> TIEPair:
    """``trace_tie(model, facts, neighbours=...)``: both sets under one ν and one set of
    settings, each in its own ``out`` subdirectory (``forget/``, ``neighbours/``)."""
    if settings["shard"] is not None:
        raise ValueError(
            "neighbours= cannot be combined with shard=: trace each set in its own sharded run "
            "with the same nu= (tt.Corruption().resolve_nu over both sets)"
        )
    facts = as_facts(facts, "trace_tie")
    neighbours = as_facts(neighbours, "trace_tie(neighbours=...)")
    nu = settings["nu"]
    if nu is None:  # one ν over both sets, so their effects are comparable
        probe = SweepSettings(
            noise_scale=settings["noise_scale"], n_noise=1, mentions=settings["mentions"]
        )
        queries = [encode_query(model, f, mentions=probe.mentions) for f in [*facts, *neighbours]]
        nu = probe.corruption().resolve_nu(model, queries)
    out, progress = settings["out"], settings["progress"]
    seed = settings["seed"]
    common = {k: v for k, v in settings.items() if k not in ("model", "facts", "neighbours")}
    parts = {}
    for name, part in (("forget", facts), ("neighbours", neighbours)):
        parts[name] = trace_tie(
            model,
            part,
            **common
            | {
                "nu": nu,
                "out": None if out is None else Path(out) / name,
                "progress": f"TIE {name}, seed {seed}" if progress is True else progress,
            },
        )
    return TIEPair(forget=parts["forget"], neighbours=parts["neighbours"])


def _sampler_settings(model, sampler, temperature, block_length) -> dict:
    """TraceConfig's sampler settings: the resolved sampler (checked against the model and
    refused when exact TIE cannot trace it) and the shorthands it implies."""
    from ..core.samplers import resolve_sampler

    rule = resolve_sampler(sampler, temperature=temperature, block_length=block_length, model=model)
    return dict(
        sampler=rule,
        temperature=float(getattr(rule, "temperature", 0.0)),
        block_length=getattr(rule, "block_length", None),
    )


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
        stacklevel=3,
    )


def fact_record(fact: Fact) -> dict:
    """Every field of ``fact`` as JSON-ready values (what a resumed sweep must match)."""
    record = dataclasses.asdict(fact)
    record["perturbed_answers"] = list(fact.perturbed_answers)
    return record


class _Store:
    """A resumable sweep directory: ``config.json`` plus one result file per finished fact.

    Resuming is keyed by content, not by position: ``config.json`` records the settings, the
    model's name and its fingerprint (configuration and sampled weights, so a checkpoint
    retrained at the same path is noticed), and every fact file records all fields of its
    fact. Any difference is an error that names what changed, unless ``overwrite=True``:
    then other settings or weights discard every fact file, and otherwise only the files of
    facts that changed or left the list are removed (a fact found at another position is
    moved there). Temporary files left by a killed write are removed. ``removed`` lists the
    files this replaced.
    """

    def __init__(
        self,
        out,
        config: TraceConfig,
        nu: float,
        model,
        *,
        facts: Sequence[Fact],
        overwrite: bool = False,
        clean: bool = True,
    ):
        from ..core.fingerprint import model_fingerprint

        self.dir = Path(out)
        if self.dir.exists() and not self.dir.is_dir():
            raise NotADirectoryError(f"out={self.dir} exists and is not a directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.dir, os.W_OK):
            raise PermissionError(f"out={self.dir} is not writable: choose another directory")
        for tmp in self.dir.glob(".*.tmp") if clean else ():  # killed atomic writes
            tmp.unlink(missing_ok=True)
        self.removed: list[Path] = []
        meta = {
            "config": config.to_dict() | {"nu": nu},
            "model_id": str(model.name),
            "model_fingerprint": model_fingerprint(model),
        }
        meta = json.loads(json.dumps(meta))
        path = self.dir / "config.json"
        if path.exists():
            old = self._read_config(path, overwrite)
            changes = ["its config.json is unreadable"] if old is None else []
            changes = changes or _describe_changes(old or {}, meta)
            if changes and not overwrite:
                nu_note = (
                    " (unless nu= is given, ν = noise_scale · σ_emb is resolved over the facts "
                    "traced: a fixed nu= keeps it when the fact list changes)"
                    if any(c.startswith("settings") and "nu:" in c for c in changes)
                    else ""
                )
                raise ValueError(
                    f"{self.dir} holds a sweep of another experiment ({'; '.join(changes)}); "
                    f"use another `out` directory, or overwrite=True to discard it{nu_note}"
                )
            if changes:  # every fact there was traced under other settings
                self._remove(sorted(self.dir.glob("fact_*.safetensors")))
                atomic_write_text(path, json.dumps(meta, indent=1))
        else:
            atomic_write_text(path, json.dumps(meta, indent=1))
        if overwrite and clean:
            self._reconcile(facts)
        self._cache: dict[int, TIEResult] = {}

    @staticmethod
    def _read_config(path: Path, overwrite: bool) -> dict | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data
        except (OSError, UnicodeDecodeError, ValueError) as error:
            if overwrite:
                return None
            raise ResultFileError(
                f"{path} is unreadable ({error}): the settings of the sweep in {path.parent} "
                "are unknown, so its fact files cannot be trusted; rerun with overwrite=True "
                "to start that directory again, or use another `out` directory"
            ) from None

    def _path(self, i: int) -> Path:
        return self.dir / f"fact_{i:05d}.safetensors"

    def _remove(self, paths: Sequence[Path]) -> None:
        for old in paths:
            old.unlink(missing_ok=True)
            self.removed.append(old)

    def _reconcile(self, facts: Sequence[Fact]) -> None:
        """``overwrite``: keep the files whose fact is still wanted (moved to its position),
        remove the others (changed, unreadable, or no longer in the list)."""
        wanted = {_record_key(fact_record(f)): i for i, f in enumerate(facts)}
        files = sorted(self.dir.glob("fact_*.safetensors"))
        where = {file: wanted.get(_stored_fact_key(file) or "") for file in files}
        keep: dict[Path, Path] = {}
        claimed = set()
        for file, i in where.items():  # files already in place
            if i is not None and self._path(i) == file:
                keep[file] = file
                claimed.add(i)
        for file, i in where.items():  # a wanted fact at another position: move it there
            if file not in keep and i is not None and i not in claimed:
                keep[file] = self._path(i)
                claimed.add(i)
        self._remove([file for file in files if file not in keep])
        staged = {}
        for src, dst in keep.items():  # two passes: a move may free another's target
            if src != dst:
                tmp = src.with_name(f"{src.stem}.to-{dst.stem}.part")
                os.replace(src, tmp)
                staged[tmp] = dst
        for tmp, dst in staged.items():
            os.replace(tmp, dst)

    def has(self, i: int) -> bool:
        return i in self._cache or self._path(i).exists()

    def get(self, i: int, fact: Fact) -> TIEResult | None:
        if i in self._cache:
            return self._cache[i]
        if not self._path(i).exists():
            return None
        try:
            result = TIEResult.load(self._path(i))
        except ResultFileError as error:
            reason = str(error).removeprefix(str(self._path(i))).lstrip(": ")
            raise ResultFileError(
                f"{self._path(i)}, a fact file of the resumable sweep in {self.dir}, is "
                f"unreadable (it {reason}); delete that file and rerun to trace its fact "
                "again, or rerun with overwrite=True"
            ) from None
        fid = fact_key(fact)
        if result.fact_ids != (fid,):
            raise ValueError(
                f"{self._path(i)} holds fact {result.fact_ids[0]!r}, not {fid!r}: the fact list "
                f"changed since the sweep started; use another `out` directory or overwrite=True"
            )
        stored = result.config.get("fact")
        current = json.loads(json.dumps(fact_record(fact)))
        if stored != current:
            changed = sorted(
                k for k in set(current) | set(stored or {})
                if (stored or {}).get(k) != current.get(k)
            )  # fmt: skip
            raise ValueError(
                f"{self._path(i)}: fact {fid!r} changed since it was traced (fields: "
                f"{', '.join(changed)}); use another `out` directory or overwrite=True"
            )
        self._cache[i] = result
        return result

    def put(self, i: int, result: TIEResult) -> None:
        result.save(self._path(i))
        self._cache[i] = result


def _record_key(record: dict) -> str:
    return json.dumps(json.loads(json.dumps(record)), sort_keys=True)


def _stored_fact_key(path: Path) -> str | None:
    """The fact record a sweep's fact file carries (its header only), or ``None`` when the
    file is unreadable or carries none."""
    from ..core._io import read_header_fields

    try:
        fields = read_header_fields(path)
        record = fields["config"]["fact"]
    except (ResultFileError, KeyError, TypeError):
        return None
    return _record_key(record) if isinstance(record, dict) else None


def _describe_changes(old: dict, new: dict) -> list[str]:
    """What differs between two ``config.json`` records, in words."""
    out = []
    if old.get("model_id") != new.get("model_id"):
        out.append(f"model {old.get('model_id')!r} → {new.get('model_id')!r}")
    if old.get("model_fingerprint") != new.get("model_fingerprint"):
        out.append(
            f"the model's weights or configuration changed (fingerprint "
            f"{old.get('model_fingerprint')} → {new.get('model_fingerprint')})"
        )
    a, b = old.get("config", {}), new.get("config", {})

    def same(x: Any, y: Any) -> bool:  # ν is a float sum: its last bits follow the fact order
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-6)
        return x == y

    keys = sorted(k for k in set(a) | set(b) if not same(a.get(k), b.get(k)))
    if keys:
        out.append("settings " + ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys))
    return out
