"""Reading a local checkpoint directory: every failure as one error naming the file or setting.

:func:`~tie_tracing.core.model.load_model` calls these in order: :func:`check_device` (before
anything is read), :func:`read_json` for ``config.json`` and ``tie_tracing.json``,
:func:`load_module` (the model class — the checkpoint's own code under
``trust_remote_code`` — with the :mod:`~tie_tracing.core.compat` fixes), :func:`verify_weights`
(the files against the model the config describes), :func:`load_tokenizer`.

A dependency's exception never reaches the user bare: a config that disagrees with the
weights, a file that does not parse or is missing, a device the machine lacks, each raises a
:class:`~tie_tracing.core.errors.TieTracingError` subclass that says which file or setting and what
to do (the dependency's exception is chained as ``__cause__``).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from .errors import CheckpointError, DeviceNotAvailableError, UnsupportedModelError

#: ``device_map`` values that name a placement strategy rather than a device.
PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")
#: Files any of which makes a directory hold a tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def check_device(device: Any, setting: str = "device") -> None:
    """Raise :class:`DeviceNotAvailableError` when ``device`` (or every device of a
    ``device_map`` dict) is not on this machine; ``None`` and placement strategies pass."""
    import torch

    if device is None or (isinstance(device, str) and device in PLACEMENTS):
        return
    if isinstance(device, dict):
        for value in device.values():
            if not (isinstance(value, str) and value in ("cpu", "disk")):
                check_device(value if not isinstance(value, int) else f"cuda:{value}", setting)
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceNotAvailableError(
            f"{setting}={device!r} is not a device name ({error}); use e.g. 'cpu', 'cuda', "
            "'cuda:1' or 'mps'"
        ) from error
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceNotAvailableError(
                f"{setting}={device!r}, but this machine has no CUDA device (torch "
                f"{torch.__version__}, CUDA {'built' if torch.version.cuda else 'not built'}); "
                f"use {setting}='cpu' (or leave it unset), or run where a GPU is visible"
            )
        if dev.index is not None and dev.index >= count:
            raise DeviceNotAvailableError(
                f"{setting}={device!r}, but this machine has {count} CUDA device(s) "
                f"(cuda:0 … cuda:{count - 1}); pick one of them"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceNotAvailableError(
            f"{setting}={device!r}, but MPS is not available on this machine; use 'cpu'"
        )
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        available = getattr(torch, dev.type, None)
        if available is None or not available.is_available():
            raise DeviceNotAvailableError(
                f"{setting}={device!r}: this torch build has no available {dev.type!r} device; "
                "use 'cpu' or 'cuda'"
            )


def read_json(file: Path, what: str) -> dict:
    """The JSON object in ``file``, or a :class:`CheckpointError` naming the file, the line
    and column of the syntax error and what to do."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file} cannot be read ({error}); restore {what}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{file} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); fix or restore {what}"
        ) from error
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{file} holds a JSON {type(data).__name__}, not an object; restore {what}"
        )
    return data


def load_config(path: Path, trust_remote_code: bool):
    """``AutoConfig`` of the directory, its errors as ours."""
    from transformers import AutoConfig

    raw = read_json(path / "config.json", "the checkpoint's config.json")
    auto_map = raw.get("auto_map") or {}
    if trust_remote_code and isinstance(auto_map, dict):
        for ref in auto_map.values():
            module = str(ref).split("--")[-1].rsplit(".", 1)[0]
            if not (path / f"{module}.py").is_file():
                raise CheckpointError(
                    f"{path / 'config.json'} maps its classes to {module}.py (auto_map), which "
                    f"is not in {path}; copy the checkpoint's modelling code ({module}.py) there"
                )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoConfig.from_pretrained(
                path, local_files_only=True, trust_remote_code=trust_remote_code
            )
    except ValueError as error:
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise UnsupportedModelError(
                f"{path} needs its own modelling code (LLaDA, Dream, ...); pass "
                f"trust_remote_code=True if you trust the files in that directory"
            ) from error
        raise CheckpointError(
            f"{path / 'config.json'} is not a config transformers can build "
            f"(model_type={raw.get('model_type')!r}): {error}"
        ) from error
    except (KeyError, TypeError, AttributeError, ImportError, SyntaxError) as error:
        raise CheckpointError(
            f"{path / 'config.json'} (model_type={raw.get('model_type')!r}) could not be turned "
            f"into a config object: {type(error).__name__}: {error}. Check config.json and the "
            "checkpoint's configuration code"
        ) from error


