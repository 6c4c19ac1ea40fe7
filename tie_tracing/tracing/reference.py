"""Deliberately slow references for tracing, written from SPEC §4–§6: plain PyTorch hooks, no
nnsight, and nothing shared with the engine it checks but the model's forward, the query's
encoding (:func:`~tie_tracing.tracing.patching.encode_query`) and the random numbers (the
corruption's draws, and the sampler's keyed uniforms, :func:`~tie_tracing.core.commit.step_noise_generator`:
common random numbers make the two comparable draw for draw).

:func:`reference_ie` runs one full corrupted trajectory per coordinate ``(draw, layer, step,
module)``, batch size 1, exactly as SPEC §5 defines the patch run: the corrupted run except
that at step ``k`` the site's output at the subject positions is replaced by the clean run's.
It costs ``L · M · T²`` forwards per fact and draw, which is why
:func:`~tie_tracing.tracing.tie.trace_tie` exists; the tests check the engine against it and
``benchmarks/tie_sweep.py`` times it as the naive protocol. It keeps its own books:

* **its own commit rule** for LLaDA's low-confidence remasking (``generate.py``, SPEC §4),
  position by position: the choice is the first argmax of the logits (the mask token's
  runner-up unless ``commit_mask``; with temperature > 0, of ``logits / T`` plus Gumbel noise
  from the step's keyed uniforms), its confidence the softmax probability of the choice, and
  the step's ``n_k`` positions are taken by ``torch.topk`` over the whole row's confidences
  with every position that is not a masked position before the block's end at ``−∞``, as
  upstream calls it (ties as upstream breaks them); ``n_k`` splits each block's size evenly
  over its steps, the remainder first, or follows ``transfer_counts``;
* **its own ``LP`` bookkeeping** (SPEC §4): a dictionary from target position to the
  log-probability of the forward that committed it, summed in Python floats.

**Samplers covered by its own rule:** ``LLaDASampler`` with ``remasking="low_confidence"``,
any temperature, blocks, ``transfer_counts`` and ``commit_mask``, at ``precision="float32"``,
without CFG, EOS switches or a threshold. Any other sampler (random remasking, CFG, the EOS
switches, threshold decoding, Dream's algorithms) is stepped by its own ``update``; the result
then says ``commit_rule="sampler"``, and a comparison checks the engine's batching, patching,
memoisation and ``LP`` bookkeeping but not the commit rule.

:func:`reference_positional` is the positional counterpart (SPEC §6): one batch-1 forward per
cell, on its own query layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..core.backbones import MODULES, hidden_of
from ..core.commit import step_noise_generator
from ..core.facts import Fact, locate_name
from ..core.samplers import LLaDASampler, resolve_sampler
from .patching import Corruption, Query, encode_query


@contextmanager
def _hooks(pairs):
    handles = [module.register_forward_hook(fn) for module, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- commit rule


def own_rule(sampler) -> bool:
    """Whether the reference commits with its own rule under ``sampler`` (see the module
    docstring); otherwise it calls ``sampler.update``."""
    return (
        isinstance(sampler, LLaDASampler)
        and sampler.remasking == "low_confidence"
        and sampler.cfg_scale == 0
        and not sampler.logits_eos_inf
        and not sampler.confidence_eos_eot_inf
        and sampler.threshold is None
        and sampler.precision == "float32"
    )


@dataclass(frozen=True)
class _LowConfidence:
    """LLaDA's low-confidence remasking for one row, written out (see the module docstring)."""

    temperature: float
    block_length: int | None
    transfer_counts: tuple[int, ...] | None
    commit_mask: bool

    def counts(self, answer_len: int, steps: int) -> list[tuple[int, int]]:
        """Per step ``(block_end, n_k)``: where the step's block ends and how many it commits."""
        block = answer_len if self.block_length is None else self.block_length
        n_blocks = -(-answer_len // block)
        if steps % n_blocks:
            raise ValueError(f"steps={steps} is not a multiple of the {n_blocks} blocks")
        per_block = steps // n_blocks
        out = []
        for b in range(n_blocks):
            size = min(block, answer_len - b * block)
            for s in range(per_block):
                n = size // per_block + (1 if s < size % per_block else 0)
                out.append((b * block + size, n))
        if self.transfer_counts is not None:
            out = [(end, int(n)) for (end, _), n in zip(out, self.transfer_counts)]
        return out

    def step(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        *,
        answer_start: int,
        step: int,
        steps: int,
        mask_id: int,
        seed: int,
    ) -> torch.Tensor:
        """The row ``x`` ``[seq]`` after step ``step``; ``logits`` ``[answer_len, vocab]``."""
        answer_len, vocab = logits.shape
        scores = logits.float()
        if self.temperature > 0:  # Gumbel-max on the step's keyed uniforms
            u = torch.rand(
                (answer_len, vocab),
                generator=step_noise_generator(seed, step, 0),
                dtype=torch.float32,
            )
            scores = scores / self.temperature - torch.log(-torch.log(u.clamp_min(1e-20)))
        choosing = scores.clone()
        if not self.commit_mask:
            choosing[:, mask_id] = -math.inf
        choice = choosing.argmax(-1)
        probs = torch.softmax(logits.float(), dim=-1)
        block_end, n = self.counts(answer_len, steps)[step]
        row = torch.full((x.shape[0],), -math.inf)
        eligible = []
        for i in range(answer_len):
            if int(x[answer_start + i]) == mask_id and i < block_end:
                row[answer_start + i] = probs[i, int(choice[i])]
                eligible.append(answer_start + i)
        out = x.clone()
        k = min(n, len(eligible))
        if k:
            for position in torch.topk(row, k).indices.tolist():
                out[position] = choice[position - answer_start]
        return out


def _stepper(sampler):
    """``step(x [seq], logits [answer_len, vocab], **where) → new x``: the reference's own rule
    when it covers ``sampler``, else the sampler's ``update`` on one row."""
    if own_rule(sampler):
        rule = _LowConfidence(
            sampler.temperature, sampler.block_length, sampler.transfer_counts, sampler.commit_mask
        )
        return rule.step

    def update(x, logits, *, answer_start, step, steps, mask_id, seed):
        return sampler.update(
            x[None], logits[None], answer_start=answer_start, step=step, steps=steps,
            mask_id=mask_id, seeds=[seed],
        )[0]  # fmt: skip

    return update


# ----------------------------------------------------------------------------- trajectories


def _trajectory(
    model,
    query: Query,
    steps: int,
    *,
    sampler,
    positions: Sequence[int],
    noise=None,
    replace=False,
    patch=None,
    record=None,
    seed: int = 0,
    lp: str = "frozen",
):
    """One batch-1 trajectory: ``LP(k)`` per step (and the recorded site outputs at the
    subject positions). ``patch = (module, step, value)``; ``positions`` the target offsets.

    ``lp="frozen"``: a target position committed at step ``c`` contributes, at every later
    step, the log-probability it had at ``c`` (the dictionary ``decided``)."""
    subject = list(query.subject_positions)
    at = {"step": 0}

    def add_noise(_module, _inputs, output):
        h = hidden_of(output)
        for j, s in enumerate(subject):
            if replace:
                h[0, s] = noise[j].to(h.dtype)
            else:
                h[0, s] += noise[j].to(h.dtype)

    def write(_module, _inputs, output):
        if at["step"] == patch[1]:
            h = hidden_of(output)
            for j, s in enumerate(subject):
                h[0, s] = patch[2][j].to(h.dtype)

    pairs = []
    if noise is not None:
        pairs.append((model.embedding_module(), add_noise))
    if patch is not None:
        pairs.append((patch[0], write))
    seen: dict = {key: [] for key in (record or {})}

    def recorder(key):
        def hook(_module, _inputs, output):
            seen[key].append(hidden_of(output)[0, subject].clone())

        return hook

    for key, module in (record or {}).items():
        pairs.append((module, recorder(key)))
    step_rule = _stepper(sampler)
    p, mask_id = query.answer_start, model.mask_token_id
    x = torch.tensor(list(query.prompt_ids) + [mask_id] * len(query.answer_ids))
    decided: dict[int, float] = {}  # target offset -> log-prob of the forward that committed it
    lps = []
    with torch.inference_mode(), _hooks(pairs):
        for k in range(steps):
            at["step"] = k
            forward_input = sampler.model_input(x[None], p, mask_id)
            logits = sampler.combine(model.forward_logits(forward_input), 1)[0, p:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            total = 0.0
            for i in positions:
                here = float(logprobs[i, query.answer_ids[i]])
                masked = int(x[p + i]) == mask_id
                total += here if lp == "raw" or masked else decided[i]
                if masked:
                    decided[i] = here  # kept only if the step commits it (read below)
            lps.append(total)
            after = step_rule(
                x, logits, answer_start=p, step=k, steps=steps, mask_id=mask_id, seed=seed
            )
            for i in positions:  # still masked: its term is read afresh at the next step
                if int(after[p + i]) == mask_id:
                    decided.pop(i, None)
            x = after
    return torch.tensor(lps), seen


def reference_ie(
    model,
    fact,
    *,
    steps: int = 8,
    modules=MODULES,
    layers=None,
    nu: float,
    n_noise: int = 1,
    seed: int = 0,
    replace: bool = False,
    temperature: float | None = None,
    block_length: int | None = None,
    lp: str = "frozen",
    target: str = "object",
    mentions: str = "all",
    sampler=None,
) -> dict:
    """``IE`` ``[layer, step, module, later_step]`` (mean over draws), ``LP_clean``, ``LP_corrupt``.

    ``sampler`` (or the ``temperature`` / ``block_length`` shorthands) is the sampler of
    :func:`~tie_tracing.tracing.tie.trace_tie`; ``"sampler"`` in the returned dict is its
    ``to_dict()`` and ``"commit_rule"`` says whose commit rule stepped the trajectories:
    ``"reference"`` (its own, for the samplers of the module docstring) or ``"sampler"``.
    The subject positions (every mention, or the first with ``mentions="first"``; they need
    not be contiguous) come from :func:`~tie_tracing.tracing.patching.encode_query`.

    Raises:
        ObjectNotFoundError: ``target="name"`` on a fact whose answer lacks the subject.
    """
    rule = resolve_sampler(
        sampler, temperature=temperature, block_length=block_length, model=model
    ).per_trajectory()
    query = encode_query(model, fact, mentions=mentions)
    if target == "object":  # a fact without an object: its whole answer
        positions = sorted(query.object_offsets or range(len(query.answer_ids)))
    elif target == "name":
        positions = locate_name(model.tokenizer, query.answer_ids, fact)
    else:
        positions = list(range(len(query.answer_ids)))
    run: dict[str, Any] = dict(sampler=rule, positions=positions, seed=seed, lp=lp)
    layers = list(range(model.num_layers)) if layers is None else list(layers)
    modules = [m for m in MODULES if m in modules]
    sites = {(layer, m): model.site_module(layer, m) for layer in layers for m in modules}
    lp_clean, clean = _trajectory(model, query, steps, record=sites, **run)
    corruption = Corruption(nu=nu, n_noise=n_noise, seed=seed, replace=replace)
    draws = corruption.draws(query.fact, len(query.subject_positions), model.hidden_size, nu)
    ie = torch.full((n_noise, len(layers), steps, len(modules), steps), float("nan"))
    lp_corrupt = torch.empty(n_noise, steps)
    for n in range(n_noise):
        lp_corrupt[n], _ = _trajectory(model, query, steps, noise=draws[n], replace=replace, **run)
        for li, layer in enumerate(layers):
            for k in range(steps):
                for mi, m in enumerate(modules):
                    patch = (sites[(layer, m)], k, clean[(layer, m)][k])
                    patched, _ = _trajectory(
                        model, query, steps, noise=draws[n], replace=replace, patch=patch, **run
                    )
                    ie[n, li, k, mi, k:] = patched[k:] - lp_corrupt[n, k:]
    return {
        "ie": ie.mean(0),
        "lp_clean": lp_clean,
        "lp_corrupt": lp_corrupt.mean(0),
        "sampler": rule.to_dict(),
        "commit_rule": "reference" if own_rule(rule) else "sampler",
    }


def reference_tie(ie: torch.Tensor, decay: float) -> torch.Tensor:
    """Eq. 4 by explicit loops over ``[layer, step, module, later_step]``."""
    n_l, steps, n_m, _ = ie.shape
    out = torch.empty(n_l, steps, n_m, dtype=torch.float64)
    for layer in range(n_l):
        for k in range(steps):
            for m in range(n_m):
                num = sum(decay ** (j - k) * float(ie[layer, k, m, j]) for j in range(k, steps))
                den = sum(decay ** (j - k) for j in range(k, steps))
                out[layer, k, m] = num / den
    return out


def reference_positional(
    model,
    fact: Fact,
    *,
    modules: Sequence[str] = MODULES,
    window: int = 1,
    nu: float,
    n_noise: int = 1,
    seed: int = 0,
    replace: bool = False,
    mentions: str = "all",
) -> dict:
    """A deliberately slow positional trace: plain PyTorch hooks, one batch-1 forward per cell.

    Builds its own query from the fact's encoding (:func:`~tie_tracing.tracing.patching.encode_query`:
    prompt and answer ids, subject positions in the question, object offsets) and shares with
    :func:`trace_positional` only that encoding, the model's forward and the noise draws. It
    follows SPEC §6 literally: a causal model is fed the question and the answer's tokens up to
    and including the object's first token (nothing after it, unlike the sweep, which feeds
    the whole teacher-forced answer), an MDLM the question and ``|answer|`` masks; the object's
    first token is scored where the aligned logits put it; the traced positions are those
    before the object's first token (causal) or every position (MDLM).

    Returns:
        ``{"lp": [layer, position, module], "lp_clean": float, "lp_corrupt": float,
        "positions": int, "prediction_position": int, "token": int}`` (probabilities averaged
        over draws, then logged; ``positions`` traced, the scored ``token``).
    """
    q = encode_query(model, fact, mentions=mentions)
    prompt, answer = list(q.prompt_ids), list(q.answer_ids)
    k = 0 if fact.object is None else sorted(q.object_offsets)[0]
    token = answer[k]
    if model.is_causal:
        ids = prompt + answer[: k + 1]  # the teacher-forced prefix, then the scored token
        n_pos = len(prompt) + k  # everything before the scored token
    else:
        ids = prompt + [int(model.mask_token_id)] * len(answer)
        n_pos = len(ids)
    read_at = len(prompt) + k  # aligned logits: index i scores token i
    modules = [m for m in MODULES if m in modules]
    n_layers = model.num_layers
    subject = list(q.subject_positions)
    x = torch.tensor(ids)[None]

    def read(logits):
        return float(torch.log_softmax(logits[0, read_at].float(), dim=-1)[token])

    clean: dict[tuple[int, str], torch.Tensor] = {}
    pairs = []
    for layer in range(n_layers):
        for m in modules:

            def rec(_mod, _inp, out, key=(layer, m)):
                clean[key] = hidden_of(out)[0].detach().clone()

            pairs.append((model.site_module(layer, m), rec))
    with torch.inference_mode(), _hooks(pairs):
        lp_clean = read(model.forward_logits(x))

    draws = Corruption(nu=nu, n_noise=n_noise, seed=seed, replace=replace).draws(
        fact, len(subject), model.hidden_size, nu
    )
    lp = torch.empty(n_noise, n_layers, n_pos, len(modules), dtype=torch.float64)
    lp_corrupt = torch.empty(n_noise, dtype=torch.float64)
    for n in range(n_noise):

        def add_noise(_mod, _inp, out, eps=draws[n]):
            h = hidden_of(out)
            for j, s in enumerate(subject):
                if replace:
                    h[0, s] = eps[j].to(h.dtype)
                else:
                    h[0, s] += eps[j].to(h.dtype)

        noise_hook = [(model.embedding_module(), add_noise)]
        with torch.inference_mode(), _hooks(noise_hook):
            lp_corrupt[n] = read(model.forward_logits(x))
        for layer in range(n_layers):
            for pos in range(n_pos):
                for mi, m in enumerate(modules):
                    if m == "resid" or window == 1:
                        span = [layer]
                    else:
                        span = [
                            j
                            for j in range(layer - window // 2, layer + window - window // 2)
                            if 0 <= j < n_layers
                        ]
                    pairs = list(noise_hook)
                    for j in span:

                        def write(_mod, _inp, out, key=(j, m), pos=pos):
                            hidden_of(out)[0, pos] = clean[key][pos]

                        pairs.append((model.site_module(j, m), write))
                    with torch.inference_mode(), _hooks(pairs):
                        lp[n, layer, pos, mi] = read(model.forward_logits(x))
    mean_lp = torch.logsumexp(lp, dim=0) - math.log(n_noise)
    corrupt = float(torch.logsumexp(lp_corrupt, dim=0) - math.log(n_noise))
    return {
        "lp": mean_lp,
        "lp_clean": lp_clean,
        "lp_corrupt": corrupt,
        "positions": n_pos,
        "prediction_position": read_at - int(model.backbone.shifted),
        "token": token,
    }
