"""The ``tie-tracing`` command line.

Four commands:

* ``tie-tracing figure2`` — the main job: trace the facts with diffusion-time causal tracing
  under ``--n-seeds`` noise seeds, pool them (``TIEResult.pool_seeds``), write the interactive
  Figure 2 (and a static image where a renderer is available), the pooled result and the
  selected coordinate, and print a summary: the coordinate with its 95% bootstrap CI over
  facts, whether it survives a change of seed (seed-to-seed correlation of the mean ``resid``
  map, each seed's choice), where the object is committed and how many steps are idle. It
  writes to ``runs/figure2/`` (ignored by git) unless ``--out`` names another folder; the
  committed ``figures/`` are regenerated only by ``--out figures``. Each seed's trace is kept
  in ``OUT/trace_seed<s>/``, so an interrupted run resumes.
* ``tie-tracing trace --model PATH --facts FILE.jsonl --out DIR`` — a resumable sweep for real
  work: each finished fact is written to ``DIR`` as it completes, the merged result to
  ``DIR/trace.safetensors``. Facts are JSON lines with the fields of :class:`tt.Fact
  <tie_tracing.core.facts.Fact>` (``subject``, ``question``, ``answer``, ``object``, ``id``, …).
  Launched by ``torchrun --nproc-per-node N`` it shards the facts over the processes
  (:mod:`tie_tracing.tracing.distributed`); the merged result is the single-process one, bit for bit.
* ``tie-tracing plot DIR`` — Figure 2 from a saved trace.
* ``tie-tracing check --model DIR`` — load a checkpoint and print what the checkpoint check
  finds (:mod:`tie_tracing.cli_check`).

Every argument is checked, and the output directory tried for writing, before a model is
loaded; a run that fails before writing anything resumable removes the folders it created.
A rerun says how far it resumes; ``--overwrite`` replaces only what changed. ``--quiet``
prints nothing but errors (no bars, summary, notes or warnings); an error prints one line and
a hint naming the flag to use (``--debug`` shows the traceback instead). ``--help`` shows
every default and imports nothing heavy.

The defaults of ``--n-facts``, ``--n-noise``, ``--n-seeds`` and ``--steps`` of ``figure2`` are
the module constants below, to be tuned from ``benchmarks/seed_stability.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Nothing heavy is imported at module level: `tie-tracing --help` (and each command's
# --help) loads no torch, scipy, transformers, nnsight or plotly. The commands import what
# they need when they run.

DEFAULT_N_FACTS = 12
#: Figure 2 draws facts of this many people, this many each (SPEC §10.1: ≥ 24 people).
DEFAULT_PEOPLE = 24
DEFAULT_PER_PERSON = 1
DEFAULT_N_NOISE = 4
DEFAULT_N_SEEDS = 2
DEFAULT_STEPS = 8
#: File of the merged result that ``trace`` writes and ``plot`` reads.
TRACE_FILE = "trace.safetensors"
#: Where ``figure2`` writes by default: an output folder that git ignores (``/runs/`` in
#: ``.gitignore``), so running the main job never leaves a clone dirty. The committed
#: ``figures/`` are regenerated only by naming them: ``tie-tracing figure2 --out figures``.
DEFAULT_FIGURE2_OUT = os.path.join("runs", "figure2")
#: The sites a trace can patch (``tie_tracing.MODULES``, repeated here so that parsing the
#: arguments imports no torch; a test keeps the two equal).
MODULE_NAMES: tuple[str, ...] = ("resid", "attn", "mlp")
#: Figure files a command writes beside a trace; stale once the trace changes.
FIGURE_FILES: tuple[str, ...] = ("figure2.html", "figure2.png")  # `trace`/`plot` write these


class CliError(Exception):
    """A bad argument or input, reported as one line and a hint."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# -- argument types: each refuses what is out of range, before anything runs -----------------


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def decay_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


def module_list(text: str) -> tuple[str, ...]:
    """``resid,mlp`` → ``("resid", "mlp")``; unknown names are refused while parsing."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODULE_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown module(s) {unknown or [text]}; give a comma-separated subset of "
            f"{','.join(MODULE_NAMES)}"
        )
    return tuple(names)


def sampler_spec(text: str) -> str | dict:
    """A sampler registry name, or a JSON object (``{"name": "llada", ...}``) parsed here, so
    that malformed JSON is refused with the flag's name before anything runs."""
    if not text.lstrip().startswith(("{", "[", '"')):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({error.msg} at column {error.colno}): give a sampler name "
            "(e.g. llada, dream) or a JSON object such as "
            '\'{"name": "llada", "remasking": "random"}\''
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'a JSON sampler config must be an object with a "name" key, got {type(value).__name__}'
        )
    return value


def memory_size(text: str) -> int:
    from .tracing.budget import parse_memory

    try:
        return parse_memory(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors followed by a hint."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(
            2,
            f"{self.prog}: error: {message}\nhint: `{self.prog} --help` lists the options "
            "and their defaults\n",
        )


# -- facts -----------------------------------------------------------------------------------


