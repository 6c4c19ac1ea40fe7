"""The main job: `tie-tracing figure2` writes the figure, the traced result and a summary."""

from __future__ import annotations

import json
import re

import pytest
import torch

import tie_tracing as tt
from tie_tracing import cli
from tie_tracing.core.results import TIEResult


def test_figure2_writes_figure_result_and_summary(tmp_path, capsys):
    """figure2 traces two seeds, writes html + pooled result + summary, prints CI, seed stability and commits."""
    code = cli.main(
        ["figure2", "--out", str(tmp_path), "--n-facts", "2", "--steps", "4", "--quiet"]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert captured.err == ""  # --quiet: no loading or progress bars, no warnings
    assert "selected coordinate" in printed and "effect concentrates in layers" in printed
    assert "95% CI" in printed and "seed stability over seeds [0, 1]" in printed
    assert "object committed at step" in printed and "idle steps" in printed
    summary = json.loads((tmp_path / "figure2_summary.json").read_text())
    result = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    assert result.tie.shape[:3] == (2, tt.load_model("tiny-mdlm").num_layers, 4)
    # the saved result is the pool of seeds 0 and 1, one draw each (DEFAULT_N_SEEDS = 2)
    assert result.seeds == (0, 1) and result.lp_corrupt_draws.shape[1] == 2 * cli.DEFAULT_N_NOISE
    assert (result.config["lp"], result.config["target"]) == ("frozen", "answer")
    best = tt.select_coordinate(result)
    sel = summary["selected"]
    assert (sel["layer"], sel["step"], sel["module"]) == (best.layer, best.step, best.module)
    low, high = sel["ci95"]
    assert low <= sel["score"] + 1e-9 and sel["score"] <= high + 1e-9
    per_fact = result.known_only().tie[:, best.index[0], best.index[1], best.index[2]].abs()
    expected = tt.analysis.bootstrap_ci(per_fact.double())
    assert (low, high) == pytest.approx((float(expected[0]), float(expected[1])))
    stab = summary["seed_stability"]
    assert stab["seeds"] == [[0], [1]] and len(stab["same_cell"]) == 2
    assert stab["module"] == "resid" and len(stab["correlation"]) == 2
    pooled_resid = tt.select_coordinate(result, modules="resid")
    assert stab["pooled"]["layer"] == pooled_resid.layer == summary["selected_resid"]["layer"]
    commits = summary["object_commit"]
    steps = list(commits["per_fact"].values())
    assert steps == result.known_only().object_commit_step.tolist()
    decided = [s for s in steps if s >= 0]
    if decided:
        assert commits["min"] == min(decided) and commits["max"] == max(decided)
        assert 0 <= commits["min"] <= commits["median"] <= commits["max"] <= 3
    idle = summary["idle_steps"]
    assert idle["T"] == 4
    assert list(idle["per_fact"].values()) == result.known_only().idle_steps.sum(-1).tolist()
    shares = summary["concentration"]["share_by_layer"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert (tmp_path / "figure2.html").stat().st_size > 1000


def test_figure2_one_seed_raw_lp_object_target(tmp_path, capsys):
    """--n-seeds 1 --lp raw --target object: the settings reach the trace and no seed stability is claimed."""
    code = cli.main(
        [
            "figure2",
            "--out",
            str(tmp_path),
            "--n-facts",
            "1",
            "--steps",
            "2",
            "--n-seeds",
            "1",
            "--seed",
            "5",
            "--lp",
            "raw",
            "--target",
            "object",
            "--quiet",
        ]
    )
    assert code == 0
    assert "seed stability: not measured" in capsys.readouterr().out
    result = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    assert (result.config["lp"], result.config["target"]) == ("raw", "object")
    assert result.seeds == (5,)
    summary = json.loads((tmp_path / "figure2_summary.json").read_text())
    assert summary["seed_stability"] is None and summary["seeds"] == [5]
    assert (summary["lp"], summary["target"]) == ("raw", "object")


def test_figure2_help_shows_the_defaults(capsys):
    """--help lists every option with its default, taken from the module constants."""
    with pytest.raises(SystemExit):
        cli.main(["figure2", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text.split("options:", 1)[1]
    for option, default in (
        ("--n-facts", cli.DEFAULT_N_FACTS),
        ("--n-noise", cli.DEFAULT_N_NOISE),
        ("--n-seeds", cli.DEFAULT_N_SEEDS),
        ("--steps", cli.DEFAULT_STEPS),
    ):
        meta = option[2:].upper().replace("-", "_")
        found = re.search(rf"{option} {meta} [^(]*\(default: ([^)]*)\)", options)
        assert found is not None and found.group(1) == str(default), option
    assert "--lp {frozen,raw}" in text and "(default: frozen)" in text
    assert "--target {answer,object}" in text and "(default: answer)" in text


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_errors_are_one_line_and_a_hint_and_debug_shows_the_traceback(tmp_path, capsys):
    """A missing checkpoint or an unknown fact source prints one error line and a hint (exit 1);
    --debug raises the exception itself."""
    missing = str(tmp_path / "no-such-dir")
    assert cli.main(["figure2", "--model", missing, "--out", str(tmp_path / "o")]) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 2 and "no-such-dir" in lines[0] and "error:" in lines[0]
    assert lines[1].startswith("hint:") and "embedded model name" in lines[1]
    assert cli.main(["figure2", "--facts", "wiki:x", "--out", str(tmp_path / "o")]) == 1
    lines = _error_lines(capsys)
    assert len(lines) == 2 and "tiny:<split>" in lines[0] and lines[1].startswith("hint:")
    with pytest.raises(tt.CheckpointNotFoundError, match="no-such-dir"):
        cli.main(["figure2", "--model", missing, "--out", str(tmp_path / "o"), "--debug"])


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["figure2", "--n-facts", "-19"], "--n-facts: must be an integer ≥ 1, got -19"),
        (["figure2", "--steps", "0"], "--steps: must be an integer ≥ 1, got 0"),
        (["figure2", "--n-seeds", "two"], "--n-seeds: 'two' is not an integer"),
        (["figure2", "--seed", "-1"], "--seed: must be an integer ≥ 0"),
        (["trace", "--facts", "f.jsonl", "--out", "o", "--n-noise", "0"], "--n-noise"),
        (["trace", "--facts", "f.jsonl", "--out", "o", "--horizon", "-2"], "--horizon"),
        (["trace", "--facts", "f.jsonl", "--out", "o", "--decay", "1.5"], "(0, 1]"),
        (["trace", "--facts", "f.jsonl", "--out", "o", "--max-memory", "lots"], "max_memory"),
        (["trace", "--facts", "f.jsonl", "--out", "o", "--mode", "fast"], "invalid choice"),
        (["trace", "--out", "o"], "--facts"),
    ],
)
def test_out_of_range_arguments_are_refused(argv, fragment, capsys):
    """Negative counts, zero steps, bad memory sizes and the like exit 2 with one line and a hint."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "hint:" in err
    assert "Traceback" not in err and "usage:" not in err


def test_unwritable_out_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    """An --out that cannot be written is an error before loading or tracing, for every command."""

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(tt, "load_model", refuse)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for command in (["figure2"], ["trace", "--facts", "tiny:forget01"]):
        assert cli.main([*command, "--out", str(blocker / "sub"), "--quiet"]) == 1
        lines = _error_lines(capsys)
        assert len(lines) == 2 and "is not writable" in lines[0], lines
        assert "hint: choose a directory you can write to" in lines[1]


def test_quiet_prints_no_bars_and_no_warnings(tmp_path, capsys):
    """--quiet: nothing on stderr (no loading bars, progress bars or warnings), even for facts
    the model does not know."""
    facts = [tt.Fact("kess", "what city was kess born in", "orion lyra", id="unknown-1")]
    path = cli.write_facts_jsonl(facts, tmp_path / "f.jsonl")
    code = cli.main(
        ["trace", "--facts", str(path), "--out", str(tmp_path / "t"), "--steps", "2", "--quiet"]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "traced 1 facts" in captured.out


def test_every_command_shows_its_defaults(capsys):
    """--help of trace and plot lists defaults too (the trace options named in the issue)."""
    with pytest.raises(SystemExit):
        cli.main(["trace", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (
        ("--steps STEPS", "8"),
        ("--n-noise N_NOISE", "1"),
        ("--mode {exact,immediate,attribution}", "exact"),
        ("--horizon HORIZON", "None"),
        ("--max-memory MAX_MEMORY", "None"),
        ("--decay DECAY", "0.5"),
    ):
        assert re.search(rf"{re.escape(option)} [^(]*\(default: {re.escape(default)}\)", text), (
            option
        )
    with pytest.raises(SystemExit):
        cli.main(["plot", "--help"])
    assert "(default: None)" in capsys.readouterr().out


def test_trace_resumes_and_plot_draws_the_saved_trace(tmp_path, capsys):
    """`trace` writes one file per fact and the merged result, resumes without recomputing, and
    `plot DIR` writes Figure 2 from it; an unfinished directory gets a hint to resume."""
    facts = tt.load_facts("tiny", split="forget01")[:2]
    path = cli.write_facts_jsonl(facts, tmp_path / "f.jsonl")
    out = tmp_path / "sweep"
    argv = ["trace", "--facts", str(path), "--out", str(out), "--steps", "3", "--quiet"]
    assert cli.main(argv + ["--mode", "immediate"]) == 0
    first = TIEResult.load(out / "trace.safetensors")
    assert first.config["mode"] == "immediate" and first.fact_ids == tuple(f.id for f in facts)
    assert len(list(out.glob("fact_*.safetensors"))) == 2
    (out / "fact_00001.safetensors").unlink()
    assert cli.main(argv + ["--mode", "immediate"]) == 0
    again = TIEResult.load(out / "trace.safetensors")
    assert again.config["engine_stats"]["rows"] > 0  # the missing fact was traced again
    assert torch.equal(first.tie, again.tie)
    assert cli.main(argv) == 1  # other settings in the same directory
    lines = _error_lines(capsys)
    assert "another experiment" in lines[0] and "--overwrite" in lines[1]
    capsys.readouterr()
    assert cli.main(["plot", str(out), "--quiet"]) == 0
    assert (out / "figure2.html").stat().st_size > 1000
    (out / "trace.safetensors").unlink()
    assert cli.main(["plot", str(out), "--quiet"]) == 1
    assert "rerun `tie-tracing trace`" in _error_lines(capsys)[1]


def test_facts_file_errors_name_the_line(tmp_path, capsys):
    """A facts file line that is not JSON or has unknown fields is named with its line number."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"subject": "a", "question": "a b", "answer": "c"}\n{"subject": "x", "colour": 1}\n'
    )
    assert cli.main(["trace", "--facts", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    lines = _error_lines(capsys)
    assert f"{bad}:2 has unknown fields ['colour']" in lines[0]
    round_trip = cli.read_facts_jsonl(
        cli.write_facts_jsonl(tt.load_facts("tiny", split="forget01")[:3], tmp_path / "ok.jsonl")
    )
    assert round_trip == tt.load_facts("tiny", split="forget01")[:3]


def test_figure2_resumes_an_interrupted_run(tmp_path, capsys, monkeypatch):
    """figure2 keeps each seed's trace in --out/trace_seed<s>: a rerun after an interruption
    traces only what is missing."""
    argv = ["figure2", "--out", str(tmp_path), "--n-facts", "2", "--steps", "2", "--n-seeds", "1"]
    assert cli.main(argv + ["--quiet"]) == 0
    first = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    files = sorted((tmp_path / "trace_seed0").glob("fact_*.safetensors"))
    assert len(files) == 2
    files[0].unlink()  # as if the run had been killed after the second fact
    traced = []
    import tie_tracing.tracing.tie as tie_module

    original = tie_module._trace_one
    monkeypatch.setattr(
        tie_module, "_trace_one", lambda m, q, *a: traced.append(q.fact.id) or original(m, q, *a)
    )
    assert cli.main(argv + ["--quiet"]) == 0
    assert traced == [first.fact_ids[0]]
    again = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    assert torch.equal(first.tie, again.tie)


def test_figure2_on_a_checkpoint_directory_with_tofu_facts(tmp_path, capsys):
    """--model PATH loads a local checkpoint directory and traces real TOFU facts (warning on unknown ones)."""
    import shutil
    import warnings

    from tie_tracing.core.model import ZOO_DIR

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(ZOO_DIR / "tiny-mdlm", checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny model does not know TOFU's authors
        code = cli.main(
            [
                "figure2",
                "--model",
                str(checkpoint),
                "--out",
                str(tmp_path / "out"),
                "--n-facts",
                "2",
                "--steps",
                "2",
                "--quiet",
            ]
        )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "figure2_summary.json").read_text())
    assert summary["facts"][0].startswith("tofu/forget01/")
    assert "does not know" in capsys.readouterr().out
