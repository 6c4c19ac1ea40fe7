"""The edit memory (SPEC §8, Eq. 6–12): a closed-form residual edit installed as an nnsight edit.

**What is captured.** At one site ``(l*, m*)`` (default ``m* = resid``) and for each fact
``f``, three cloze forwards of the *unedited* backbone give (Eq. 6–9)::

    k_f  = mean_{i∈S} h(x_query)_i     subject key: prompt + |answer| masks
    v_f  = mean_{i∈O} h(x_orig)_i      answer span filled with the original answer
    v*_f = mean_{i∈O*} h(x_target)_i   answer span filled with the target (its own length)
    δ_f  = v*_f − v_f

All captures run as batched traced forwards (``with model.logits(x) as tracer``), rows of
every kind and fact stacked by sequence length, with every installed edit suspended, so a
memory can be grown while it (or another) is installed and still sees the frozen model.

**What is applied** to every token ``h_i`` of the site's output, in place, on every forward
whose ``model.current_step`` is in the step set (:class:`EditConfig` ``mode``):

* ``"ridge"`` (default, Eq. 11–12): ``c_i = G⁻¹ K h_i`` with ``G = K Kᵀ + λ_abs I_N`` and
  ``λ_abs = λ · mean(diag(K Kᵀ))``; ``h_i ← h_i + α Dᵀ top_q(c_i)``. ``G`` is Cholesky-
  factorised (float64) and ``G⁻¹K`` obtained with ``cholesky_solve`` — never an explicit
  inverse. ``top_q`` keeps the ``q`` largest-magnitude coefficients (``q = N``: dense).
  Dense, the update equals the primal ridge map ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD`` applied as
  ``h + α Wᵀh`` (:meth:`EditMemory.primal_map`; the tests check the identity).
* ``"gated"`` (Eq. 10, one gate per fact, summed): ``h_i ← h_i + α Σ_f g_{f,i} δ_f`` with
  ``g_{f,i} = clip(⟨h_i, k_f⟩ / ⟨k_f, k_f⟩, 0, κ)``; for one fact exactly Eq. 10. This is
  the "stacked single-fact edits" ablation.
* ``"steer"`` (the ``act_steer`` baseline of SPEC §10.4): ``h_i ← h_i + α · mean_f δ_f`` at
  every position — one fixed direction, no gate, no ridge.

**Step set.** ``steps=None`` (default) fires on every forward. With a step set — a *set of
denoising steps* (an int is a one-step set), not a step count as in ``trace_tie(steps=T)`` —
a forward of the diffusion loop fires when its ``model.current_step`` is in the set; a
``T``-step sampler numbers its forwards ``0 … T-1``, so steps ``≥ T`` never fire. A TIE-sweep
forward that mixes rows of several steps edits exactly the rows whose step is in the set
(:attr:`EditHandle.fired` counts forwards per step, not rows). A *stand-alone*
forward (``current_step is None``: ``tt.answer_logprob``, a user's ``model.logits(x)``)
always fires, whatever the step set, so likelihood evaluation sees the edit; set
``model.current_step`` yourself to evaluate one forward as a particular step.

**How it is installed.** :meth:`EditMemory.install` records one nnsight edit
(``with model.edit(inplace=True)``) whose body loops over every occurrence of the site
(``tracer.iter[:]``), so it is replayed on every trace and every direct call of a traceable
method — ``model.denoise`` (every one of its ``T`` forwards), ``model.logits``, hence
``tt.diffuse``, ``tt.answer_logprob``, ``tt.evaluate`` and ``tt.trace_tie``. The open-ended
loop ends when the run does; the block catches nnsight's end-of-run ``OutOfOrderError`` so
that ending is silent. Edits run before a trace's own interventions at the same site (a
trace reading the site sees the edited value; a trace patching it overrides the edit). The
handle's :meth:`EditHandle.remove` drops exactly this edit's mediator from
``model._edits`` (other edits stay); since the edit only ever added to an activation and
never touched a weight, removal restores the unedited outputs bit for bit. The installed
edit reads the memory's current state, so :meth:`EditMemory.insert` / :meth:`remove` act
on an installed memory immediately (streaming).

Limits: the edit goes through nnsight, so calling the wrapped ``torch.nn.Module`` directly
(``model._module(x)``) bypasses it, as does a trace rooted at a child envoy. Streaming
inserts refactorise ``G`` (``O(N³)``, under a millisecond for a few hundred facts) rather
than a rank-1 update, because the scale-free ``λ_abs`` moves with every insert. With
``λ = 0`` the factorisation needs linearly independent keys (``N ≤ d``, no duplicated
facts); otherwise a :class:`EditMemoryError` says so — no jitter is added silently.

Example:
    >>> import tie_tracing as tt                                              # doctest: +SKIP
    >>> model = tt.load_model("tiny-mdlm")                                   # doctest: +SKIP
    >>> facts = tt.load_facts("tiny", split="forget01")                      # doctest: +SKIP
    >>> memory = tt.EditMemory.build(model, facts)                           # doctest: +SKIP
    >>> before = tt.answer_logprob(model, facts)                             # doctest: +SKIP
    >>> with memory.install(model):                                          # doctest: +SKIP
    ...     edited = tt.answer_logprob(model, facts)
    >>> early = tt.EditMemory.build(model, facts, steps={0, 1})  # steps 0, 1  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nnsight
import torch

from ._io import atomic_write_bytes
from ._nnsight import has_edit, register_edit, remove_edit, suspended_edits
from ._version import __version__
from .backbones import MODULES, hidden_of
from .errors import ShapeError, TieTracingError
from .facts import Fact, load_refusals
from .patching import encode_query, fact_key

__all__ = [
    "EditConfig",
    "EditHandle",
    "EditMemory",
    "EditMemoryError",
    "EDIT_MODES",
    "TARGET_KINDS",
]

#: Update rules (see the module docstring).
EDIT_MODES: tuple[str, ...] = ("ridge", "gated", "steer")
#: Named target choices of :meth:`EditMemory.build`.
TARGET_KINDS: tuple[str, ...] = ("auto", "refusal", "perturbed", "target")
#: Defaults for models without a tuned operating point (``layer`` must then be given).
PACKAGE_DEFAULTS: dict[str, Any] = {"alpha": 1.0, "lam": 0.01, "q": None, "kappa": 1.0}

_FORMAT = 1
_META_KEY = "tie_tracing"
_KIND = "EditMemory"
#: Smallest accepted squared pivot ratio of the Cholesky factor (a cheap reciprocal-condition
#: estimate); below it ``G`` counts as singular.
_MIN_RCOND = 1e-10


class EditMemoryError(TieTracingError, ValueError):
    """A bad edit-memory request (duplicate or unknown ids, bad ``q``, singular Gram matrix,
    a memory installed on a model it was not built for, an unreadable memory file)."""


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EditConfig:
    """Where and how an :class:`EditMemory` acts; validated on construction.

    Attributes:
        layer: Block ``l*``.
        module: Site ``m*`` (``"resid"``, ``"attn"``, ``"mlp"``).
        alpha: Strength ``α``.
        lam: Scale-free ridge ``λ`` (``λ_abs = λ · mean(diag(K Kᵀ))``).
        q: Coefficients kept per token by ``top_q`` (``None``: all, dense).
        steps: The set of denoising steps the edit fires at, a sorted tuple of distinct ints
            ``≥ 0`` (an int given here is a one-step set; ``None``: every forward). Steps are
            numbered ``0 … T-1`` for a ``T``-step sampler; a step ``≥ T`` never fires.
            Stand-alone forwards (``model.current_step is None``) always fire.
        kappa: Gate cap ``κ`` of the ``"gated"`` mode (Eq. 10).
        mode: ``"ridge"`` (Eq. 11–12), ``"gated"`` (Eq. 10 per fact, summed) or ``"steer"``.
        cap_q: ``q`` came from an operating point: use ``min(q, N)`` instead of refusing
            ``q > N``.
    """

    layer: int
    module: str = "resid"
    alpha: float = 1.0
    lam: float = 0.01
    q: int | None = None
    steps: tuple[int, ...] | None = None
    kappa: float = 1.0
    mode: str = "ridge"
    cap_q: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be an integer ≥ 0, got {self.layer!r}")
        if self.module not in MODULES:
            raise ValueError(f"unknown module {self.module!r}; the sites are {MODULES}")
        if self.mode not in EDIT_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {EDIT_MODES}")
        for name in ("alpha", "lam", "kappa"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.lam < 0:
            raise ValueError(f"lam must be ≥ 0, got {self.lam}")
        if self.kappa <= 0:
            raise ValueError(f"kappa must be > 0, got {self.kappa}")
        if self.q is not None:
            if isinstance(self.q, bool) or not isinstance(self.q, int) or self.q < 1:
                raise EditMemoryError(
                    f"q must be an integer ≥ 1 (or None for dense), got {self.q!r}"
                )
        if self.steps is not None:
            object.__setattr__(self, "steps", _normalize_steps(self.steps))

    def fires_at(self, step: int | None) -> bool:
        """Whether the edit acts on a forward at denoising ``step`` (``None``: stand-alone)."""
        return step is None or self.steps is None or step in self.steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = None if self.steps is None else list(self.steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditConfig:
        d = dict(d)
        if d.get("steps") is not None:
            d["steps"] = tuple(d["steps"])
        return cls(**d)


def _normalize_steps(steps: Any) -> tuple[int, ...]:
    """A step set as a sorted tuple of distinct integers ``≥ 0``; one integer is a one-step set.

    Raises:
        ValueError: a negative step, a non-integer (``1.5``, ``True``, a string), or an empty set.
    """

    def as_step(s: Any) -> int:
        if isinstance(s, torch.Tensor) and s.numel() == 1 and not s.is_floating_point():
            s = s.item()
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(
                f"steps must be denoising steps (integers ≥ 0), got {s!r} in steps={steps!r}"
            )
        if s < 0:
            raise ValueError(f"steps must be ≥ 0, got {int(s)} in steps={steps!r}")
        return int(s)

    if isinstance(steps, (str, bytes)) or not isinstance(steps, (numbers.Integral, Iterable)):
        raise ValueError(
            f"steps must be a denoising step (an integer ≥ 0), a set of them or None, got "
            f"{type(steps).__name__} {steps!r}"
        )
    if isinstance(steps, numbers.Integral) or (isinstance(steps, torch.Tensor) and steps.ndim == 0):
        items = [steps]
    else:
        items = list(steps)
    out = tuple(sorted({as_step(s) for s in items}))
    if not out:
        raise ValueError(f"steps must be a non-empty set of steps ≥ 0 (or None), got {steps!r}")
    return out


# ---------------------------------------------------------------------------- the memory


def _model_signature(model) -> dict[str, Any]:
    return {
        "name": str(getattr(model, "name", "")),
        "family": str(model.backbone.family),
        "hidden_size": int(model.hidden_size),
        "num_layers": int(model.num_layers),
    }


class EditMemory:
    """A multi-fact edit memory (SPEC §8): keys, deltas, a config, and a factorised Gram matrix.

    Build it with :meth:`build` (or :meth:`load`); grow or shrink it with :meth:`insert` and
    :meth:`remove`; apply it with :meth:`install`. The tensors are CPU float32:

    Attributes:
        config: The :class:`EditConfig`.
        ids: Fact ids, aligned with the rows of every tensor (unique).
        keys: ``[N, d]`` subject keys ``k_f`` (Eq. 6).
        answer_values: ``[N, d]`` original-answer values ``v_f`` (Eq. 7).
        values: ``[N, d]`` the deltas ``δ_f`` (the main tensor, ``dims = ("fact", "hidden")``).
        target_values: ``[N, d]`` target values ``v*_f`` (Eq. 8).
        targets: The target text of each fact.
        model_info: Name, family, hidden size and layer count of the model it was built on.
        timings: Seconds spent in ``capture``, ``solve`` (factorisation), ``build`` (total),
            per fact (``build_per_fact``) and the last ``install``.

    Example:
        >>> memory = EditMemory.build(model, facts, layer=3, alpha=2.0, lam=0.1, q=4)  # doctest: +SKIP
        >>> handle = memory.install(model)                                      # doctest: +SKIP
        >>> handle.remove()                                                     # doctest: +SKIP
    """

    dims = ("fact", "hidden")

    def __init__(
        self,
        config: EditConfig,
        *,
        ids: Sequence[str],
        keys: torch.Tensor,
        answer_values: torch.Tensor,
        target_values: torch.Tensor,
        targets: Sequence[str],
        model_info: dict[str, Any],
        timings: dict[str, float] | None = None,
    ) -> None:
        ids = tuple(str(i) for i in ids)
        n = len(ids)
        d = int(model_info["hidden_size"])
        for name, t in (
            ("keys", keys),
            ("answer_values", answer_values),
            ("target_values", target_values),
        ):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, d):
                raise ShapeError(
                    f"{name} must be [N={n}, d={d}], got {getattr(t, 'shape', type(t))}"
                )
            if not torch.isfinite(t).all():
                raise EditMemoryError(f"{name} holds non-finite values")
        if len(targets) != n:
            raise ShapeError(f"{len(targets)} targets for {n} facts")
        _check_unique(ids)
        self.config = config
        self.ids: tuple[str, ...] = ids
        self.keys = keys.detach().to("cpu", torch.float32).contiguous()
        self.answer_values = answer_values.detach().to("cpu", torch.float32).contiguous()
        self.target_values = target_values.detach().to("cpu", torch.float32).contiguous()
        self.targets: tuple[str, ...] = tuple(str(t) for t in targets)
        self.model_info = dict(model_info)
        self.timings: dict[str, float] = dict(timings or {})
        self._model = None  # the model captures run on (not saved)
        self._version = 0
        self._solved: dict[str, torch.Tensor] | None = None
        self._device_cache: dict[tuple, dict[str, torch.Tensor]] = {}
        if n:
            self._check_q(n)
            self._solve()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model,
        facts: Sequence[Fact] | Fact,
        *,
        layer: int | None = None,
        module: str = "resid",
        alpha: float | None = None,
        lam: float | None = None,
        q: int | None = None,
        steps: Iterable[int] | int | None = None,
        kappa: float | None = None,
        mode: str = "ridge",
        targets: str | Sequence[str] = "auto",
        batch_size: int = 64,
    ) -> EditMemory:
        """Capture keys and deltas for ``facts`` on ``model`` and factorise the memory.

        Arguments left ``None`` take the model's tuned operating point
        (``model.info["operating_point"]``, stored with the embedded models); a model without
        one must be given ``layer`` (``alpha``, ``lam``, ``kappa`` then default to
        :data:`PACKAGE_DEFAULTS`, ``q`` to dense). An operating point's ``q`` is capped at
        ``N``; an explicit ``q`` must satisfy ``1 ≤ q ≤ N``.

        Args:
            model: A :class:`~tie_tracing.model.TracedModel` (MDLM, or causal for an AR edit).
            facts: The facts to forget or edit (unique ids; subjects must occur in questions).
            layer, module: The site ``(l*, m*)``.
            alpha, lam, q, kappa: Hyper-parameters (see :class:`EditConfig`).
            steps: The *set of denoising steps* the edit fires at — an int is a one-step set
                (``steps=3`` is ``{3}``), an iterable of ints a set, ``None`` every step. It is
                not a step count, unlike ``trace_tie(steps=T)`` / ``diffuse(steps=T)``: the
                sampler's forwards are numbered ``0 … T-1``, so the set should lie within that
                range — a step ``≥ T`` never fires (nothing checks this, since ``T`` is chosen
                later, per run). Stand-alone forwards (``current_step is None``) always fire.
            mode: ``"ridge"``, ``"gated"`` or ``"steer"``.
            targets: ``"auto"`` (the fact's ``target`` when set — editing —, else a refusal —
                unlearning), ``"refusal"`` (a line of TOFU's ``idontknow.jsonl``, chosen by a
                hash of the fact id), ``"perturbed"`` (the fact's first perturbed answer),
                ``"target"`` (``Fact.target``, required), or one string per fact.
            batch_size: Rows per capture forward.

        Returns:
            An :class:`EditMemory` (``timings`` holds the capture and solve seconds).

        Raises:
            EditMemoryError: no layer for a model without an operating point, duplicate ids,
                a bad ``q``, a fact lacking the requested target, a singular ``G``.
            ValueError: a negative, non-integer or empty ``steps``.
            SubjectNotFoundError: a fact's subject is not in its question.
        """
        start = time.perf_counter()
        facts = [facts] if isinstance(facts, Fact) else list(facts)
        if not facts:
            raise EditMemoryError("EditMemory.build needs at least one fact")
        config = _resolve_config(
            model, layer=layer, module=module, alpha=alpha, lam=lam, q=q, steps=steps,
            kappa=kappa, mode=mode, n_facts=len(facts),
        )  # fmt: skip
        model.check_site(config.layer, config.module)
        ids = [fact_key(f) for f in facts]
        _check_unique(ids)
        target_texts = _resolve_targets(facts, targets)
        t0 = time.perf_counter()
        k, v, vs = capture_keys_and_deltas(
            model,
            facts,
            target_texts,
            layer=config.layer,
            module=config.module,
            batch_size=batch_size,
        )
        capture_s = time.perf_counter() - t0
        memory = cls(
            config, ids=ids, keys=k, answer_values=v, target_values=vs, targets=target_texts,
            model_info=_model_signature(model),
        )  # fmt: skip
        memory._model = model
        total = time.perf_counter() - start
        memory.timings.update(capture=capture_s, build=total, build_per_fact=total / len(facts))
        return memory

    # -- views -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def deltas(self) -> torch.Tensor:
        """``[N, d]`` ``δ_f = v*_f − v_f`` (Eq. 9)."""
        return self.target_values - self.answer_values

    @property
    def values(self) -> torch.Tensor:
        """The main tensor: ``[N, d]`` deltas (``dims = ("fact", "hidden")``)."""
        return self.deltas

    @property
    def q_effective(self) -> int:
        """The ``q`` used by ``top_q`` for the current ``N``."""
        n = len(self)
        if self.config.q is None:
            return n
        return min(self.config.q, n) if self.config.cap_q else self.config.q

    @property
    def lam_abs(self) -> float:
        """``λ_abs = λ · mean(diag(K Kᵀ))``."""
        if not len(self):
            return 0.0
        return float(self.config.lam * (self.keys.double() ** 2).sum(-1).mean())

    def __repr__(self) -> str:
        c = self.config
        ids = list(self.ids[:3]) + (["…"] if len(self) > 3 else [])
        return (
            f"EditMemory(mode={c.mode!r}, site=({c.layer}, {c.module!r}), N={len(self)}, "
            f"d={self.model_info.get('hidden_size')}, alpha={c.alpha:g}, lam={c.lam:g}, "
            f"q={c.q}{'(cap)' if c.cap_q else ''}, steps={'all' if c.steps is None else list(c.steps)}, "
            f"model={self.model_info.get('name')!r}, facts={ids})"
        )

    # -- the algebra -------------------------------------------------------------------------

    def _check_q(self, n: int) -> None:
        q = self.config.q
        if q is not None and not self.config.cap_q and q > n:
            raise EditMemoryError(
                f"q={q} exceeds the number of facts N={n}; use q ≤ N (or q=None for dense)"
            )

    def _solve(self) -> None:
        """Factorise ``G = K Kᵀ + λ_abs I`` and precompute ``G⁻¹ K`` (``cholesky_solve``)."""
        t0 = time.perf_counter()
        self._device_cache = {}
        self._version += 1
        n = len(self)
        if n == 0:
            self._solved = None
            return
        deltas = self.deltas
        solved: dict[str, torch.Tensor] = {"deltas": deltas, "mean_delta": deltas.mean(0)}
        if self.config.mode == "ridge":
            k = self.keys.double()
            gram = k @ k.T
            lam_abs = self.config.lam * float(gram.diagonal().mean())
            gram = gram + lam_abs * torch.eye(n, dtype=torch.float64)
            chol, info = torch.linalg.cholesky_ex(gram)
            pivots = chol.diagonal()
            if int(info) != 0 or float((pivots.min() / pivots.max()) ** 2) < _MIN_RCOND:
                raise EditMemoryError(
                    f"the Gram matrix K Kᵀ + λ_abs I of {n} keys is (numerically) singular (λ={self.config.lam:g}): "
                    f"the keys are linearly dependent (duplicated facts, or N={n} > d="
                    f"{self.keys.shape[1]}). Use lam > 0 (e.g. 1e-3)."
                )
            coef = torch.cholesky_solve(k, chol)  # G⁻¹ K, [N, d]
            if not torch.isfinite(coef).all():
                raise EditMemoryError("the ridge solve produced non-finite coefficients; raise lam")
            solved.update(coef=coef.float(), chol=chol)
            if n > k.shape[1]:
                solved["dense_map"] = (coef.T @ deltas.double()).float()  # (G⁻¹K)ᵀD = W, [d, d]
        elif self.config.mode == "gated":
            norms = (self.keys.double() ** 2).sum(-1)
            if (norms == 0).any():
                bad = [self.ids[i] for i in torch.nonzero(norms == 0).flatten().tolist()]
                raise EditMemoryError(
                    f"facts {bad} have an all-zero key; the gate ⟨h,k⟩/⟨k,k⟩ is undefined"
                )
            solved.update(gate_keys=(self.keys.double() / norms[:, None]).float())
        self._solved = solved
        self.timings["solve"] = time.perf_counter() - t0

    def coefficients(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` ridge fact-coefficients ``c_i = G⁻¹ K h_i`` (Eq. 11), before ``top_q``."""
        if self.config.mode != "ridge":
            raise EditMemoryError(
                f"coefficients are defined for mode='ridge', not {self.config.mode!r}"
            )
        self._require_facts()
        s = self._tensors(hidden.device)
        return hidden.float() @ s["coef"].T

    def update(self, hidden: torch.Tensor) -> torch.Tensor:
        """The additive update ``α · …`` for hidden states ``[..., d]`` (float32, same shape).

        ``ridge``: ``α Dᵀ top_q(G⁻¹ K h)`` (Eq. 12); ``gated``: ``α Σ_f clip(⟨h,k_f⟩/⟨k_f,k_f⟩,
        0, κ) δ_f`` (Eq. 10); ``steer``: ``α mean_f δ_f``. The step set is not consulted
        here (see :meth:`install`).
        """
        d = int(self.model_info["hidden_size"])
        if hidden.shape[-1] != d:
            raise ShapeError(f"hidden states must end in d={d}, got {tuple(hidden.shape)}")
        if not len(self):
            return torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        s = self._tensors(hidden.device)
        alpha = self.config.alpha
        h = hidden.float()
        mode = self.config.mode
        if mode == "steer":
            return (alpha * s["mean_delta"]).expand(h.shape).clone()
        if mode == "gated":
            gate = (h @ s["gate_keys"].T).clamp(0.0, self.config.kappa)
            return alpha * (gate @ s["deltas"])
        q = self.q_effective
        if q >= len(self):
            if "dense_map" in s:  # N > d: one [d, d] product instead of two through R^N
                return alpha * (h @ s["dense_map"])
            return alpha * ((h @ s["coef"].T) @ s["deltas"])
        c = h @ s["coef"].T
        idx = c.abs().topk(q, dim=-1).indices
        kept = c.gather(-1, idx)
        if q == 1:
            return alpha * (kept * s["deltas"][idx[..., 0]])
        # Σ_j c_j δ_j over the q kept facts only (no dense [.., N] scatter and product)
        return alpha * torch.einsum("...q,...qd->...d", kept, s["deltas"][idx])

    def primal_map(self) -> torch.Tensor:
        """``[d, d]`` ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD`` (float64, via a Cholesky solve).

        Dense ridge memories satisfy ``update(h) = α hᵀW`` (the push-through identity
        ``Kᵀ(KKᵀ + λI)⁻¹ = (KᵀK + λI)⁻¹Kᵀ``); needs ``λ_abs > 0`` when ``N < d``.
        """
        self._require_facts()
        k, delta = self.keys.double(), self.deltas.double()
        d = k.shape[1]
        a = k.T @ k + self.lam_abs * torch.eye(d, dtype=torch.float64)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:
            raise EditMemoryError(
                "KᵀK + λ_abs I_d is singular (λ = 0 with N < d); the primal map needs lam > 0"
            )
        return torch.cholesky_solve(k.T @ delta, chol)

    def _require_facts(self) -> None:
        if not len(self):
            raise EditMemoryError("the memory holds no facts")

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = (str(device), self._version)
        cached = self._device_cache.get(key)
        if cached is None:
            assert self._solved is not None
            cached = {
                k: v.to(device, torch.float32) for k, v in self._solved.items() if k != "chol"
            }
            self._device_cache = {key: cached}
        return cached

    # -- streaming ---------------------------------------------------------------------------

    def insert(
        self,
        facts: Sequence[Fact] | Fact,
        *,
        model=None,
        targets: str | Sequence[str] = "auto",
        batch_size: int = 64,
    ) -> EditMemory:
        """Capture ``facts`` and add them (streaming); refactorises ``G``. Returns ``self``.

        ``model`` defaults to the model the memory was built on or last installed on. Acts
        immediately on an installed memory. Raises :class:`EditMemoryError` on an id already
        in the memory (or repeated in ``facts``); on any error the memory is unchanged.
        """
        facts = [facts] if isinstance(facts, Fact) else list(facts)
        if not facts:
            return self
        model = model if model is not None else self._model
        if model is None:
            raise EditMemoryError(
                "insert needs the model to capture on: insert(facts, model=model)"
            )
        _check_compatible(self, model)
        ids = [fact_key(f) for f in facts]
        _check_unique(list(self.ids) + ids)
        texts = _resolve_targets(facts, targets)
        t0 = time.perf_counter()
        k, v, vs = capture_keys_and_deltas(
            model,
            facts,
            texts,
            layer=self.config.layer,
            module=self.config.module,
            batch_size=batch_size,
        )
        capture_s = time.perf_counter() - t0
        self._replace_rows(
            ids=self.ids + tuple(ids),
            keys=torch.cat([self.keys, k.float()]),
            answer_values=torch.cat([self.answer_values, v.float()]),
            target_values=torch.cat([self.target_values, vs.float()]),
            targets=self.targets + tuple(texts),
        )
        self._model = model
        self.timings["capture"] = capture_s
        self.timings["insert"] = time.perf_counter() - t0
        return self

    def remove(self, ids: str | Iterable[str]) -> EditMemory:
        """Remove facts by id; refactorises ``G``. Returns ``self``.

        Raises:
            EditMemoryError: an id not in the memory (named), or an explicit ``q`` larger
                than the remaining ``N``; the memory is then unchanged.
        """
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        missing = [i for i in ids if i not in self.ids]
        if missing:
            raise EditMemoryError(f"cannot remove {missing}: not in the memory ({len(self)} facts)")
        keep = [j for j, i in enumerate(self.ids) if i not in set(ids)]
        self._replace_rows(
            ids=tuple(self.ids[j] for j in keep),
            keys=self.keys[keep],
            answer_values=self.answer_values[keep],
            target_values=self.target_values[keep],
            targets=tuple(self.targets[j] for j in keep),
        )
        return self

    def _replace_rows(self, **rows) -> None:
        old = {name: getattr(self, name) for name in rows}
        n = len(rows["ids"])
        if n:
            self._check_q(n)
        for name, value in rows.items():
            setattr(self, name, value)
        try:
            self._solve()
        except BaseException:
            for name, value in old.items():
                setattr(self, name, value)
            self._solve()
            raise

    # -- installing --------------------------------------------------------------------------

    def install(self, model) -> EditHandle:
        """Install the memory on ``model`` as an nnsight edit; returns an :class:`EditHandle`.

        The edit fires on every forward through nnsight whose ``current_step`` is in the
        step set (stand-alone forwards always), at every token of the site's output. No
        weight changes. ``handle.remove()`` (or leaving ``with memory.install(model):``)
        takes exactly this edit out. Timing: ``self.timings["install"]``.

        Raises:
            EditMemoryError: the memory is empty, or was built for a model with another
                hidden size or layer count.
        """
        t0 = time.perf_counter()
        self._require_facts()
        _check_compatible(self, model)
        model.check_site(self.config.layer, self.config.module)
        self._tensors(model.param_device)  # move to the device once, now
        handle = EditHandle(self, model)
        handle._mediator = register_edit(
            model, model.site(self.config.layer, self.config.module), handle
        )
        if self._model is None:
            self._model = model
        self.timings["install"] = time.perf_counter() - t0
        return handle

    @property
    def install_seconds(self) -> float | None:
        """Seconds the last :meth:`install` took (``None`` before any)."""
        return self.timings.get("install")

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the memory to one ``.safetensors`` file (JSON config in its header), atomically."""
        from safetensors.torch import save as st_save

        path = Path(path)
        tensors = {
            "keys": self.keys.contiguous(),
            "answer_values": self.answer_values.contiguous(),
            "target_values": self.target_values.contiguous(),
        }
        meta = {
            "kind": _KIND,
            "format": _FORMAT,
            "version": __version__,
            "config": self.config.to_dict(),
            "ids": list(self.ids),
            "targets": list(self.targets),
            "model_info": self.model_info,
            "timings": self.timings,
        }
        atomic_write_bytes(path, st_save(tensors, metadata={_META_KEY: json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EditMemory:
        """Read a memory written by :meth:`save` (exact: tensors bit for bit, same config).

        Raises:
            FileNotFoundError: no such file.
            EditMemoryError: truncated or corrupt file, or not an edit memory.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no edit memory file at {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                header = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise EditMemoryError(
                f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from exc
        try:
            meta = json.loads(header[_META_KEY])
            if meta.get("kind") != _KIND:
                raise EditMemoryError(f"{path} holds a {meta.get('kind')!r}, not an edit memory")
            if meta.get("format") != _FORMAT:
                raise EditMemoryError(
                    f"{path}: unsupported edit-memory format {meta.get('format')!r}"
                )
            memory = cls(
                EditConfig.from_dict(meta["config"]),
                ids=meta["ids"],
                keys=tensors["keys"],
                answer_values=tensors["answer_values"],
                target_values=tensors["target_values"],
                targets=meta["targets"],
                model_info=meta["model_info"],
                timings=meta.get("timings", {}),
            )
        except EditMemoryError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise EditMemoryError(
                f"{path}: corrupt or incomplete edit-memory file: {exc!r}"
            ) from exc
        return memory

    def equals(self, other: EditMemory) -> bool:
        """Exact equality of config, ids, targets, model info and tensors."""
        return (
            isinstance(other, EditMemory)
            and self.config == other.config
            and self.ids == other.ids
            and self.targets == other.targets
            and self.model_info == other.model_info
            and all(
                torch.equal(getattr(self, n), getattr(other, n))
                for n in ("keys", "answer_values", "target_values")
            )
        )

    def with_config(self, **changes) -> EditMemory:
        """A copy sharing the captured tensors with some config fields changed (no recapture).

        Example: ``memory.with_config(alpha=4.0, q=8)``; ``with_config(layer=...)`` is refused
        because keys and deltas belong to their site.
        """
        if {"layer", "module"} & set(changes):
            raise EditMemoryError(
                "keys and deltas belong to their site: rebuild to change layer/module"
            )
        config = replace(self.config, **changes)
        memory = EditMemory(
            config, ids=self.ids, keys=self.keys, answer_values=self.answer_values, target_values=self.target_values,
            targets=self.targets, model_info=self.model_info, timings=dict(self.timings),
        )  # fmt: skip
        memory._model = self._model
        return memory


# ---------------------------------------------------------------------------- the handle


@dataclass(eq=False)
class EditHandle:
    """An installed :class:`EditMemory`; ``remove()`` (or the ``with`` block's end) uninstalls it.

    Attributes:
        memory: The memory (live: inserts and removals act at once).
        model: The model it is installed on.
        fired: How many forwards the edit modified, per ``current_step`` (``None`` =
            stand-alone forward). Counts are *forwards per step*, not rows: a forward whose
            rows sit at several steps (the TIE sweep passes a ``[rows]`` tensor of steps as
            ``model.current_step``) counts once for each distinct step among its rows — a
            forward with rows at steps ``{0, 2}`` adds one to step 0 and one to step 2,
            however many rows each has. So ``sum(fired.values())`` equals the number of
            forwards only when every forward has a single step.
        skipped: Forwards seen but not modified (outside the step set, or an empty memory),
            per step, counted the same way.
    """

    memory: EditMemory
    model: Any
    fired: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    _mediator: Any = None

    @property
    def installed(self) -> bool:
        return has_edit(self.model, self._mediator)

    def __call__(self, hidden: torch.Tensor, step: int | torch.Tensor | None) -> None:
        """Apply the memory in place to one site output (called by the nnsight edit).

        ``step`` is the forward's denoising step, ``None`` for a stand-alone forward, or a
        ``[rows]`` tensor of per-row steps (the TIE sweep batches rows of several steps).
        """
        memory = self.memory
        if isinstance(step, torch.Tensor):
            row_steps = [int(k) for k in step.reshape(-1).tolist()]
            firing = {k for k in row_steps if len(memory) and memory.config.fires_at(k)}
            if len(firing) == len(set(row_steps)):  # every row fires (or the step set is all)
                if firing:
                    hidden += memory.update(hidden).to(hidden.dtype)
            elif firing:
                rows = torch.tensor([k in firing for k in row_steps], device=hidden.device)
                hidden[rows] += memory.update(hidden[rows]).to(hidden.dtype)
            for k in sorted(set(row_steps)):  # once per forward and step, not per row
                (self.fired if k in firing else self.skipped)[k] += 1
            return
        if not len(memory) or not memory.config.fires_at(step):
            self.skipped[step] += 1
            return
        hidden += memory.update(hidden).to(hidden.dtype)
        self.fired[step] += 1

    def remove(self) -> None:
        """Take this edit out of the model (idempotent); other edits stay."""
        if self._mediator is None:
            return
        remove_edit(self.model, self._mediator)
        self._mediator = None

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "installed" if self.installed else "removed"
        return f"EditHandle({state}, model={getattr(self.model, 'name', '?')!r}, memory={self.memory!r})"


# ------------------------------------------------------------------------------- capture


def capture_keys_and_deltas(
    model,
    facts: Sequence[Fact],
    targets: Sequence[str],
    *,
    layer: int,
    module: str = "resid",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K, V, V*)``, each ``[N, d]`` float32 CPU: Eq. 6–8 at site ``(layer, module)``.

    Rows of the three kinds (query with masked answer → mean over subject positions; prompt +
    answer → mean over the answer span; prompt + target → mean over the target span) are
    stacked by sequence length and run as batched traced forwards (``model.logits``) with
    every installed edit suspended and ``current_step`` ``None``.
    """
    model.check_site(layer, module)
    if len(targets) != len(facts):
        raise ShapeError(f"{len(targets)} targets for {len(facts)} facts")
    mask_id = model.mask_token_id
    rows: list[tuple[list[int], list[int], int, int]] = []  # ids, pooled positions, fact, kind
    for i, (fact, target) in enumerate(zip(facts, targets)):
        query = encode_query(model, fact)
        prompt, answer = list(query.prompt_ids), list(query.answer_ids)
        p = len(prompt)
        _, target_ids = model.encode(fact.question, target)
        body = answer if mask_id is None else [mask_id] * len(answer)
        rows.append((prompt + body, list(query.subject_positions), i, 0))
        rows.append((prompt + answer, list(range(p, p + len(answer))), i, 1))
        rows.append((prompt + list(target_ids), list(range(p, p + len(target_ids))), i, 2))
    d = int(model.hidden_size)
    out = torch.zeros(3, len(facts), d, dtype=torch.float32)
    by_len: dict[int, list[int]] = {}
    for r, (ids, *_rest) in enumerate(rows):
        by_len.setdefault(len(ids), []).append(r)
    device = model.param_device
    site = model.site(layer, module)
    saved_step = model.current_step
    model.current_step = None
    try:
        with suspended_edits(model), torch.inference_mode():
            for length, members in by_len.items():
                for lo in range(0, len(members), batch_size):
                    chunk = members[lo : lo + batch_size]
                    x = torch.tensor([rows[r][0] for r in chunk], device=device)
                    weights = torch.zeros(len(chunk), length, device=device)
                    for j, r in enumerate(chunk):
                        pos = rows[r][1]
                        weights[j, pos] = 1.0 / len(pos)
                    with model.logits(x):
                        h = hidden_of(site.output)
                        pooled = nnsight.save(torch.einsum("bs,bsd->bd", weights, h.float()))
                    pooled = pooled.cpu()
                    for j, r in enumerate(chunk):
                        out[rows[r][3], rows[r][2]] = pooled[j]
    finally:
        model.current_step = saved_step
    if not torch.isfinite(out).all():
        raise EditMemoryError(
            f"non-finite activations at ({layer}, {module!r}) while capturing keys"
        )
    return out[0], out[1], out[2]


# ------------------------------------------------------------------------------- helpers


def _check_unique(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    dups = []
    for i in ids:
        if i in seen and i not in dups:
            dups.append(i)
        seen.add(i)
    if dups:
        raise EditMemoryError(f"duplicate fact ids {dups}: every fact in a memory needs its own id")


def _check_compatible(memory: EditMemory, model) -> None:
    info = memory.model_info
    got = _model_signature(model)
    for key in ("hidden_size", "num_layers"):
        if int(info[key]) != got[key]:
            raise EditMemoryError(
                f"this memory was built for {info.get('name')!r} ({key}={info[key]}); "
                f"{got['name']!r} has {key}={got[key]}"
            )


def _resolve_config(
    model, *, layer, module, alpha, lam, q, steps, kappa, mode, n_facts
) -> EditConfig:
    op = dict((getattr(model, "info", None) or {}).get("operating_point") or {})
    if layer is None:
        if "layer" not in op:
            raise EditMemoryError(
                f"{getattr(model, 'name', 'this model')!r} has no tuned operating point "
                f"(model.info['operating_point']); pass layer=..."
            )
        layer = int(op["layer"])
        if module == "resid" and op.get("module"):
            module = op["module"]
    cap_q = False
    if q is None and op.get("q") is not None and mode == "ridge":
        q, cap_q = int(op["q"]), True
    elif q is not None and (isinstance(q, bool) or not isinstance(q, int) or q < 1 or q > n_facts):
        raise EditMemoryError(
            f"q={q!r} must be an integer with 1 ≤ q ≤ N={n_facts} (or None for dense)"
        )
    if steps is None and op.get("steps") is not None:
        steps = op["steps"]
    return EditConfig(
        layer=int(layer),
        module=module,
        alpha=float(alpha if alpha is not None else op.get("alpha", PACKAGE_DEFAULTS["alpha"])),
        lam=float(lam if lam is not None else op.get("lam", PACKAGE_DEFAULTS["lam"])),
        q=q,
        steps=None if steps is None else _normalize_steps(steps),
        kappa=float(kappa if kappa is not None else op.get("kappa", PACKAGE_DEFAULTS["kappa"])),
        mode=mode,
        cap_q=cap_q,
    )


def _resolve_targets(facts: Sequence[Fact], targets: str | Sequence[str]) -> list[str]:
    if isinstance(targets, str):
        if targets not in TARGET_KINDS:
            raise EditMemoryError(
                f"targets={targets!r}: give one of {TARGET_KINDS} or one string per fact"
            )
        refusals = load_refusals() if targets in ("auto", "refusal") else []
        out = []
        for f in facts:
            if targets == "target" or (targets == "auto" and f.target is not None):
                if f.target is None:
                    raise EditMemoryError(
                        f"fact {fact_key(f)!r} has no target (Fact.target is None)"
                    )
                out.append(f.target)
            elif targets == "perturbed":
                if not f.perturbed_answers:
                    raise EditMemoryError(f"fact {fact_key(f)!r} has no perturbed answers")
                out.append(f.perturbed_answers[0])
            else:
                out.append(refusals[zlib.crc32(fact_key(f).encode()) % len(refusals)])
        return out
    texts = [str(t) for t in targets]
    if len(texts) != len(facts):
        raise EditMemoryError(f"{len(texts)} targets given for {len(facts)} facts")
    return texts
