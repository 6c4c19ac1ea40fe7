"""The backbone table: where each architecture family keeps its embedding, blocks and sites.

Architectures are data. One small declarative :class:`Backbone` entry per family says which
module's output is the embedding (where corruption noise is added), where the list of blocks
lives, how to reach a block's attention and MLP sub-layer outputs, the mask token id, whether
logits are *shifted* (Dream, DiffuLLaMA: position ``i`` is predicted at ``i - 1``) and whether
the model is causal (the AR side of the comparison). Nothing else in the package knows a
module path: tracing, patching and editing ask :func:`resolve_backbone` for the entry and read
sites through it.

Sites (SPEC §2): ``resid`` is the block output (the residual stream after the block), ``attn``
the attention sub-layer output before it is added to the residual, ``mlp`` the MLP sub-layer
output before it is added. A module whose output is a tuple (HF attention returns
``(hidden, weights)``, LLaDA blocks return ``(x, cache)``, MoE blocks ``(x, router_logits)``)
contributes its first element.

Limits: families are recognised from ``config.tie_tracing_family``, then ``config.model_type``
and ``config.architectures``; a checkpoint that matches none (or that needs another family
than its ``model_type`` suggests, e.g. DiffuLLaMA, a Llama checkpoint with shifted diffusion
logits) is loaded with ``family=`` given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsupportedModelError

MODULES: tuple[str, ...] = ("resid", "attn", "mlp")


def module_names(modules: object) -> tuple[str, ...]:
    """``modules`` as a tuple of site names in :data:`MODULES` order (the one normaliser).

    One name (``"mlp"``) means that site alone; any iterable of names is a set of them.

    Raises:
        ValueError: an unknown name, or no name at all (lists the sites).

    Example:
        >>> module_names("mlp"), module_names(["mlp", "resid"])
        (('mlp',), ('resid', 'mlp'))
    """
    names = (modules,) if isinstance(modules, str) else tuple(modules)  # type: ignore[arg-type]
    if not names or any(m not in MODULES for m in names):
        raise ValueError(f"modules must be a non-empty subset of {MODULES}, got {modules!r}")
    return tuple(m for m in MODULES if m in names)


@dataclass(frozen=True)
class Backbone:
    """One architecture family's layout.

    Attributes:
        family: The family's name (a key of :data:`BACKBONES`).
        embedding: Dotted path from the root module to the token embedding.
        blocks: Dotted path to the ``ModuleList`` of transformer blocks.
        attn: Path, relative to a block, of the attention sub-layer output module.
        mlp: Path, relative to a block, of the MLP sub-layer output module.
        mask_token_id: The ``[MASK]`` id, or ``None`` to take the tokenizer's mask token
            (causal models have none).
        shifted: Logits at position ``i`` predict token ``i + 1`` (Dream, DiffuLLaMA, every
            causal LM); the sampler re-aligns them so that index ``i`` scores token ``i``.
        causal: Autoregressive (causal attention) rather than a bidirectional MDLM.
        full_attention_mask: Every forward passes a 4-D all-zero additive attention mask
            ``[batch, 1, seq, seq]`` (full bidirectional attention): how DiffuLLaMA's own
            inference runs its Llama checkpoint, whose config says nothing about it (called
            with input ids only, the Llama classes attend causally).
        model_types: ``config.model_type`` values recognised as this family.
        architectures: ``config.architectures`` class names recognised as this family.
        note: What the entry assumes, for error messages and the docs.
    """

    family: str
    embedding: str
    blocks: str
    attn: str
    mlp: str
    mask_token_id: int | None
    shifted: bool
    causal: bool
    full_attention_mask: bool = False
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    note: str = ""

    def site_path(self, layer: int, module: str) -> str:
        """Dotted path of site ``module`` in block ``layer`` (``resid`` is the block itself)."""
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}; the sites are {MODULES}")
        block = f"{self.blocks}.{layer}"
        if module == "resid":
            return block
        return f"{block}.{getattr(self, module)}"


_LLADA: dict[str, Any] = dict(
    embedding="model.transformer.wte",
    blocks="model.transformer.blocks",
    attn="attn_out",
    mlp="ff_out",  # the block's ff_out; model.transformer.ff_out is the LM head
    shifted=False,
    causal=False,
)
_LLAMA_LAYOUT: dict[str, Any] = dict(
    embedding="model.embed_tokens", blocks="model.layers", attn="self_attn", mlp="mlp"
)

BACKBONES: dict[str, Backbone] = {
    b.family: b
    for b in [
        Backbone(
            family="llada",
            mask_token_id=126336,
            model_types=("llada",),
            architectures=("LLaDAModelLM",),
            note="LLaDA-8B remote code (trust_remote_code=True); blocks return (x, cache)",
            **_LLADA,
        ),
        Backbone(
            family="mmada",
            mask_token_id=126336,
            model_types=("mmada",),
            architectures=("MMadaModelLM",),
            note="MMaDA shares LLaDA's layout and mask id",
            **_LLADA,
        ),
        Backbone(
            family="llada-moe",
            mask_token_id=156895,
            shifted=False,
            causal=False,
            model_types=("lladamoe", "llada_moe"),
            architectures=("LLaDAMoEModelLM",),
            note="LLaDA-MoE (OLMoE-like layout); the MoE block's output tuple gives its hidden state first",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="dream",
            mask_token_id=151666,
            shifted=True,
            causal=False,
            model_types=("Dream", "dream"),
            architectures=("DreamModel",),
            note="Dream-7B remote code (Qwen2 layout, biased q/k/v), shifted logits",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="diffullama",
            mask_token_id=None,
            shifted=True,
            causal=False,
            full_attention_mask=True,
            note="DiffuLLaMA: a Llama checkpoint adapted to diffusion, run with a 4-D all-zero attention mask (bidirectional) and shifted logits; load with family='diffullama'",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="tiny-mdlm",
            mask_token_id=None,
            shifted=False,
            causal=False,
            note="the embedded LLaDA-style MDLM (transformers Llama classes, is_causal=False)",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="tiny-ar",
            mask_token_id=None,
            shifted=True,
            causal=True,
            note="the embedded MDLM's causal twin",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="llama",
            mask_token_id=None,
            shifted=True,
            causal=True,
            model_types=("llama", "mistral"),
            architectures=("LlamaForCausalLM", "MistralForCausalLM"),
            note="HF causal Llama/Mistral (AR side)",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="qwen2",
            mask_token_id=None,
            shifted=True,
            causal=True,
            model_types=("qwen2",),
            architectures=("Qwen2ForCausalLM",),
            note="HF causal Qwen2 (AR side)",
            **_LLAMA_LAYOUT,
        ),
        Backbone(
            family="gpt2",
            embedding="transformer.wte",
            blocks="transformer.h",
            attn="attn",
            mlp="mlp",
            mask_token_id=None,
            shifted=True,
            causal=True,
            model_types=("gpt2",),
            architectures=("GPT2LMHeadModel",),
            note="HF GPT-2 (AR side); noise goes on the token embedding wte, as in ROME",
        ),
    ]
}


def supported_families() -> str:
    """One line per family, for error messages."""
    return "\n".join(f"  - {b.family}: {b.note}" for b in BACKBONES.values())


def detect_family(config) -> str:
    """The family of a model from its config.

    Order: ``config.tie_tracing_family``; ``config.model_type``; ``config.architectures``.

    Raises:
        UnsupportedModelError: no entry matches; the message lists the supported families.
    """
    explicit = getattr(config, "tie_tracing_family", None)
    if explicit:
        if explicit not in BACKBONES:
            raise UnsupportedModelError(
                f"config.tie_tracing_family={explicit!r} is not a known family. "
                f"Supported:\n{supported_families()}"
            )
        return explicit
    model_type = getattr(config, "model_type", None)
    for b in BACKBONES.values():
        if model_type in b.model_types:
            return b.family
    for arch in getattr(config, "architectures", None) or ():
        for b in BACKBONES.values():
            if arch in b.architectures:
                return b.family
    raise UnsupportedModelError(
        f"unsupported architecture (model_type={model_type!r}, "
        f"architectures={getattr(config, 'architectures', None)!r}). Pass family=... if the "
        f"checkpoint follows a known layout. Supported:\n{supported_families()}"
    )


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a dotted path (integer parts index into ``ModuleList``s)."""
    node = root
    for part in path.split("."):
        if part.isdigit():
            node = node[int(part)]  # type: ignore[index]
        else:
            node = getattr(node, part)
    return node


def check_backbone(module: torch.nn.Module, backbone: Backbone) -> int:
    """Check that every site of ``backbone`` resolves in ``module``; return the layer count.

    Raises:
        UnsupportedModelError: a path does not resolve, naming the path and the family.
    """
    path = backbone.embedding
    try:
        get_module(module, path)
        path = backbone.blocks
        blocks = get_module(module, path)
        n = len(blocks)  # type: ignore[arg-type]
        for layer in range(n):
            for site in MODULES:
                path = backbone.site_path(layer, site)
                get_module(module, path)
    except (AttributeError, IndexError, TypeError) as error:
        raise UnsupportedModelError(
            f"the model does not have the layout of family {backbone.family!r}: no module at "
            f"{path!r} ({error}). "
            f"Expected embedding {backbone.embedding!r}, blocks {backbone.blocks!r} with "
            f"sub-modules {backbone.attn!r} and {backbone.mlp!r}."
        ) from error
    if n < 1:
        raise UnsupportedModelError(f"family {backbone.family!r}: {backbone.blocks!r} is empty")
    return n


def hidden_of(output):
    """The hidden-state tensor of a module output (the first element of a tuple output)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output
