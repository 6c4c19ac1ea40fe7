"""The notebooks are part of the product: committed without outputs, they run top to bottom,
show every figure they write, write only to an ignored folder, and their prose states no
number that their outputs do not print."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import tie_tracing as tt

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# -- the prose check ---------------------------------------------------------------------------
#
# A number in a Markdown cell's prose is a decimal ("0.91", "−1.58") or a percentage ("53%");
# integers are left alone (they name steps, layers, equations and counts of the setup). Code
# spans and URLs are not prose. The prose's number must be one the outputs print at the
# prose's precision (0.912 printed reads as 0.91; 0.53 printed reads as 53%), sign aside.
# Outputs are what a reader sees as text: streams, text/plain, rendered Markdown
# (tt.prose); not the data inside figures.

_NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|https?://\S+", re.S)
_PROSE_NUMBER = re.compile(r"(?<![\w.])[-−+]?\d+\.\d+%?|(?<![\w.])[-−+]?\d+%")
_PRINTED_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?")


def prose_numbers(markdown: str) -> list[str]:
    """The decimals and percentages a Markdown text states outside code spans."""
    return _PROSE_NUMBER.findall(_NOT_PROSE.sub(" ", markdown))


def printed_text(nb) -> str:
    """What the executed notebook's outputs show as text (figures' data left out)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                if "application/vnd.plotly.v1+json" in out.data:
                    continue
                for kind in ("text/markdown", "text/plain"):
                    if kind in out.data:
                        parts.append(out.data[kind])
                        break
    return "\n".join(parts)


def _printed_values(text: str) -> list[tuple[float, bool]]:
    values = []
    for token in _PRINTED_NUMBER.findall(text.replace("−", "-")):
        try:
            values.append((abs(float(token.rstrip("%"))), token.endswith("%")))
        except ValueError:
            continue
    return values


def is_printed(number: str, values: list[tuple[float, bool]]) -> bool:
    """Whether ``number`` (as the prose writes it) is one of the printed values, rounded to
    the prose's precision; a percentage may be printed as a fraction and back."""
    token = number.replace("−", "-").lstrip("+-")
    percent = token.endswith("%")
    token = token.rstrip("%")
    digits = len(token.split(".")[1]) if "." in token else 0
    x = float(token)
    for v, printed_percent in values:
        for candidate in (v, v * 100 if percent and not printed_percent else None):
            if candidate is not None and abs(candidate - x) <= 0.5 * 10**-digits + 1e-9:
                return True
    return False


def unprinted_numbers(nb) -> list[tuple[int, str]]:
    """``(cell index, number)`` for each number a Markdown cell states that no output prints."""
    values = _printed_values(printed_text(nb))
    return [
        (i, number)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        for number in prose_numbers(cell.source)
        if not is_printed(number, values)
    ]


def _figures_shown(nb) -> int:
    return sum(
        "application/vnd.plotly.v1+json" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    """No code cell carries outputs or an execution count (figures belong in figures/)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    """Executing the notebook raises nothing; it writes its figures to the ignored
    runs/notebooks/ and nothing else outside runs/, shows inline every figure it writes, and
    its prose states no number its outputs do not print."""
    if not (ROOT / "tie_tracing" / "zoo" / "models" / "tiny-mdlm" / "config.json").exists():
        pytest.fail("the embedded models are missing: run python -m tie_tracing.zoo.train")
    monkeypatch.delenv(tt.figures.notebook.FIGURES_ENV, raising=False)
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(path, work / path.name)
    before = _files(tmp_path)
    nb = nbformat.read(work / path.name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    written = sorted((tmp_path / "runs" / "notebooks").glob("*.html"))
    assert written, f"{path.name} wrote no figure"
    outside = {f for f in _files(tmp_path) - before if not f.startswith("runs/")}
    assert not outside, f"{path.name} wrote outside runs/: {sorted(outside)}"
    assert _figures_shown(nb) >= len(written), (
        f"{path.name} writes {len(written)} figures but shows {_figures_shown(nb)} inline"
    )
    stale = unprinted_numbers(nb)
    assert not stale, f"{path.name}: prose numbers no output prints (cell, number): {stale}"


def test_prose_check_finds_a_stale_number_and_accepts_a_rounded_one():
    """The checker flags a number the outputs do not print, reads printed values at the
    prose's precision and percentages from fractions, and ignores code spans and integers."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    code = new_code_cell("print(...)")
    code.outputs = [new_output("stream", name="stdout", text="r = 0.9134, wins 0.532, Δ -11.39\n")]
    prose = new_markdown_cell(
        "r = 0.91 and 53% of resamples; Δ −11.39 nats; layer 3, `lr=1e-5`, `α = 0.25`; Δ −1.58"
    )
    nb = new_notebook(cells=[code, prose])
    assert prose_numbers(prose.source) == ["0.91", "53%", "−11.39", "−1.58"]
    assert unprinted_numbers(nb) == [(1, "−1.58")]
    live = new_code_cell("tt.prose(...)")
    live.outputs = [
        new_output("display_data", data={"text/markdown": "Δ −1.58 nats", "text/plain": ""})
    ]
    nb.cells.insert(1, live)
    assert unprinted_numbers(nb) == []


def test_prose_renders_markdown_from_live_values():
    """tt.prose dedents, fills the template from the values, and displays as Markdown; a
    field without a value is named."""
    text = tt.prose(
        """
        The seeds agree: r = {r:.2f} ({share:.0%} of resamples).
        """,
        r=0.9134,
        share=0.532,
    )
    assert str(text) == "The seeds agree: r = 0.91 (53% of resamples)."
    assert text._repr_markdown_() == str(text) and repr(text) == str(text)
    assert tt.prose("no fields {here}") == "no fields {here}"  # an f-string passes as it is
    with pytest.raises(KeyError, match="'n' but no such value"):
        tt.prose("{n} facts", r=1)


def test_figure_dir_is_ignored_unless_asked(tmp_path, monkeypatch):
    """Notebooks write to runs/notebooks (git ignores /runs/); TIE_TRACING_FIGURES names
    another folder, e.g. figures to regenerate the committed ones."""
    monkeypatch.delenv(tt.figures.notebook.FIGURES_ENV, raising=False)
    assert tt.figures.figure_dir(cwd=tmp_path / "notebooks") == tmp_path / "runs" / "notebooks"
    assert tt.figures.figure_dir(cwd=tmp_path) == tmp_path / "runs" / "notebooks"
    assert "/runs/" in (ROOT / ".gitignore").read_text().split()
    monkeypatch.setenv(tt.figures.notebook.FIGURES_ENV, "figures")
    assert tt.figures.figure_dir(cwd=tmp_path / "notebooks") == tmp_path / "figures"
