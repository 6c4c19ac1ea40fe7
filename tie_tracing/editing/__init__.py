"""The edit memory (SPEC §8, Eq. 6–12): a closed-form residual edit installed as an nnsight edit.

**What is captured** (:mod:`.capture`). At one site ``(l*, m*)`` (default ``m* = resid``) and
for each fact ``f``, three cloze forwards of the *unedited* backbone give (Eq. 6–9)::

    k_f   = mean_{i∈S} h(x_query)_i     subject key: prompt + |answer| masks        (Eq. 6)
    k^O_f = mean_{i∈O} h(x_query)_i     answer-slot key: the same query's masked slots
    v_f   = mean_{i∈O} h(x_orig)_i      answer span filled with the original answer  (Eq. 7)
    v*_f  = mean_{i∈O*} h(x_target)_i   answer span filled with the target (its own length)
    δ_f   = v*_f − v_f                                                               (Eq. 9)

**What is applied** (:mod:`.algebra`, pure functions) to the site's output, in place, on every
forward whose step (``model.context.step``, :mod:`tie_tracing.core.context`) is in the step
set, with ``K`` the keys, ``D`` the deltas:

* ``mode="ridge"`` (default, Eq. 11–12): ``c_i = G⁻¹ K h_i`` with ``G = K Kᵀ + λ_abs I_N`` and
  ``λ_abs = λ · mean(diag(K Kᵀ))``; ``h_i ← h_i + α Dᵀ top_q(g ⊙ c_i)``. ``G`` is Cholesky-
  factorised (float64) and ``G⁻¹K`` obtained with ``cholesky_solve`` — never an explicit
  inverse. ``top_q`` keeps the ``q`` largest-magnitude coefficients (``q = N``: dense). With
  ``g = 1`` and dense, the update equals the primal ridge map ``W = (KᵀK + λ_abs I_d)⁻¹ KᵀD``
  applied as ``h + α Wᵀh`` (:meth:`EditMemory.primal_map`; the tests check the identity).
* ``mode="gated"`` (Eq. 10, one clip gate per fact, summed): ``h_i ← h_i + α Σ_f g_f
  clip(⟨h_i, k_f⟩ / ⟨k_f, k_f⟩, 0, κ) δ_f`` — the "stacked single-fact edits" ablation.
* ``mode="steer"`` (the ``act_steer`` baseline of SPEC §10.4): ``h_i ← h_i + α mean_f δ_f`` —
  one fixed direction, no gate, no ridge.

**The paper's memory** is the default config: ``g = 1``, keys ``K = [k_f]`` (subject, Eq. 6),
every position ``i``. Three options of :class:`EditConfig` make a **gated memory** (SPEC §8,
"beyond the paper"):

* ``subject_gate=True`` (:mod:`.gate`): ``g_f = 1[score_f > τ_f]`` per input row, with::

      u_i     = C_s^{-½} (h_i − μ)           μ, C: mean, covariance of the site's outputs at
                                             the non-[MASK] tokens of named calibration prompts
      C_s     = (1 − s) C + s (tr C / d) I    shrinkage s = gate_shrinkage
      score_f = max_W cos(mean_{i∈W} u_i, C_s^{-½}(k_f − μ))
                                             W: |S_f| consecutive non-[MASK] tokens
      τ_f     = max_{x ∈ calibration, subject(x) ≠ subject(f)} score_f(x) + gate_margin

  Detection always uses the subject keys ``k_f``; a row in which no gate opens is left
  untouched (bit for bit).
* ``subject_gate=True, gate_kind="slots"`` (:mod:`.slot_gate`): detection at the answer's
  still-masked slots instead of the prompt — keys are each fact's object-slot states (whitened,
  unit), each with a radius: the highest cosine any calibration slot or any look-alike of the
  subject (the same question about a person sharing its first name or surname) reaches; a key
  fires when a masked slot's cosine exceeds its radius plus ``gate_margin``. The decision is
  taken on the forward whose answer is all ``[MASK]`` and held along the trajectory. With
  ``targets="unknown"`` and ``mode="steer"`` the update moves the answer slots towards the
  state of the same question about people the model never met (``unknown_names``).
* ``apply_at="answer"``: the update is added only at the answer's slots — the positions whose
  input token is ``[MASK]`` (the whole answer under the masked estimator, the undecided slots
  inside the diffusion loop); every other position keeps its exact bits.
* ``key_at="answer"``: ``K = [k^O_f]``, the keys where such an update acts.

**Step set.** ``edit_steps=None`` (default) fires on every forward. With a step set — a *set of
denoising steps* (an int is a one-step set), not a step count as in ``trace_tie(steps=T)`` —
a forward of the diffusion loop fires when its context's step is in the set; a
``T``-step sampler numbers its forwards ``0 … T-1``, so steps ``≥ T`` never fire. A TIE-sweep
forward that mixes rows of several steps edits exactly the rows whose step is in the set
(:attr:`EditHandle.fired` counts forwards per step, not rows). A *stand-alone* forward
(context step ``None``: ``tt.answer_logprob``, a user's ``model.logits(x)``) always fires,
whatever the step set, so likelihood evaluation sees the edit. The token gate reads the
prompt only wherever the forward's context knows the answer span (the diffusion loop, every
traced forward, the likelihoods): a subject written into an answer never opens it, so the
memory acts on the same state identically in the loop and in a tracing sweep.

**Installation** (:mod:`.install`): one nnsight edit per installed memory, replayed on every
trace and direct call of ``model.denoise`` / ``model.logits`` (hence ``tt.diffuse``,
``tt.answer_logprob``, ``tt.evaluate``, ``tt.trace_tie``). A memory installs only on the
model it was built on (:mod:`.fingerprint`), at most once at a time; removal restores the
unedited outputs bit for bit. A memory is a value (:class:`EditMemory` is frozen):
``memory.insert(facts)`` and ``memory.without(ids)`` return new memories, and the handle holds
the installed state — ``handle.insert(facts)`` / ``handle.without(ids)`` / ``handle.swap(m)``
put a new value into the live edit at once.
**Persistence**: ``memory.save(path)`` / ``EditMemory.load(path)`` through the package's one
serialiser (:mod:`tie_tracing.core._io`: one safetensors file, JSON header, exact round trip);
files of the earlier edit-memory layout are still read (:mod:`.legacy`).
**Efficacy by layer** (:mod:`.efficacy`): :func:`edit_efficacy` installs the same memory at
several layers and measures ΔForgetLP / ΔRetainLP (SPEC §10.3).
**Controls** (:mod:`.controls`): :func:`random_directions` — the same memory with random update
directions of equal norm (the ``random_directions`` reference row of an unlearning table).
**Configuration is explicit** (:mod:`.operating_point`): ``EditMemory.build(model, facts,
config=None, **overrides)`` builds one :class:`EditConfig` — ``config`` with the keyword
overrides applied, :class:`EditConfig`'s defaults (the paper's memory; ``layer=`` required)
without one. Nothing is read from the model's files. **Operating points**: a model's
``tie_tracing.json`` may hold a configuration a tuning command chose (``--write``); it is used
only when asked, ``EditMemory.build(model, facts, OperatingPoint.shipped(model))``, which
validates it and brings its calibration prompts and gate shrinkage.
:func:`.operating_point.write_operating_point` is its one writer, and it regenerates the model
card's section from the JSON it stores.

Limits: the edit goes through nnsight, so calling the wrapped ``torch.nn.Module`` directly
(``model._module(x)``) bypasses it, as does a trace rooted at a child envoy. Streaming inserts
refactorise ``G`` (``O(N³)``, under a millisecond for a few hundred facts) rather than a
rank-1 update, because the scale-free ``λ_abs`` moves with every insert. With ``λ = 0`` the
factorisation needs linearly independent keys; otherwise :class:`EditMemoryError` says so — no
jitter is added silently. The gate adds a ``d × d`` product per token and a window scan per
subject length; it sees only what layer ``l*`` encodes about the subject (another spelling
of the name may not open it).

Example:
    >>> import tie_tracing as tt                                              # doctest: +SKIP
    >>> model = tt.load_model("tiny-mdlm")                                   # doctest: +SKIP
    >>> facts = tt.load_facts("tiny", split="forget01")                      # doctest: +SKIP
    >>> paper = tt.EditMemory.build(model, facts, layer=4)    # the paper's memory  # doctest: +SKIP
    >>> gated = tt.EditMemory.build(model, facts, layer=4, subject_gate=True,  # doctest: +SKIP
    ...     apply_at="answer", key_at="answer", calibration=tt.load_facts("tiny", "retain")[:200])
    >>> if tt.editing.OperatingPoint.ships_with(model):  # a tuned point, only when asked  # doctest: +SKIP
    ...     tuned = tt.EditMemory.build(model, facts, tt.editing.OperatingPoint.shipped(model))
    >>> with gated.install(model):                                           # doctest: +SKIP
    ...     edited = tt.answer_logprob(model, facts)
"""

