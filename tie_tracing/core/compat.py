"""Named load-time fixes for upstream modelling code under the installed ``transformers``.

Policy: the package supports the ``transformers`` a fresh install brings (``>=4.56``, 5.x
included). The remote code LLaDA and Dream ship was written for 4.38–4.46 and breaks on newer
releases in known ways; :func:`load_model <tie_tracing.core.model.load_model>` repairs each of them
at load time, only where it is needed, and reports the ones it applied in one log line (and in
``model.info["compat_fixes"]``, which ``tie-tracing check`` prints). Nothing here edits files
on disk or changes a model beyond what the named fix says.

The fixes (:data:`FIXES`):

* ``post_init`` — the model class's ``__init__`` never calls ``post_init()`` (LLaDA's
  ``LLaDAModelLM``); transformers 5 reads attributes it sets (``all_tied_weights_keys``) while
  loading. The class is loaded through a subclass that calls it when the class did not.
* ``tie_weights`` — the class overrides ``tie_weights()`` without parameters (LLaDA), and
  transformers 5 calls it with ``missing_keys=`` / ``recompute_mapping=``; the subclass calls
  the override without them.
* ``use_cache`` — ``config.json`` sets ``use_cache`` but the config object lacks it (LLaDA's
  ``LLaDAConfig`` under transformers 5), so the model's own ``forward`` fails; restored from
  ``config.json``.
* ``generation_config_validate`` — the checkpoint's generation-config class overrides
  ``validate()`` without the keywords transformers 5 passes (``user_set_attributes``; Dream's
  ``DreamGenerationConfig``, read by its ``from_pretrained``); during the load its
  ``validate`` is called without the keywords it does not take.
* ``rope_default`` — the code looks up ``ROPE_INIT_FUNCTIONS["default"]``, which transformers 5
  removed (Dream); supplied, for the duration of the load, with transformers 4's formula
  ``inv_freq = 1 / base^(2i/d)``.
* ``rotary_inv_freq`` — a rotary embedding's non-persistent ``inv_freq`` buffer does not hold
  what the module's own rope function computes (transformers 5 leaves Dream's uninitialised,
  so its logits change from process to process with no error); recomputed with that function.

Each fix is a no-op where the code or the version does not need it: under transformers 4.56
only ``post_init`` applies to LLaDA (harmless there) and nothing to Dream.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("tie_tracing")

#: Every fix this module can apply, with what it repairs.
FIXES: dict[str, str] = {
    "post_init": "the model class never calls post_init(); called after its __init__",
    "tie_weights": "the class's tie_weights() takes no arguments; called without them",
    "use_cache": "config.json's use_cache is missing from the config object; restored",
    "generation_config_validate": "the generation config's validate() rejects keywords "
    "transformers passes; called without them",
    "rope_default": "ROPE_INIT_FUNCTIONS['default'] is gone from this transformers; supplied",
    "rotary_inv_freq": "a rotary inv_freq buffer was left uninitialised; recomputed",
}


def default_rope_parameters(config, device=None, seq_len=None, **rope_kwargs) -> tuple[Any, float]:
    """transformers 4's ``_compute_default_rope_parameters``: ``(inv_freq, 1.0)``."""
    import torch

    if rope_kwargs.get("base") is not None:
        base, dim = rope_kwargs["base"], int(rope_kwargs["dim"])
    else:
        base = config.rope_theta
        partial = getattr(config, "partial_rotary_factor", 1.0)
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        dim = int(head_dim * partial)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (base ** (exponents / dim)), 1.0


