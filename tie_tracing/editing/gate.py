"""The subject-detection gate of a gated memory: statistics fitted on calibration prompts.

With ``μ`` and ``C`` the mean and covariance of the site's outputs at the non-``[MASK]``
tokens of named calibration prompts (normally retain facts, each taken as its query
``prompt + |answer| × [MASK]`` and as ``prompt + answer``: inside the diffusion loop the gate
also scans decoded answer tokens, and a threshold calibrated on queries alone lets windows
over answers open it), ``C_s = (1 − s) C + s (tr C / d) I`` and ``u_i = C_s^{-½}(h_i − μ)``, a fact ``f`` with
subject key ``k_f`` and subject length ``|S_f|`` scores an input as::

    score_f = max over windows W of |S_f| consecutive non-[MASK] tokens of
              cos(mean_{i∈W} u_i, C_s^{-½}(k_f − μ))

and its gate is ``g_f = 1[score_f > τ_f]`` with ``τ_f = max_{x ∈ calibration, subject(x) ≠
subject(f)} score_f(x) + margin``: the highest score the fact reaches on calibration prompts
about *other* subjects, plus a margin. (The SPEC's single ``τ`` over the memory is
``max_f τ_f``; per-fact thresholds keep one fact's look-alike in the calibration set from
blinding the gate for every other fact, and keep streaming inserts from moving the
thresholds of the facts already in the memory.) A calibration prompt about the fact's own
subject is left out of its threshold, so forgetting a person who is in the calibration set
still works.

:class:`SubjectGate` holds ``μ``, ``C_s^{-½}``, the shrinkage and the calibration prompts
(ids, subjects, token ids); thresholds belong to the memory (one per fact). The whitened
calibration states are cached after :meth:`SubjectGate.fit`; a loaded gate recomputes them
from the stored token ids on the first insert (one batched forward of the calibration set).

Limits: detection reads residuals of the same forward it edits, at the edit's own site, so
it only sees what that layer encodes about the subject; a subject written differently from
the memory's (another spelling, a pronoun) scores lower and may not fire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.defaults import BATCH_SIZE
from ..core.facts import Fact
from ..tracing.patching import fact_key
from . import algebra
from .capture import capture_states, query_ids
from .config import EditMemoryError

__all__ = ["CalibrationSet", "SubjectGate", "same_subject"]


def same_subject(a: str, b: str) -> bool:
    """Subjects compared case- and whitespace-insensitively."""
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


@dataclass(frozen=True)
class CalibrationSet:
    """The named prompts a gate was fitted on: fact ids, subjects and query token ids."""

    ids: tuple[str, ...]
    subjects: tuple[str, ...]
    tokens: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.subjects) == len(self.tokens)):
            raise EditMemoryError("calibration ids, subjects and tokens differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fact_ids(self) -> tuple[str, ...]:
        """The calibration facts' ids (each fact gives two inputs, see :meth:`from_facts`)."""
        return tuple(dict.fromkeys(i.removesuffix(":answer") for i in self.ids))

    @classmethod
    def from_facts(cls, model, facts: Sequence[Fact]) -> CalibrationSet:
        """Each fact as two inputs, the two ends of a diffusion trajectory: its query (answer
        slots masked, id ``"<id>"``) and its prompt with the answer filled in (``"<id>:answer"``),
        so thresholds also cover windows over decoded answer tokens."""
        facts = list(facts)
        if not facts:
            raise EditMemoryError("the subject gate needs at least one calibration prompt")
        ids, subjects, tokens = [], [], []
        for f in facts:
            prompt, answer = model.encode(f.question, f.answer)
            for suffix, seq in (
                ("", query_ids(model, f)),
                (":answer", list(prompt) + list(answer)),
            ):
                ids.append(fact_key(f) + suffix)
                subjects.append(f.subject)
                tokens.append(tuple(seq))
        return cls(ids=tuple(ids), subjects=tuple(subjects), tokens=tuple(tokens))


