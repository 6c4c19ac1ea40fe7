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
    """figure2 traces two seeds, writes html + pooled result + summary, prints CI, seed
    stability and commits, labels each seed's progress bar; a rerun says how far it resumes,
    and under --quiet prints nothing at all."""
    argv = ["figure2", "--out", str(tmp_path), "--n-facts", "2", "--steps", "4"]
    code = cli.main(argv)
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "TIE of 2 facts, seed 0" in captured.err and "TIE of 2 facts, seed 1" in captured.err
    assert "resuming" not in captured.err
    assert cli.main(argv) == 0  # resumed: says so, per seed, before its bar
    again = capsys.readouterr()
    assert again.err.count("resuming: 2/2 facts already traced in") == 2, again.err
    assert cli.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: nothing on stdout or stderr
    assert "selected coordinate" in printed and "effect concentrates in layers" in printed
    assert "95% CI" in printed and "seed stability over seeds [0, 1]" in printed
    assert "object committed at step" in printed and "idle steps" in printed
    summary = json.loads((tmp_path / "figure2_summary.json").read_text())
    result = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    assert result.tie.shape[:3] == (2, tt.load_model("tiny-mdlm").num_layers, 4)
    # the saved result is the pool of seeds 0 and 1, one draw each (DEFAULT_N_SEEDS = 2)
    assert result.seeds == (0, 1) and result.lp_corrupt_draws.shape[1] == 2 * cli.DEFAULT_N_NOISE
    assert (result.config["lp"], result.config["target"]) == ("frozen", "object")
    name = TIEResult.load(tmp_path / "figure2_name_tie.safetensors")  # the contrast's partner
    assert name.config["target"] == "name" and name.fact_ids == result.fact_ids
    views = summary["views"]["resid"]
    assert {"tie", "final", "contrast"} <= set(views) and 0 <= views["immediate_share"] <= 1
    assert "contrast object − name" in printed and "final-answer effect" in printed
    assert "immediate share" in printed and "relative to each fact's object commit" in printed
    assert sum(views["step_profile"].values()) == pytest.approx(1.0)
    assert (tmp_path / "figure2_views.html").stat().st_size > 1000
    best = tt.select_coordinate(result)
    sel = summary["selected"]
    assert (sel["layer"], sel["step"], sel["module"]) == (best.layer, best.step, best.module)
    low, high = sel["ci95"]
    assert low <= sel["score"] + 1e-6 and sel["score"] <= high + 1e-6  # float32 score
    known = result.known_only()
    per_fact = known.tie[:, best.index[0], best.index[1], best.index[2]].abs()
    expected = tt.analysis.cluster_bootstrap_ci(per_fact.double(), known.subjects)
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
    """--n-seeds 1 --lp raw --target object: the settings reach the trace and no seed stability
    is claimed; --no-contrast traces no name target."""
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
            "--no-contrast",
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
    assert summary["contrast_target"] is None
    assert not (tmp_path / "figure2_name_tie.safetensors").exists()


