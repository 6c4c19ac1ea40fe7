"""The tracing engine: facts → cells → rows within a memory budget → batched forwards → results.

Every sweep of the package (TIE in its three modes, :mod:`~tie_tracing.tracing.tie`; positional
tracing, :mod:`~tie_tracing.tracing.positional`) is the same machine with a different
evaluator:

1. :func:`trace_facts` walks the facts of a plan — this process's shard of them — and for each
   one either reads its finished result back from a resumable directory (:class:`Store`) or
   asks the evaluator's ``trace_fact(model, query, plan)`` for a one-fact result and the
   :class:`Work` it did, and writes it there.
2. The evaluator lays the fact's cells out as rows (a patch ``(step, draw, site)``, a
   restoration ``(draw, layer, position, module)``) and runs them with :func:`run_batches`:
   at most ``batch_size`` rows per forward (chosen from the memory budget,
   :mod:`~tie_tracing.tracing.budget`), each forward one
   :func:`~tie_tracing.tracing.patching.patched_forward` in its
   :class:`~tie_tracing.core.context.ForwardContext`, its values written back by row index.

What is shared lives here once: resuming by content (:class:`Store`: the settings, the model's
fingerprint and every fact's fields must match, or ``overwrite``), fact sharding over
processes (``shard=(rank, world)``, merged by resuming), the progress bar, and the work
counters that results record as ``config["engine_stats"]`` (plain values added together, not a
dict written from many places).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core._io import atomic_write_text
from ..core.facts import Fact
from ..core.results import ResultFileError
from .ranks import rank_zero_first


@dataclass(frozen=True)
class Work:
    """What a trace ran, added up over its forwards (``config["engine_stats"]``).

    Attributes:
        forwards: Batched forwards (the traced loops count one per step).
        backwards: Backward passes (attribution).
        rows: Rows over all forwards.
        shapes: ``(rows, seq)`` of each forward, in order.
        divergent_continuations: Trajectory nodes run beyond the corrupted runs (exact TIE).
        rows_per_forward: The row budget of each traced fact.
        reused_facts: Facts whose runs came from a
            :class:`~tie_tracing.tracing.tie.SweepCache` (another target's sweep).
    """

    forwards: int = 0
    backwards: int = 0
    rows: int = 0
    shapes: tuple[tuple[int, int], ...] = ()
    divergent_continuations: int = 0
    rows_per_forward: tuple[int, ...] = ()
    reused_facts: int = 0

    @classmethod
    def forward(cls, rows: int, seq: int, *, times: int = 1, backward: bool = False) -> Work:
        """``times`` forwards of ``rows × seq`` tokens (each with a backward pass if asked)."""
        return cls(
            forwards=times,
            backwards=times if backward else 0,
            rows=rows * times,
            shapes=((rows, seq),) * times,
        )

    def __add__(self, other: Work) -> Work:
        return Work.total([self, other])

    @staticmethod
    def total(parts: Sequence[Work]) -> Work:
        """The work of ``parts`` together (one pass, however many forwards they hold)."""
        return Work(
            forwards=sum(w.forwards for w in parts),
            backwards=sum(w.backwards for w in parts),
            rows=sum(w.rows for w in parts),
            shapes=tuple(s for w in parts for s in w.shapes),
            divergent_continuations=sum(w.divergent_continuations for w in parts),
            rows_per_forward=tuple(r for w in parts for r in w.rows_per_forward),
            reused_facts=sum(w.reused_facts for w in parts),
        )

    def to_dict(self) -> dict:
        """The JSON record (``backwards`` only when some ran)."""
        out: dict[str, Any] = {
            "forwards": self.forwards,
            "rows": self.rows,
            "divergent_continuations": self.divergent_continuations,
            "shapes": [list(s) for s in self.shapes],
            "rows_per_forward": list(self.rows_per_forward),
        }
        if self.backwards:
            out["backwards"] = self.backwards
        if self.reused_facts:
            out["reused_facts"] = self.reused_facts
        return out


def run_batches(
    rows: torch.Tensor, batch_size: int, forward: Callable[[torch.Tensor], Work]
) -> Work:
    """Run the grid rows ``rows`` (indices) in forwards of at most ``batch_size`` rows, in
    order; ``forward(chunk)`` runs one forward of the rows ``chunk`` and writes its values
    back. Returns the work done."""
    return Work.total(
        [forward(rows[lo : lo + batch_size]) for lo in range(0, len(rows), batch_size)]
    )


# ----------------------------------------------------------------------------- the fact loop


def check_shard(shard: Any, out: Any, n_facts: int) -> tuple[int, int] | None:
    """``shard`` checked: ``(rank, world)`` with ``0 ≤ rank < min(world, n_facts)`` and an
    ``out`` directory to write into, or ``None``."""
    if shard is None:
        return None
    try:
        rank, world = shard
    except (TypeError, ValueError):
        rank = world = None
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 ≤ rank < world, got {shard!r}")
    if out is None:
        raise ValueError("shard= writes its facts to `out`: give an output directory")
    if rank >= n_facts:
        raise ValueError(
            f"shard {tuple(shard)!r} holds none of the {n_facts} facts: use at most {n_facts} "
            "shards (processes)"
        )
    return rank, world


def trace_facts(
    model,
    queries: Sequence[Any],
    facts: Sequence[Fact],
    trace_fact: Callable[[Any], tuple[Any, Work]],
    *,
    result_type: Any,
    record: dict,
    out: str | os.PathLike | None,
    overwrite: bool,
    shard: tuple[int, int] | None,
    progress: bool | str,
    label: str,
) -> tuple[list[Any], Work, dict]:
    """Trace this process's facts, resuming from ``out``; see the module docstring.

    Args:
        queries: The encoded facts, in order (``trace_fact`` takes one).
        facts: Their facts (what a resumed file must match).
        trace_fact: ``query → (one-fact result, Work)``.
        result_type: The result class (its ``load`` reads a resumed file).
        record: The settings a resumed directory must match (``config.json``).
        out, overwrite, shard, progress: As in :func:`~tie_tracing.tracing.tie.trace_tie`.
        label: The progress bar's label when ``progress`` is ``True``.

    Returns:
        ``(results, work, resume)``: one result per traced (or resumed) fact in order, the
        work this call did, and ``{"resumed": n, "removed": [names]}`` with a store (else
        ``{}``).
    """
    store = None
    if out is not None:
        with rank_zero_first() if shard is not None else contextlib.nullcontext():
            first = shard is None or shard[0] == 0  # the others leave running writes alone
            store = Store(
                out,
                record,
                model,
                result_type=result_type,
                facts=facts,
                overwrite=overwrite and first,
                clean=first,
            )
    mine = range(len(queries)) if shard is None else range(shard[0], len(queries), shard[1])
    resume: dict = {}
    if store is not None:
        resume = {"resumed": sum(store.has(i) for i in mine), "removed": store.removed_names}
        if progress:
            _note_resume(store, resume["resumed"], len(mine))
    results, work = [], []
    bar = progress if isinstance(progress, str) else label
    for i in tqdm(mine, desc=bar, unit="fact", disable=not progress):
        done = store.get(i, facts[i]) if store else None
        if done is None:
            done, spent = trace_fact(queries[i])
            work.append(spent)
            if store:
                store.put(i, facts[i], done)
        results.append(done)
    return results, Work.total(work), resume


def _note_resume(store: Store, done: int, total: int) -> None:
    """Say, before the bar starts, how far a resumed sweep already is and what was replaced."""
    if store.removed:
        tqdm.write(
            f"overwrite: removed {len(store.removed)} outdated file(s) from {store.dir} "
            "(their facts or settings changed); tracing them again",
            file=sys.stderr,
        )
    if done:
        tqdm.write(f"resuming: {done}/{total} facts already traced in {store.dir}", file=sys.stderr)


# ----------------------------------------------------------------------------- resuming


def fact_record(fact: Fact) -> dict:
    """Every field of ``fact`` as JSON-ready values (what a resumed sweep must match)."""
    record = dataclasses.asdict(fact)
    record["perturbed_answers"] = list(fact.perturbed_answers)
    return record


class Store:
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
        record: dict,
        model,
        *,
        result_type: Any,
        facts: Sequence[Fact],
        overwrite: bool = False,
        clean: bool = True,
    ):
        from ..core.fingerprint import model_fingerprint

        self.result_type = result_type
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
            "config": record,
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
        self._cache: dict[int, Any] = {}

    @property
    def removed_names(self) -> list[str]:
        return [p.name for p in self.removed]

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

    def get(self, i: int, fact: Fact) -> Any:
        """The finished result of fact ``i`` (``None`` when not traced yet), checked against
        ``fact``; its resume record is left out of the result's config."""
        if i in self._cache:
            return self._cache[i]
        if not self._path(i).exists():
            return None
        try:
            result = self.result_type.load(self._path(i))
        except ResultFileError as error:
            reason = str(error).removeprefix(str(self._path(i))).lstrip(": ")
            raise ResultFileError(
                f"{self._path(i)}, a fact file of the resumable sweep in {self.dir}, is "
                f"unreadable (it {reason}); delete that file and rerun to trace its fact "
                "again, or rerun with overwrite=True"
            ) from None
        fid = fact.id or fact.question
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
        result = _without_record(result)
        self._cache[i] = result
        return result

    def put(self, i: int, fact: Fact, result: Any) -> None:
        """Write fact ``i``'s result with its resume record (every field of ``fact``)."""
        config = result.config | {"fact": fact_record(fact)}
        dataclasses.replace(result, config=config).save(self._path(i))
        self._cache[i] = result


def _without_record(result: Any) -> Any:
    config = {k: v for k, v in result.config.items() if k != "fact"}
    return dataclasses.replace(result, config=config)


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
