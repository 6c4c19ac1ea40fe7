"""The notebooks are part of the product: committed without outputs, and they run top to bottom."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    """No code cell carries outputs or an execution count (figures belong in figures/)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    """Executing the notebook raises nothing and it writes its figures to figures/."""
    if not (ROOT / "tie_tracing" / "zoo" / "models" / "tiny-mdlm" / "config.json").exists():
        pytest.fail("the embedded models are missing: run python -m tie_tracing.zoo.train")
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(path, work / path.name)
    nb = nbformat.read(work / path.name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    written = list((tmp_path / "figures").glob("*.html"))
    assert written, f"{path.name} wrote no figure"
