"""Loading models and wrapping them once for nnsight, with the diffusion loop exposed.

:class:`TracedModel` is an :class:`nnsight.NNsight` envoy around a backbone (an embedded tiny
model, a local LLaDA/Dream/... checkpoint, or an HF causal LM for the AR side). Module access
mirrors the real module tree (``model.model.layers[3].mlp``), and :meth:`TracedModel.site`
reaches a ``(layer, module)`` site through the backbone table so no caller needs a path.

The denoising loop of SPEC §4 is the traceable method :meth:`TracedModel.denoise`: every
backbone forward is one denoising step, so inside ``with model.denoise(...) as tracer`` the
bounded ``for k in tracer.iter[:T]`` visits steps ``0 … T-1`` and ``tracer.iter[k]`` is step
``k``. The sampler always makes exactly ``T`` forwards (a finished answer still runs the
remaining steps), so a step index always means the same thing and nnsight's iterator never
ends early.

Limits: one backbone call per step (classifier-free guidance keeps it: the unconditional copies
ride in the same forward, after the rows; self-conditioning, which needs the previous
step's output, is refused); rows of one call share their prompt and answer lengths (the
callers group by shape instead of padding, which keeps batched runs bit-comparable with
single rows on every architecture).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from nnsight import NNsight
from nnsight.intervention.envoy import traceable

from .backbones import BACKBONES, MODULES, Backbone, check_backbone, detect_family, get_module
from .context import STANDALONE, ForwardContext
from .errors import CheckpointError, CheckpointNotFoundError, UnsupportedModelError
from .prompting import DEFAULT_TEMPLATE, encode_pair

ZOO_DIR = Path(__file__).parent.parent / "zoo" / "models"
EMBEDDED_MODELS = ("tiny-mdlm", "tiny-ar", "tiny-mdlm-retain")


class TracedModel(NNsight):
    """An nnsight-traceable backbone with its tokenizer, backbone entry and diffusion loop.

    Build it with :func:`load_model` (or :meth:`from_module` for a module in memory).

    Attributes:
        backbone: The :class:`~tie_tracing.core.backbones.Backbone` entry, checked at load.
        tokenizer: The tokenizer (``PreTrainedTokenizerFast`` or compatible).
        num_layers: Number of transformer blocks.
        mask_token_id: The ``[MASK]`` id (``None`` for causal models).
        name: Embedded name or checkpoint path (recorded in results).
        template: Prompt template with a ``{question}`` field.
        info: The model's ``tie_tracing.json`` (embedded models: family, tuned operating point).

    Example:
        >>> model = tt.load_model("tiny-mdlm")                        # doctest: +SKIP
        >>> with model.denoise(x, answer_start=9, steps=8) as tracer: # doctest: +SKIP
        ...     for k in tracer.iter[:8]:
        ...         model.site(2, "mlp").output[:, 3] *= 0
    """

    def __init__(
        self,
        module: torch.nn.Module,
        tokenizer: Any,
        *,
        backbone: Backbone,
        name: str = "",
        template: str = DEFAULT_TEMPLATE,
        info: dict | None = None,
        mask_token_id: int | None = None,
    ) -> None:
        num_layers = check_backbone(module, backbone)
        mask_id = mask_token_id if mask_token_id is not None else backbone.mask_token_id
        if mask_id is None and not backbone.causal:
            mask_id = getattr(tokenizer, "mask_token_id", None)
            if mask_id is None:
                raise UnsupportedModelError(
                    f"family {backbone.family!r} needs a mask token, but the tokenizer has none"
                )
        super().__init__(module)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.num_layers = num_layers
        self.mask_token_id = mask_id
        self.name = name
        self.template = template
        self.info = dict(info or {})
        self._context = STANDALONE
        params = inspect.signature(module.forward).parameters
        self._forward_kwargs = {"use_cache": False} if "use_cache" in params else {}

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        tokenizer: Any,
        *,
        family: str | None = None,
        name: str = "",
        template: str = DEFAULT_TEMPLATE,
        mask_token_id: int | None = None,
    ) -> TracedModel:
        """Wrap a module already in memory (tests use random-initialised replicas).

        ``mask_token_id`` overrides the table's id (a replica with a small vocabulary).
        """
        family = family or detect_family(module.config)
        if family not in BACKBONES:
            raise UnsupportedModelError(f"unknown family {family!r}; known: {sorted(BACKBONES)}")
        module.eval()
        return cls(
            module,
            tokenizer,
            backbone=BACKBONES[family],
            name=name or family,
            template=template,
            mask_token_id=mask_token_id,
        )

    # -- structure ---------------------------------------------------------------------------

    @property
    def is_causal(self) -> bool:
        return self.backbone.causal

    @property
    def hidden_size(self) -> int:
        weight: Any = get_module(self._module, self.backbone.embedding).weight
        return int(weight.shape[-1])

    @property
    def param_device(self) -> torch.device:
        return next(self._module.parameters()).device

    def site(self, layer: int, module: str):
        """The envoy of site ``module`` (``resid``/``attn``/``mlp``) in block ``layer``."""
        self.check_site(layer, module)
        node: Any = self
        for part in self.backbone.site_path(layer, module).split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def site_module(self, layer: int, module: str) -> torch.nn.Module:
        """The plain ``torch.nn.Module`` of a site (for hooks in reference implementations)."""
        self.check_site(layer, module)
        return get_module(self._module, self.backbone.site_path(layer, module))

    @property
    def embedding(self):
        """The envoy of the token embedding (its output is where corruption noise goes)."""
        node: Any = self
        for part in self.backbone.embedding.split("."):
            node = getattr(node, part)
        return node

    def embedding_module(self) -> torch.nn.Module:
        return get_module(self._module, self.backbone.embedding)

    def check_site(self, layer: int, module: str) -> None:
        """Raise a clear error for a layer or module name the backbone lacks."""
        if module not in MODULES:
            raise ValueError(f"{self.name}: unknown module {module!r}; the sites are {MODULES}")
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"{self.name}: layer {layer!r} outside 0..{self.num_layers - 1}")

    # -- running -----------------------------------------------------------------------------

    def encode(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """``(prompt_ids, answer_ids)`` in this model's prompt format.

        Raises:
            ValueError: the question or the answer holds the mask token (an MDLM would read
                it as a slot to fill), or the query is longer than the model's positions.
        """
        prompt, answer_ids = encode_pair(self.tokenizer, question, answer, template=self.template)
        mask = self.mask_token_id
        if mask is not None:
            for what, text, ids in (("question", question, prompt), ("answer", answer, answer_ids)):
                if int(mask) in ids:
                    shown = self.tokenizer.decode([int(mask)])
                    raise ValueError(
                        f"the {what} {text!r} contains the mask token {shown!r}, which the model "
                        "reads as a slot to fill; remove or reword it"
                    )
        limit = self.max_positions
        if limit is not None and len(prompt) + len(answer_ids) > limit:
            raise ValueError(
                f"question {question!r} and its answer take {len(prompt) + len(answer_ids)} "
                f"tokens, more than the model's {limit} positions; shorten them"
            )
        return prompt, answer_ids

    @property
    def max_positions(self) -> int | None:
        """The longest input the model takes (``max_position_embeddings`` / ``n_positions``
        of its config; ``None`` when the config does not say)."""
        config = getattr(self._module, "config", None)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def forward_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One backbone forward; logits aligned so index ``i`` scores token ``i``.

        For shifted families (Dream, DiffuLLaMA, causal LMs) position ``i`` is predicted at
        ``i - 1``; the returned tensor moves those predictions to ``i`` (index 0 repeats row 0
        and carries no prediction). Families whose upstream inference passes a full attention
        mask (DiffuLLaMA) get it here. Called inside a trace, the forward is intercepted as
        usual.
        """
        logits = self.backbone_logits(input_ids)
        if self.backbone.shifted:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def backbone_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One backbone forward; the logits as the module returns them (not re-aligned).

        For shifted families position ``i`` holds the prediction of token ``i + 1``
        (:meth:`forward_logits` moves it to ``i``). Families whose upstream inference passes a
        full attention mask (DiffuLLaMA) get it here. An intervention that replaces a forward's
        output logits with another model's (the ``string_match_route`` reference row of
        :mod:`tie_tracing.evaluation`) needs them in this layout.
        """
        kwargs: dict[str, Any] = dict(self._forward_kwargs)
        if self.backbone.full_attention_mask:  # DiffuLLaMA: bidirectional, as its inference runs
            batch, seq = input_ids.shape
            weight: Any = get_module(self._module, self.backbone.embedding).weight
            zeros = torch.zeros(batch, 1, seq, seq, dtype=weight.dtype, device=input_ids.device)
            kwargs = {**kwargs, "attention_mask": zeros}
        out = self._module(input_ids=input_ids, **kwargs)
        return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple) else out)

    @property
    def context(self) -> ForwardContext:
        """The :class:`ForwardContext` of the forward now running (:data:`STANDALONE` outside
        any :meth:`at` block). Interventions read it; nothing else sets it."""
        return self._context

    @contextlib.contextmanager
    def at(self, context: ForwardContext) -> Iterator[ForwardContext]:
        """Run the forwards of a ``with`` block in ``context`` (the previous one comes back).

        The one entry through which per-forward state reaches interventions: the diffusion
        loop enters it at every step, the sweeps for every batched forward, the likelihoods
        with the answer span they score.

        Raises:
            TypeError: ``context`` is not a :class:`ForwardContext`.
        """
        if not isinstance(context, ForwardContext):
            raise TypeError(
                f"model.at() takes a ForwardContext(step=..., answer_start=...), got "
                f"{type(context).__name__}"
            )
        saved = self._context
        self._context = context
        try:
            yield context
        finally:
            self._context = saved

    @traceable
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One backbone forward as a traceable call: ``with model.logits(x) as tracer``.

        Called directly it runs the forward through nnsight, so installed edits
        (:class:`~tie_tracing.editing.EditMemory`) apply. Returns aligned logits
        (see :meth:`forward_logits`).
        """
        return self.forward_logits(input_ids)

    @traceable
    def denoise(self, input_ids: torch.Tensor, **loop: Any):
        """The diffusion loop (SPEC §4) as a traceable call: exactly ``steps`` backbone forwards.

        Use it traced (``with model.denoise(x, answer_start=p) as tracer``) to intervene at
        steps through ``tracer.iter``; called directly it simply runs. The settings (``answer_start``,
        ``steps``, ``sampler``, ``seeds``, ``targets``, ``target_mask``, ``lp`` and the
        ``temperature`` / ``block_length`` shorthands) are those of
        :func:`~tie_tracing.core.sampler.run_loop`, which returns a
        :class:`~tie_tracing.core.sampler.LoopOutput`.
        """
        from .sampler import run_loop

        return run_loop(self, input_ids, **loop)

    def __repr__(self) -> str:
        return (
            f"TracedModel(name={self.name!r}, family={self.backbone.family!r}, "
            f"layers={self.num_layers}, causal={self.is_causal}, mask_token_id={self.mask_token_id})"
        )


