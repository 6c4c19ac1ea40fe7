"""Unlearning depth: how much of the knowledge is gone from the hidden states (SPEC §9).

After UDS (Lee, Kim & Jo, "Measuring the Depth of LLM Unlearning via Activation Patching",
arXiv 2605.24614), adapted to masked diffusion models and to the object-level score of
:func:`~tie_tracing.evaluation.objects.object_logprob`. For each fact, with ``s(·)`` the object
log-probability (nats; the object's positions of the query whose whole answer is masked) read
from the **original** model's output:

* **Stage 1** (which layers carry the knowledge the retain model lacks): for each block ``l``,
  run the original model on the query with block ``l``'s output (the residual stream, every
  position of the query) replaced by the **retain-only** model's output on the same query;
  ``drop₁(l) = s(original) − s(patched with retain states at l)``.
* **Stage 2**: the same with the **unlearned** model's states (for an edit memory: the
  original model's states with the memory installed; for a training baseline: the trained
  copy's states); ``drop₂(l)``.
* **Score**: over the layers whose stage-1 drop is significant, ``drop₁(l) > threshold``
  (default 1 nat: the retain model's states divide the object's probability by at least
  ``e``), the per-layer erasure ``clip(drop₂(l) / drop₁(l), 0, 1)`` averaged with weights
  ``drop₁(l)``::

      depth = Σ_{l∈L*} drop₁(l) · clip(drop₂(l)/drop₁(l), 0, 1) / Σ_{l∈L*} drop₁(l)

  0 means the unlearned model's states restore nothing of the retain model's ignorance
  (knowledge intact in the states), 1 means they carry the knowledge no more than the retain
  model's do (erased, at every knowledge-carrying layer). A fact with no significant layer
  (the retain model's states do not remove its object) has no score (NaN) and is counted
  apart (``n_scored``).

Consequences the tests check: the retain model scored as the unlearned one gets exactly 1 on
every scored fact (stage 2 repeats stage 1), the unedited model exactly 0 (its own states patch
back the same values). An intervention on the output alone (the string-match rows) leaves the
states untouched and scores 0: shallow by construction.

Choices, stated: blocks' outputs (``resid``) at every position of the query (prompt and masked
answer), one layer at a time; the patched forward is a stand-alone forward of the original
model (a :class:`ForwardContext` with ``step=None`` and ``answer_start`` the prompt length); the two models
must share the tokenizer (same world). The paper patches a causal LM's states on a prompt with
an answer prefix and reads the entity's probability; here the query is the diffusion model's
masked query and the entity is the fact's object.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnsight
import torch

from .._version import __version__
from ..analysis.stats import cluster_mean_ci, mean_ci
from ..core._io import Saveable, load_object, save_object
from ..core.backbones import hidden_of
from ..core.context import ForwardContext
from ..core.defaults import BATCH_SIZE
from ..core.facts import Fact, as_facts, locate_object
from ..core.prompting import chunks_by_shape
from ..core.sampler import target_logprob
from ..tracing.patching import fact_key
from .references import Method

__all__ = ["DepthResult", "unlearning_depth"]


@dataclass(frozen=True, eq=False)
class DepthResult(Saveable):
    """Per-fact unlearning depth and the two stages it comes from.

    Attributes:
        scores: ``[fact]`` float64 depth in ``[0, 1]`` (NaN: no significant layer).
        drop_reference: ``[fact, layer]`` stage-1 drops ``drop₁`` (nats).
        drop_unlearned: ``[fact, layer]`` stage-2 drops ``drop₂`` (nats).
        base_logprob: ``[fact]`` the original model's object log-probability.
        fact_ids: Fact keys aligned with the fact axis.
        layers: The blocks patched, aligned with the layer axis.
        mean, low, high: Mean depth over scored facts and its bootstrap CI.
        n_scored: Facts with at least one significant layer.
        config: Threshold, method, reference, model, CI unit, version.
    """

    scores: torch.Tensor
    drop_reference: torch.Tensor
    drop_unlearned: torch.Tensor
    base_logprob: torch.Tensor
    fact_ids: tuple[str, ...]
    layers: tuple[int, ...]
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n_scored: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    dims = ("fact",)

    @property
    def values(self) -> torch.Tensor:
        return self.scores

    @property
    def significant(self) -> torch.Tensor:
        """``[fact, layer]`` bool: the layers each fact's score is taken over."""
        return self.drop_reference > float(self.config.get("threshold", 1.0))

    def __repr__(self) -> str:
        return (
            f"DepthResult({self.config.get('method', '?')}: {self.mean:.3f} "
            f"[{self.low:.3f}, {self.high:.3f}], scored {self.n_scored}/{len(self.fact_ids)})"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file through the package's serialiser; :meth:`load` reads it."""
        return save_object(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DepthResult:
        return load_object(cls, path)


def depth_scores(
    drop_reference: torch.Tensor, drop_unlearned: torch.Tensor, *, threshold: float = 1.0
) -> torch.Tensor:
    """``[fact]`` depth from ``[fact, layer]`` stage-1 and stage-2 drops (see the module
    docstring): ``Σ_{l: drop₁>τ} clip(drop₂, 0, drop₁) / Σ_{l: drop₁>τ} drop₁`` (NaN when no
    layer passes ``τ``). Pure; ``clip(drop₂/drop₁, 0, 1) · drop₁ = clip(drop₂, 0, drop₁)``
    for ``drop₁ > 0``.

    Example:
        >>> d1 = torch.tensor([[4.0, 0.5, 2.0]]); d2 = torch.tensor([[2.0, 9.0, 3.0]])
        >>> depth_scores(d1, d2)   # (2 + 2) / (4 + 2): layer 1 is below the threshold
        tensor([0.6667], dtype=torch.float64)
    """
    d1 = drop_reference.double()
    d2 = drop_unlearned.double()
    if d1.shape != d2.shape or d1.ndim != 2:
        raise ValueError(
            f"drops must both be [fact, layer], got {tuple(d1.shape)} and {tuple(d2.shape)}"
        )
    sig = d1 > threshold
    erased = torch.minimum(torch.clamp(d2, min=0.0), d1)
    num = torch.where(sig, erased, torch.zeros_like(d1)).sum(-1)
    den = torch.where(sig, d1, torch.zeros_like(d1)).sum(-1)
    return torch.where(sig.any(-1), num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def _query(model, fact: Fact):
    prompt, answer = model.encode(fact.question, fact.answer)
    if fact.object is None:
        raise ValueError(
            f"fact {fact_key(fact)!r} has no object (Fact.object is None): the depth score "
            "reads the object's log-probability"
        )
    return prompt, answer, locate_object(model.tokenizer, answer, fact)


def _states(model, x: torch.Tensor, layers: Sequence[int], p_len: int) -> list[torch.Tensor]:
    """Block outputs at ``layers`` of one traced forward (edits installed on ``model`` act)."""
    saved = []
    with torch.inference_mode(), model.at(ForwardContext(step=None, answer_start=p_len)):
        with model.logits(x):
            for layer in layers:
                saved.append(nnsight.save(hidden_of(model.site(layer, "resid").output).clone()))
    return [s.detach() for s in saved]


def _object_lp(model, x, answers, objects, p_len, *, layer=None, states=None) -> torch.Tensor:
    """``[rows]`` object log-probabilities of the original model, optionally with block
    ``layer``'s output replaced by ``states``."""
    with torch.inference_mode(), model.at(ForwardContext(step=None, answer_start=p_len)):
        if layer is None:
            logits = model.logits(x)
        else:
            with model.logits(x) as tracer:
                out = hidden_of(model.site(layer, "resid").output)
                out[:] = states.to(out.dtype)
                logits = tracer.result.save()
    terms = target_logprob(logits[:, p_len:], answers).double().cpu()
    return torch.stack([terms[r, objects[r]].sum() for r in range(len(objects))])


def unlearning_depth(
    model,
    unlearned: Method | Any,
    reference,
    facts: Sequence[Fact] | Fact,
    *,
    layers: Sequence[int] | None = None,
    threshold: float = 1.0,
    clusters: Sequence | None = None,
    min_clusters: int = 5,
    n_resamples: int = 2000,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> DepthResult:
    """Unlearning depth per fact (UDS-style two-stage patching; see the module docstring).

    Args:
        model: The original (unedited) MDLM.
        unlearned: A :class:`~tie_tracing.evaluation.references.Method` (an edit memory installed
            on ``model``, another model, an intervention), or a model (wrapped as
            ``Method.other_model``).
        reference: The retain-only model (same tokenizer and architecture width).
        facts: Facts with objects (canonical forget facts; the query masks the whole answer).
        layers: Blocks to patch (default: all).
        threshold: ``τ`` in nats: a layer counts for a fact when its stage-1 drop exceeds it.
        clusters: Optional per-fact cluster labels (people) for the CI; used when they hold at
            least ``min_clusters`` clusters, else the CI resamples facts.
        n_resamples, seed: Bootstrap of the mean.
        batch_size: Rows per forward.

    Returns:
        A :class:`DepthResult`.

    Raises:
        ValueError: a layer out of range, a fact without an object, models of other
            vocabularies or widths.
    """
    facts = as_facts(facts, "unlearning_depth")
    method = (
        unlearned if isinstance(unlearned, Method) else Method.other_model("unlearned", unlearned)
    )
    if reference.tokenizer.get_vocab() != model.tokenizer.get_vocab():
        raise ValueError(
            f"unlearning_depth: {getattr(reference, 'name', 'the reference')!r} has another "
            f"tokenizer than {model.name!r}; the retain-only model must share the vocabulary"
        )
    if reference.hidden_size != model.hidden_size:
        raise ValueError(
            f"unlearning_depth: hidden sizes differ ({reference.hidden_size} vs "
            f"{model.hidden_size}); patching needs models of the same width"
        )
    layers = tuple(range(model.num_layers)) if layers is None else tuple(int(x) for x in layers)
    for layer in layers:
        model.check_site(layer, "resid")
    if not threshold >= 0:
        raise ValueError(f"threshold must be ≥ 0 nats, got {threshold}")
    queries = [_query(model, f) for f in facts]
    shapes = [(p, a) for p, a, _ in queries]
    n, n_layers = len(facts), len(layers)
    base = torch.empty(n, dtype=torch.float64)
    drop1 = torch.empty(n, n_layers, dtype=torch.float64)
    drop2 = torch.empty(n, n_layers, dtype=torch.float64)
    device = model.param_device
    chunks = chunks_by_shape(shapes, batch_size)
    inputs = {}
    for c, chunk in enumerate(chunks):
        p_len, a_len = len(shapes[chunk[0]][0]), len(shapes[chunk[0]][1])
        x = torch.tensor([queries[i][0] + [model.mask_token_id] * a_len for i in chunk])
        inputs[c] = (x, p_len)
    # stage-2 donor states, all chunks inside one application of the method
    donor2: dict[int, list[torch.Tensor]] = {}
    with method.applied(model) as queried:
        for c, (x, p_len) in inputs.items():
            donor2[c] = _states(queried, x.to(queried.param_device), layers, p_len)
    for c, chunk in enumerate(chunks):
        x, p_len = inputs[c]
        x = x.to(device)
        answers = torch.tensor([queries[i][1] for i in chunk], device=device)
        objects = [queries[i][2] for i in chunk]
        donor1 = _states(reference, x.to(reference.param_device), layers, p_len)
        s0 = _object_lp(model, x, answers, objects, p_len)
        base[chunk] = s0
        for j, layer in enumerate(layers):
            s1 = _object_lp(
                model, x, answers, objects, p_len, layer=layer, states=donor1[j].to(device)
            )
            s2 = _object_lp(
                model, x, answers, objects, p_len, layer=layer, states=donor2[c][j].to(device)
            )
            drop1[chunk, j] = s0 - s1
            drop2[chunk, j] = s0 - s2
    scores = depth_scores(drop1, drop2, threshold=threshold)
    labels = list(clusters) if clusters is not None else None
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} cluster labels for {n} facts")
    unit = "fact"
    if labels is not None and len(set(labels)) >= min_clusters:
        mean, low, high = cluster_mean_ci(scores, labels, n_resamples=n_resamples, seed=seed)
        unit = "cluster"
    else:
        mean, low, high = mean_ci(scores, n_resamples=n_resamples, seed=seed)
    return DepthResult(
        scores=scores,
        drop_reference=drop1,
        drop_unlearned=drop2,
        base_logprob=base,
        fact_ids=tuple(fact_key(f) for f in facts),
        layers=layers,
        mean=mean,
        low=low,
        high=high,
        n_scored=int(torch.isfinite(scores).sum()),
        config={
            "threshold": float(threshold),
            "method": method.name,
            "method_description": method.description,
            "reference": str(getattr(reference, "name", "")),
            "model": str(getattr(model, "name", "")),
            "site": "resid",
            "positions": "all positions of the query (answer masked)",
            "weighting": "drop_reference",
            "ci_unit": unit,
            "n_resamples": n_resamples,
            "seed": seed,
            "version": __version__,
        },
    )
