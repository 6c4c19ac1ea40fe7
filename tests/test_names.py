"""One name, one meaning, one default across the public surface (tie_tracing.core.defaults)."""

from __future__ import annotations

import inspect

import pytest

import tie_tracing as tt
from tie_tracing.core.defaults import BATCH_SIZE, PROGRESS

NAMESPACES = ("core", "tracing", "analysis", "editing", "evaluation", "figures")
#: Where the name means something else, with its own default (see core/defaults.py).
OWN_MEANING = {
    "batch_size": {"unlearn", "UnlearnConfig", "Budget"},  # optimiser minibatch; memory budget
    "progress": {"load_model"},  # transformers' weight-loading bar, None = automatic
}


def _public_callables():
    seen = {}
    for module in (tt, *(getattr(tt, n) for n in NAMESPACES)):
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if inspect.isclass(obj):
                seen.setdefault(name, obj)
                for attr, member in vars(obj).items():
                    fn = member.__func__ if isinstance(member, classmethod) else member
                    if not attr.startswith("_") and inspect.isfunction(fn):
                        seen.setdefault(f"{name}.{attr}", fn)
            elif callable(obj):
                seen.setdefault(name, obj)
    return seen


def _defaults(param: str):
    out = {}
    for name, obj in _public_callables().items():
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        if param in sig.parameters and name.split(".")[0] not in OWN_MEANING[param]:
            out[name] = sig.parameters[param].default
    return out


@pytest.mark.parametrize("param, default", [("batch_size", BATCH_SIZE), ("progress", PROGRESS)])
def test_shared_parameters_have_one_default(param, default):
    """Every public function taking batch_size (rows per forward) or progress defaults alike."""
    found = _defaults(param)
    assert len(found) >= 3, found  # the scan reaches the functions it is about
    assert {n: d for n, d in found.items() if d != default} == {}
