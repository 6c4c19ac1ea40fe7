"""Bad and awkward inputs, one table: each input raises a named error (or warns) saying what is
wrong and what to do.

Every row is ``(case id, call, expected exception or warning type, message fragment)``; the
call receives an ``env`` with the tiny-mdlm replica (``env.m``), the llama replica
(``env.ar``), a valid fact (``env.fact``) and a temporary directory (``env.tmp``).
``docs/bad_input_audit.md`` lists the same cases with what happened before each fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tie_tracing as tt
from tie_tracing import cli
from tie_tracing.core.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ShapeError,
    SubjectNotFoundError,
)
from tie_tracing.core.results import PositionalResult, ResultFileError, TIEResult
from tie_tracing.editing import EditMemoryError
from tie_tracing.tracing.patching import Patch

FACT = tt.Fact("ada vell", "where was ada vell born", "lisbon porto", id="f0")
FACT2 = tt.Fact("mara tov", "who wrote the book of mara tov", "orion", id="f1")


def _fact(**kw):
    base = dict(subject="ada vell", question="where was ada vell born", answer="lisbon", id="x")
    return tt.Fact(**(base | kw))


def _trace(env, facts=(FACT,), **kw):
    kw = dict(steps=2, nu=1.0, modules="resid", progress=False) | kw
    return tt.trace_tie(env.m, facts, **kw)


def _positional(env, facts=(FACT,), **kw):
    kw = dict(nu=1.0, modules="resid", progress=False) | kw
    return tt.trace_positional(env.m, facts, **kw)


#: A slots-gated memory's settings (the answer-slot gate, SPEC §8 "beyond the paper").
SLOTS = dict(mode="steer", subject_gate=True, gate_kind="slots", apply_at="answer")


def _build(env, facts=(FACT, FACT2), **kw):
    kw = dict(layer=1, lam=0.1) | kw
    return tt.EditMemory.build(env.m, list(facts) if isinstance(facts, tuple) else facts, **kw)


def _shipped(env, record):
    """``OperatingPoint.shipped`` on the replica with ``record`` as its stored operating point."""
    env.m.info["operating_point"] = record
    try:
        return tt.editing.OperatingPoint.shipped(env.m)
    finally:
        del env.m.info["operating_point"]


def _point(env, **changes) -> dict:
    """A complete ungated operating point of the replica."""
    return {"layer": 1, "alpha": 1.0, "lam": 0.1, "q": None, "subject_gate": False,
            "fingerprint": tt.editing.model_fingerprint(env.m), "command": "tune --write",
            "measured": {"d_forget_lp": -1.0}} | changes  # fmt: skip


def _checkpoint(env, damage) -> Path:
    """A copy of the embedded tiny-mdlm checkpoint, damaged by ``damage(weights_file)``."""
    from tie_tracing.core.model import ZOO_DIR

    path = env.tmp / "checkpoint"
    shutil.copytree(ZOO_DIR / "tiny-mdlm", path)
    damage(path / "model.safetensors")
    return path


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _drop_a_weight(file: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(file))
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, str(file), metadata={"format": "pt"})


def _saved(env, obj, name="r.safetensors") -> Path:
    return obj.save(env.tmp / name)


def _truncated_result(env) -> Path:
    path = _saved(env, TIEResult.synthetic())
    _truncate(path)
    return path


SYN = TIEResult.synthetic(n_facts=2, n_layers=3, n_steps=4)
SYN_N = TIEResult.synthetic(n_facts=3, n_layers=3, n_steps=4, seed=5)


def _with_config(result: TIEResult, **changes) -> TIEResult:
    return dataclasses.replace(result, config=result.config | changes)


class CliFailed(Exception):
    """A command-line run that failed: its exit status and what it printed on stderr."""


def _cli(argv: list[str]) -> None:
    """Run the command line; a failure becomes CliFailed carrying its stderr."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    if code:
        raise CliFailed(f"exit {code}: {err.getvalue()}")


def _swept(env, damage) -> Path:
    """A resumable sweep of FACT in env.tmp/sweep, then damaged by ``damage(directory)``; the
    same call again is the case."""
    out = env.tmp / "sweep"
    _trace(env, out=out)
    damage(out)
    return out


def _truncate_fact_file(out: Path) -> None:
    _truncate(out / "fact_00000.safetensors")


def _empty_fact_file(out: Path) -> None:
    (out / "fact_00000.safetensors").write_bytes(b"")


def _foreign_fact_file(out: Path) -> None:
    PositionalResult.synthetic().save(out / "fact_00000.safetensors")


def _cli_resume_truncated(env) -> None:
    """`tie-tracing trace` into a folder, one fact file truncated, then the same command."""
    argv = ["trace", "--facts", "tiny:forget01", "--n-facts", "1", "--out", str(env.tmp / "run"),
            "--steps", "2", "--modules", "resid", "--quiet"]  # fmt: skip
    _cli(argv)
    _truncate_fact_file(env.tmp / "run")
    _cli(argv)


def _garble_config(out: Path) -> None:
    (out / "config.json").write_text('{"config": {"steps": 2,', encoding="utf-8")