from ..core.fingerprint import describe_model, model_fingerprint
from .algebra import (
    coefficients,
    eq10_update,
    factorize,
    factorize_blocks,
    lam_abs,
    primal_map,
    ridge_update,
    token_matches,
    top_q,
    whitener,
    window_scores,
)
from .capture import Captured, capture_keys_and_deltas, capture_states
from .config import (
    APPLY_AT,
    EDIT_MODES,
    GATE_KINDS,
    KEY_AT,
    PACKAGE_DEFAULTS,
    RIDGE_BLOCKS,
    TARGET_KINDS,
    EditConfig,
    EditMemoryError,
    EditMemoryFileError,
    EditMemoryWarning,
)
from .controls import random_directions
from .efficacy import edit_efficacy
from .gate import CalibrationSet, SubjectGate
from .install import EditHandle, live_handles
from .memory import EditMemory
from .operating_point import OperatingPoint, write_operating_point
from .slot_gate import SlotGate

__all__ = [
    "APPLY_AT",
    "EDIT_MODES",
    "GATE_KINDS",
    "KEY_AT",
    "PACKAGE_DEFAULTS",
    "RIDGE_BLOCKS",
    "TARGET_KINDS",
    "CalibrationSet",
    "Captured",
    "EditConfig",
    "EditHandle",
    "EditMemory",
    "EditMemoryError",
    "EditMemoryFileError",
    "EditMemoryWarning",
    "OperatingPoint",
    "SlotGate",
    "SubjectGate",
    "capture_keys_and_deltas",
    "capture_states",
    "coefficients",
    "describe_model",
    "edit_efficacy",
    "eq10_update",
    "factorize",
    "factorize_blocks",
    "lam_abs",
    "live_handles",
    "model_fingerprint",
    "primal_map",
    "random_directions",
    "ridge_update",
    "token_matches",
    "top_q",
    "whitener",
    "window_scores",
    "write_operating_point",
]
