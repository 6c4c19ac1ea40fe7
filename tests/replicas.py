"""Small random-initialised replicas of each backbone family, with the families' real module names.

No checkpoint can be downloaded here, so table entries are tested on replicas: LLaDA's
remote-code tree (``model.transformer.wte``, ``blocks[i].attn_out``/``ff_out``, blocks
returning ``(x, cache)``, ``transformer.ff_out`` as the LM head), Dream's Qwen2 layout with
shifted logits and bidirectional attention, MMaDA (LLaDA's tree under its own model type),
LLaDA-MoE (Llama layout with a sparse MoE block returning ``(hidden, router_logits)``),
DiffuLLaMA (a bidirectional Llama with shifted logits), and transformers' own
Llama/Qwen2/GPT-2 classes.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import tie_tracing as tt

WORDS = (
    "who where when what is was the of in born city year wrote book ada vell lisbon porto "
    "paris 1962 1971 writer painter nurse red blue green cat dog orion lyra mara tov kess "
    "award prize river"
).split()
VOCAB = 64


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ``[PAD] [BOS] [EOS] [MASK] [UNK]``; prompts get BOS."""
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[MASK]": 3, "[UNK]": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        mask_token="[MASK]",
        unk_token="[UNK]",
    )


def _llama_config(**kw):
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        **kw,
    )


def tiny_mdlm(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**_llama_config(is_causal=False))
    config.tie_tracing_family = "tiny-mdlm"
    return LlamaForCausalLM(config).eval()


def dream_replica(seed: int = 0) -> Qwen2ForCausalLM:
    """Dream's layout: Qwen2 with biased q/k/v, bidirectional, shifted logits."""
    torch.manual_seed(seed)
    config = Qwen2Config(**_llama_config(is_causal=False))
    config.model_type = "Dream"
    return Qwen2ForCausalLM(config).eval()


def causal(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**_llama_config())).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**_llama_config())).eval()
    if kind == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        ).eval()
    raise ValueError(kind)


class _LLaDABlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d)
        self.att_proj = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = nn.LayerNorm(d)
        self.ff_proj = nn.Linear(d, 2 * d, bias=False)
        self.ff_out = nn.Linear(2 * d, d, bias=False)
        self.heads = 4

    def forward(self, x, attention_bias=None):
        b, s, d = x.shape
        q, k, v = self.att_proj(self.attn_norm(x)).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, s, d))
        x = x + self.ff_out(torch.nn.functional.silu(self.ff_proj(self.ff_norm(x))))
        return x, None


class _LLaDAModel(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(VOCAB, d),
                blocks=nn.ModuleList([_LLaDABlock(d) for _ in range(layers)]),
                ln_f=nn.LayerNorm(d),
                ff_out=nn.Linear(d, VOCAB, bias=False),
            )
        )
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)

    def forward(self, input_ids):
        x = self.transformer["wte"](input_ids) + self.pos[: input_ids.shape[1]]
        for block in self.transformer["blocks"]:
            x, _ = block(x)
        return self.transformer["ff_out"](self.transformer["ln_f"](x))


class LLaDAReplica(nn.Module):
    """LLaDAModelLM's module tree: ``model.transformer.{wte, blocks, ln_f, ff_out}``."""

    def __init__(self, seed: int = 0, d: int = 32, layers: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(model_type="llada", architectures=["LLaDAModelLM"])
        self.model = _LLaDAModel(d, layers)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.model(input_ids))


class MMaDAReplica(LLaDAReplica):
    """MMaDAModelLM: LLaDA's module tree and mask id under its own model type."""

    def __init__(self, seed: int = 0, d: int = 32, layers: int = 3):
        super().__init__(seed, d, layers)
        self.config = SimpleNamespace(model_type="mmada", architectures=["MMadaModelLM"])


class _MoEAttention(nn.Module):
    def __init__(self, d: int, heads: int = 4):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = (
            p(x).view(b, s, self.heads, d // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(a.transpose(1, 2).reshape(b, s, d)), None


class _SparseMoE(nn.Module):
    """Top-2 routed experts; returns ``(hidden, router_logits)`` as OLMoE-style blocks do."""

    def __init__(self, d: int, experts: int = 4, top: int = 2):
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
                for _ in range(experts)
            ]
        )
        self.top = top

    def forward(self, x):
        router_logits = self.gate(x)
        weights, chosen = torch.softmax(router_logits, -1).topk(self.top, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            w = (weights * (chosen == e)).sum(-1, keepdim=True)
            out = out + w * expert(x)
        return out, router_logits


class _MoEBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(d)
        self.self_attn = _MoEAttention(d)
        self.post_attention_layernorm = nn.LayerNorm(d)
        self.mlp = _SparseMoE(d)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))[0]
        h, router_logits = self.mlp(self.post_attention_layernorm(x))
        return x + h, router_logits


class _MoEModel(nn.Module):
    def __init__(self, d: int, layers: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList([_MoEBlock(d) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.pos = nn.Parameter(torch.randn(64, d) * 0.02)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids) + self.pos[: input_ids.shape[1]]
        for layer in self.layers:
            x, _ = layer(x)
        return self.norm(x)


class LLaDAMoEReplica(nn.Module):
    """LLaDAMoEModelLM's tree: ``model.embed_tokens``, ``model.layers[i].{self_attn, mlp}``
    (a sparse MoE block returning ``(hidden, router_logits)``), ``lm_head``; bidirectional,
    unshifted logits."""

    def __init__(self, seed: int = 0, d: int = 32, layers: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(model_type="llada_moe", architectures=["LLaDAMoEModelLM"])
        self.model = _MoEModel(d, layers)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.lm_head(self.model(input_ids)))


def diffullama_replica(seed: int = 0) -> LlamaForCausalLM:
    """DiffuLLaMA: a Llama checkpoint adapted to diffusion (bidirectional, shifted logits);
    its config says ``llama``, so it is wrapped with ``family="diffullama"``."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**_llama_config(is_causal=False))).eval()


def more_replicas() -> dict[str, tt.core.TracedModel]:
    """Replicas of the other MDLM table entries: MMaDA, LLaDA-MoE, DiffuLLaMA."""
    return {
        "mmada": wrap(MMaDAReplica()),
        "llada-moe": wrap(LLaDAMoEReplica()),
        "diffullama": wrap(diffullama_replica(), family="diffullama"),
    }


def wrap(module: nn.Module, family: str | None = None) -> tt.core.TracedModel:
    tok = make_tokenizer()
    return tt.core.TracedModel.from_module(
        module, tok, family=family, mask_token_id=tok.mask_token_id
    )


def replica_models() -> dict[str, tt.core.TracedModel]:
    """One wrapped replica per family the tests exercise."""
    return {
        "tiny-mdlm": wrap(tiny_mdlm()),
        "llada": wrap(LLaDAReplica()),
        "dream": wrap(dream_replica(), family=None),
        "llama": wrap(causal("llama")),
        "qwen2": wrap(causal("qwen2")),
        "gpt2": wrap(causal("gpt2")),
    }