CASES = [
    # --- facts ---------------------------------------------------------------------------
    ("fact-perturbed-str", lambda e: _fact(perturbed_answers="Paris"), TypeError,
     "perturbed_answers must be a sequence of strings"),
    ("fact-perturbed-none-item", lambda e: _fact(perturbed_answers=("a", None)), ValueError,
     "every perturbed answer must be a non-empty string"),
    ("fact-id-int", lambda e: _fact(id=5), TypeError, "id must be a string"),
    ("fact-empty-subject", lambda e: _fact(subject=" "), ValueError,
     "subject must be a non-empty string"),
    ("fact-empty-target", lambda e: _fact(target=""), ValueError,
     "target must be None or a non-empty string"),
    ("fact-object-not-in-answer", lambda e: _fact(object="paris"), ValueError,
     "not a substring"),
    ("fact-traceable-str", lambda e: _fact(traceable="no"), TypeError,
     "traceable must be True or False"),
    # --- prompts ---------------------------------------------------------------------------
    ("mask-token-in-question", lambda e: _trace(e, [_fact(question="where was ada vell [MASK]")]),
     ValueError, "contains the mask token '[MASK]'"),
    ("mask-token-in-diffuse", lambda e: tt.diffuse(e.m, [_fact(question="ada vell [MASK]")]),
     ValueError, "contains the mask token"),
    ("prompt-longer-than-positions",
     lambda e: tt.diffuse(e.m, [_fact(question="where was ada vell born " * 15)]),
     ValueError, "more than the model's 64 positions"),
    ("subject-inside-a-longer-word",
     lambda e: _trace(e, [_fact(subject="ada", question="where was adam born", id="w")]),
     SubjectNotFoundError, "'w': subject 'ada' occurs in prompt 'where was adam born' only "
     "inside a longer word"),
    ("subject-absent", lambda e: _trace(e, [_fact(subject="mara", id="a")]),
     SubjectNotFoundError, "'a': subject 'mara' not found"),
    ("subject-overlapping-mentions",
     lambda e: _trace(e, [_fact(subject="red red", question="red red red", id="o")]),
     SubjectNotFoundError, "'o': subject 'red red' is ambiguous"),
    ("mentions-unknown", lambda e: _trace(e, mentions="second"), ValueError,
     "mentions must be 'all'"),
    # --- sampler and trace settings --------------------------------------------------------
    ("diffuse-block-length-float", lambda e: tt.diffuse(e.m, [FACT], block_length=1.5),
     ValueError, "block_length"),
    ("diffuse-negative-temperature", lambda e: tt.diffuse(e.m, [FACT], temperature=-1),
     ValueError, "temperature"),
    ("trace-block-length-float", lambda e: _trace(e, block_length=1.5), ValueError,
     "block_length must be an integer"),
    ("trace-layers-empty", lambda e: _trace(e, layers=[]), ValueError, "layers is empty"),
    ("trace-layers-duplicate", lambda e: _trace(e, layers=[0, 0]), ValueError,
     "lists a layer twice"),
    ("trace-layer-out-of-range", lambda e: _trace(e, layers=[99]), ValueError, "99"),
    ("trace-unknown-module", lambda e: _trace(e, modules=["resid", "mlpp"]), ValueError,
     "modules must be a non-empty subset"),
    ("trace-facts-a-string", lambda e: tt.trace_tie(e.m, "where was ada vell born"), TypeError,
     "trace_tie needs tie_tracing Facts"),
    ("trace-facts-dicts", lambda e: tt.trace_tie(e.m, [{"subject": "ada"}]), TypeError,
     "item 0 is a dict, not a tie_tracing Fact"),
    ("trace-facts-empty", lambda e: tt.trace_tie(e.m, []), ValueError, "at least one fact"),
    ("trace-duplicate-ids", lambda e: _trace(e, [FACT, _fact(id="f0")]), ValueError,
     "duplicate fact ids: ['f0']"),
    ("trace-n-noise-zero", lambda e: _trace(e, n_noise=0), ValueError, "n_noise"),
    ("trace-steps-zero", lambda e: _trace(e, steps=0), ValueError, "steps must be"),
    ("trace-decay-zero", lambda e: _trace(e, decay=0), ValueError, "decay must lie in (0, 1]"),
    ("trace-noise-scale-nan", lambda e: _trace(e, nu=None, noise_scale=math.nan), ValueError,
     "noise_scale must be > 0"),
    ("trace-seed-float", lambda e: _trace(e, seed=1.5), TypeError, "seed must be an integer"),
    ("trace-batch-size-zero", lambda e: _trace(e, batch_size=0), ValueError, "batch_size"),
    ("trace-causal-model", lambda e: tt.trace_tie(e.ar, [FACT]), ValueError,
     "use tt.trace_positional"),
    ("trace-unknown-setting", lambda e: _trace(e, n_noises=2), TypeError,
     "no setting 'n_noises' (did you mean 'n_noise'?); the settings are:"),
    ("trace-config-a-dict", lambda e: tt.trace_tie(e.m, [FACT], {"steps": 2}), TypeError,
     "trace_tie takes a TraceConfig as its config, got dict"),
    ("trace-patch-steps-outside", lambda e: _trace(e, patch_steps=[0, 5]), ValueError,
     "patch_steps [5] outside the steps 0 … 1"),
    ("positional-denoising-steps", lambda e: _positional(e, steps=4), TypeError,
     "trace_positional has no setting 'steps'"),
    ("capture-steps-old-spelling",
     lambda e: tt.tracing.Capture(layer=0, module="mlp", steps=(1,)), TypeError,
     "Capture(steps=...) is now Capture(at_steps=...)"),
    ("trace-steps-bool", lambda e: _trace(e, steps=True), ValueError,
     "steps must be an integer ≥ 1, got True"),
    ("trace-n-noise-bool", lambda e: _trace(e, n_noise=True), ValueError,
     "n_noise must be an integer ≥ 1, got True"),
    ("trace-layer-negative", lambda e: _trace(e, layers=[-1]), ValueError, "layer -1 outside"),
    ("trace-unknown-target", lambda e: _trace(e, target="objct"), ValueError,
     "target must be one of"),
    ("trace-name-target-without-name",
     lambda e: _trace(e, [_fact(answer="lisbon", id="noname")], target="name"), ValueError,
     "target='name' reads the subject's name inside the answer; the answers of 1 facts do not "
     "contain their subject: ['noname']"),
    ("positional-subject-absent",
     lambda e: _positional(e, [_fact(subject="kess tov", id="bad")]), SubjectNotFoundError,
     "'bad': subject 'kess tov' not found"),
    ("positional-unknown-module", lambda e: _positional(e, modules=("ffn",)), ValueError,
     "modules must be a non-empty subset"),
    ("positional-window-zero", lambda e: _positional(e, window=0), ValueError, "window"),
    ("positional-layers-empty", lambda e: _positional(e, layers=[]), ValueError,
     "layers is empty"),
    ("positional-facts-a-string", lambda e: tt.trace_positional(e.m, "ada"), TypeError,
     "trace_positional needs tie_tracing Facts"),
    ("patch-positions-empty",
     lambda e: Patch(layer=0, module="mlp", step=0, value=torch.zeros(1, 4), positions=()),
     ValueError, "positions=() selects nothing"),
    ("patch-unknown-module", lambda e: Patch(layer=0, module="ffn", step=0, value=torch.zeros(1)),
     ValueError, "Patch module must be one of"),
    # --- selection and analysis ------------------------------------------------------------
    ("select-all-zero", lambda e: tt.select_coordinate(torch.zeros(2, 3, 4, 3)), UserWarning,
     "the selected coordinate is arbitrary"),
    ("select-inf", lambda e: tt.select_coordinate(
        torch.zeros(2, 3, 4, 3).index_put_((torch.tensor(0),) * 4, torch.tensor(math.inf))),
     ValueError, "hold inf in 1 considered cells"),
    ("select-nan", lambda e: tt.select_coordinate(torch.full((1, 2, 2, 3), math.nan)), ValueError,
     "hold NaN"),
    ("select-3d-tensor", lambda e: tt.select_coordinate(torch.zeros(3, 4, 3)), ShapeError,
     "for one map pass x[None]"),
    ("select-a-list", lambda e: tt.select_coordinate([[1.0]]), TypeError,
     "must be a TIEResult or a tensor"),
    ("select-int-tensor", lambda e: tt.select_coordinate(torch.ones(1, 2, 2, 3, dtype=torch.long)),
     TypeError, "float tensor"),
    ("select-negative-beta", lambda e: tt.select_coordinate(SYN, beta=-1), ValueError,
     "beta must be >= 0"),
    ("select-beta-without-neighbours", lambda e: tt.select_coordinate(SYN, beta=0.5), ValueError,
     "needs neighbours="),
    ("select-unknown-step", lambda e: tt.select_coordinate(SYN, steps=[99]), ValueError,
     "out of range"),
    ("select-unknown-module", lambda e: tt.select_coordinate(SYN, modules="ffn"), ValueError,
     "unknown module"),
    ("select-beta-nan", lambda e: tt.select_coordinate(SYN, beta=math.nan), ValueError,
     "beta must be a finite number"),
    ("select-modules-empty", lambda e: tt.select_coordinate(SYN, modules=[]), ValueError,
     "modules= is empty"),
    ("select-step-negative", lambda e: tt.select_coordinate(SYN, steps=[-1]), ValueError,
     "out of range"),
    ("select-steps-float", lambda e: tt.select_coordinate(SYN, steps=1.5), TypeError,
     "steps= must be a step label or a list of them, got float"),
    ("select-no-facts", lambda e: tt.select_coordinate(torch.ones(0, 2, 2, 3)), ValueError,
     "hold no facts"),
    ("select-5d-tensor", lambda e: tt.select_coordinate(torch.ones(1, 2, 2, 2, 3)), ShapeError,
     "4 axes"),
    ("select-neighbours-nan",
     lambda e: tt.select_coordinate(SYN.tie, beta=1.0, neighbours=torch.full((1, 3, 4, 3), math.nan)),
     ValueError, "neighbours hold NaN"),
    ("select-neighbours-none-with-beta",
     lambda e: tt.select_coordinate(SYN.tie, beta=1.0, neighbours=torch.ones(0, 3, 4, 3)),
     ValueError, "neighbours hold no facts but beta > 0"),
    ("stability-seed-str", lambda e: tt.analysis.selection_stability(SYN, n_boot=5, seed="a"), TypeError,
     "seed must be an integer, got str"),
    ("select-neighbours-other-shape",
     lambda e: tt.select_coordinate(SYN, beta=1.0, neighbours=torch.zeros(1, 2, 2, 3)),
     ShapeError, "neighbours are [layer, step, module]"),
    ("bootstrap-empty", lambda e: tt.analysis.bootstrap_ci(torch.zeros(0, 2)), ValueError, "fact"),
    ("selection-stability-no-boot", lambda e: tt.analysis.selection_stability(SYN, n_boot=0), ValueError,
     "n_boot"),
    ("localisation-dims-mismatch",
     lambda e: tt.analysis.localisation_stats(torch.zeros(3, 4), dims=("layer",)), ShapeError, "dims"),
    ("diffuse-text-without-length", lambda e: tt.diffuse(e.m, ["where was ada vell born"]),
     ValueError, "give answer_length="),
    ("logprob-unknown-estimator", lambda e: tt.answer_logprob(e.m, [FACT], estimator="mc"),
     ValueError, "unknown estimator 'mc'"),
    ("logprob-no-facts", lambda e: tt.answer_logprob(e.m, []), ValueError, "at least one fact"),
    ("logprob-a-string", lambda e: tt.answer_logprob(e.m, "where was ada vell born"), TypeError,
     "answer_logprob needs tie_tracing Facts"),
    ("exact-match-none", lambda e: tt.evaluation.exact_match(None, "lisbon"), TypeError,
     "answers must be strings, got NoneType"),
    ("tr-shapes-mismatch",
     lambda e: tt.evaluation.truth_ratio(torch.zeros(2, 3), torch.ones(2, 2), torch.zeros(2), torch.ones(2)),
     ValueError, "must both be [fact, n_perturbed]"),
    ("paired-ttest-lengths", lambda e: tt.evaluation.paired_ttest([1.0, 2.0], [1.0]), ValueError,
     "equal lengths"),
    # --- comparison ------------------------------------------------------------------------
    ("compare-other-facts",
     lambda e: tt.analysis.compare_paradigms(PositionalResult.synthetic(), PositionalResult.synthetic(), SYN),
     ValueError, "mdlm_tie lacks ['f2']"),
    ("compare-swapped-arguments",
     lambda e: tt.analysis.compare_paradigms(SYN, PositionalResult.synthetic(), SYN), TypeError,
     "compare_paradigms needs a PositionalResult, got TIEResult"),
    ("aligned-positional-a-tie", lambda e: tt.analysis.aligned_positional(SYN), TypeError,
     "aligned_positional needs a PositionalResult"),
    ("summary-a-string", lambda e: tt.analysis.localisation_summary("trace.safetensors"), TypeError,
     "localisation_summary needs a PositionalResult or TIEResult, got str"),
    ("pick-layers-zero", lambda e: tt.analysis.pick_layers(PositionalResult.synthetic(), SYN, 0), ValueError,
     "num_layers must be an integer ≥ 1"),
    # --- edit memory -----------------------------------------------------------------------
    ("build-targets-empty", lambda e: _build(e, targets=[]), EditMemoryError,
     "0 targets given for 2 facts"),
    ("build-targets-blank", lambda e: _build(e, targets=["", "no"]), EditMemoryError,
     "its target '' is not a non-empty string"),
    ("build-targets-none-item", lambda e: _build(e, targets=[None, "no"]), EditMemoryError,
     "its target None is not a non-empty string"),
    ("build-steps-set", lambda e: _build(e, steps={0, 1}), TypeError, "edit_steps="),
    ("build-duplicate-ids", lambda e: _build(e, facts=[FACT, FACT]), EditMemoryError,
     "duplicate fact ids ['f0']"),
    ("build-unknown-module", lambda e: _build(e, module="ffn"), ValueError, "unknown module 'ffn'"),
    ("build-alpha-nan", lambda e: _build(e, alpha=math.nan), ValueError,
     "alpha must be a finite number"),
    ("build-no-facts", lambda e: _build(e, facts=[]), EditMemoryError, "at least one fact"),
    ("slots-unknown-no-names", lambda e: _build(e, **SLOTS, targets="unknown", calibration=[FACT2]),
     EditMemoryError, "targets='unknown' needs unknown_names=[...]"),
    ("slots-names-are-subjects", lambda e: _build(
        e, facts=(FACT,), **SLOTS, targets="unknown", calibration=[FACT2],
        unknown_names=[FACT.subject.upper()]), EditMemoryError, "are subjects of the facts"),
    ("slots-apply-all", lambda e: _build(e, **{**SLOTS, "apply_at": "all"}), EditMemoryError,
     "gate_kind='slots' decides at the answer's [MASK] slots"),
    ("slots-no-calibration", lambda e: _build(e, **SLOTS), EditMemoryError,
     "(gate_kind='slots') needs calibration prompts"),
    ("slots-one-calibration-slot", lambda e: _build(e, facts=(FACT,), **SLOTS, calibration=[FACT2]),
     EditMemoryError, "needs at least 2 answer slots to calibrate on, its prompts have 1"),
    ("slots-insert-unknown", lambda e: _build(
        e, facts=(FACT,), **SLOTS, targets="unknown", unknown_names=["lyra kess"],
        calibration=[FACT2, tt.Fact("kess orion", "where was kess orion born", "porto lisbon")],
    ).insert([FACT2], model=e.m), EditMemoryError,
     "insert does not capture targets='unknown'"),
    ("build-facts-a-string", lambda e: _build(e, facts="ada vell"), TypeError,
     "EditMemory.build needs tie_tracing Facts"),
    ("build-no-layer", lambda e: tt.EditMemory.build(e.m, [FACT, FACT2], alpha=1.0),
     EditMemoryError, "EditMemory.build needs a site: pass layer=..."),
    ("build-config-an-int", lambda e: tt.EditMemory.build(e.m, [FACT, FACT2], 1), TypeError,
     "takes an EditConfig or an OperatingPoint as its config, got int 1: give the site as layer=1"),
    ("build-config-a-dict", lambda e: _build(e, config={"layer": 1}, layer=None), TypeError,
     "read a stored record with tt.EditConfig.from_dict(d) or tt.editing.OperatingPoint.from_dict(d)"),
    ("build-unknown-setting", lambda e: _build(e, alhpa=2.0), TypeError,
     "EditMemory.build has no setting 'alhpa' (did you mean 'alpha'?)"),
    ("shipped-none", lambda e: tt.editing.OperatingPoint.shipped(e.m), EditMemoryError,
     "ships no edit operating point"),
    ("shipped-missing-fields", lambda e: _shipped(e, {"layer": 1, "alpha": 1.0}), EditMemoryError,
     "lacks the fields ['lam', 'q', 'subject_gate', 'fingerprint', 'command', 'measured']"),
    ("shipped-unknown-field", lambda e: _shipped(e, _point(e, alhpa=1.0)), EditMemoryError,
     "has unknown fields ['alhpa']"),
    ("shipped-stale", lambda e: _shipped(e, _point(e, fingerprint="0" * 16)),
     tt.editing.EditMemoryWarning, "Re-run its tuning command: tune --write"),
    ("write-point-not-a-model", lambda e: tt.editing.write_operating_point(e.tmp, _point(e)),
     EditMemoryError, "holds no tie_tracing.json: give the directory of a model"),
    # --- evaluation ------------------------------------------------------------------------
    ("evaluate-no-split", lambda e: tt.evaluate(e.m, {}), ValueError, "at least one split"),
    ("evaluate-a-list", lambda e: tt.evaluate(e.m, [FACT]), TypeError,
     "splits must map split names to facts"),
    ("evaluate-empty-split", lambda e: tt.evaluate(e.m, {"forget": []}), ValueError,
     "split 'forget' has no facts"),
    ("evaluate-split-a-string", lambda e: tt.evaluate(e.m, {"forget": "ada"}), TypeError,
     "split 'forget' must be a sequence of tie_tracing Facts"),
    # --- checkpoints and result files -------------------------------------------------------
    ("checkpoint-truncated", lambda e: tt.load_model(_checkpoint(e, _truncate)), CheckpointError,
     "checkpoint/model.safetensors is truncated or corrupt"),
    ("checkpoint-missing-weight", lambda e: tt.load_model(_checkpoint(e, _drop_a_weight)),
     CheckpointError, "lacks 1 weights the model needs (model.layers.0.mlp.down_proj.weight)"),
    ("checkpoint-no-directory", lambda e: tt.load_model(e.tmp / "nowhere"),
     CheckpointNotFoundError, "no such directory"),
    ("result-truncated", lambda e: TIEResult.load(_truncated_result(e)), ResultFileError,
     "r.safetensors is not a readable safetensors file (truncated or corrupt?)"),
    ("result-other-kind", lambda e: TIEResult.load(_saved(e, tt.select_coordinate(SYN))),
     ResultFileError, "holds a Coordinate, not a TIEResult; use Coordinate.load"),
    ("result-missing-file", lambda e: TIEResult.load(e.tmp / "none.safetensors"),
     FileNotFoundError, "no result file"),
    ("result-save-to-a-directory", lambda e: SYN.save(e.tmp), IsADirectoryError,
     "is a directory; give a file path inside it"),
    ("result-load-a-directory", lambda e: TIEResult.load(e.tmp), IsADirectoryError,
     "is a directory"),
    ("result-unknown-fact-id", lambda e: SYN.select_facts("nope"), KeyError,
     "no fact with id 'nope'"),
    ("pool-same-seed-twice",
     lambda e: PositionalResult.pool_seeds([PositionalResult.synthetic()] * 2), ValueError,
     "seed 0 appears in result 0 and result 1"),
    ("concat-nothing", lambda e: TIEResult.concat([]), ValueError, "at least one"),
    # --- plotting --------------------------------------------------------------------------
    ("plot-heatmaps-a-tensor", lambda e: tt.plot_tie_heatmaps(torch.zeros(2, 3, 4, 3)), TypeError,
     "TIEResult"),
    ("plot-positional-unknown-fact",
     lambda e: tt.plot_positional(PositionalResult.synthetic(), fact="nope"), KeyError, "nope"),
    ("plot-landscape-a-tensor", lambda e: tt.plot_selection_landscape(torch.zeros(2, 3)),
     TypeError, "plot_selection_landscape draws a Coordinate"),
    ("plot-positional-a-tie-result", lambda e: tt.plot_positional(SYN), TypeError,
     "plot_positional draws a PositionalResult"),
    ("plot-heatmaps-unknown-module", lambda e: tt.plot_tie_heatmaps(SYN, modules="ffn"),
     ValueError, "ffn"),
    # --- loaders ---------------------------------------------------------------------------
    ("tofu-unknown-split", lambda e: tt.load_tofu(split="forget1"), ValueError,
     "unknown TOFU split 'forget1'; valid splits"),
    ("rwku-unknown-target", lambda e: tt.load_rwku(targets="Nobody"), ValueError,
     "unknown RWKU target 'Nobody'"),
    # --- non-finite settings and patch values: named before any forward ---------------------
    ("trace-nu-inf", lambda e: _trace(e, nu=math.inf), ValueError,
     "nu must be a finite number (the noise level ν added to the subject embeddings), got inf"),
    ("trace-noise-scale-inf", lambda e: _trace(e, nu=None, noise_scale=math.inf), ValueError,
     "noise_scale must be a finite number"),
    ("trace-max-memory-inf", lambda e: _trace(e, max_memory=math.inf), ValueError,
     "max_memory must be a finite"),
    ("diffuse-temperature-inf", lambda e: tt.diffuse(e.m, [FACT], temperature=math.inf),
     ValueError, "temperature must be a finite number"),
    ("sampler-cfg-scale-nan", lambda e: tt.LLaDASampler(cfg_scale=math.nan), ValueError,
     "cfg_scale must be a finite number (a setting of LLaDASampler)"),
    ("dream-alg-temp-inf", lambda e: tt.DreamSampler(alg_temp=math.inf), ValueError,
     "alg_temp must be a finite number"),
    ("patch-value-nan",
     lambda e: Patch(layer=0, module="resid", step=1, value=torch.full((1, 32), math.nan)),
     ValueError, "Patch value (layer 0, resid, step 1) holds 32 NaN/inf of 32 entries"),
    ("patch-value-inf-in-run",
     lambda e: tt.tracing.run_patched(e.m, FACT, steps=2, patches=[
         Patch(layer=0, module="mlp", step=0, value=torch.full((2, 32), -math.inf))]),
     ValueError, "Patch value (layer 0, mlp, step 0) holds 64 NaN/inf"),
    # --- a saved file of one type loaded as another ------------------------------------------
    ("load-memory-as-result", lambda e: TIEResult.load(_build(e).save(e.tmp / "m.safetensors")),
     ResultFileError, "holds an EditMemory, not a TIEResult; use EditMemory.load"),
    ("load-result-as-memory", lambda e: tt.EditMemory.load(_saved(e, SYN)), EditMemoryError,
     "holds a TIEResult, not an EditMemory; use TIEResult.load"),
    ("load-weights-as-result", lambda e: TIEResult.load(_checkpoint(e, lambda f: None) /
     "model.safetensors"), ResultFileError,
     "not a tie_tracing result but a plain safetensors file (model weights?)"),
    ("load-json-as-result", lambda e: TIEResult.load(_checkpoint(e, lambda f: None) /
     "config.json"), ResultFileError, "config.json is a JSON file, not a safetensors result"),
    ("load-result-as-model", lambda e: tt.load_model(_saved(e, SYN)), CheckpointNotFoundError,
     "r.safetensors' is a file (a saved TIEResult), not a checkpoint"),
    ("load-memory-from-a-directory", lambda e: tt.EditMemory.load(e.tmp), IsADirectoryError,
     "is a directory; give the path of a file written by EditMemory.save"),
    ("facts-file-a-result", lambda e: cli.read_facts_jsonl(_saved(e, SYN)), cli.CliError,
     "is not a JSON-lines text file (binary: a saved result or weights?)"),
    # --- a corrupt file inside a resumable output folder ------------------------------------
    ("resume-truncated-fact-file",
     lambda e: _trace(e, out=_swept(e, _truncate_fact_file)), ResultFileError,
     "fact_00000.safetensors, a fact file of the resumable sweep in"),
    ("resume-empty-fact-file", lambda e: _trace(e, out=_swept(e, _empty_fact_file)),
     ResultFileError, "is unreadable"),
    ("resume-foreign-fact-file", lambda e: _trace(e, out=_swept(e, _foreign_fact_file)),
     ResultFileError, "holds a PositionalResult, not a TIEResult"),
    ("resume-garbled-config", lambda e: _trace(e, out=_swept(e, _garble_config)),
     ResultFileError, "config.json is unreadable"),
    ("resume-truncated-in-cli", _cli_resume_truncated, CliFailed,
     "hint: delete the file named above and rerun (it resumes), or rerun with --overwrite"),
    # --- a malformed JSON option on the command line ----------------------------------------
    ("cli-sampler-json-malformed",
     lambda e: _cli(["trace", "--facts", "tiny:forget01", "--out", str(e.tmp / "o"),
                     "--sampler", '{"name": llada}']), CliFailed,
     "argument --sampler: not valid JSON (Expecting value at column 10)"),
    ("cli-sampler-json-not-an-object",
     lambda e: _cli(["trace", "--facts", "tiny:forget01", "--out", str(e.tmp / "o"),
                     "--sampler", '["llada"]']), CliFailed,
     "argument --sampler: a JSON sampler config must be an object"),
    ("cli-sampler-json-unknown-name",
     lambda e: _cli(["trace", "--facts", "tiny:forget01", "--out", str(e.tmp / "o"),
                     "--sampler", '{"name": "lada"}']), CliFailed,
     "--sampler: unknown sampler 'lada'"),
    ("cli-modules-unknown",
     lambda e: _cli(["trace", "--facts", "tiny:forget01", "--out", str(e.tmp / "o"),
                     "--modules", "resid,foo"]), CliFailed,
     "argument --modules: unknown module(s) ['foo']"),
    # --- an object passed where a model is expected -----------------------------------------
    ("model-a-name", lambda e: tt.trace_tie("tiny-mdlm", [FACT]), TypeError,
     "trace_tie needs a model loaded with tt.load_model (a tie_tracing TracedModel); got the "
     "str 'tiny-mdlm'; load it first: model = tt.load_model('tiny-mdlm')"),
    ("model-none", lambda e: tt.diffuse(None, [FACT]), TypeError, "diffuse needs a model"),
    ("model-a-torch-module", lambda e: tt.answer_logprob(e.m._module, [FACT]), TypeError,
     "got a bare torch module (LlamaForCausalLM); wrap it"),
    ("model-a-path",
     lambda e: tt.EditMemory.build(Path("/models/x"), [FACT, FACT2], layer=1), TypeError,
     "EditMemory.build needs a model loaded with tt.load_model (a tie_tracing TracedModel); got "
     "the PosixPath '/models/x'"),
    ("model-facts-first", lambda e: tt.trace_tie([FACT], e.m), TypeError,
     "the model comes first: trace_tie(model, facts, ...)"),
    ("model-positional-a-name", lambda e: tt.trace_positional("tiny-ar", [FACT]), TypeError,
     "trace_positional needs a model"),
    ("model-evaluate-a-name", lambda e: tt.evaluate("tiny-mdlm", {"forget": [FACT]}), TypeError,
     "evaluate needs a model"),
    ("model-unlearn-a-name", lambda e: tt.unlearn("tiny-mdlm", [FACT], [FACT2], method="ga"),
     TypeError, "unlearn needs a model"),
    ("model-run-patched-a-name", lambda e: tt.tracing.run_patched("tiny-mdlm", FACT, steps=2), TypeError,
     "run_patched needs a model"),
    # --- forget and neighbour maps traced apart --------------------------------------------
    ("pair-other-nu",
     lambda e: tt.select_coordinate({"forget": _with_config(SYN, nu=1.0),
                                     "neighbours": _with_config(SYN_N, nu=2.0)}, beta=1.0),
     ValueError, "noise level ν 1.0 vs 2.0"),
    ("pair-other-steps-and-model",
     lambda e: tt.select_coordinate(_with_config(SYN, steps=8), beta=1.0,
                                    neighbours=dataclasses.replace(
                                        _with_config(SYN_N, steps=16), model_id="other")),
     ValueError, "model 'synthetic' vs 'other'; steps T 8 vs 16"),
    ("pair-other-sampler",
     lambda e: tt.TIEPair(_with_config(SYN, sampler={"name": "llada", "remasking": "random"}),
                          _with_config(SYN_N, sampler={"name": "llada",
                                                       "remasking": "low_confidence"})),
     ValueError, "sampler {'remasking': 'random'} vs {'remasking': 'low_confidence'}"),
    ("pair-wrong-keys", lambda e: tt.select_coordinate({"forget": SYN, "keep": SYN_N}),
     ValueError, "needs exactly the keys 'forget' and 'neighbours', got ['forget', 'keep']"),
    ("pair-and-neighbours",
     lambda e: tt.select_coordinate(tt.TIEPair(SYN, SYN_N), beta=1.0, neighbours=SYN_N),
     ValueError, "the heatmaps already carry their neighbours; drop neighbours="),
]  # fmt: skip

