"""Helpers for the notebooks: prose rendered from live values, and where figures go.

* :func:`prose` — Markdown written by the cell that computes its numbers: a template whose
  ``{fields}`` are filled from the computed results, displayed as Markdown in Jupyter. A
  notebook whose narrative quotes numbers this way cannot drift from its outputs (static
  Markdown cells keep the number-free narrative; ``tests/test_notebooks.py`` checks that
  every number the prose states is one the outputs print).
* :func:`figure_dir` — the folder a notebook writes its figures to: ``runs/notebooks/``
  under the repository, which git ignores, so running a notebook never leaves a clone
  dirty. Set ``TIE_TRACING_FIGURES=figures`` to regenerate the committed ``figures/``.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["FIGURES_ENV", "Prose", "figure_dir", "prose"]

#: Environment variable naming the folder notebooks write figures to (relative to the
#: repository root, or absolute); unset: ``runs/notebooks``.
FIGURES_ENV = "TIE_TRACING_FIGURES"


class Prose(str):
    """Markdown text that Jupyter displays as Markdown (``text/markdown``) and a plain
    Python session prints as text."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return str(self)


def prose(template: str, /, **values: Any) -> Prose:
    """Markdown from a template filled with computed values, to display in a notebook.

    The template is dedented (write it as an indented triple-quoted string) and, when
    ``values`` are given, filled with :meth:`str.format` (``{r:.2f}``, ``{share:.0%}``);
    without ``values`` it is returned as it is, so an f-string works too. Make it the last
    expression of the cell that computes the values (or pass it to ``display``).

    Raises:
        KeyError: the template names a field that ``values`` lacks (names it).

    Example:
        >>> prose('''
        ...     The seeds agree: r = {r:.2f} over {n} facts.
        ... ''', r=0.9134, n=10)
        The seeds agree: r = 0.91 over 10 facts.
    """
    text = textwrap.dedent(template).strip("\n")
    if values:
        try:
            text = text.format(**values)
        except KeyError as error:
            raise KeyError(
                f"prose template names {error.args[0]!r} but no such value was given "
                f"(given: {sorted(values)})"
            ) from None
    return Prose(text)


def _repository_root(cwd: Path) -> Path:
    """The repository a notebook runs in: the parent of ``notebooks/``, else ``cwd``."""
    return cwd.parent if cwd.name == "notebooks" else cwd


def figure_dir(name: str = "notebooks", *, cwd: str | os.PathLike | None = None) -> Path:
    """The folder a notebook writes figures to, created: ``$TIE_TRACING_FIGURES`` when set
    (relative paths are taken from the repository root), else ``runs/<name>/`` there.

    ``runs/`` is in ``.gitignore``, so a notebook run leaves a clone clean;
    ``TIE_TRACING_FIGURES=figures`` writes the committed ``figures/`` instead (to regenerate
    them on purpose).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "notebooks"
        >>> figure_dir(cwd=d).relative_to(d.parent).as_posix()
        'runs/notebooks'
    """
    root = _repository_root(Path(cwd) if cwd is not None else Path.cwd())
    chosen = os.environ.get(FIGURES_ENV)
    path = root / chosen if chosen else root / "runs" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