def _check_safetensors(path: Path) -> None:
    """Open the header of every ``*.safetensors`` file of a checkpoint: a truncated or
    corrupt file is a :class:`CheckpointError` that names it (not a bare safetensors error)."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as fh:
                keys = list(fh.keys())
                if keys:  # reading the last tensor checks that the data is all there
                    fh.get_slice(keys[-1])
            size = file.stat().st_size
            with open(file, "rb") as raw:
                header = int.from_bytes(raw.read(8), "little")
                meta = json.loads(raw.read(header))
            end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"),
                      default=0)  # fmt: skip
            if 8 + header + end > size:
                raise ValueError(f"{size} bytes, {8 + header + end} expected")
        except Exception as error:  # noqa: BLE001 - any failure means an unreadable file
            raise CheckpointError(
                f"{file} is truncated or corrupt ({error}); copy or convert the checkpoint again"
            ) from error


def _file_kind(path: Path) -> str:
    """What a file given as a model is: a tie_tracing result (its kind), weights, or else."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            kind = json.loads(meta["tie_tracing"]).get("kind") if "tie_tracing" in meta else None
        except Exception:  # noqa: BLE001 - any unreadable file is "a safetensors file"
            kind = None
        return f"a saved {kind}" if kind else "a weights file"
    return f"a {path.suffix or 'plain'} file"