#: NumPy (and 0-d tensor) numbers where an int or float is expected are accepted: each row is
#: ``(case id, call, check)``; ``check(env, value)`` asserts the call did what its
#: Python-number twin does.
ACCEPTED = [
    ("np-trace-counts",
     lambda e: _trace(e, steps=np.int64(2), n_noise=np.int64(2), seed=np.int64(3)),
     lambda e, r: torch.equal(r.tie, _trace(e, steps=2, n_noise=2, seed=3).tie)
     and r.config["steps"] == 2 and type(r.config["steps"]) is int),
    ("np-trace-layers", lambda e: _trace(e, layers=np.arange(2)),
     lambda e, r: r.layers == (0, 1)),
    ("np-trace-one-layer", lambda e: _trace(e, layers=np.int64(1)),
     lambda e, r: r.layers == (1,)),
    ("np-trace-decay-nu", lambda e: _trace(e, decay=np.float32(0.5), nu=np.float64(1.0)),
     lambda e, r: torch.equal(r.tie, _trace(e, decay=0.5, nu=1.0).tie)),
    ("np-trace-horizon-batch", lambda e: _trace(e, horizon=np.int64(1), batch_size=np.int64(4)),
     lambda e, r: r.config["horizon"] == 1),
    ("tensor-trace-steps", lambda e: _trace(e, steps=torch.tensor(2)),
     lambda e, r: r.n_later_steps == 2),
    ("np-select-beta-steps",
     lambda e: tt.select_coordinate(SYN, beta=np.float32(0.5), neighbours=SYN_N,
                                    steps=np.int64(1)),
     lambda e, c: c.index == tt.select_coordinate(SYN, beta=0.5, neighbours=SYN_N, steps=1).index),
    ("np-select-facts", lambda e: SYN.select_facts([np.int64(1)]),
     lambda e, r: r.fact_ids == ("f1",)),
    ("np-selection-stability",
     lambda e: tt.analysis.selection_stability(SYN, n_boot=np.int64(5), seed=np.int64(0)),
     lambda e, s: s.n_boot == 5),
    ("np-diffuse-steps", lambda e: tt.diffuse(e.m, [FACT], steps=np.int64(2)),
     lambda e, d: d.tokens.shape[1] == 2),
    ("np-build-layer-q-alpha",
     lambda e: _build(e, layer=np.int64(1), q=np.int64(1), alpha=np.float32(2.0)),
     lambda e, m: (m.config.layer, m.config.q, m.config.alpha) == (1, 1, 2.0)),
    ("np-sampler-settings",
     lambda e: (tt.LLaDASampler(block_length=np.int64(1), temperature=np.float32(0.5)),
                tt.DreamSampler(top_k=np.int64(5))),
     lambda e, s: (s[0].block_length, s[0].temperature, s[1].top_k) == (1, 0.5, 5)),
    ("np-positional-window", lambda e: _positional(e, window=np.int64(1)),
     lambda e, r: r.window == 1),
    ("np-pick-layers", lambda e: tt.analysis.pick_layers(PositionalResult.synthetic(), SYN, np.int64(3)),
     lambda e, p: p == tt.analysis.pick_layers(PositionalResult.synthetic(), SYN, 3)),
    ("np-plot-trajectory", lambda e: tt.plot_trajectory(SYN, np.int64(1)),
     lambda e, f: "f1" in f.layout.title.text),
    ("np-unlearn-lr-steps",
     lambda e: tt.unlearn(e.m, [FACT], [FACT2], method="ga", lr=np.float32(1e-3),
                          steps=np.int64(1), batch_size=np.int64(1), progress=False)[1],
     lambda e, log: len(log.forget_lp) >= 1),
]  # fmt: skip