@dataclass(frozen=True, eq=False)
class SubjectGate:
    """Detection statistics at one site (see the module docstring); a value, saved with its
    memory. The whitened calibration states are a cache beside it (not a field).

    Attributes:
        mean: ``[d]`` ``μ`` (float32).
        whiten: ``[d, d]`` ``C_s^{-½}`` (float32, symmetric).
        shrinkage: ``s``.
        calibration: The :class:`CalibrationSet`.
    """

    mean: torch.Tensor
    whiten: torch.Tensor
    shrinkage: float
    calibration: CalibrationSet
    #: The whitened calibration states, when in memory (a cache: never saved or compared).
    _states: ClassVar[list[torch.Tensor] | None] = None

    @classmethod
    def fit(
        cls,
        model,
        facts: Sequence[Fact],
        *,
        layer: int,
        module: str,
        shrinkage: float,
        batch_size: int = BATCH_SIZE,
    ) -> SubjectGate:
        """Fit ``μ, C_s^{-½}`` on the non-``[MASK]`` tokens of ``facts``' queries."""
        calibration = CalibrationSet.from_facts(model, facts)
        states = capture_states(
            model, calibration.tokens, layer=layer, module=module, batch_size=batch_size
        )
        valid = [_valid(t, model.mask_token_id) for t in calibration.tokens]
        rows = torch.cat([s[v] for s, v in zip(states, valid)])
        mu, whiten = algebra.whitener(rows, shrinkage)
        gate = cls(mu.float(), whiten.float(), float(shrinkage), calibration)
        object.__setattr__(gate, "_states", [gate.whiten_states(s) for s in states])
        return gate

    def __len__(self) -> int:
        return len(self.calibration)

    def whiten_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` ``C_s^{-½}(h − μ)`` (float32, on ``hidden``'s device)."""
        mean = self.mean.to(hidden.device)
        whiten = self.whiten.to(hidden.device)
        return (hidden.float() - mean) @ whiten

    def directions(self, subject_keys: torch.Tensor) -> torch.Tensor:
        """``[N, d]`` unit ``C_s^{-½}(k_f − μ)`` (float32)."""
        return algebra.whitened_directions(subject_keys.float(), self.mean, self.whiten).float()

    def ensure_states(
        self, model, *, layer: int, module: str, batch_size: int = BATCH_SIZE
    ) -> None:
        """Recompute the whitened calibration states from the stored token ids if needed."""
        if self._states is not None:
            return
        states = capture_states(
            model, self.calibration.tokens, layer=layer, module=module, batch_size=batch_size
        )
        object.__setattr__(self, "_states", [self.whiten_states(s) for s in states])

    def calibration_maxima(
        self,
        directions: torch.Tensor,
        lengths: torch.Tensor,
        subjects: Sequence[str],
        *,
        mask_token_id: int | None,
        fact_ids: Sequence[str] = (),
    ) -> torch.Tensor:
        """``[N]`` ``max_{x: subject(x) ≠ subject(f)} score_f(x)`` over the calibration prompts.

        Raises:
            EditMemoryError: the calibration states are not available (a loaded gate:
                call :meth:`ensure_states` first), or a fact has no calibration prompt
                about another subject.
        """
        if self._states is None:
            raise EditMemoryError(
                "the gate's calibration states are not in memory (a loaded memory): pass "
                "the model so they can be recomputed"
            )
        n = directions.shape[0]
        scores = torch.empty(len(self.calibration), n)
        by_len: dict[int, list[int]] = {}
        for r, toks in enumerate(self.calibration.tokens):
            by_len.setdefault(len(toks), []).append(r)
        for members in by_len.values():
            u = torch.stack([self._states[r] for r in members])
            valid = torch.stack(
                [_valid(self.calibration.tokens[r], mask_token_id) for r in members]
            )
            scores[members] = algebra.window_scores(u, valid, directions, lengths)
        eligible = torch.tensor(
            [[not same_subject(c, s) for s in subjects] for c in self.calibration.subjects],
            dtype=torch.bool,
        ).reshape(len(self.calibration), n)
        no_prompt = (~eligible).all(0)
        if no_prompt.any():
            bad = [
                fact_ids[i] if fact_ids else i for i in torch.nonzero(no_prompt).flatten().tolist()
            ]
            raise EditMemoryError(
                f"facts {bad}: every calibration prompt is about their own subject, so the "
                "gate has nothing to calibrate against; add prompts about other subjects"
            )
        return scores.masked_fill(~eligible, float("-inf")).amax(0)

    def scores(
        self,
        hidden: torch.Tensor,
        token_ids: torch.Tensor,
        directions: torch.Tensor,
        lengths: torch.Tensor,
        *,
        mask_token_id: int | None,
    ) -> torch.Tensor:
        """``[B, N]`` ``score_f`` of each row of ``hidden [B, S, d]`` (token ids ``[B, S]``)."""
        valid = (
            torch.ones_like(token_ids, dtype=torch.bool)
            if mask_token_id is None
            else token_ids != mask_token_id
        )
        return algebra.window_scores(self.whiten_states(hidden), valid, directions, lengths)


def _valid(tokens: Sequence[int], mask_token_id: int | None) -> torch.Tensor:
    t = torch.tensor(list(tokens))
    return torch.ones_like(t, dtype=torch.bool) if mask_token_id is None else t != mask_token_id
