"""Shared fixtures: the backbone replicas, built once per test module (they are tiny).

Replicas are random-initialised models with each family's real module names (see
``tests/replicas.py``). Tests that register torch hooks on them must remove the hooks before
returning (``hooked`` below does it for them), because the fixtures are shared.
"""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import replicas as R  # noqa: E402

import tie_tracing as tt  # noqa: E402

torch.set_num_threads(1)

MDLM_FAMILIES = ("tiny-mdlm", "llada", "dream")
CAUSAL_FAMILIES = ("llama", "qwen2", "gpt2")
ALL_FAMILIES = MDLM_FAMILIES + CAUSAL_FAMILIES


@pytest.fixture(scope="module")
def replicas() -> dict[str, tt.core.TracedModel]:
    """One wrapped replica per family: tiny-mdlm, llada, dream, llama, qwen2, gpt2."""
    return R.replica_models()


@pytest.fixture(scope="module")
def mdlm(replicas) -> tt.core.TracedModel:
    """The tiny-mdlm replica (transformers Llama classes with is_causal=False)."""
    return replicas["tiny-mdlm"]


@pytest.fixture(scope="module")
def tokenizer():
    """The replicas' word-level tokenizer ([BOS] prompt prefix, [MASK] = 3)."""
    return R.make_tokenizer()


@contextlib.contextmanager
def hooked(module: torch.nn.Module, hook):
    """Register a forward hook for the duration of a ``with`` block."""
    handle = module.register_forward_hook(hook)
    try:
        yield handle
    finally:
        handle.remove()


@contextlib.contextmanager
def count_forwards(model: tt.core.TracedModel):
    """Count calls of the root module's forward; yields a one-element list."""
    calls = [0]

    def hook(_module, _inputs, _output):
        calls[0] += 1

    with hooked(model._module, hook):
        yield calls


@pytest.fixture(scope="session", autouse=True)
def html_written_by_tests_opens_offline(tmp_path_factory):
    """Every HTML page a test writes (into its temporary directories: figures, CLI runs,
    executed notebooks) loads no script from the network, so it opens offline."""
    yield
    from tie_tracing.figures.plotting import network_scripts

    base = tmp_path_factory.getbasetemp()
    online = {
        str(page.relative_to(base)): network_scripts(page.read_text(encoding="utf-8"))
        for page in base.rglob("*.html")
    }
    online = {page: urls for page, urls in online.items() if urls}
    assert not online, f"HTML written by the tests loads scripts from the network: {online}"