@pytest.fixture(scope="module")
def models(replicas):
    return replicas["tiny-mdlm"], replicas["llama"]


@pytest.mark.parametrize(
    "case, call, expected, fragment", CASES, ids=[c[0] for c in CASES]
)  # fmt: skip
def test_bad_input_gets_a_named_error(case, call, expected, fragment, models, tmp_path):
    """The input raises the expected error (or warning) whose message holds the fragment."""
    env = types.SimpleNamespace(m=models[0], ar=models[1], fact=FACT, tmp=tmp_path)
    if issubclass(expected, Warning):
        with pytest.warns(expected) as record:
            call(env)
        assert any(fragment in str(w.message) for w in record), [str(w.message) for w in record]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        with pytest.raises(expected) as info:
            call(env)
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("case, call, check", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_numbers_of_another_numeric_type_are_accepted(case, call, check, models, tmp_path):
    """A NumPy integer or float (or a 0-d tensor) where an int or float is expected works as
    the Python number does."""
    env = types.SimpleNamespace(m=models[0], ar=models[1], fact=FACT, tmp=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random replicas know no facts
        value = call(env)
        assert check(env, value)


def test_case_ids_are_unique():
    """Every row of the tables has its own id (the audit document refers to them)."""
    ids = [c[0] for c in CASES] + [c[0] for c in ACCEPTED]
    assert len(ids) == len(set(ids))


def test_audit_document_lists_every_case():
    """docs/bad_input_audit.md has one row per case of the tables."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "bad_input_audit.md").read_text()
    missing = [c[0] for c in CASES + ACCEPTED if f"`{c[0]}`" not in doc]
    assert not missing, missing
