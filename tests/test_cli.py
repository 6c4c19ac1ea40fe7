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
