"""Sampler configurations: the samplers LLaDA and Dream users run, as typed, serialisable configs.

A sampler decides, after each backbone forward, which masked answer positions to commit and
to which tokens. The diffusion loop (:func:`~tie_tracing.sampler.run_loop`), the TIE engine
(:func:`~tie_tracing.tie.trace_tie`), :func:`~tie_tracing.patching.run_patched` and the slow
reference (:mod:`tie_tracing.reference`) all take one of these configs as ``sampler=`` and
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
  :class:`~tie_tracing.errors.UnsupportedSamplerError` with the assumption that fails.

**Randomness.** Every random choice is keyed by ``(row seed, step, stream)`` through
:func:`~tie_tracing.sampler.step_noise_generator`: stream 0 gives the token noise
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

**The mask token.** Both references take an argmax over the whole vocabulary, so they can
"commit" the mask token itself (a silent re-mask). The package never does: where the mask
token wins, it commits the runner-up (sampled choices exclude it); confidences still come from
the full distribution.

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
from .errors import UnsupportedSamplerError

#: Backbone families whose own sampler is LLaDA's / Dream's.
LLADA_MODELS: frozenset[str] = frozenset({"llada", "mmada", "llada-moe"})
DREAM_MODELS: frozenset[str] = frozenset({"dream", "diffullama"})
#: Families that accept every sampler (the embedded test beds).
GENERIC_MODELS: frozenset[str] = frozenset({"tiny-mdlm"})

REMASKINGS: tuple[str, ...] = ("low_confidence", "random")
DREAM_ALGS: tuple[str, ...] = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHES: tuple[str, ...] = ("none", "prefix", "dual")


def _noise(seeds: Sequence[int], step: int, stream: int, shape, device) -> torch.Tensor:
    """``[rows, *shape]`` uniforms keyed by ``(seed, step, stream)`` (see the module docstring)."""
    from .sampler import step_noise_generator

    return torch.stack(
        [torch.rand(shape, generator=step_noise_generator(s, step, stream)) for s in seeds]
    ).to(device)


def _gumbel(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp_min(1e-20)))


def _choose(
    logits: torch.Tensor,
    logprobs: torch.Tensor,
    *,
    temperature: float,
    seeds: Sequence[int],
    step: int,
    mask_id: int,
) -> torch.Tensor:
    """Token choice per answer position, never the mask token (see the module docstring).

    Temperature 0: the argmax of ``logprobs`` (runner-up where the mask token wins);
    temperature > 0: Gumbel-max on ``logits / temperature`` with stream-0 noise.
    """
    if temperature > 0:
        gumbel = _gumbel(_noise(seeds, step, 0, logits.shape[1:], logits.device))
        scores = logits / temperature + gumbel
        scores[..., mask_id] = -math.inf
        return scores.argmax(-1)
    choice = logprobs.argmax(-1)
    wrong = choice == mask_id
    if bool(wrong.any()):
        alternatives = logprobs[wrong].clone()
        alternatives[..., mask_id] = -math.inf
        choice[wrong] = alternatives.argmax(-1)
    return choice


def commit_ranked(
    x: torch.Tensor,
    *,
    answer_start: int,
    choice: torch.Tensor,
    confidence: torch.Tensor,
    eligible: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Commit, in each row ``r``, the ``counts[r]`` eligible positions of highest confidence.

    Args:
        x: ``[batch, seq]`` tokens (not modified).
        choice, confidence, eligible: ``[batch, answer_len]``.
        counts: ``[batch]`` long; clipped to the row's eligible count.

    Ties are broken by position (a stable sort).
    """
    conf = torch.where(eligible, confidence.float(), torch.full_like(confidence.float(), -math.inf))
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    k = torch.minimum(counts.to(x.device), eligible.sum(-1))
    take = (rank < k[:, None]) & eligible
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
            (:meth:`~tie_tracing.sampler.DiffusionResult.transfer_counts`).

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

    def __post_init__(self) -> None:
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

    def _is_classic(self) -> bool:
        """The historical sampler's update (low confidence, no switches, no threshold)."""
        return (
            self.remasking == "low_confidence"
            and not self.logits_eos_inf
            and not self.confidence_eos_eot_inf
            and self.threshold is None
        )

    def schedule(self, answer_length: int, steps: int) -> list[tuple[int, int, int]]:
        """Per step ``(block_start, block_end, n_commit)``, offsets within the answer span."""
        from .sampler import transfer_schedule

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
        from .sampler import commit

        answer_length = x.shape[1] - answer_start
        lo, hi, n = self.schedule(answer_length, steps)[step]
        if self._is_classic():
            return commit(
                x,
                logits,
                answer_start=answer_start,
                block=(lo, hi),
                n_commit=n,
                mask_id=mask_id,
                temperature=self.temperature,
                seeds=seeds,
                step=step,
                logprobs=logprobs,
            )
        logits = logits.float()
        if self.logits_eos_inf:
            logits = logits.clone()
            logits[..., self.eos_token_id] = -math.inf
            logprobs = None
        if logprobs is None:
            logprobs = torch.log_softmax(logits, dim=-1)
        choice = _choose(
            logits,
            logprobs,
            temperature=self.temperature,
            seeds=seeds,
            step=step,
            mask_id=mask_id,
        )
        if self.remasking == "random":
            confidence = _noise(seeds, step, 1, (answer_length,), x.device)
        else:
            scored = logits
            if self.confidence_eos_eot_inf:
                scored = logits.clone()
                for token in (self.eos_token_id, self.eot_token_id):
                    if token is not None:
                        scored[..., token] = -math.inf
            probs = torch.softmax(scored, dim=-1)
            confidence = probs.gather(-1, choice[..., None])[..., 0]
        eligible = x[:, answer_start:] == mask_id
        in_block = torch.zeros_like(eligible)
        in_block[:, lo:hi] = True
        eligible &= in_block
        counts = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        if self.threshold is not None:
            sure = (eligible & (confidence >= self.threshold)).sum(-1)
            counts = torch.maximum(counts, sure)
            last_of_block = step + 1 == steps or self.schedule(answer_length, steps)[step + 1][
                :2
            ] != (lo, hi)
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

    def __post_init__(self) -> None:
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
        """The filtered logits tokens are drawn from (temperature, then top-p, then top-k)."""
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
        answer_length = x.shape[1] - answer_start
        filtered = self.distribution(logits)
        probs = torch.softmax(filtered, dim=-1)
        if self.temperature > 0:
            scores = torch.log_softmax(filtered, dim=-1) + _gumbel(
                _noise(seeds, step, 0, filtered.shape[1:], x.device)
            )
            scores[..., mask_id] = -math.inf
            choice = scores.argmax(-1)
        else:
            choice = _choose(
                filtered, probs, temperature=0.0, seeds=seeds, step=step, mask_id=mask_id
            )
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
            weights = torch.where(
                masked, confidence.float(), torch.full_like(confidence, -math.inf)
            )
            confidence = torch.log_softmax(weights / self.alg_temp, dim=-1) + _gumbel(
                _noise(seeds, step, 2, (answer_length,), x.device)
            )
        return commit_ranked(
            x,
            answer_start=answer_start,
            choice=choice,
            confidence=confidence,
            eligible=masked,
            counts=counts,
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
    :class:`~tie_tracing.errors.UnsupportedSamplerError` naming the assumption.

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
