"""tie_tracing: diffusion-time causal tracing and edit memories for masked diffusion LMs.

Import as ``import tie_tracing as tt``. The top level holds what a study needs (SPEC §12):
loading models and facts, the diffusion loop, tracing, the coordinate choice, the figures,
the edit memory, evaluation and unlearning, with their result, config and error classes.
Everything else lives in the layer it belongs to, each a namespace of its own::

    tt.core        models, backbones, facts, the diffusion loop and samplers, results, I/O
    tt.tracing     patching, the TIE engine, positional tracing, references, sharding
    tt.analysis    Eq. 5, bootstrap CIs, selection and seed stability, AR vs diffusion
    tt.editing     the edit memory (algebra, capture, gate, install, efficacy)
    tt.evaluation  SPEC §9 metrics, the unlearning suite and the unlearning baselines
    tt.figures     every figure (plot_*, save_figure, notebook_figures)
    tt.zoo         the embedded corpus, tokenizer and models

Each name is documented where it is defined; ``docs/SPEC.md`` gives the equations and
``docs/CONTRACTS.md`` the layers (a module imports only its own layer and lower ones).
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # the type checker sees every public name; at run time they load lazily
    from ._api import *  # noqa: F403


def __getattr__(name: str) -> Any:
    """Load the public names on first use (PEP 562), so ``import tie_tracing`` and
    ``tie-tracing --help`` stay fast; submodules import as usual."""
    if name.startswith("_") and name != "__all__":  # private names are never lazy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: only it
        return importlib.import_module(f"{__name__}.{name}")
    _api = importlib.import_module(f"{__name__}._api")

    if name == "__all__":
        return list(_api.__all__)
    namespace = globals()
    if name in namespace:  # a submodule that importing _api bound here
        return namespace[name]
    try:
        value = getattr(_api, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    namespace[name] = value
    return value


def __dir__() -> list[str]:
    _api = importlib.import_module(f"{__name__}._api")

    return sorted(set(globals()) | set(_api.__all__))
