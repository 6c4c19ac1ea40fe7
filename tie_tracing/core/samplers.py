"""Sampler configurations: the samplers LLaDA and Dream users run, as typed, serialisable configs.

A sampler decides, after each backbone forward, which masked answer positions to commit and
to which tokens. The diffusion loop (:func:`~tie_tracing.core.sampler.run_loop`), the TIE engine
(:func:`~tie_tracing.tracing.tie.trace_tie`), :func:`~tie_tracing.tracing.patching.run_patched` and the slow
reference (:mod:`tie_tracing.tracing.reference`) all take one of these configs as ``sampler=`` and
record ``sampler.to_dict()`` in their results.

* :class:`LLaDASampler` — LLaDA's ``generate.py``: ``remasking="low_confidence"`` (commit the
  most probable predictions) or ``"random"`` (commit random positions), semi-autoregressive
  blocks (``block_length``), unsupervised classifier-free guidance (``cfg_scale``), the EOS
  switches of LLaDA's Appendix B.4 (``logits_eos_inf``, ``confidence_eos_eot_inf``), and two
  additions: fixed-``T`` threshold decoding (``threshold``) and explicit per-step counts
  (``transfer_counts``). ``LLaDASampler()`` is the package's historical sampler, bit for bit.
* :class:`DreamSampler` — Dream's ``diffusion_generate``: ``alg`` ∈ ``origin`` (each masked
  position is committed at random with probability ``1 − s/t``), ``maskgit_plus`` (top
  probability), ``topk_margin`` (top-1 minus top-2 probability), ``entropy`` (negative
  entropy); ``alg_temp`` samples the positions instead of taking the top ones; ``temperature``
  / ``top_p`` / ``top_k`` shape the token distribution; Dream's transfer schedule commits
  ``int(m · (1 − s/t))`` positions at step ``i`` (``t, s`` consecutive points of
  ``linspace(1, eps, T + 1)``, ``m`` the masked count) and everything left at the last step.
* :class:`FastDLLMSampler` and :class:`ReMaskingSampler` — descriptions of accelerated or
  re-masking samplers that exact TIE cannot trace: asking to run them raises
  :class:`~tie_tracing.core.errors.UnsupportedSamplerError` with the assumption that fails.

**Randomness.** Every random choice is keyed by ``(row seed, step, stream)`` through
:func:`~tie_tracing.core.commit.step_noise_generator`: stream 0 gives the token noise
(``[answer_len, vocab]`` uniforms, Gumbel-max sampling), stream 1 the per-position uniforms
of random remasking and of Dream's ``origin`` (``[answer_len]``), stream 2 the position noise
of Dream's ``alg_temp`` (``[answer_len]``, Gumbel-top-k, i.e. sampling without replacement).
The draws cover the whole answer span whatever is masked, so two runs in the same state at the
same step with the same seed draw the same numbers and commit identically — the property that
keeps TIE's memoised futures exact under sampled commits.

**Where the references couple rows.** LLaDA's CFG doubles the batch (the unconditional copy
has the prompt replaced by mask tokens); the package does the same inside the one backbone
forward of a step, per row (so ``tracer.iter[k]`` is still step ``k``), and interventions
(noise, patches, captures) act on the conditional rows only. Dream's reference computes the
transfer count from the *batch-mean* masked count; the package counts per row by default and
reproduces the coupling with ``DreamSampler(coupled=True)`` in :func:`~tie_tracing.diffuse`
(rows of one forward of equal shape hold equal masked counts under the count-based algorithms,
so the two agree there; a TIE trace follows one trajectory per row, where coupling is the
identity, and runs per row).

**Ties: upstream's rule.** Which positions a step commits is decided by ``torch.topk`` called
exactly as the upstream sampler calls it — on the whole row's confidences (prompt, committed
and out-of-block positions at ``-inf``), with the step's count as ``k``; LLaDA row by row,
Dream on the batch (:func:`commit_ranked`). ``torch.topk`` orders equal values by its own
algorithm (the order depends on the row's length and ``k``, not simply on position), and
exact ties are common (saturated confidences; bfloat16), so commit maps agree with upstream's
only when the call is the same. Token choices take the first maximum (``torch.argmax``).

**Precision** (``precision=``): ``"float32"`` (the default) upcasts the logits before the
softmax, the choice and the ranking, which resolves most near-ties the way the model's real
numbers order them; ``"model"`` computes all of it in the logits' own dtype, as the upstream
samplers do, so a bfloat16 run follows upstream's bfloat16 trajectory token for token
(bfloat16 confidences tie often, and upstream's ``torch.topk`` decides). For a float32 model
the two agree (at temperature > 0 ``"model"`` uses LLaDA's float64 Gumbel form).

**The mask token** (``commit_mask=``). Both references take an argmax over the whole
vocabulary, so they can "commit" the mask token itself (a silent re-mask: the position stays
masked, the schedule's counts no longer add up, the answer may end with masks).
``commit_mask=True`` does the same. The default, ``False``, commits the runner-up where the
mask token wins (sampled choices exclude it), so every committed position holds a real token
and every commit map is complete — what TIE's step axis and the frozen ``LP`` rely on;
confidences still come from the full distribution.

**Log-probabilities.** ``LP`` (SPEC §4) reads the distribution the sampler samples from: the
guided logits under CFG, the backbone's logits otherwise; the EOS switches and Dream's
``temperature`` / ``top_p`` / ``top_k`` change the choice and the confidences, not ``LP``.

Example:
    >>> s = LLaDASampler(remasking="random", block_length=2)
    >>> make_sampler(s.to_dict()) == s
    True
    >>> make_sampler("dream").alg
    'maskgit_plus'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._guards import as_int, as_real, finite
from .commit import step_noise_generator, transfer_schedule
from .errors import UnsupportedSamplerError

#: Backbone families whose own sampler is LLaDA's / Dream's.
LLADA_MODELS: frozenset[str] = frozenset({"llada", "mmada", "llada-moe"})
DREAM_MODELS: frozenset[str] = frozenset({"dream", "diffullama"})
#: Families that accept every sampler (the embedded test beds).
GENERIC_MODELS: frozenset[str] = frozenset({"tiny-mdlm"})

REMASKINGS: tuple[str, ...] = ("low_confidence", "random")
DREAM_ALGS: tuple[str, ...] = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHES: tuple[str, ...] = ("none", "prefix", "dual")
#: Where a sampler computes token choices and ranks confidences: in float32 (upcast logits,
#: the default) or in the logits' own dtype, as the upstream samplers do.
PRECISIONS: tuple[str, ...] = ("float32", "model")


def _noise(
    seeds: Sequence[int], step: int, stream: int, shape, device, dtype=torch.float32
) -> torch.Tensor:
    """``[rows, *shape]`` uniforms keyed by ``(seed, step, stream)`` (see the module docstring)."""
    return torch.stack(
        [
            torch.rand(shape, generator=step_noise_generator(s, step, stream), dtype=dtype)
            for s in seeds
        ]
    ).to(device)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def _argmax(scores: torch.Tensor, mask_id: int, commit_mask: bool) -> torch.Tensor:
    """``scores.argmax(-1)`` (the first maximum, as ``torch.argmax`` and ``torch.max`` take it);
    where the mask token wins and ``commit_mask`` is off, the runner-up."""
    choice = scores.argmax(-1)
    if commit_mask:
        return choice
    wrong = choice == mask_id
    if bool(wrong.any()):
        alternatives = scores[wrong].clone()
        alternatives[..., mask_id] = -math.inf
        choice[wrong] = alternatives.argmax(-1)
    return choice


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")


def commit_ranked(
    x: torch.Tensor,
    *,
    answer_start: int,
    choice: torch.Tensor,
    confidence: torch.Tensor,
    eligible: torch.Tensor,
    counts: torch.Tensor,
    layout: str = "row",
) -> torch.Tensor:
    """Commit, in each row ``r``, the ``counts[r]`` eligible positions of highest confidence.

    Args:
        x: ``[batch, seq]`` tokens (not modified).
        choice, confidence, eligible: ``[batch, answer_len]``.
        counts: ``[batch]`` long; clipped to the row's eligible count.
        layout: How ``torch.topk`` is called, as upstream calls it: ``"row"`` (LLaDA's
            ``generate.py``): each row alone, a 1-D call over its ``seq`` confidences;
            ``"batch"`` (Dream's ``_sample`` on a batch): one call over ``[batch, seq]`` (rows
            of unequal counts: each as ``[1, seq]``); ``"single"`` (Dream's ``_sample`` on one
            row): each row as ``[1, seq]``.

    **Ties** are broken as the upstream samplers break them: ``torch.topk`` over the *whole*
    row (prompt and non-eligible positions at ``-inf``), in ``confidence``'s dtype, with the
    row's count as ``k``. Which of equal confidences ``torch.topk`` returns first depends on
    the row's length and on ``k`` (not simply on position), so the row is laid out exactly as
    upstream lays it out; a trajectory then commits what upstream commits on the same values.
    """
    batch, seq = x.shape
    rows_conf = torch.full(
        (batch, seq), -math.inf, dtype=confidence.dtype, device=confidence.device
    )
    rows_conf[:, answer_start:] = torch.where(
        eligible, confidence, torch.full_like(confidence, -math.inf)
    )
    k = torch.minimum(counts.to(eligible.device), eligible.sum(-1)).tolist()
    take = torch.zeros((batch, seq), dtype=torch.bool, device=confidence.device)
    if layout not in ("row", "batch", "single"):
        raise ValueError(f"unknown layout {layout!r}")
    if layout == "batch" and len(set(k)) == 1:
        if k[0] > 0:
            take.scatter_(-1, torch.topk(rows_conf, int(k[0]), dim=-1).indices, True)
    else:
        for r, n in enumerate(k):
            if n > 0:
                row = rows_conf[r] if layout == "row" else rows_conf[r : r + 1]
                take[r, torch.topk(row, int(n), dim=-1).indices.flatten()] = True
    take = take[:, answer_start:].to(x.device) & eligible.to(x.device)
    out = x.clone()
    answer = out[:, answer_start:]
    out[:, answer_start:] = torch.where(take, choice.to(answer.dtype), answer)
    return out


@dataclass(frozen=True, kw_only=True)
class Sampler:
    """Base of the sampler configs: serialisation, family checks, the per-step update.

    Subclasses define ``name`` (the registry key), ``family`` (``"llada"`` or ``"dream"``),
    :meth:`update` and, where a step needs more than one plain forward, :meth:`model_input`
    / :meth:`combine`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: Refuse to run (a sampler exact TIE cannot trace); the message says why.
    refusal: ClassVar[str | None] = None

    allow_mismatch: bool = False

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-ready settings with the registry ``name`` (round-trips with :func:`make_sampler`)."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Sampler:
        """The config a :meth:`to_dict` wrote (the ``name`` key, if present, must match)."""
        data = dict(data)
        name = data.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"{cls.__name__}.from_dict got a {name!r} sampler")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} settings {unknown}; the settings are {sorted(known)}"
            )
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)

    # -- checks ---------------------------------------------------------------------------

    def check_model(self, model) -> None:
        """Raise when a Dream-family sampler meets a model of another family (unless
        ``allow_mismatch``, or the model is an embedded test bed). LLaDA's sampler is the
        package's default on every MDLM (SPEC §4) and is accepted everywhere."""
        if self.allow_mismatch or model.backbone.family in GENERIC_MODELS:
            return
        if self.family == "llada":
            return
        own = LLADA_MODELS if self.family == "llada" else DREAM_MODELS
        if model.backbone.family not in own:
            raise ValueError(
                f"{type(self).__name__} is the {self.family} family's sampler, but "
                f"{model.name!r} is a {model.backbone.family!r} model (that family's own sampler: "
                f"{'DreamSampler' if model.backbone.family in DREAM_MODELS else 'LLaDASampler'}). "
                f"Pass allow_mismatch=True to run it anyway"
            )

    def check_runnable(self) -> None:
        """Raise :class:`UnsupportedSamplerError` for a sampler the package cannot run exactly."""
        if self.refusal is not None:
            raise UnsupportedSamplerError(self.refusal.format(self=self))

    def check_shape(self, answer_length: int, steps: int) -> None:
        """Raise a ``ValueError`` when this sampler cannot run ``steps`` on this answer length."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
        if answer_length < 1:
            raise ValueError(f"the answer span must hold at least one token, got {answer_length}")

    def bind(self, model) -> Sampler:
        """This config with model-dependent settings (special token ids) filled in."""
        return self

    def per_trajectory(self) -> Sampler:
        """The config that treats each row as its own trajectory (no batch coupling)."""
        return self

    def expected_counts(self, answer_length: int, steps: int) -> list[int] | None:
        """Commits per step when they depend on the answer length only (else ``None``)."""
        return None

    # -- running --------------------------------------------------------------------------

    @property
    def doubles_batch(self) -> bool:
        """Whether a step's forward runs two rows per trajectory (CFG)."""
        return False

    def model_input(self, x: torch.Tensor, answer_start: int, mask_id: int) -> torch.Tensor:
        """What the step's single backbone forward sees (``x``, or ``x`` and its CFG copy)."""
        return x

    def combine(self, logits: torch.Tensor, rows: int) -> torch.Tensor:
        """The logits the sampler uses, from the forward of :meth:`model_input`."""
        return logits

    def update(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        *,
        answer_start: int,
        step: int,
        steps: int,
        mask_id: int,
        seeds: Sequence[int],
        logprobs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The state after step ``step``'s commits (``x`` is not modified).

        Args:
            x: ``[batch, seq]`` the step's input.
            logits: ``[batch, answer_len, vocab]`` aligned logits of the answer span.
            logprobs: ``log_softmax(logits)`` in float32 if the caller has it.
        """
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class LLaDASampler(Sampler):
    """LLaDA's sampler (``generate.py``), with the package's two additions.

    Attributes:
        remasking: ``"low_confidence"`` (commit the positions whose chosen token is most
            probable) or ``"random"`` (commit random masked positions of the block).
        block_length: Semi-autoregressive block size (``None``: one block); the number of
            blocks must divide ``T``. A last block shorter than the others is allowed.
        cfg_scale: Unsupervised classifier-free guidance ``w ≥ 0``: logits
            ``u + (w + 1)(c − u)`` with ``u`` the forward of the state whose prompt is masked.
        temperature: 0 commits argmaxes; > 0 samples tokens (Gumbel-max, stream-0 noise).
        logits_eos_inf: Never choose EOS (its logit is ``-inf`` for the choice and confidences).
        confidence_eos_eot_inf: Confidences come from the distribution without EOS and EoT, so
            a position whose choice is EOS/EoT is committed last. (LLaDA's reference applies
            EOS here only at temperature 0, where its noisy logits alias the logits; the
            package applies both at every temperature.)
        eos_token_id, eot_token_id: Token ids of the switches (``None``: the tokenizer's EOS
            and ``<|eot_id|>``, or LLaDA's 126081 / 126348), filled in by :meth:`bind`.
        threshold: Fixed-``T`` threshold decoding: commit every eligible position whose
            confidence is ≥ ``threshold``, and at least the schedule's count (``T`` forwards
            whatever happens; positions left at a block's last step are all committed).
        transfer_counts: Explicit commits per step (``len == T``; the counts of each block sum
            to its size), e.g. the per-step counts a threshold run recorded
            (:meth:`~tie_tracing.core.sampler.DiffusionResult.transfer_counts`).
        precision: ``"float32"`` (default): choices and confidences from float32-upcast logits;
            ``"model"``: in the logits' own dtype, as ``generate.py`` computes them (softmax and
            ``torch.topk`` in bfloat16 for a bfloat16 model, float64 Gumbel noise), so a
            bfloat16 run follows upstream's trajectory, ties included. Identical for a float32
            model except for the form of the Gumbel noise at temperature > 0.
        commit_mask: ``False`` (default): where the mask token wins the choice, commit the
            runner-up; ``True``: commit the mask token as ``generate.py`` does (the position
            stays masked, so the schedule's counts no longer add up to the answer and the
            answer may end with masks left).

    **Ties.** The ``n_k`` positions are chosen by ``torch.topk`` over the whole row's
    confidences (prompt, committed and later-block positions at ``-inf``), row by row, as in
    ``generate.py``; see :func:`commit_ranked`.

    Example:
        >>> LLaDASampler(block_length=32, cfg_scale=0.5).to_dict()["cfg_scale"]
        0.5
    """

    name: ClassVar[str] = "llada"
    family: ClassVar[str] = "llada"

    remasking: str = "low_confidence"
    block_length: int | None = None
    cfg_scale: float = 0.0
    temperature: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eos_token_id: int | None = None
    eot_token_id: int | None = None
    threshold: float | None = None
    transfer_counts: tuple[int, ...] | None = None
    precision: str = "float32"
    commit_mask: bool = False

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        _numbers(self, ints=("block_length",), reals=("cfg_scale", "temperature", "threshold"))
        if self.remasking not in REMASKINGS:
            raise ValueError(f"unknown remasking {self.remasking!r}; choose one of {REMASKINGS}")
        if self.block_length is not None and (
            not isinstance(self.block_length, int)
            or isinstance(self.block_length, bool)
            or self.block_length < 1
        ):
            raise ValueError(
                f"block_length must be an integer ≥ 1 or None, got {self.block_length!r}"
            )
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale must be ≥ 0, got {self.cfg_scale}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1] or be None, got {self.threshold}")
        if self.threshold is not None and self.remasking != "low_confidence":
            raise ValueError("threshold decoding needs remasking='low_confidence'")
        if self.transfer_counts is not None:
            counts = tuple(self.transfer_counts)
            if not counts or any(not isinstance(c, int) or c < 0 for c in counts):
                raise ValueError(
                    f"transfer_counts must be non-negative integers, got {self.transfer_counts!r}"
                )
            if self.threshold is not None:
                raise ValueError("give either threshold or transfer_counts, not both")
            object.__setattr__(self, "transfer_counts", counts)

    def schedule(self, answer_length: int, steps: int) -> list[tuple[int, int, int]]:
        """Per step ``(block_start, block_end, n_commit)``, offsets within the answer span."""
        plan = transfer_schedule(answer_length, steps, self.block_length)
        if self.transfer_counts is None:
            return plan
        counts = self.transfer_counts
        if len(counts) != steps:
            raise ValueError(f"transfer_counts has {len(counts)} entries for steps={steps}")
        out = [(lo, hi, int(c)) for (lo, hi, _), c in zip(plan, counts)]
        for lo, hi in dict.fromkeys((lo, hi) for lo, hi, _ in out):
            total = sum(c for a, b, c in out if (a, b) == (lo, hi))
            if total != hi - lo:
                raise ValueError(
                    f"transfer_counts of the block {lo}..{hi - 1} sum to {total}, not its "
                    f"{hi - lo} positions (answer of {answer_length} tokens)"
                )
        return out

    def check_shape(self, answer_length: int, steps: int) -> None:
        super().check_shape(answer_length, steps)
        self.schedule(answer_length, steps)

    def expected_counts(self, answer_length: int, steps: int) -> list[int] | None:
        if self.threshold is not None:
            return None
        return [n for _, _, n in self.schedule(answer_length, steps)]

    def bind(self, model) -> LLaDASampler:
        if not (self.logits_eos_inf or self.confidence_eos_eot_inf):
            return self
        eos, eot = self.eos_token_id, self.eot_token_id
        tok = model.tokenizer
        llada = model.backbone.family in ("llada", "mmada")
        if eos is None:
            eos = 126081 if llada else getattr(tok, "eos_token_id", None)
        if eot is None and self.confidence_eos_eot_inf:
            vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
            eot = 126348 if llada else vocab.get("<|eot_id|>")
        if eos is None:
            raise ValueError(
                f"the EOS switches need an EOS token; {model.name!r} has none: give eos_token_id"
            )
        return dataclasses.replace(self, eos_token_id=int(eos), eot_token_id=eot)

    @property
    def doubles_batch(self) -> bool:
        return self.cfg_scale > 0

    def model_input(self, x: torch.Tensor, answer_start: int, mask_id: int) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return x
        unconditional = x.clone()
        unconditional[:, :answer_start] = mask_id
        return torch.cat([x, unconditional])

    def combine(self, logits: torch.Tensor, rows: int) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return logits
        cond, uncond = logits[:rows], logits[rows:]
        return uncond + (self.cfg_scale + 1) * (cond - uncond)

    def choose(
        self, logits: torch.Tensor, *, seeds: Sequence[int], step: int, mask_id: int
    ) -> torch.Tensor:
        """The token each answer position would take: ``generate.py``'s ``x0``.

        Temperature 0: the argmax of the logits. Temperature ``T > 0``: Gumbel-max, with
        stream-0 noise; ``precision="float32"`` takes ``argmax(l / T + g)`` in float32,
        ``precision="model"`` computes ``generate.py``'s own float64 expression
        ``exp(l) / (-log u)^T`` on float64 uniforms (the same argmax up to rounding).
        Where the mask token wins, the runner-up unless ``commit_mask``.
        """
        if self.temperature <= 0:
            scores = logits if self.precision == "model" else logits.float()
            return _argmax(scores, mask_id, self.commit_mask)
        if self.precision == "model":
            u = _noise(seeds, step, 0, logits.shape[1:], logits.device, torch.float64)
            scores = logits.double().exp() / (-torch.log(u)) ** self.temperature
        else:
            gumbel = _gumbel(_noise(seeds, step, 0, logits.shape[1:], logits.device))
            scores = logits.float() / self.temperature + gumbel
        if not self.commit_mask:
            scores[..., mask_id] = -math.inf
        return scores.argmax(-1)

    def update(
        self,
        x,
        logits,
        *,
        answer_start,
        step,
        steps,
        mask_id,
        seeds,
        logprobs=None,
    ):
        """``generate.py``'s step: the choice (:meth:`choose`), its confidence (the softmax
        probability of the choice, or a stream-1 uniform under ``remasking="random"``), and
        the ``n_k`` most confident masked positions before the block's end committed, ranked
        as ``torch.topk`` ranks the whole row (:func:`commit_ranked`). ``precision="model"``
        keeps the logits' dtype throughout, as upstream does."""
        answer_length = x.shape[1] - answer_start
        plan = self.schedule(answer_length, steps)
        lo, hi, n = plan[step]
        if self.precision != "model":
            logits = logits.float()
        if self.logits_eos_inf:
            logits = logits.clone()
            logits[..., self.eos_token_id] = -math.inf
        choice = self.choose(logits, seeds=seeds, step=step, mask_id=mask_id)
        if self.remasking == "random":
            confidence = _noise(seeds, step, 1, (answer_length,), x.device)
        else:
            scored = logits
            if self.confidence_eos_eot_inf:
                scored = logits.clone()
                for token in (self.eos_token_id, self.eot_token_id):
                    if token is not None:
                        scored[..., token] = -math.inf
            confidence = torch.softmax(scored, dim=-1).gather(-1, choice[..., None])[..., 0]
        # upstream's eligible set: every masked position before the block's end (earlier
        # blocks hold masks only where the mask token itself was committed)
        eligible = x[:, answer_start:] == mask_id
        eligible[:, hi:] = False
        counts = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        if self.threshold is not None:
            sure = (eligible & (confidence >= self.threshold)).sum(-1)
            counts = torch.maximum(counts, sure)
            last_of_block = step + 1 == steps or plan[step + 1][:2] != (lo, hi)
            if last_of_block:
                counts = eligible.sum(-1)
        return commit_ranked(
            x,
            answer_start=answer_start,
            choice=choice,
            confidence=confidence,
            eligible=eligible,
            counts=counts,
        )


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose mass exceeds ``top_p`` (nucleus);
    the others get the dtype's lowest value. The most probable token always stays."""
    ordered, index = torch.sort(logits, descending=True)
    mass = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1)
    drop = torch.zeros_like(mass, dtype=torch.bool)
    drop[..., 1:] = mass[..., :-1] > top_p
    remove = torch.zeros_like(drop).scatter(-1, index, drop)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep tokens whose logit is at least the ``top_k``-th largest; the others get the
    dtype's lowest value."""
    k = min(int(top_k), logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


@dataclass(frozen=True, kw_only=True)
class DreamSampler(Sampler):
    """Dream's sampler (``diffusion_generate``), per row unless ``coupled``.

    Attributes:
        alg: ``"origin"``, ``"maskgit_plus"``, ``"topk_margin"`` or ``"entropy"`` (see the
            module docstring). Dream's own default is ``"origin"``; the registry's default is
            ``"maskgit_plus"``, deterministic at temperature 0.
        alg_temp: ``None`` or 0: commit the most confident positions; > 0: sample them
            without replacement with probabilities ``softmax(confidence / alg_temp)``
            (Gumbel-top-k, stream-2 noise).
        temperature: Token temperature (0: the most probable token; > 0: sampled, stream 0).
        top_p: Nucleus filter in ``(0, 1]`` (``None``: off), applied after the temperature.
        top_k: Top-k filter ``≥ 1`` (``None``: off), applied after ``top_p``.
        eps: The last point of the time grid ``linspace(1, eps, T + 1)``.
        coupled: Count transfers from the mean masked count of the rows of one forward, as
            Dream's reference does for its batch (:func:`~tie_tracing.diffuse` and
            ``model.denoise``; TIE, ``run_patched`` and the reference run one trajectory per
            row, where coupling is the identity). The package batches only rows of equal
            shape, whose masked counts stay equal under the count-based algorithms, so
            ``coupled=True`` commits what the per-row default does; the reference's coupling
            bites on left-padded batches of different lengths, which the package never forms.
        precision: ``"float32"`` (default) or ``"model"``: ``sample_tokens``' softmax, filters,
            confidences and the ranking in the logits' own dtype, as ``_sample`` computes them
            (see :class:`LLaDASampler`).
        commit_mask: Commit the mask token where it wins, as ``_sample`` does (default: the
            runner-up).

    **Ties.** The positions are chosen by ``torch.topk`` over the whole rows' confidences
    (non-masked positions at ``-inf``), all rows of a coupled batch in one call as in
    ``_sample``, each row alone otherwise; see :func:`commit_ranked`.

    Example:
        >>> DreamSampler(alg="entropy", top_p=0.95).to_dict()["alg"]
        'entropy'
    """

    name: ClassVar[str] = "dream"
    family: ClassVar[str] = "dream"

    alg: str = "maskgit_plus"
    alg_temp: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3
    coupled: bool = False
    precision: str = "float32"
    commit_mask: bool = False

    def __post_init__(self) -> None:
        _check_precision(self.precision)
        _numbers(self, ints=("top_k",), reals=("alg_temp", "temperature", "top_p"))
        if self.alg not in DREAM_ALGS:
            raise ValueError(f"unknown Dream alg {self.alg!r}; choose one of {DREAM_ALGS}")
        if self.alg_temp is not None and not self.alg_temp >= 0:
            raise ValueError(f"alg_temp must be ≥ 0 or None, got {self.alg_temp}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1] or be None, got {self.top_p}")
        if self.top_k is not None and (
            not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be an integer ≥ 1 or None, got {self.top_k!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")

    def per_trajectory(self) -> DreamSampler:
        return dataclasses.replace(self, coupled=False) if self.coupled else self

    def timesteps(self, steps: int, device=None) -> torch.Tensor:
        """Dream's time grid ``linspace(1, eps, T + 1)`` (float32, as the reference has it)."""
        return torch.linspace(1, self.eps, steps + 1, device=device)

    def expected_counts(self, answer_length: int, steps: int) -> list[int] | None:
        if self.alg == "origin":
            return None
        grid = self.timesteps(steps)
        left, out = answer_length, []
        for i in range(steps):
            m = torch.tensor(left) / 1
            n = int(m * (1 - grid[i + 1] / grid[i])) if i < steps - 1 else int(m)
            out.append(n)
            left -= n
        return out

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The filtered logits tokens are drawn from (temperature, then top-p, then top-k):
        ``sample_tokens``' order, in float32 or (``precision="model"``) the logits' dtype."""
        if self.precision != "model":
            logits = logits.float()
        if self.temperature > 0:
            logits = logits / self.temperature
        if self.top_p is not None and self.top_p < 1:
            logits = top_p_filter(logits, self.top_p)
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        return logits

    def update(
        self,
        x,
        logits,
        *,
        answer_start,
        step,
        steps,
        mask_id,
        seeds,
        logprobs=None,
    ):
        """``_sample``'s step: ``sample_tokens`` (choice and per-``alg`` confidence), the
        transfer count, then ``torch.topk`` over the whole row's confidences (or, with
        ``alg_temp``, sampling without replacement by Gumbel-top-k on stream-2 noise)."""
        answer_length = x.shape[1] - answer_start
        filtered = self.distribution(logits)
        probs = torch.softmax(filtered, dim=-1)
        if self.temperature > 0:
            gumbel = _gumbel(_noise(seeds, step, 0, filtered.shape[1:], x.device))
            if self.precision == "model":  # Categorical(probs) by Gumbel-max on its probs
                scores = torch.log(probs.float()) + gumbel
            else:
                scores = torch.log_softmax(filtered, dim=-1) + gumbel
            if not self.commit_mask:
                scores[..., mask_id] = -math.inf
            choice = scores.argmax(-1)
        else:
            choice = _argmax(probs, mask_id, self.commit_mask)
        masked = x[:, answer_start:] == mask_id
        grid = self.timesteps(steps, device=x.device)
        t, s = grid[step], grid[step + 1]
        last = step == steps - 1
        if self.alg == "origin":
            u = _noise(seeds, step, 1, (answer_length,), x.device)
            chosen = masked if last else masked & (u < 1 - s / t)
            out = x.clone()
            out[:, answer_start:] = torch.where(chosen, choice, x[:, answer_start:])
            return out
        if self.alg == "maskgit_plus":
            confidence = probs.gather(-1, choice[..., None])[..., 0]
        elif self.alg == "topk_margin":
            top = probs.sort(dim=-1, descending=True).values
            confidence = top[..., 0] - top[..., 1]
        else:
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        if self.coupled:
            mean = masked.sum() / masked.shape[0]
            n = int(mean * (1 - s / t)) if not last else int(mean)
            counts = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        else:
            counts = torch.tensor(
                [
                    int(m * (1 - s / t)) if not last else int(m)
                    for m in (masked.sum(-1, keepdim=True) / 1).unbind(0)
                ],
                dtype=torch.long,
                device=x.device,
            )
        if self.alg_temp:
            noise = _gumbel(_noise(seeds, step, 2, (answer_length,), x.device))
            if self.precision == "model":  # softmax over the whole row, as _sample has it
                row = torch.full(x.shape, -math.inf, dtype=confidence.dtype, device=x.device)
                row[:, answer_start:] = torch.where(
                    masked, confidence, torch.full_like(confidence, -math.inf)
                )
                weights = torch.softmax(row / self.alg_temp, dim=-1)[:, answer_start:]
                confidence = torch.log(weights.float()) + noise
            else:
                weights = torch.where(
                    masked, confidence.float(), torch.full_like(confidence, -math.inf)
                )
                confidence = torch.log_softmax(weights / self.alg_temp, dim=-1) + noise
        return commit_ranked(
            x,
            answer_start=answer_start,
            choice=choice,
            confidence=confidence,
            eligible=masked,
            counts=counts,
            layout="batch" if self.coupled else "single",
        )


@dataclass(frozen=True, kw_only=True)
class FastDLLMSampler(Sampler):
    """Fast-dLLM's accelerated decoding (KV caches, parallel threshold decoding): described,
    refused.

    Exact TIE rests on two premises: one backbone forward per step with a fixed number ``T``
    of steps, and nothing carried between steps but the committed tokens. A prefix or dual KV
    cache carries the subject positions' keys and values from the block start to every later
    step of the block, so a patch or corruption at one step leaks into steps that never
    recomputed them; threshold decoding that stops a block when it is complete makes the
    number of forwards depend on the run, so step ``k`` stops meaning the same thing across
    clean, corrupted and patched runs. Asking the package to run this config raises
    :class:`~tie_tracing.core.errors.UnsupportedSamplerError` naming the assumption.

    What can be traced: the same commits without the cache and with ``T`` fixed,
    :meth:`without_cache` (``LLaDASampler(threshold=..., block_length=...)``), or the
    per-step counts a threshold run recorded, ``LLaDASampler(transfer_counts=...)``.

    Attributes:
        cache: ``"prefix"``, ``"dual"`` or ``"none"``.
        threshold: Confidence threshold of parallel decoding (``None``: the schedule's counts).
        block_length: Block size.
        early_stop: Stop each block once it is complete (varies the number of forwards).
    """

    name: ClassVar[str] = "fast-dllm"
    family: ClassVar[str] = "llada"

    cache: str = "prefix"
    threshold: float | None = 0.9
    block_length: int | None = 32
    early_stop: bool = True

    def __post_init__(self) -> None:
        if self.cache not in CACHES:
            raise ValueError(f"unknown cache {self.cache!r}; choose one of {CACHES}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1] or be None, got {self.threshold}")

    def check_runnable(self) -> None:
        if self.cache != "none":
            raise UnsupportedSamplerError(
                f"FastDLLMSampler(cache={self.cache!r}) carries state between steps other than "
                "the committed tokens: its KV cache keeps the subject positions' keys and values "
                "from the block start, so an intervention at one step would act on later steps "
                "that reuse them, and exact TIE's premise (an MDLM carries nothing between steps "
                "but its committed tokens) fails. Trace the cache-free equivalent, "
                "sampler.without_cache() (fixed T, same commit rule)"
            )
        if self.threshold is not None and self.early_stop:
            raise UnsupportedSamplerError(
                "FastDLLMSampler(early_stop=True) with a confidence threshold varies the number "
                "of forwards from run to run, so denoising step k would not mean the same thing "
                "in the clean, corrupted and patched runs. Use early_stop=False (threshold "
                "decoding with a fixed T), or trace with the per-step counts a run recorded: "
                "LLaDASampler(transfer_counts=result.transfer_counts(row))"
            )

    def without_cache(self) -> LLaDASampler:
        """The traceable equivalent: no cache, ``T`` fixed, the same threshold and blocks."""
        return LLaDASampler(
            block_length=self.block_length,
            threshold=self.threshold,
            allow_mismatch=self.allow_mismatch,
        )

    def check_shape(self, answer_length: int, steps: int) -> None:
        self.without_cache().check_shape(answer_length, steps)

    def expected_counts(self, answer_length: int, steps: int) -> list[int] | None:
        return self.without_cache().expected_counts(answer_length, steps)

    def update(self, x, logits, **kwargs):
        """Runs as :meth:`without_cache` (only a cache-free, fixed-``T`` config gets here)."""
        self.check_runnable()
        return self.without_cache().update(x, logits, **kwargs)


@dataclass(frozen=True, kw_only=True)
class ReMaskingSampler(Sampler):
    """A sampler that re-masks committed tokens (ReMDM-style), or a model that
    self-conditions on the previous step's output: described, refused.

    Both carry state between steps beyond the committed tokens (a committed token can return
    to the mask; a forward reads the last forward's prediction), so a patch run that commits
    as the corrupted run did would not share its future and TIE's memoised futures (and the
    frozen ``LP`` of committed positions) would be wrong.

    Attributes:
        remask: Probability-scale ``η`` of re-masking a committed token per step.
        self_conditioning: Whether the backbone reads the previous step's prediction.
    """

    name: ClassVar[str] = "remdm"
    family: ClassVar[str] = "llada"

    remask: float = 0.05
    self_conditioning: bool = False

    def check_runnable(self) -> None:
        what = []
        if self.remask > 0:
            what.append(f"it re-masks committed tokens (remask={self.remask})")
        if self.self_conditioning:
            what.append("each forward self-conditions on the previous step's prediction")
        raise UnsupportedSamplerError(
            "ReMaskingSampler carries state between steps other than committed tokens: "
            + "; ".join(what or ["it is a re-masking sampler"])
            + ". Exact TIE needs a sampler whose committed tokens are final and whose forward "
            "reads only the current tokens; use LLaDASampler or DreamSampler"
        )

    def update(self, x, logits, **kwargs):  # pragma: no cover - refused before running
        self.check_runnable()
        raise AssertionError


#: Registry: name → config class.
SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (LLaDASampler, DreamSampler, FastDLLMSampler, ReMaskingSampler)
}


def _numbers(config: Any, *, ints: tuple[str, ...], reals: tuple[str, ...]) -> None:
    """Accept NumPy numbers for a sampler's settings and refuse NaN/inf, naming the setting."""
    for name in ints:
        object.__setattr__(config, name, as_int(getattr(config, name)))
    for name in reals:
        object.__setattr__(config, name, as_real(getattr(config, name)))
        finite(name, getattr(config, name), f"a setting of {type(config).__name__}")


def make_sampler(spec: str | dict | Sampler | None = None, **settings: Any) -> Sampler:
    """A sampler config from a registry name, a :meth:`Sampler.to_dict` dict or a config.

    Args:
        spec: ``"llada"`` (default), ``"dream"``, ``"fast-dllm"``, ``"remdm"``, a dict with a
            ``"name"`` key, or a :class:`Sampler` (returned, with ``settings`` applied).
        **settings: Settings that override the spec's.

    Raises:
        ValueError: an unknown name (the message lists the registry) or setting.

    Example:
        >>> make_sampler("llada", remasking="random").remasking
        'random'
    """
    if spec is None:
        spec = "llada"
    if isinstance(spec, Sampler):
        return dataclasses.replace(spec, **settings) if settings else spec
    if isinstance(spec, str):
        data: dict[str, Any] = {"name": spec}
    elif isinstance(spec, dict):
        data = dict(spec)
    else:
        raise TypeError(f"sampler must be a name, a dict or a Sampler, got {type(spec).__name__}")
    name = data.get("name", "llada")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; the samplers are {sorted(SAMPLERS)}")
    data.update(settings)
    return SAMPLERS[name].from_dict(data)


def resolve_sampler(
    sampler: str | dict | Sampler | None = None,
    *,
    temperature: float | None = None,
    block_length: int | None = None,
    model=None,
) -> Sampler:
    """The sampler a run uses, from ``sampler=`` and the ``temperature=`` / ``block_length=``
    shorthands (which configure :class:`LLaDASampler`).

    Without ``sampler`` the shorthands build an :class:`LLaDASampler` (the default sampler on
    every MDLM). With it, a shorthand that is given (not ``None``) must agree with the
    sampler's own setting. With ``model``, a Dream sampler on a model of another family is
    refused (see :meth:`Sampler.check_model`), a self-conditioning model is refused, and
    model-dependent ids are bound. Samplers that cannot be run exactly are refused.

    Raises:
        ValueError: a shorthand disagrees with the sampler, or the families differ.
        UnsupportedSamplerError: the sampler carries state between steps (see
            :class:`FastDLLMSampler`, :class:`ReMaskingSampler`).
    """
    if sampler is None:
        chosen: Sampler = LLaDASampler(
            temperature=0.0 if temperature is None else float(temperature),
            block_length=block_length,
        )
    else:
        chosen = make_sampler(sampler)
        for key, value in (("temperature", temperature), ("block_length", block_length)):
            if value is None:
                continue
            if not hasattr(chosen, key):
                raise ValueError(
                    f"{key}={value!r} is a shorthand of LLaDASampler; {type(chosen).__name__} "
                    f"has no {key}: drop it"
                )
            if getattr(chosen, key) != value:
                raise ValueError(
                    f"{key}={value!r} disagrees with sampler {type(chosen).__name__}"
                    f"({key}={getattr(chosen, key)!r}): give one of them"
                )
    chosen.check_runnable()
    if model is not None:
        chosen.check_model(model)
        if getattr(model._module, "config", None) is not None and getattr(
            model._module.config, "self_conditioning", False
        ):
            raise UnsupportedSamplerError(
                f"{model.name!r} self-conditions on the previous step's prediction "
                "(config.self_conditioning): it carries state between steps other than "
                "committed tokens, so exact TIE cannot trace it. Disable self-conditioning"
            )
        chosen = chosen.bind(model)
    return chosen


def commit(
    x: torch.Tensor,
    logits: torch.Tensor,
    *,
    answer_start: int,
    block: tuple[int, int],
    n_commit: int,
    mask_id: int,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    step: int = 0,
    logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One low-confidence-remasking update; returns the new state (``x`` is not modified).

    Args:
        x: ``[batch, seq]`` current tokens.
        logits: ``[batch, answer_len, vocab]`` aligned logits of the answer span.
        block: ``(lo, hi)`` offsets of the current block within the answer span.
        n_commit: How many masked positions of the block each row commits.
        logprobs: Unused (kept for callers that pass it).

    ``LLaDASampler(temperature=...)``'s step on one block: the mask token is never committed
    (the runner-up is), confidences are the float32 softmax probabilities of the choices, and
    equal confidences are ranked by ``torch.topk`` over the whole row, as LLaDA's
    ``generate.py`` ranks them (:func:`commit_ranked`).
    """
    if n_commit == 0:
        return x.clone()
    if temperature > 0 and seeds is None:
        raise ValueError("temperature > 0 needs per-row seeds")
    logits = logits.float()
    rule = LLaDASampler(temperature=temperature)
    choice = rule.choose(logits, seeds=list(seeds or [0] * x.shape[0]), step=step, mask_id=mask_id)
    confidence = torch.softmax(logits, dim=-1).gather(-1, choice[..., None])[..., 0]
    eligible = x[:, answer_start:] == mask_id
    eligible[:, : block[0]] = False
    eligible[:, block[1] :] = False
    counts = torch.full((x.shape[0],), int(n_commit), dtype=torch.long, device=x.device)
    return commit_ranked(
        x,
        answer_start=answer_start,
        choice=choice,
        confidence=confidence,
        eligible=eligible,
        counts=counts,
    )
