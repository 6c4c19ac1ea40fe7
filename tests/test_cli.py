"""The main job: `tie-tracing figure2` writes the figure, the traced result and a summary."""

from __future__ import annotations

import json

import pytest

import tie_tracing as tt
from tie_tracing import cli
from tie_tracing.results import TIEResult


def test_figure2_writes_figure_result_and_summary(tmp_path, capsys):
    """figure2 traces the facts, writes html + result + summary, and prints the selected coordinate."""
    code = cli.main(
        ["figure2", "--out", str(tmp_path), "--n-facts", "2", "--steps", "4", "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "selected coordinate" in printed and "effect concentrates in layers" in printed
    summary = json.loads((tmp_path / "figure2_summary.json").read_text())
    result = TIEResult.load(tmp_path / "figure2_tie.safetensors")
    assert result.tie.shape[:3] == (2, tt.load_model("tiny-mdlm").num_layers, 4)
    best = tt.select_coordinate(result)
    assert (
        summary["selected"]["layer"],
        summary["selected"]["step"],
        summary["selected"]["module"],
    ) == (
        best.layer,
        best.step,
        best.module,
    )
    shares = summary["concentration"]["share_by_layer"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert (tmp_path / "figure2.html").stat().st_size > 1000


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