class LoadFixes:
    """The fixes one load applied, in order (names of :data:`FIXES`)."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    def add(self, name: str) -> None:
        if name not in self.applied:
            self.applied.append(name)

    def report(self, path, family: str) -> None:
        """One log line naming the applied fixes (nothing when none was needed)."""
        if not self.applied:
            return
        import transformers

        details = "; ".join(f"{n}: {FIXES[n]}" for n in self.applied)
        logger.warning(
            "%s (%s) under transformers %s: applied compatibility fixes %s (%s)",
            path,
            family,
            transformers.__version__,
            ", ".join(self.applied),
            details,
        )


def fix_config(config, path: Path, fixes: LoadFixes) -> None:
    """``use_cache``: restore it from ``config.json`` where the config object dropped it."""
    raw = json.loads((path / "config.json").read_text())
    if "use_cache" in raw and "use_cache" not in config.__dict__:
        try:
            config.use_cache  # noqa: B018 - a property or class default also counts
        except AttributeError:
            config.use_cache = raw["use_cache"]
            fixes.add("use_cache")


def with_post_init(cls: type, fixes: LoadFixes) -> type:
    """``post_init``: a subclass of ``cls`` that calls ``post_init()`` after ``__init__`` when
    the class's own ``__init__`` did not (same name and module, so reprs are unchanged)."""

    def post_init(self):
        object.__setattr__(self, "_tie_tracing_post_init", True)
        return cls.post_init(self)

    def __init__(self, *args, **kwargs):  # noqa: N807
        object.__setattr__(self, "_tie_tracing_post_init", False)
        cls.__init__(self, *args, **kwargs)
        if not self.__dict__.get("_tie_tracing_post_init"):
            fixes.add("post_init")
            self.post_init()

    namespace: dict[str, Any] = {"__init__": __init__, "post_init": post_init}
    own = cls.__dict__.get("tie_weights")
    if own is not None:
        params = inspect.signature(own).parameters.values()
        takes_none = all(p.name == "self" for p in params)
        if takes_none:

            def tie_weights(self, *args, **kwargs):
                if args or kwargs:
                    fixes.add("tie_weights")
                return own(self)

            namespace["tie_weights"] = tie_weights
    patched = type(cls.__name__, (cls,), namespace)
    patched.__module__ = cls.__module__
    patched.__qualname__ = cls.__qualname__
    return patched


@contextlib.contextmanager
def generation_validate(cls: type, fixes: LoadFixes) -> Iterator[None]:
    """``generation_config_validate``: for the duration of a load, every generation-config
    class of ``cls``'s module whose ``validate`` takes no ``**kwargs`` drops the keywords it
    does not know."""
    import sys

    try:
        from transformers import GenerationConfig
    except ImportError:  # pragma: no cover
        yield
        return
    module = sys.modules.get(cls.__module__)
    patched = []
    for obj in list(vars(module).values()) if module is not None else ():
        own = obj.__dict__.get("validate") if isinstance(obj, type) else None
        if own is None or not issubclass(obj, GenerationConfig):
            continue
        params = inspect.signature(own).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue

        def validate(self, *args, _own=own, _params=params, **kwargs):
            known = {k: v for k, v in kwargs.items() if k in _params}
            if len(known) < len(kwargs):
                fixes.add("generation_config_validate")
            return _own(self, *args, **known)

        obj.validate = validate
        patched.append((obj, own))
    try:
        yield
    finally:
        for obj, own in patched:
            obj.validate = own


@contextlib.contextmanager
def rope_default(fixes: LoadFixes) -> Iterator[None]:
    """``rope_default``: ``ROPE_INIT_FUNCTIONS["default"]`` for the duration of a load (and of
    :func:`fix_rotary`), recorded as applied only when the code looked it up."""
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:  # pragma: no cover - very old or very new transformers
        yield
        return
    if "default" in ROPE_INIT_FUNCTIONS:
        yield
        return

    def default(config, device=None, seq_len=None, **kwargs):
        fixes.add("rope_default")
        return default_rope_parameters(config, device, seq_len, **kwargs)

    ROPE_INIT_FUNCTIONS["default"] = default
    try:
        yield
    finally:
        ROPE_INIT_FUNCTIONS.pop("default", None)


def fix_rotary(module, fixes: LoadFixes) -> None:
    """``rotary_inv_freq``: recompute every rotary ``inv_freq`` buffer that differs from what
    the module's own ``rope_init_fn`` gives (upstream's ``reset_parameters``)."""
    import torch

    for sub in module.modules():
        buffer = sub._buffers.get("inv_freq") if hasattr(sub, "_buffers") else None
        init = getattr(sub, "rope_init_fn", None)
        config = getattr(sub, "config", None)
        if buffer is None or init is None or config is None:
            continue
        try:
            expected, scaling = init(
                config, buffer.device, **(getattr(sub, "rope_kwargs", None) or {})
            )
        except Exception:  # noqa: BLE001 - a rope function we cannot call: leave it to the check
            continue
        if buffer.shape == expected.shape and torch.equal(buffer, expected.to(buffer.dtype)):
            continue
        sub.register_buffer("inv_freq", expected, persistent=False)
        if hasattr(sub, "original_inv_freq"):
            sub.original_inv_freq = sub.inv_freq
        if hasattr(sub, "attention_scaling"):
            sub.attention_scaling = scaling
        fixes.add("rotary_inv_freq")