def write_facts_jsonl(facts, path: str | os.PathLike) -> Path:
    """Write facts as JSON lines (every field of :class:`~tie_tracing.core.facts.Fact`)."""
    from .tracing.engine import fact_record

    lines = [json.dumps(fact_record(f), ensure_ascii=False) for f in facts]
    path = Path(path)
    from .core._io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_facts_jsonl(path: str | os.PathLike) -> list:
    """Facts from a JSON-lines file, one object with :class:`~tie_tracing.core.facts.Fact` fields
    per line (blank lines skipped). Errors name the line."""
    from .core.facts import Fact

    path = Path(path)
    if not path.is_file():
        raise CliError(
            f"--facts {path}: no such file",
            "give a JSON-lines file of facts, or tiny:<split> / tofu:<split>",
        )
    fields = {f.name for f in dataclasses.fields(Fact)}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(
            f"--facts {path} is not a JSON-lines text file (binary: a saved result or weights?)",
            "give a .jsonl file of facts (one JSON object per line), or tiny:<split> / "
            "tofu:<split>",
        ) from None
    facts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CliError(
                f"{where} is not JSON ({error.msg})", "one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise CliError(f"{where} is not a JSON object", "one JSON object per line")
        unknown = sorted(set(record) - fields)
        if unknown:
            raise CliError(
                f"{where} has unknown fields {unknown}",
                f"the fields of a fact are {sorted(fields)}",
            )
        missing = [k for k in ("subject", "question", "answer") if k not in record]
        if missing:
            raise CliError(f"{where} lacks {missing}", "every fact needs subject, question, answer")
        if isinstance(record.get("perturbed_answers"), list):
            record["perturbed_answers"] = tuple(record["perturbed_answers"])
        try:
            facts.append(Fact(**record))
        except (TypeError, ValueError) as error:
            raise CliError(f"{where}: {error}", "fix that line of the facts file") from None
    if not facts:
        raise CliError(f"--facts {path} holds no facts", "one JSON object per line")
    return facts


def _load_facts(spec: str, n: int | None):
    """Facts from ``tiny:<split>``, ``tofu:<split>`` or a JSON-lines file; the first ``n``."""
    import tie_tracing as tt

    source, _, split = spec.partition(":")
    if source == "tiny" and split != spec:
        facts = tt.load_facts("tiny", split=split or "forget01")
    elif source == "tofu" and split != spec:
        facts = [f for f in tt.load_tofu(split=split or "forget01") if f.traceable]
    elif spec.endswith((".jsonl", ".json")) or Path(spec).is_file():
        facts = read_facts_jsonl(spec)
    else:
        raise CliError(
            f"--facts must be tiny:<split>, tofu:<split> or a .jsonl file, got {spec!r}",
            "e.g. --facts tiny:forget01 or --facts facts.jsonl",
        )
    if n is not None and len(facts) < n:
        raise CliError(
            f"--facts {spec} has only {len(facts)} traceable facts, {n} requested",
            f"use --n-facts {len(facts)} or fewer",
        )
    return facts if n is None else facts[:n]


#: Directories this run created (outermost first), removed again when the run fails
#: before writing anything worth keeping (see :func:`_discard_new_outputs`).
_CREATED: list[Path] = []


def _writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``path`` and prove it writable by writing a file there, before any work."""
    out = Path(path)
    try:
        if out.exists() and not out.is_dir():
            raise CliError(
                f"{flag} {out} exists and is not a directory", f"give a directory as {flag}"
            )
        missing = [p for p in (out, *out.parents) if not p.exists()]
        out.mkdir(parents=True, exist_ok=True)
        _CREATED.extend(reversed(missing))
        probe = out / f".write-test-{uuid.uuid4().hex}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CliError(
            f"{flag} {out} is not writable ({error.strerror or error})",
            f"choose a directory you can write to as {flag}",
        ) from None
    return out


@contextlib.contextmanager
def _output(quiet: bool) -> Iterator[None]:
    """``--quiet``: no warnings, no transformers/hub log lines or loading bars (restored after)."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    env = os.environ.get("TQDM_DISABLE")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env


def _discard_new_outputs() -> None:
    """After a failure: remove the output directories this run created unless they hold
    something to resume from (a traced fact), so a failed run leaves no empty folder."""
    for path in _CREATED:  # outermost first: removing it removes what it holds
        if path.is_dir() and not any(path.rglob("fact_*.safetensors")):
            shutil.rmtree(path, ignore_errors=True)
    _CREATED.clear()


def _say(args: argparse.Namespace, *lines: str, err: bool = False) -> None:
    """Print, except under ``--quiet`` (rank 0 only under torchrun); ``err``: to stderr."""
    if args.quiet or int(os.environ.get("RANK", 0)) != 0:
        return
    for line in lines:
        print(line, file=sys.stderr if err else sys.stdout)


def _load_model(args: argparse.Namespace, device=None):
    import torch

    import tie_tracing as tt

    return tt.load_model(
        args.model,
        family=args.family,
        trust_remote_code=args.trust_remote_code,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        device_map=args.device_map,
        device=device,
        progress=False if args.quiet else None,
    )


def _check_dtype(args: argparse.Namespace) -> None:
    import torch

    if args.dtype and not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        raise CliError(f"--dtype {args.dtype!r} is not a torch dtype", "e.g. --dtype bfloat16")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _remove_stale(args: argparse.Namespace, paths: list[Path], why: str) -> None:
    """Remove outputs a run replaced (saying so), e.g. the figure of an older trace."""
    gone = [p for p in paths if p.exists()]
    for p in gone:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if gone:
        _say(args, f"removed {', '.join(str(p) for p in gone)} ({why})", err=True)


def _fmt_range(spread: dict[str, Any]) -> str:
    lo, hi = spread["min"], spread["max"]
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _fmt_cell(c: dict[str, Any]) -> str:
    return f"({c['layer']},{c['step']},{c['module']})"


def _check_target(args: argparse.Namespace, facts, spec: str) -> None:
    if args.target == "name":
        from .core.facts import names_subject_in_answer

        missing = [f.id or f.question for f in facts if not names_subject_in_answer(f)]
        if missing:
            raise CliError(
                f"--target name reads the subject's name inside the answer; {len(missing)} of "
                f"{spec} do not repeat their subject there ({missing[:5]})",
                "use --target object or --target answer",
            )


def _figure_split() -> str:
    """The embedded split Figure 2 draws its people from: ``figure`` where the corpus has it
    (two facts each of people the model knows), else ``retain`` (people the model knows)."""
    from tie_tracing.zoo.corpus import SPLITS

    return "tiny:figure" if "figure" in SPLITS else "tiny:retain"


def _figure_facts(args: argparse.Namespace, spec: str):
    """The facts of the main job: ``--n-facts`` from the spec as listed, or (default) a
    reproducible draw of ``--per-person`` facts from each of ``--people`` people."""
    import tie_tracing as tt

    if args.n_facts is not None:
        return _load_facts(spec, args.n_facts)
    facts = _load_facts(spec, None)
    people = len({f.subject for f in facts})
    if args.people is None:  # the default: DEFAULT_PEOPLE, or every person a small set has
        if people < DEFAULT_PEOPLE:  # said once the model has loaded (errors come first)
            args.people_note = (
                f"note: --facts {spec} holds {people} people, fewer than the {DEFAULT_PEOPLE} "
                "Figure 2 averages over by default: tracing all of them (CIs over so few "
                "people mean little)"
            )
        args.people = min(people, DEFAULT_PEOPLE)
    if people < args.people:
        raise CliError(
            f"--facts {spec} holds {people} people, fewer than --people {args.people}: Figure 2 "
            "averages over people and its CIs resample them",
            f"use --people {people} or fewer, a split with more people, or --n-facts N to "
            "take the first N facts as listed",
        )
    try:
        return tt.draw_people(
            facts, n_people=args.people, per_person=args.per_person, seed=args.draw_seed
        )
    except ValueError as error:
        raise CliError(str(error), "lower --per-person") from None


def figure2(args: argparse.Namespace) -> int:
    import tie_tracing as tt
    from tie_tracing.core.facts import names_subject_in_answer

    _check_dtype(args)
    from tie_tracing.core.model import EMBEDDED_MODELS

    facts_spec = args.facts or (
        _figure_split() if args.model in EMBEDDED_MODELS else "tofu:forget01"
    )
    facts = _figure_facts(args, facts_spec)
    _check_target(args, facts, facts_spec)
    contrast = (
        not args.no_contrast
        and args.target != "name"
        and all(names_subject_in_answer(f) for f in facts)
    )
    out = _writable_dir(args.out)
    _set_threads(args)
    start = time.perf_counter()
    model = _load_model(args)
    if getattr(args, "people_note", None):
        _say(args, args.people_note, err=True)
    seeds = [args.seed + i for i in range(args.n_seeds)]
    if args.overwrite:  # seed traces of an earlier run with other seeds are replaced
        wanted = {f"trace{kind}_seed{s}" for s in seeds for kind in ("", "_name")}
        _remove_stale(
            args,
            [
                p
                for pattern in ("trace_seed*", "trace_name_seed*")
                for p in sorted(out.glob(pattern))
                if p.is_dir() and p.name not in wanted
            ],
            "traces of seeds this run does not use; --overwrite",
        )
    n_people = len({f.subject for f in facts})
    _say(
        args,
        f"tracing {len(facts)} facts of {n_people} people ({facts_spec}) on {model.name} "
        f"[{model.backbone.family}, {model.num_layers} layers], T={args.steps}, lp={args.lp}, "
        f"target={args.target}" + (" and name (contrast)" if contrast else "") + f", seeds "
        f"{seeds} × {args.n_noise} noise draw(s); writing to {out}",
    )
    settings: dict[str, Any] = dict(steps=args.steps, n_noise=args.n_noise, lp=args.lp)
    if args.sampler:
        settings["sampler"] = args.sampler
    if args.patch_steps:
        settings["patch_steps"] = args.patch_steps
    try:  # every setting the sweep checks, before any work
        from .tracing.config import TraceConfig

        TraceConfig().override(**settings)
    except (ValueError, TypeError) as error:
        raise CliError(str(error), "rerun with other arguments (see --help)") from None
    traces, names = [], []
    for s in seeds:
        cache = tt.tracing.SweepCache()  # the name trace reuses the object trace's runs
        traces.append(
            tt.trace_tie(
                model,
                facts,
                seed=s,
                target=args.target,
                progress=f"TIE of {len(facts)} facts, seed {s}" if not args.quiet else False,
                out=out / f"trace_seed{s}",  # resumable: an interrupted run picks up here
                overwrite=args.overwrite,
                reuse=cache,
                **settings,
            )
        )
        if contrast:
            names.append(
                tt.trace_tie(
                    model,
                    facts,
                    seed=s,
                    target="name",
                    progress=False,
                    out=out / f"trace_name_seed{s}",
                    overwrite=args.overwrite,
                    reuse=cache,
                    **settings,
                )
            )
    result = tt.TIEResult.pool_seeds(traces)
    result.save(out / "figure2_tie.safetensors")
    name = tt.TIEResult.pool_seeds(names) if names else None
    if name is not None:
        name.save(out / "figure2_name_tie.safetensors")
    data = tt.analysis.figure2_data(result, name)
    stats = tt.analysis.trace_summary(result, traces)
    summary = {
        "model": str(model.name),
        "facts": stats.pop("facts"),
        "facts_spec": facts_spec,
        "people": sorted(set(data.people)),
        "n_people": data.n_people,
        "unknown_facts": stats.pop("unknown_facts"),
        "lp": args.lp,
        "target": args.target,
        "contrast_target": "name" if name is not None else None,
        "steps": args.steps,
        "seeds": seeds,
        "n_noise_per_seed": args.n_noise,
        **stats,
        "views": {m: data.summary(m) for m in result.modules},
    }
    written = _write_figure(
        args,
        result,
        out,
        title=f"Figure 2 — TIE over (layer, step), {len(result.fact_ids)} facts of {n_people} "
        f"people × {result.lp_corrupt_draws.shape[1]} noise draws ({len(seeds)} seed"
        f"{'s' if len(seeds) > 1 else ''}), {model.name}",
    )
    written += _write_views(args, data, out)
    from .core._io import atomic_write_text

    atomic_write_text(out / "figure2_summary.json", json.dumps(summary, indent=1))
    _say(args, *_summary_lines(summary))
    saved = [out / "figure2_tie.safetensors"]
    if name is not None:
        saved.append(out / "figure2_name_tie.safetensors")
    _say(
        args,
        "wrote " + ", ".join(str(p) for p in written + saved + [out / "figure2_summary.json"]),
        f"done in {time.perf_counter() - start:.1f} s",
    )
    return 0


def _write_views(args: argparse.Namespace, data, out: Path) -> list[Path]:
    """Figure 2's companion views of the residual stream (``figure2_views.html``/.png)."""
    from tie_tracing.figures.figure2 import plot_figure2
    from tie_tracing.figures.plotting import save_figure

    module = "resid" if "resid" in data.modules else data.modules[0]
    fig = plot_figure2(data, module=module)
    written = list(
        save_figure(
            fig,
            out / "figure2_views.html",
            include_plotlyjs=True if args.self_contained else "directory",
        )
    )
    png = _static_image(args, fig, out / "figure2_views.png")
    if not png:
        _remove_stale(args, [out / "figure2_views.png"], "an older run's image of another trace")
    return written + png


def _write_figure(args: argparse.Namespace, result, out: Path, *, title: str) -> list[Path]:
    """Figure 2 as html (plotly.js beside it, or embedded with --self-contained) and, where
    a renderer is available, png; a png of an older run that cannot be replaced is removed."""
    import tie_tracing as tt
    from tie_tracing.figures.plotting import save_figure

    fig = tt.plot_tie_heatmaps(result, title=title)
    written = list(
        save_figure(
            fig, out / "figure2.html", include_plotlyjs=True if args.self_contained else "directory"
        )
    )
    png = _static_image(args, fig, out / "figure2.png")
    if not png:
        _remove_stale(args, [out / "figure2.png"], "an older run's image of another trace")
    return written + png


def _static_image(args: argparse.Namespace, fig, path: Path) -> list:
    from tie_tracing.figures.plotting import StaticExportError, save_figure, static_export_available

    if static_export_available():
        try:
            return list(save_figure(fig, path, width=1200, height=fig.layout.height or 600))
        except StaticExportError as error:
            _say(args, f"note: no static image: {error}", err=True)
            return []
    _say(
        args,
        "note: no static image written: kaleido needs a Chrome/Chromium "
        "(pip install kaleido; apt-get install chromium). The .html figure is complete.",
        err=True,
    )
    return []


def trace(args: argparse.Namespace) -> int:
    """``tie-tracing trace``: a resumable (and, under torchrun, fact-sharded) sweep."""
    from .core.samplers import resolve_sampler
    from .tracing.distributed import trace_sharded
    from .tracing.ranks import local_device, world

    _check_dtype(args)
    facts = _load_facts(args.facts, args.n_facts)
    _check_target(args, facts, args.facts)
    settings: dict[str, Any] = dict(
        steps=args.steps,
        n_noise=args.n_noise,
        seed=args.seed,
        decay=args.decay,
        lp=args.lp,
        target=args.target,
        mode=args.mode,
        horizon=args.horizon,
        max_memory=args.max_memory,
    )
    if args.sampler:
        try:
            resolve_sampler(args.sampler)
        except (ValueError, TypeError) as error:
            raise CliError(
                f"--sampler: {error}",
                'give a sampler name (llada, dream, …) or a JSON config with a "name" key',
            ) from None
        settings["sampler"] = args.sampler
    if args.modules:
        settings["modules"] = args.modules
    try:  # every setting the sweep checks, before a model is loaded
        from .tracing.config import TraceConfig

        TraceConfig().override(**settings)
    except (ValueError, TypeError) as error:
        raise CliError(str(error), "rerun with other arguments (see --help)") from None
    out = _writable_dir(args.out)
    _set_threads(args)
    rank, size = world()
    device = None
    if size > 1 and args.device_map is None:
        import torch

        if torch.cuda.is_available():
            device = local_device()
    start = time.perf_counter()
    model = _load_model(args, device=device)
    _say(
        args,
        f"tracing {len(facts)} facts on {model.name} [{model.backbone.family}, "
        f"{model.num_layers} layers], T={args.steps}, mode={args.mode}"
        + (f", horizon={args.horizon}" if args.horizon is not None else "")
        + (f", {size} processes" if size > 1 else "")
        + f"; resumable in {out}",
    )
    label = f"TIE of {len(facts)} facts, seed {args.seed}" if not args.quiet else False
    if size > 1:
        result = trace_sharded(
            model, facts, out=out, overwrite=args.overwrite, progress=label, **settings
        )
    else:
        import tie_tracing as tt

        result = tt.trace_tie(
            model, facts, out=out, overwrite=args.overwrite, progress=label, **settings
        )
        result = dataclasses.replace(result, config=result.config | {"world_size": 1})
    if result is None:  # not rank 0
        return 0
    stats = result.config.get("engine_stats") or {}
    if stats.get("rows", 0) or stats.get("removed") or not (out / TRACE_FILE).exists():
        _remove_stale(args, [out / name for name in FIGURE_FILES], "drawn from the previous trace")
    path = result.save(out / TRACE_FILE)
    work = (
        f"{size} processes"
        if size > 1
        else f"{stats.get('rows', 0)} rows in {stats.get('forwards', 0)} forwards this run"
    )
    _say(
        args,
        f"traced {len(result.fact_ids)} facts in {time.perf_counter() - start:.1f} s ({work}); "
        f"unknown facts: {len(result.config.get('unknown_facts', []))}",
        f"wrote {path} (figure: tie-tracing plot {out})",
    )
    return 0


def plot(args: argparse.Namespace) -> int:
    """``tie-tracing plot DIR``: Figure 2 from a saved trace."""
    import tie_tracing as tt

    source = Path(args.trace)
    if source.is_dir():
        found = [source / name for name in (TRACE_FILE, "figure2_tie.safetensors")]
        found = [p for p in found if p.is_file()]
        if not found:
            partial = sorted(source.glob("fact_*.safetensors"))
            hint = (
                "the trace there is not finished: rerun `tie-tracing trace` with the same "
                "arguments, it resumes"
                if partial
                else "give the --out directory of `tie-tracing trace` or `figure2`"
            )
            raise CliError(f"{source} holds no {TRACE_FILE} nor figure2_tie.safetensors", hint)
        path = found[0]
    elif source.is_file():
        path = source
    else:
        raise CliError(f"{source}: no such file or directory", "give a trace directory or file")
    result = tt.TIEResult.load(path)
    out = _writable_dir(args.out or (path.parent if path.is_file() else source))
    draws = result.lp_corrupt_draws.shape[1]
    title = args.title or (
        f"Figure 2 — TIE over (layer, step), {len(result.fact_ids)} facts × {draws} noise "
        f"draws, {result.model_id}"
    )
    written = _write_figure(args, result, out, title=title)
    _say(args, "wrote " + ", ".join(str(p) for p in written))
    return 0


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    """The human-readable summary of ``figure2_summary.json``."""
    lines = []
    for key, label in (
        ("selected", "selected coordinate (β=0)"),
        ("selected_resid", "selected resid coordinate (the paper's installation site)"),
    ):
        c = summary[key]
        low, high = c["ci95"]
        lines.append(
            f"{label}: layer {c['layer']}, step {c['step']}, {c['module']} — score (mean |TIE|) "
            f"{c['score']:.3f}, 95% CI [{low:.3f}, {high:.3f}] over {c['n_facts']} facts of "
            f"{c.get('n_people', '?')} people"
        )
    lines.extend(_view_lines(summary))
    st = summary["seed_stability"]
    if st is None:
        lines.append("seed stability: not measured (one seed; use --n-seeds 2 or more)")
    else:
        r, r_all = st["mean_correlation"], st["mean_correlation_all_modules"]
        lines.append(
            f"seed stability over seeds {summary['seeds']}: correlation of the mean resid map "
            f"r = {'n/a' if r is None else f'{r:.3f}'} (all modules "
            f"{'n/a' if r_all is None else f'{r_all:.3f}'})"
        )
        for cells, same, pooled, what in (
            ("coordinates_all_modules", "same_cell_all_modules", "pooled_all_modules", "cell"),
            ("coordinates", "same_cell", "pooled", "resid cell"),
        ):
            per_seed = ", ".join(
                f"seed {s[0] if len(s) == 1 else s}: {_fmt_cell(c)}{'' if ok else ' (differs)'}"
                for s, c, ok in zip(st["seeds"], st[cells], st[same])
            )
            lines.append(
                f"  {what} per seed: {per_seed}; {sum(st[same])}/{len(st[same])} select the "
                f"pooled {_fmt_cell(st[pooled])}"
            )
    boot = summary["selection_bootstrap"]
    lines.append(
        f"selection bootstrap ({boot['resampled']} resampled, {boot['n_boot']} draws): the "
        f"selected cell wins {boot['agreement']:.0%} of resamples"
    )
    oc = summary["object_commit"]
    if oc["median"] is None:
        lines.append("object committed: never (no fact's clean trajectory commits its object)")
    else:
        lines.append(f"object committed at step {oc['median']:g} (median), range {_fmt_range(oc)}")
    idle = summary["idle_steps"]
    every = idle["idle_for_every_fact"]
    lines.append(
        f"idle steps (no masked target position left): {idle['median']:g} of {idle['T']} per "
        f"fact (median), range {_fmt_range(idle)}"
        + (f"; idle for every fact: steps {every}" if every else "")
    )
    conc = summary["concentration"]
    top_layers = sorted(conc["share_by_layer"].items(), key=lambda kv: -kv[1])[:2]
    top_steps = sorted(conc["share_by_step"].items(), key=lambda kv: -kv[1])[:3]
    lines.append(
        "effect concentrates in layers "
        + ", ".join(f"{k} ({v:.0%})" for k, v in top_layers)
        + "; steps "
        + ", ".join(f"{k} ({v:.0%})" for k, v in top_steps)
        + "; modules "
        + ", ".join(f"{k} {v:.0%}" for k, v in conc["share_by_module"].items())
    )
    if summary["unknown_facts"]:
        lines.append(
            f"warning: the model does not know {len(summary['unknown_facts'])} of the facts: "
            f"{summary['unknown_facts']}"
        )
    return lines


def _view_lines(summary: dict[str, Any]) -> list[str]:
    """The contrast, the final-answer effect and the immediate share of the resid views."""
    v = (summary.get("views") or {}).get("resid")
    if not v:
        return []

    def cell(d: dict[str, Any], step_word: str = "step") -> str:
        low, high = d["ci95"]
        return (
            f"layer {d['layer']}, {step_word} {d['step']:+d}"
            if step_word != "step"
            else f"layer {d['layer']}, step {d['step']}"
        ) + f": {d['mean']:.2f} nats, 95% CI over people [{low:.2f}, {high:.2f}]"

    lines = []
    if "contrast" in v:
        lines.append(
            f"contrast object − name (resid): largest at {cell(v['contrast'])}; mean |contrast| "
            f"{v['contrast']['mean_abs_map']:.3f} vs mean |TIE| {v['tie']['mean_abs_map']:.3f}"
        )
    else:
        lines.append("contrast object − name: not traced (--no-contrast, or answers without names)")
    if "final" in v:
        lines.append(f"final-answer effect IE(T−1) (resid): largest at {cell(v['final'])}")
    if "aligned_final" in v:
        lines.append(
            "final-answer effect relative to the object commit: largest at "
            + cell(v["aligned_final"], "commit")
        )

    def profile(d: dict[Any, float], word: str) -> str:
        top = sorted(d.items(), key=lambda kv: -kv[1] if kv[1] == kv[1] else 0.0)[:3]
        return ", ".join(f"{word}{int(k):+d} {p:.0%}" if word else f"{k} {p:.0%}" for k, p in top)

    steps = sorted({int(c) for c in v["object_commit_steps"]})
    lines.append(
        f"TIE on the step axis (share of the mean resid map's |TIE|): steps "
        f"{profile(v['step_profile'], '')}; relative to each fact's object commit (steps "
        f"{steps}): {profile(v['aligned_profile'], 'commit')}"
    )
    share = v["immediate_share"]
    lines.append(
        f"immediate share: {share:.0%} of |TIE| is the patched forward's own effect (k' = k)"
        if share == share
        else "immediate share: n/a"
    )
    if v["structural_zero_layers"]:
        lines.append(
            f"zero by architecture (not measured as findings): layer(s) "
            f"{v['structural_zero_layers']} at the subject positions"
        )
    return lines


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """Options every command shares."""
    if model:
        p.add_argument(
            "--model", default="tiny-mdlm", help="embedded name or local checkpoint directory"
        )
        p.add_argument(
            "--family",
            default=None,
            help="backbone family, when the config does not say (e.g. diffullama)",
        )
        p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
        p.add_argument("--dtype", default=None, help="e.g. bfloat16 for a real checkpoint on GPU")
        p.add_argument("--device-map", default=None, help="e.g. cuda")
        p.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="run the checkpoint's own modelling code (LLaDA, Dream)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace what in --out no longer matches instead of refusing it: other "
            "settings or weights trace every fact again, otherwise only the facts whose "
            "fields changed; results of facts no longer listed, and figures of the old "
            "trace, are removed. A matching trace is always resumed",
        )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing but errors: no progress, loading bars, summary or warnings",
    )
    p.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback instead of one line"
    )