def model_class(config, path: Path, trust_remote_code: bool, fixes) -> type | None:
    """The checkpoint's own model class (``auto_map``, under ``trust_remote_code``) with the
    ``post_init`` fix, or ``None`` for a class transformers ships (Auto classes pick it)."""
    from .compat import with_post_init

    auto_map = getattr(config, "auto_map", None) or {}
    if not trust_remote_code or not isinstance(auto_map, dict):
        return None
    ref = auto_map.get("AutoModelForCausalLM") or auto_map.get("AutoModel")
    if ref is None:
        return None
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        cls = get_class_from_dynamic_module(ref, str(path), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - the checkpoint's own code failed to import
        raise CheckpointError(
            f"{path}: the checkpoint's modelling code ({ref}) does not import: "
            f"{type(error).__name__}: {error}"
        ) from error
    return with_post_init(cls, fixes)


def load_module(path: Path, config, *, trust_remote_code: bool, kwargs: dict, fixes):
    """The model, loaded with the :mod:`~tie_tracing.core.compat` fixes (applied ones go in
    ``fixes``); a size mismatch is a :class:`CheckpointError` naming config.json."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .compat import fix_rotary, generation_validate, rope_default

    cls = model_class(config, path, trust_remote_code, fixes)
    candidates: list[Any] = [cls] if cls is not None else [AutoModelForCausalLM, AutoModel]
    errors = []
    # the rope function transformers 5 removed is only ever looked up by remote code
    remote = contextlib.ExitStack()
    if cls is not None:
        remote.enter_context(rope_default(fixes))
        remote.enter_context(generation_validate(cls, fixes))
    with remote, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for auto in candidates:
            try:
                module = auto.from_pretrained(path, config=config, **kwargs)
            except (
                ValueError,
                KeyError,
                RuntimeError,
                TypeError,
                OSError,
                AttributeError,
            ) as error:
                text = str(error)
                if "ignore_mismatched_sizes" in text or "size mismatch" in text:
                    detail = (
                        text.strip()
                        if "size mismatch" in text
                        else (
                            "tensors in the weight files have other shapes than the model it "
                            "describes"
                        )
                    )
                    raise CheckpointError(
                        f"{path / 'config.json'} disagrees with the weights: {detail}. The "
                        "config must describe the model the weights were saved from (check "
                        "hidden_size, intermediate_size, heads and vocab_size)"
                    ) from error
                if cls is not None:
                    raise CheckpointError(
                        f"{path}: the checkpoint's own model class {cls.__name__} failed to "
                        f"load: {type(error).__name__}: {error}"
                    ) from error
                errors.append(f"{auto.__name__}: {error}")
                continue
            if cls is not None:
                fix_rotary(module, fixes)
            return module
    raise UnsupportedModelError(f"could not load {path}: " + "; ".join(errors))


def file_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``name → (shape, file name)`` of every tensor in the directory's safetensors files."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as raw:
            header = int.from_bytes(raw.read(8), "little")
            meta = json.loads(raw.read(header))
        for name, value in meta.items():
            if name != "__metadata__":
                out[name] = (tuple(value["shape"]), file.name)
    return out


def _ignored(name: str, patterns) -> bool:
    return any(re.search(p, name) for p in patterns or ())


def verify_weights(module, path: Path) -> None:
    """Compare the files' tensors with the model the config built: weights the model needs
    that no file holds, tensors of another shape, tensors for modules the config does not have
    (more layers, another width) — each a :class:`CheckpointError` naming config.json.

    Tied weights count as present when one of their names is in the files; rotary
    ``inv_freq`` buffers some checkpoints persist are ignored."""
    files = file_tensors(path)
    state = module.state_dict(keep_vars=True)
    by_storage: dict[Any, list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape)) if tensor.device.type != "meta" else name
        by_storage.setdefault(key, []).append(name)
    ignore_missing = getattr(module, "_keys_to_ignore_on_load_missing", None) or ()
    ignore_unexpected = getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ()
    missing = [
        names[0]
        for names in by_storage.values()
        if not any(n in files for n in names)
        and not all(_ignored(n, ignore_missing) for n in names)
    ]
    config_file = path / "config.json"
    if missing:
        raise CheckpointError(
            f"{path}: the checkpoint lacks {len(missing)} weights the model needs "
            f"({', '.join(sorted(missing)[:8])}{' …' if len(missing) > 8 else ''}); they would "
            f"be randomly initialised. Check that the weight files are complete and that "
            f"{config_file} describes them"
        )
    wrong = [
        f"{name}: file {shape} vs model {tuple(state[name].shape)} ({file})"
        for name, (shape, file) in files.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    if wrong:
        raise CheckpointError(
            f"{config_file} disagrees with the weights: {len(wrong)} tensors have another "
            f"shape ({'; '.join(wrong[:4])}{' …' if len(wrong) > 4 else ''}). The config must "
            "describe the model the weights were saved from"
        )
    extra = [
        name
        for name in files
        if name not in state
        and not name.endswith("inv_freq")
        and not _ignored(name, ignore_unexpected)
    ]
    if extra:
        raise CheckpointError(
            f"{config_file} disagrees with the weights: the files hold {len(extra)} tensors "
            f"the configured model has no place for ({', '.join(sorted(extra)[:6])}"
            f"{' …' if len(extra) > 6 else ''}), e.g. more layers than num_hidden_layers. The "
            "config must describe the model the weights were saved from"
        )


def load_tokenizer(path: Path, trust_remote_code: bool):
    """The directory's tokenizer; a missing or unreadable tokenizer file is a
    :class:`CheckpointError` naming it."""
    from transformers import AutoTokenizer

    present = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    if not present:
        raise CheckpointError(
            f"{path} has no tokenizer files (any of {', '.join(TOKENIZER_FILES)}); copy the "
            "checkpoint's tokenizer files into it"
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).is_file():
            read_json(path / name, f"the tokenizer's {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(
                path, local_files_only=True, trust_remote_code=trust_remote_code
            )
    except Exception as error:  # noqa: BLE001 - any tokenizer failure names its files
        raise CheckpointError(
            f"{path}: the tokenizer ({', '.join(present)}) cannot be loaded: "
            f"{type(error).__name__}: {error}. Restore the checkpoint's tokenizer files"
        ) from error