def test_figure2_help_shows_the_defaults(capsys):
    """--help lists every option with its default, taken from the module constants."""
    with pytest.raises(SystemExit):
        cli.main(["figure2", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text.split("options:", 1)[1]
    for option, default in (
        ("--per-person", cli.DEFAULT_PER_PERSON),
        ("--n-facts", None),
        ("--n-noise", cli.DEFAULT_N_NOISE),
        ("--n-seeds", cli.DEFAULT_N_SEEDS),
        ("--steps", cli.DEFAULT_STEPS),
    ):
        meta = option[2:].upper().replace("-", "_")
        found = re.search(rf"{option} {meta} [^(]*\(default: ([^)]*)\)", options)
        assert found is not None and found.group(1) == str(default), option
    assert "--lp {frozen,raw}" in text and "(default: frozen)" in text
    assert "--target {object,answer,name}" in text and "(default: object)" in text
    assert f"unset: {cli.DEFAULT_PEOPLE}, or all of a set with fewer" in text


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


def test_quiet_prints_nothing_but_errors(tmp_path, capsys):
    """--quiet: nothing on stdout or stderr (no loading or progress bars, summary, notes or
    warnings), even for facts the model does not know; an error still prints its line."""
    facts = [tt.Fact("kess", "what city was kess born in", "orion lyra", id="unknown-1")]
    path = cli.write_facts_jsonl(facts, tmp_path / "f.jsonl")
    argv = ["trace", "--facts", str(path), "--out", str(tmp_path / "t"), "--steps", "2"]
    assert cli.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert cli.main(["plot", str(tmp_path / "t"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    assert cli.main([*argv, "--quiet", "--n-noise", "2"]) == 1  # other settings: refused
    captured = capsys.readouterr()
    assert captured.out == "" and "error:" in captured.err
    assert cli.main(argv) == 0  # without --quiet the summary is printed
    assert "traced 1 facts" in capsys.readouterr().out


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

    original = tie_module._trace_fact
    monkeypatch.setattr(
        tie_module, "_trace_fact", lambda m, q, *a: traced.append(q.fact.id) or original(m, q, *a)
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
            ]
        )
    assert code == 0
    summary = json.loads((tmp_path / "out" / "figure2_summary.json").read_text())
    assert summary["facts"][0].startswith("tofu/forget01/")
    assert "does not know" in capsys.readouterr().out


HEAVY = ("torch", "scipy", "transformers", "nnsight", "plotly")


def test_help_imports_nothing_heavy():
    """`tie-tracing --help` and every command's --help parse without importing torch, scipy,
    transformers, nnsight or plotly (a fresh interpreter, as the console script runs)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "from tie_tracing import cli\n"
        "for argv in ([], ['figure2'], ['trace'], ['plot']):\n"
        "    try:\n"
        "        cli.main([*argv, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]


def test_module_names_match_the_package():
    """The module names the CLI checks while parsing are the package's."""
    assert cli.MODULE_NAMES == tuple(tt.core.MODULES)


def _no_model(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(tt, "load_model", refuse)


@pytest.mark.parametrize(
    "extra, code, fragment",
    [
        (["--modules", "resid,foo"], 2, "--modules: unknown module(s) ['foo']"),
        (["--sampler", '{"name": "llada", remasking}'], 2, "--sampler: not valid JSON"),
        (["--sampler", "[1, 2]"], 2, "--sampler: a JSON sampler config must be an object"),
        (["--sampler", "nosuch"], 1, "--sampler: unknown sampler 'nosuch'"),
        (["--sampler", '{"name": "llada", "colour": 1}'], 1, "--sampler:"),
        (["--mode", "immediate", "--horizon", "2"], 1, "horizon applies to mode='exact'"),
    ],
)
def test_arguments_are_checked_before_the_model_loads(
    extra, code, fragment, tmp_path, monkeypatch, capsys
):
    """--modules, --sampler (name or JSON) and the trace settings are refused, naming the
    flag, before any model is loaded, and the run leaves no output folder behind."""
    _no_model(monkeypatch)
    out = tmp_path / "never"
    argv = ["trace", "--facts", "tiny:forget01", "--out", str(out), *extra]
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    else:
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert fragment in err and "hint:" in err, err
    assert not out.exists()


def test_a_failed_run_leaves_no_output_folder(tmp_path, capsys):
    """A run that fails before anything resumable is written removes the folders it made;
    a folder that existed before is kept."""
    missing = str(tmp_path / "no-such-checkpoint")
    out = tmp_path / "a" / "b"
    assert cli.main(["figure2", "--model", missing, "--out", str(out), "--quiet"]) == 1
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert (
        cli.main(["trace", "--model", missing, "--facts", "tiny:forget01", "--out", str(kept)]) == 1
    )
    assert kept.is_dir()
    capsys.readouterr()


def test_overwrite_retraces_only_what_changed_and_removes_what_it_replaced(
    tmp_path, capsys, monkeypatch
):
    """--overwrite re-traces only the facts whose fields changed, keeps a fact that moved,
    removes the results of facts no longer listed and the figure of the old trace; the
    refusal without --overwrite names the flag, not the Python argument."""
    import dataclasses

    import tie_tracing.tracing.tie as tie_module

    facts = tt.load_facts("tiny", split="forget01")[:3]
    path = tmp_path / "f.jsonl"
    out = tmp_path / "sweep"
    argv = ["trace", "--facts", str(path), "--out", str(out), "--steps", "2", "--quiet"]
    cli.write_facts_jsonl(facts, path)
    assert cli.main(argv) == 0
    first = TIEResult.load(out / "trace.safetensors")
    assert cli.main(["plot", str(out), "--quiet"]) == 0 and (out / "figure2.html").exists()
    traced: list[str] = []
    original = tie_module._trace_fact
    monkeypatch.setattr(
        tie_module, "_trace_fact", lambda m, q, *a: traced.append(q.fact.id) or original(m, q, *a)
    )
    changed = dataclasses.replace(facts[2], paraphrased_question="where did she live then")
    cli.write_facts_jsonl([changed, facts[0], facts[1]], path)  # fact 2 changed and moved
    assert cli.main(argv) == 1
    lines = _error_lines(capsys)
    assert "--overwrite" in lines[0] + lines[1] and "overwrite=True" not in lines[0] + lines[1]
    assert cli.main([*argv[:-1], "--overwrite"]) == 0
    assert traced == [facts[2].id]  # only the changed fact
    err = capsys.readouterr().err
    assert "figure2.html" in err and "removed" in err
    assert not (out / "figure2.html").exists()
    again = TIEResult.load(out / "trace.safetensors")
    assert again.fact_ids == (facts[2].id, facts[0].id, facts[1].id)
    assert torch.equal(again.tie[1:], first.tie[:2])  # kept, moved to their new positions
    cli.write_facts_jsonl([changed, facts[0]], path)  # a fact left the list
    assert cli.main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("fact_*.safetensors")) == [
        "fact_00000.safetensors",
        "fact_00001.safetensors",
    ]
    traced.clear()
    assert cli.main([*argv, "--overwrite", "--n-noise", "2"]) == 0  # other settings
    assert sorted(traced) == sorted([facts[2].id, facts[0].id])  # every fact again


def test_the_main_job_writes_to_an_ignored_folder_and_leaves_a_clone_clean(tmp_path, monkeypatch):
    """`tie-tracing figure2` writes to runs/figure2/ by default, which the repository's
    .gitignore ignores: in a git repository with that .gitignore, `git status --porcelain`
    is unchanged after the main job."""
    import shutil
    import subprocess
    from pathlib import Path

    assert cli.DEFAULT_FIGURE2_OUT == str(Path("runs", "figure2"))
    if shutil.which("git") is None:
        pytest.fail("git is needed to check that the main job leaves a clone clean")
    root = Path(__file__).resolve().parents[1]
    repo = tmp_path / "clone"
    repo.mkdir()
    shutil.copy(root / ".gitignore", repo / ".gitignore")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    git("init", "-q")
    git("add", ".gitignore")
    git("commit", "-q", "-m", "ignore rules")
    before = git("status", "--porcelain")
    monkeypatch.chdir(repo)
    argv = ["figure2", "--n-facts", "1", "--steps", "2", "--n-seeds", "1", "--quiet"]
    assert cli.main(argv) == 0
    assert (repo / "runs" / "figure2" / "figure2.html").is_file()
    assert (repo / "runs" / "figure2" / "trace_seed0").is_dir()
    assert git("status", "--porcelain") == before == ""


def test_figure2_draws_people_and_refuses_a_split_with_too_few(tmp_path, capsys):
    """By default figure2 draws --per-person facts of --people people (reproducibly, with
    --draw-seed); a split with fewer people is refused with the fix."""
    argv = ["figure2", "--out", str(tmp_path), "--people", "3", "--steps", "2", "--n-seeds", "1"]
    assert cli.main([*argv, "--n-noise", "1", "--quiet"]) == 0
    summary = json.loads((tmp_path / "figure2_summary.json").read_text())
    drawn = tt.draw_people(tt.load_facts("tiny", "figure"), n_people=3, seed=0)
    assert summary["facts"] == [f.id for f in drawn] and len({f.subject for f in drawn}) == 3
    known = {f.subject for f in drawn if f.id not in summary["unknown_facts"]}
    assert summary["n_people"] == summary["selected"]["n_people"] == len(known) >= 2
    bad = ["figure2", "--facts", "tiny:forget01", "--out", str(tmp_path / "o"), "--people", "2"]
    assert cli.main(bad) == 1
    err = capsys.readouterr().err
    assert "holds 1 people, fewer than --people 2" in err and "--n-facts N" in err
