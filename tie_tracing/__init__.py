"""tie_tracing: diffusion-time causal tracing and edit memories for masked diffusion LMs.

Import as ``import tie_tracing as tt``. Each public name below is documented where it is
defined; ``docs/SPEC.md`` in the repository gives the equations. Data flows one way:
backbones → diffusion loop (model, sampler) → tracing / editing → analysis → plots and CLI.
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
        return [n for n in vars(_api) if not n.startswith("_")]
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

    return sorted(set(globals()) | {n for n in vars(_api) if not n.startswith("_")})