def _reading(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lp",
        choices=("frozen", "raw"),
        default="frozen",
        help="how LP reads committed positions (SPEC §4): frozen at their commit, or raw",
    )
    p.add_argument(
        "--target",
        choices=("object", "answer", "name"),
        default="object",
        help="positions LP sums over: the fact's object (Eq. 4), the whole answer, or the "
        "subject's name inside the answer",
    )


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or "tie-tracing"
    parser = _Parser(prog="tie-tracing", description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    f2 = sub.add_parser(
        "figure2",
        help="trace the facts of many people under several noise seeds and write Figure 2",
        description="Draw --per-person facts of each of --people people, trace them under "
        "--n-seeds noise seeds on the object target and (for the contrast) the name target, "
        "pool the seeds, write Figure 2, its companion views (contrast, final-answer effect, "
        "immediate part, commit-aligned maps), the pooled results and a summary (selected "
        "coordinate with its CI over people, seed stability, contrast, final-answer effect, "
        "object commit step, idle steps). Resumes an interrupted run from --out.",
        formatter_class=fmt,
    )
    f2.add_argument(
        "--facts",
        default=None,
        help="tiny:<split>, tofu:<split> or a .jsonl file; unset: the embedded corpus's "
        "figure split (retain until it exists) for embedded models, tofu:forget01 otherwise",
    )
    f2.add_argument(
        "--people",
        type=positive_int,
        default=None,
        help=f"people drawn from --facts, whom the CIs resample; unset: {DEFAULT_PEOPLE}, or "
        "all of a set with fewer",
    )
    f2.add_argument(
        "--per-person", type=positive_int, default=DEFAULT_PER_PERSON, help="facts per person"
    )
    f2.add_argument(
        "--draw-seed", type=nonnegative_int, default=0, help="seed of the draw of people"
    )
    f2.add_argument(
        "--n-facts",
        type=positive_int,
        default=None,
        help="trace the first N facts of --facts as listed instead of drawing people",
    )
    f2.add_argument(
        "--sampler",
        type=sampler_spec,
        default=None,
        help="sampler registry name or JSON config, e.g. "
        '\'{"name": "llada", "remasking": "random"}\' (commit steps that vary across facts); '
        "unset: LLaDA low-confidence remasking",
    )
    f2.add_argument(
        "--patch-steps",
        default=None,
        help="patch only these steps: 'log:N' (N log-spaced steps, for long T) or "
        "comma-separated steps; unset: every step",
    )
    f2.add_argument(
        "--no-contrast",
        action="store_true",
        help="skip the name-target trace (no object − name contrast panel)",
    )
    f2.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="denoising steps T")
    f2.add_argument(
        "--n-noise",
        type=positive_int,
        default=DEFAULT_N_NOISE,
        help="noise draws per fact and seed",
    )
    f2.add_argument(
        "--n-seeds",
        type=positive_int,
        default=DEFAULT_N_SEEDS,
        help="noise seeds --seed, --seed+1, …; their traces are pooled, and compared when ≥ 2",
    )
    f2.add_argument("--seed", type=nonnegative_int, default=0, help="first noise seed")
    _reading(f2)
    f2.add_argument(
        "--out",
        default=DEFAULT_FIGURE2_OUT,
        help="output directory (resumable; git ignores runs/). The committed figures/ are "
        "regenerated only with --out figures",
    )
    f2.add_argument(
        "--self-contained",
        action="store_true",
        help="embed plotly.js in the html (~4 MB); by default the html loads plotly.min.js "
        "written once beside it, which also opens offline",
    )
    _common(f2)

    tr = sub.add_parser(
        "trace",
        help="a resumable TIE sweep of a facts file (fact-sharded under torchrun)",
        description="Trace facts into --out, one file per finished fact (rerun to resume), "
        "and write the merged result to --out/trace.safetensors. Under `torchrun "
        "--nproc-per-node N` the facts are sharded over the processes and rank 0 merges.",
        formatter_class=fmt,
    )
    tr.add_argument(
        "--facts",
        required=True,
        help="a .jsonl file (one JSON object per line with the tt.Fact fields: subject, "
        "question, answer, object, id, …), or tiny:<split> / tofu:<split>",
    )
    tr.add_argument("--out", required=True, help="output directory, resumable")
    tr.add_argument(
        "--n-facts",
        type=positive_int,
        default=None,
        help="trace only the first N facts; unset: all",
    )
    tr.add_argument("--steps", type=positive_int, default=8, help="denoising steps T")
    tr.add_argument("--n-noise", type=positive_int, default=1, help="noise draws per fact")
    tr.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed")
    tr.add_argument("--decay", type=decay_value, default=0.5, help="γ of Eq. 4, in 0 < γ ≤ 1")
    tr.add_argument(
        "--mode",
        choices=("exact", "immediate", "attribution"),
        default="exact",
        help="exact TIE; the immediate effect at the patched step only; or its "
        "attribution-patching estimate",
    )
    tr.add_argument(
        "--horizon",
        type=nonnegative_int,
        default=None,
        help="follow divergent futures at most this many steps after the patch; unset: to "
        "the end, exact",
    )
    tr.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        help="memory budget of a forward, e.g. 2GB; unset: from the device's free memory",
    )
    tr.add_argument(
        "--modules",
        type=module_list,
        default=None,
        help="comma-separated subset of resid,attn,mlp; unset: all",
    )
    tr.add_argument(
        "--sampler",
        type=sampler_spec,
        default=None,
        help="sampler registry name (llada, dream, …) or a JSON config such as "
        '\'{"name": "llada", "remasking": "random"}\'; unset: LLaDA low-confidence remasking',
    )
    _reading(tr)
    _common(tr)

    pl = sub.add_parser(
        "plot",
        help="Figure 2 from a saved trace",
        description="Write Figure 2 (html, and png where a renderer is available) from the "
        "result of `tie-tracing trace` or `figure2`.",
        formatter_class=fmt,
    )
    pl.add_argument("trace", help="directory written by `trace`/`figure2`, or a result file")
    pl.add_argument("--out", default=None, help="output directory; unset: beside the trace")
    pl.add_argument("--title", default=None, help="figure title")
    pl.add_argument(
        "--self-contained",
        action="store_true",
        help="embed plotly.js in the html (~4 MB); by default the html loads plotly.min.js "
        "written once beside it, which also opens offline",
    )
    _common(pl, model=False)

    from . import cli_check

    cli_check.add_parser(sub, _common)
    return parser