def _resolve_path(name_or_path: str | os.PathLike) -> Path:
    if str(name_or_path) in EMBEDDED_MODELS:
        path = ZOO_DIR / str(name_or_path)
        if not (path / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"embedded model {name_or_path!r} is not built in this checkout ({path}); "
                f"train it with `python -m tie_tracing.zoo.train {name_or_path}`"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise CheckpointNotFoundError(
            f"{str(name_or_path)!r} is a file ({_file_kind(path)}), not a checkpoint: give "
            "the checkpoint's directory (with config.json and *.safetensors) or an embedded "
            f"model name ({', '.join(EMBEDDED_MODELS)})"
        )
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"{str(name_or_path)!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}) "
            f"nor a local checkpoint directory (no such directory). Weights are never downloaded."
        )
    if not (path / "config.json").is_file():
        raise CheckpointNotFoundError(
            f"checkpoint directory {path} has no config.json; copy the checkpoint's config.json "
            "(and its weights and tokenizer files) into it"
        )
    return path


@contextlib.contextmanager
def _loading_bar(show: bool) -> Iterator[None]:
    """transformers' weight-loading progress bar on or off for the duration (restored after)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def load_model(
    name_or_path: str | os.PathLike = "tiny-mdlm",
    *,
    family: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: Any = None,
    trust_remote_code: bool = False,
    template: str | None = None,
    mask_token_id: int | None = None,
    progress: bool | None = None,
    check: bool = True,
) -> TracedModel:
    """Load an embedded model or a local checkpoint, offline, wrapped for nnsight.

    Args:
        name_or_path: ``"tiny-mdlm"``, ``"tiny-ar"``, ``"tiny-mdlm-retain"`` or a local
            checkpoint directory (LLaDA, MMaDA, LLaDA-MoE, Dream, DiffuLLaMA, GPT-2, Llama,
            Qwen2).
        family: Force a backbone-table family (needed for DiffuLLaMA, whose config says llama).
        progress: Show transformers' weight-loading bar; default (``None``): only for a local
            checkpoint, not for the embedded models, which load in milliseconds.
        device, dtype, device_map: Passed to ``from_pretrained`` (GPU users: ``dtype=
            torch.bfloat16, device_map="cuda"``). Nothing here forces CPU. ``dtype=None``
            loads the checkpoint's own dtype (``config.json``'s ``torch_dtype``) under every
            ``transformers`` version. A device the machine lacks is refused before loading.
        trust_remote_code: Run the checkpoint's own modelling code (LLaDA, Dream). Off unless
            asked for.
        template: Prompt template with ``{question}`` (default: the question itself).
        mask_token_id: Override the backbone table's mask id.
        check: Run :func:`~tie_tracing.core.check.check_model` on the loaded model and refuse it
            (``CheckpointError``) when a check fails: non-finite or uninitialised weights or
            buffers, attention that is not bidirectional for an MDLM, logits that differ
            between two identical calls, a mask id outside the vocabulary or disagreeing with
            the tokenizer. A few tiny forwards; ``check=False`` skips it (``tie-tracing check``
            prints the same findings).

    Upstream code written for older ``transformers`` is repaired at load time where a known
    breakage needs it (:mod:`~tie_tracing.core.compat`: LLaDA's missing ``post_init`` and
    ``use_cache``, Dream's rope function and uninitialised rotary buffer); the applied fixes
    are logged in one line and listed in ``model.info["compat_fixes"]``.

    Returns:
        A :class:`TracedModel`.

    Raises:
        CheckpointNotFoundError: unknown name or missing directory/config.
        CheckpointError: a file that does not parse, a config that disagrees with the
            weights, missing or unreadable tokenizer files, a failed check.
        DeviceNotAvailableError: ``device`` / ``device_map`` names a device this machine lacks.
        UnsupportedModelError: an architecture with no backbone entry (lists the supported).

    Example:
        >>> model = tt.load_model("tiny-mdlm")                  # doctest: +SKIP
        >>> model.num_layers, model.backbone.family             # doctest: +SKIP
        (6, 'tiny-mdlm')
    """
    from . import checkpoints
    from .compat import LoadFixes, fix_config

    checkpoints.check_device(device, "device")
    checkpoints.check_device(device_map, "device_map")
    path = _resolve_path(name_or_path)
    info: dict = {}
    if (path / "tie_tracing.json").is_file():
        info = checkpoints.read_json(path / "tie_tracing.json", "tie_tracing.json (or delete it)")
    config = checkpoints.load_config(path, trust_remote_code)
    family = family or info.get("family") or detect_family(config)
    if family not in BACKBONES:
        raise UnsupportedModelError(f"unknown family {family!r}; known: {sorted(BACKBONES)}")
    if not any(path.glob("*.safetensors")):
        raise CheckpointNotFoundError(
            f"{path} has no .safetensors weights; tie_tracing loads safetensors only (never "
            f"pickled .bin/.pt files). Convert the checkpoint first."
        )
    _check_safetensors(path)
    fixes = LoadFixes()
    fix_config(config, path, fixes)
    kwargs: dict[str, Any] = dict(
        local_files_only=True, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    # None: the checkpoint's own dtype (config.json's torch_dtype), whatever the version's default
    kwargs["dtype"] = dtype if dtype is not None else "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
    show_bar = (str(name_or_path) not in EMBEDDED_MODELS) if progress is None else progress
    with _loading_bar(show_bar):
        module = checkpoints.load_module(
            path, config, trust_remote_code=trust_remote_code, kwargs=kwargs, fixes=fixes
        )
    checkpoints.verify_weights(module, path)
    if device is not None and device_map is None:
        module = module.to(device)  # type: ignore[arg-type]
    module.eval()
    tokenizer = checkpoints.load_tokenizer(path, trust_remote_code)
    info["compat_fixes"] = list(fixes.applied)
    fixes.report(path, family)
    model = TracedModel(
        module,
        tokenizer,
        backbone=BACKBONES[family],
        name=str(name_or_path),
        template=template or info.get("template", DEFAULT_TEMPLATE),
        info=info,
        mask_token_id=mask_token_id,
    )
    if check:
        from .check import check_model

        check_model(model).raise_for_failures()
    return model
