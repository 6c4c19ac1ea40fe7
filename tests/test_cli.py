"""The main job: `tie-tracing figure2` writes the figure, the traced result and a summary."""

from __future__ import annotations

import json
import re

import pytest

import tie_tracing as tt
from tie_tracing import cli
from tie_tracing.results import TIEResult


def test_figure2_writes_figure_result_and_summary(tmp_path, capsys):
    """figure2 traces two seeds, writes html + pooled result + summary, prints CI, seed stability and commits."""
    code = cli.main(
        ["figure2", "--out", str(tmp_path), "--n-facts", "2", "--steps", "4", "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
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
    expected = tt.bootstrap_ci(per_fact.double())
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


def test_figure2_bad_inputs_are_clear(tmp_path):
    """A missing checkpoint and an unknown fact source are named errors."""
    with pytest.raises(tt.CheckpointNotFoundError, match="no-such-dir"):
        cli.main(["figure2", "--model", str(tmp_path / "no-such-dir"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="tiny:<split>"):
        cli.main(["figure2", "--facts", "wiki:x", "--out", str(tmp_path)])


def test_figure2_on_a_checkpoint_directory_with_tofu_facts(tmp_path, capsys):
    """--model PATH loads a local checkpoint directory and traces real TOFU facts (warning on unknown ones)."""
    import shutil
    import warnings

    from tie_tracing.model import ZOO_DIR

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