def check(args: argparse.Namespace) -> int:
    """``tie-tracing check`` (:mod:`tie_tracing.cli_check`)."""
    from . import cli_check

    def fail(message: str, hint: str = "") -> None:
        raise CliError(message, hint)

    cli_check.validate(args, fail)
    return cli_check.run(args)


COMMANDS = {"figure2": figure2, "trace": trace, "plot": plot, "check": check}


#: Python names in library messages, as the command line spells them.
_CLI_WORDS: tuple[tuple[str, str], ...] = (
    ("overwrite=True", "--overwrite"),
    ("another `out` directory", "another --out directory"),
    ("`out`", "--out"),
    ("max_memory=", "--max-memory "),
)


def _cli_words(message: str) -> str:
    """A library message with Python argument names replaced by the command's flags."""
    for python, flag in _CLI_WORDS:
        message = message.replace(python, flag)
    return message


def _hint(error: BaseException) -> str:
    import tie_tracing as tt

    if isinstance(error, CliError) and error.hint:
        return error.hint
    if isinstance(error, tt.ResultFileError) and "resumable sweep" in str(error):
        return "delete the file named above and rerun (it resumes), or rerun with --overwrite"
    if isinstance(error, tt.CheckpointNotFoundError):
        return "give an embedded model name (tiny-mdlm) or a local checkpoint directory"
    if isinstance(error, tt.UnsupportedModelError):
        return "pass --family, or --trust-remote-code for LLaDA/Dream checkpoints"
    if isinstance(error, PermissionError):
        return "choose a directory you can write to as --out"
    if isinstance(error, ValueError) and "another experiment" in str(error):
        return "use another --out, or --overwrite to discard the old trace"
    if isinstance(error, MemoryError) or "out of memory" in str(error):
        return "lower --max-memory"
    return "rerun with --debug for the traceback"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (errors: 1, bad arguments: 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _CREATED.clear()
    try:
        with _output(args.quiet):
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _discard_new_outputs()
        print("tie-tracing: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except Exception as error:  # one line and a hint; --debug for the traceback
        _discard_new_outputs()
        if args.debug:
            raise
        message = _cli_words(" ".join(str(error).split()) or type(error).__name__)
        print(f"tie-tracing {args.command}: error: {message}", file=sys.stderr)
        print(f"hint: {_cli_words(_hint(error))}", file=sys.stderr)
        return 1
    finally:
        _CREATED.clear()


if __name__ == "__main__":
    raise SystemExit(main())
