"""The answer-slot gate (``gate_kind="slots"``): decide from what the model computes for the answer.

Token and subject-window gates look at the *prompt*: they fire on a name that is merely present
(a mention) and miss a person written another way (a first name, "the author of …"). This gate
reads the still-masked **answer slots** at the edit's site instead — the positions where the
model must compute the object, so whatever the wording of the question they carry "which person,
which relation" — and compares them with a codebook of keys (GRACE-style, one radius per key):

* **keys**: for each fact ``f`` in the memory, the site's outputs at the slots of its object
  (``Fact.object``'s tokens inside the answer; every answer slot for a fact without an object)
  in its query ``prompt + |answer| × [MASK]``, whitened and normalised:
  ``κ_j = unit(C_s^{-½}(h_j − μ))``;
* **calibration**: the same query form of prompts the memory must leave alone (``calibration=``
  facts: retain and world questions), every answer slot; ``μ``, ``C`` are their mean and
  covariance, ``C_s = (1 − s) C + s (tr C / d) I``;
* **radius**: ``r_j = max_{calibration slots x} cos(κ_j, x)`` — the closest any out-of-scope slot
  comes — and the key fires when ``cos(κ_j, u_i) > r_j + gate_margin`` at some still-masked slot
  ``i`` of a row. Fact ``f``'s gate opens when any of its keys fires.

**Held along the trajectory.** Residuals move as answer tokens are committed, so the decision is
taken where the input looks like the keys and the calibration: on a forward whose answer span is
*entirely* ``[MASK]`` (step 0 of the diffusion loop; the masked likelihood), and held, for the
installed edit, for later forwards of the same prompt (the handle keeps the decisions, keyed by
the prompt's token ids and the row length). A row seen first with part of its answer written
(an infilling prompt, a loop resumed mid-way) is decided on its own slots and counted as
``unheld`` in :attr:`EditHandle.gate_rows <tie_tracing.editing.install.EditHandle.gate_rows>`.
Corrupting the subject's embeddings in a tracing sweep does not change a held decision.

Cost: one forward per calibration prompt and per fact at build time; at run time a
``[masked slots × keys]`` product per forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..core.defaults import BATCH_SIZE
from ..core.facts import Fact, locate_object
from ..tracing.patching import fact_key
from . import algebra
from .capture import capture_states, query_ids
from .config import EditMemoryError
from .gate import CalibrationSet

__all__ = ["SlotGate", "lookalikes", "row_prompts", "slot_decisions"]


@dataclass(frozen=True, eq=False)
class SlotGate:
    """The answer-slot gate's statistics and codebook (see the module docstring); a value,
    saved with its memory. The calibration's whitened slot states are a cache beside it.

    Attributes:
        mean: ``[d]`` ``μ`` (float32).
        whiten: ``[d, d]`` ``C_s^{-½}`` (float32, symmetric).
        shrinkage: ``s``.
        calibration: The :class:`~tie_tracing.editing.gate.CalibrationSet` (query token ids).
        key_ids: The fact id of each key.
        keys: ``[K, d]`` unit whitened keys ``κ_j``.
        radius: ``[K]`` ``r_j``, the highest cosine of a calibration slot with key ``j``.
    """

    mean: torch.Tensor
    whiten: torch.Tensor
    shrinkage: float
    calibration: CalibrationSet
    key_ids: tuple[str, ...]
    keys: torch.Tensor
    radius: torch.Tensor
    #: ``[slots, d]`` unit whitened calibration slot states, when in memory (never saved).
    _negatives: ClassVar[torch.Tensor | None] = None

    def __post_init__(self) -> None:
        k = len(self.key_ids)
        if tuple(self.keys.shape) != (k, self.mean.shape[0]) or tuple(self.radius.shape) != (k,):
            raise EditMemoryError(
                f"slot gate: {k} key ids, keys {tuple(self.keys.shape)}, radius "
                f"{tuple(self.radius.shape)} do not line up"
            )
        object.__setattr__(self, "key_ids", tuple(str(i) for i in self.key_ids))

    @classmethod
    def fit(
        cls,
        model,
        calibration: Sequence[Fact],
        *,
        layer: int,
        module: str,
        shrinkage: float,
        batch_size: int = BATCH_SIZE,
    ) -> SlotGate:
        """Fit ``μ, C_s^{-½}`` on every answer slot of the calibration prompts' queries (no keys
        yet: add them with :meth:`with_facts`)."""
        if model.mask_token_id is None:
            raise EditMemoryError("gate_kind='slots' needs a masked diffusion model ([MASK] slots)")
        facts = list(calibration)
        if not facts:
            raise EditMemoryError("the answer-slot gate needs at least one calibration prompt")
        ids, subjects, tokens = [], [], []
        for f in facts:
            ids.append(fact_key(f))
            subjects.append(f.subject)
            tokens.append(tuple(query_ids(model, f)))
        cal = CalibrationSet(ids=tuple(ids), subjects=tuple(subjects), tokens=tuple(tokens))
        rows = _masked_rows(model, cal.tokens, layer=layer, module=module, batch_size=batch_size)
        mu, whiten = algebra.whitener(rows.double(), shrinkage)
        d = rows.shape[1]
        gate = cls(
            mu.float(), whiten.float(), float(shrinkage), cal, (), torch.zeros(0, d),
            torch.zeros(0),
        )  # fmt: skip
        object.__setattr__(gate, "_negatives", gate._unit(rows))
        return gate

    def _unit(self, hidden: torch.Tensor) -> torch.Tensor:
        u = (hidden.float() - self.mean.to(hidden.device)) @ self.whiten.to(hidden.device)
        return torch.nn.functional.normalize(u, dim=-1)

    def ensure_states(
        self, model, *, layer: int, module: str, batch_size: int = BATCH_SIZE
    ) -> None:
        """Recompute the calibration slot states from the stored token ids if needed."""
        if self._negatives is None:
            rows = _masked_rows(
                model, self.calibration.tokens, layer=layer, module=module, batch_size=batch_size
            )
            object.__setattr__(self, "_negatives", self._unit(rows))

    def with_facts(
        self,
        model,
        facts: Sequence[Fact],
        ids: Sequence[str],
        *,
        layer: int,
        module: str,
        lookalike_names: Sequence[str] = (),
        batch_size: int = BATCH_SIZE,
    ) -> SlotGate:
        """A gate with the keys of ``facts`` (ids ``ids``) added, their radii measured on the
        calibration slots and on the subject's look-alikes (:func:`lookalikes`: its questions
        about people who share a first name or a surname with it).

        Raises:
            EditMemoryError: the calibration states are not in memory and no model was given
                to recompute them.
        """
        self.ensure_states(model, layer=layer, module=module, batch_size=batch_size)
        assert self._negatives is not None
        seqs = [query_ids(model, f) for f in facts]
        states = capture_states(model, seqs, layer=layer, module=module, batch_size=batch_size)
        new_keys, new_ids, key_subject = [], [], []
        for f, fid, seq, h in zip(facts, ids, seqs, states):
            _, answer = model.encode(f.question, f.answer)
            offs = locate_object(model.tokenizer, answer, f)
            p = len(seq) - len(answer)
            new_keys.append(self._unit(h[[p + o for o in offs]]))
            new_ids += [fid] * len(offs)
            key_subject += [_norm(f.subject)] * len(offs)
        keys = torch.cat(new_keys) if new_keys else torch.zeros(0, self.mean.shape[0])
        radius = _max_cosine(keys, self._negatives)
        if lookalike_names and len(keys):
            for subject in sorted(set(key_subject)):
                mine = [f for f in facts if _norm(f.subject) == subject]
                alike = [q for f in mine for q in lookalikes(model, f, lookalike_names)]
                if not alike:
                    continue
                rows = _masked_rows(model, alike, layer=layer, module=module, batch_size=batch_size)
                sel = torch.tensor([k == subject for k in key_subject])
                radius[sel] = torch.maximum(radius[sel], _max_cosine(keys[sel], self._unit(rows)))
        gate = SlotGate(
            self.mean, self.whiten, self.shrinkage, self.calibration,
            self.key_ids + tuple(new_ids), torch.cat([self.keys, keys]),
            torch.cat([self.radius, radius]),
        )  # fmt: skip
        object.__setattr__(gate, "_negatives", self._negatives)
        return gate

    def without(self, ids: Sequence[str]) -> SlotGate:
        """The gate without the keys of facts ``ids``."""
        drop = set(ids)
        keep = [j for j, i in enumerate(self.key_ids) if i not in drop]
        gate = SlotGate(
            self.mean, self.whiten, self.shrinkage, self.calibration,
            tuple(self.key_ids[j] for j in keep), self.keys[keep], self.radius[keep],
        )  # fmt: skip
        object.__setattr__(gate, "_negatives", self._negatives)
        return gate

    def equals(self, other: SlotGate) -> bool:
        return (
            isinstance(other, SlotGate)
            and self.shrinkage == other.shrinkage
            and self.calibration == other.calibration
            and self.key_ids == other.key_ids
            and all(
                torch.equal(getattr(self, n), getattr(other, n))
                for n in ("mean", "whiten", "keys", "radius")
            )
        )

    def key_index(self, ids: Sequence[str]) -> torch.Tensor:
        """``[K]`` the memory row of each key (``ids``: the memory's fact ids, in row order).

        Raises:
            EditMemoryError: a key of a fact the memory does not hold, or a fact without keys.
        """
        row = {i: r for r, i in enumerate(ids)}
        stray = sorted({i for i in self.key_ids if i not in row})
        if stray:
            raise EditMemoryError(
                f"the slot gate holds keys of facts not in the memory: {stray[:5]}"
            )
        keyless = [i for i in ids if i not in set(self.key_ids)]
        if keyless:
            raise EditMemoryError(f"facts {keyless[:5]} have no key in the slot gate")
        return torch.tensor([row[i] for i in self.key_ids], dtype=torch.int64)

    def open_facts(
        self,
        hidden: torch.Tensor,
        masked: torch.Tensor,
        key_row: torch.Tensor,
        threshold: torch.Tensor,
        n_facts: int,
    ) -> torch.Tensor:
        """``[B, N]`` 0/1: fact ``f`` opens in a row when one of its keys fires at one of the
        row's masked slots (``hidden [B, S, d]``, ``masked [B, S]``, ``threshold [K]``)."""
        b = hidden.shape[0]
        if not masked.any() or not len(self.key_ids):
            return torch.zeros(b, n_facts, device=hidden.device)
        u = self._unit(hidden[masked])  # [slots, d]
        fires = (u @ self.keys.to(hidden.device).T) > threshold.to(hidden.device)  # [slots, K]
        rows = torch.nonzero(masked)[:, 0]
        per_row = torch.zeros(b, fires.shape[1], device=hidden.device)
        per_row.index_add_(0, rows, fires.float())  # [B, K] fired slots per key
        onehot = torch.nn.functional.one_hot(key_row.to(hidden.device), n_facts).float()
        out = ((per_row @ onehot) > 0).float()
        return out


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def lookalikes(model, fact: Fact, names: Sequence[str]) -> list[list[int]]:
    """Query token ids of ``fact``'s question about look-alikes of its subject: for each name
    of ``names`` (people the model never met), its first word with the subject's surname and
    the subject's first word with its surname (``"Ada Vell"`` and ``"Bo Kern"`` give
    ``"Bo Vell"`` and ``"Ada Kern"``). Subjects or names of one word give none."""
    words = fact.subject.split()
    if len(words) < 2:
        return []
    _, answer = model.encode(fact.question, fact.answer)
    out = []
    for name in names:
        other = name.split()
        if len(other) < 2:
            continue
        for alike in (" ".join([other[0], *words[1:]]), " ".join([words[0], *other[1:]])):
            if _norm(alike) == _norm(fact.subject):
                continue
            prompt, _ = model.encode(fact.question.replace(fact.subject, alike), fact.answer)
            out.append(list(prompt) + [model.mask_token_id] * len(answer))
    return out


def row_prompts(
    ids: torch.Tensor, mask_token_id: int, answer_start: int | None
) -> list[tuple[tuple, bool] | None]:
    """Per row of ``ids [B, S]``: ``(key, fresh)`` — the key a decision is held under (row
    length and prompt ids) and whether the row's answer span is all ``[MASK]`` — or ``None``
    for a row with no answer span to read (no ``answer_start`` and no ``[MASK]``). Without
    ``answer_start`` the answer starts at the first ``[MASK]``."""
    seq = ids.shape[1]
    out: list[tuple[tuple, bool] | None] = []
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        if answer_start is None and mask_token_id not in row:
            out.append(None)
            continue
        start = answer_start if answer_start is not None else row.index(mask_token_id)
        fresh = start < seq and all(t == mask_token_id for t in row[start:])
        out.append(((seq, tuple(row[:start])), fresh))
    return out


def slot_decisions(
    ids: torch.Tensor,
    mask_token_id: int,
    answer_start: int | None,
    decide: torch.Tensor,
    held: dict | None,
    counts: dict | None = None,
) -> torch.Tensor:
    """The gate of each row under the hold rule (module docstring): rows whose answer span is
    all ``[MASK]`` keep their own decision ``decide [B, N]`` (and store it in ``held``); others
    take the decision stored for their prompt, else their own (counted ``"unheld"``)."""
    if held is None:
        return decide
    out = decide.clone()
    for b, prompt in enumerate(row_prompts(ids, mask_token_id, answer_start)):
        if prompt is None:
            continue
        key, fresh = prompt
        if fresh:
            if len(held) >= _HELD_MAX:
                held.pop(next(iter(held)))
            held[key] = decide[b].detach().clone()
            kind = "decided"
        elif key in held:
            out[b] = held[key].to(out.device)
            kind = "held"
        else:
            kind = "unheld"
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return out


#: Decisions an installed edit holds at most (the oldest go first).
_HELD_MAX = 65536


def _masked_rows(
    model, tokens: Sequence[Sequence[int]], *, layer: int, module: str, batch_size: int
) -> torch.Tensor:
    """``[slots, d]`` the site's outputs at every ``[MASK]`` slot of the sequences."""
    states = capture_states(model, tokens, layer=layer, module=module, batch_size=batch_size)
    mask = model.mask_token_id
    rows = [h[torch.tensor(list(t)) == mask] for t, h in zip(tokens, states)]
    out = torch.cat(rows) if rows else torch.zeros(0, int(model.hidden_size))
    if len(out) < 2:
        raise EditMemoryError(
            f"the answer-slot gate needs at least 2 answer slots to calibrate on, its prompts "
            f"have {len(out)}: give more calibration prompts (retain or world questions)"
        )
    return out


def _max_cosine(keys: torch.Tensor, negatives: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """``[K]`` the highest cosine of each unit key with the unit negatives."""
    if not len(keys):
        return torch.zeros(0)
    best = torch.full((keys.shape[0],), -1.0)
    for lo in range(0, negatives.shape[0], chunk):
        best = torch.maximum(best, (keys @ negatives[lo : lo + chunk].T).amax(1))
    return best
