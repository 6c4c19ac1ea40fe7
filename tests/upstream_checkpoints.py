"""Tiny random-weight checkpoints built from the real upstream modelling code.

The upstream files of LLaDA, Dream and DiffuLLaMA live in ``../shared/realcode`` beside the
repository (see its ``SOURCES.md``); they are third-party code and never copied into the
repository. :func:`realcode_dir` finds them (``TIE_TRACING_REALCODE`` overrides the path) and
:func:`build_llada` / :func:`build_dream` / :func:`build_diffullama` write a checkpoint
directory into a temporary folder: the upstream ``config.json`` with only the sizes shrunk
(hidden width, heads, layers, MLP width; every architectural field and special id, the vocabulary
size included, kept), the upstream modelling files, random weights in ``model.safetensors`` and
a word-level tokenizer whose special tokens sit at the upstream ids.

The weights are drawn here (seeded normals with the tensor names and shapes of the upstream
module tree, read from a meta-device instance of the upstream class), so building a checkpoint
does not depend on the ``transformers`` version being able to save the upstream model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "who where when what is was the of in born city year wrote book ada vell lisbon porto "
    "paris 1962 1971 writer painter nurse red blue green cat dog orion lyra mara tov kess "
    "award prize river"
).split()

#: Special tokens of each family at their upstream ids.
LLADA_SPECIALS = {"<|endoftext|>": 126081, "<|mdm_mask|>": 126336, "<|eot_id|>": 126348}
DREAM_SPECIALS = {"<|endoftext|>": 151643, "<|mask|>": 151666}


def realcode_dir() -> Path | None:
    """``../shared/realcode`` beside the repository (or ``$TIE_TRACING_REALCODE``), if present."""
    env = os.environ.get("TIE_TRACING_REALCODE")
    # a clone sits beside shared/; a git worktree one level further down
    candidates = (
        [Path(env)]
        if env
        else [ROOT / ".." / "shared" / "realcode", ROOT / ".." / ".." / "shared" / "realcode"]
    )
    for path in candidates:
        if (path / "SOURCES.md").is_file():
            return path.resolve()
    return None


MISSING = (
    "the upstream LLaDA/Dream/DiffuLLaMA files are not beside the repository "
    "(../shared/realcode; or set TIE_TRACING_REALCODE): the upstream parity tests need them and "
    "the repository never carries third-party modelling code"
)


def write_tokenizer(path: Path, vocab_size: int, specials: dict[str, int], **roles: str) -> None:
    """A word-level tokenizer of ``vocab_size`` ids: ``WORDS`` first, ``specials`` at their ids,
    filler tokens elsewhere. ``roles`` name the special tokens (``eos_token=...``)."""
    vocab: dict[str, int] = {"<unk>": 0}
    for w in WORDS:
        vocab[w] = len(vocab)
    taken = set(specials.values())
    assert not taken & set(vocab.values()), "special ids must not collide with the words"
    filler = 0
    for i in range(len(vocab), vocab_size):
        if i in taken:
            continue
        vocab[f"tok{filler}"] = i
        filler += 1
    vocab.update(specials)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", additional_special_tokens=list(specials), **roles
    )
    fast.save_pretrained(path)


def _import(name: str, file: Path):
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int, std: float) -> dict:
    """Seeded random tensors: norms' weights near 1, biases and everything else ``N(0, std)``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        t = torch.randn(shape, generator=gen) * std
        if ("norm" in name or name.endswith(("ln_f.weight", "_norm.weight"))) and len(shape) == 1:
            t = 1 + t
        out[name] = t.contiguous()
    return out


def _copy(src: Path, dst: Path, files) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(src / f, dst / f)


# -- LLaDA ---------------------------------------------------------------------------------

LLADA_SIZES = dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=64)


def llada_config(model_type: str | None = None, **sizes) -> dict:
    code = realcode_dir()
    assert code is not None, MISSING
    config = json.loads((code / "llada" / "config.json").read_text())
    config.update(LLADA_SIZES)
    config.update(sizes)
    if model_type is not None:
        config["model_type"] = model_type
    return config


def llada_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the upstream LLaDA module tree for ``config`` (no weights made)."""
    code = realcode_dir()
    assert code is not None, MISSING
    cfg_mod = _import("_upstream_configuration_llada", code / "llada" / "configuration_llada.py")
    # the modelling file imports its configuration relatively: load both as one package
    pkg = "_upstream_llada_pkg"
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_loader(pkg, loader=None, is_package=True)
        assert spec is not None
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(code / "llada")]
        sys.modules[pkg] = package
        sys.modules[f"{pkg}.configuration_llada"] = cfg_mod
    modeling = _import(f"{pkg}.modeling_llada", code / "llada" / "modeling_llada.py")
    model_config = cfg_mod.ModelConfig(
        **{
            f: config[f]
            for f in cfg_mod.ModelConfig.__dataclass_fields__
            if f in config and f != "init_device"
        },
        init_device="meta",
    )
    module = modeling.LLaDAModel(model_config, init_params=False)
    return {f"model.{k}": tuple(v.shape) for k, v in module.state_dict().items()}


#: LM-head rows scaled up so that these tokens win the argmax at some positions (EOS and EoT
#: exercise LLaDA's EOS switches and their confidence ties, the mask token the mask rule).
LLADA_BOOST = {126081: 4.0, 126348: 4.0, 126336: 3.0}
DREAM_BOOST = {151643: 4.0, 151666: 3.0}


def boost_rows(weights: dict, name: str, boost: dict[int, float]) -> None:
    for token, scale in boost.items():
        weights[name][token] *= scale


def build_llada(
    path: Path,
    *,
    seed: int = 0,
    std: float = 0.5,
    model_type: str | None = None,
    boost: dict[int, float] | None = None,
    vocab: int | None = None,
    **sizes,
) -> Path:
    """A tiny LLaDA checkpoint in ``path``: upstream code and config, sizes shrunk.

    ``vocab`` (benchmarks only, not parity fixtures) shrinks the vocabulary too, moving the
    mask, EOS and EoT tokens to its last three ids (load with ``mask_token_id=vocab - 1``)."""
    code = realcode_dir()
    assert code is not None, MISSING
    config = llada_config(model_type, **sizes)
    specials = dict(LLADA_SPECIALS)
    if vocab is not None:
        specials = {"<|endoftext|>": vocab - 2, "<|mdm_mask|>": vocab - 1, "<|eot_id|>": vocab - 3}
        config.update(
            vocab_size=vocab, embedding_size=vocab, mask_token_id=vocab - 1,
            eos_token_id=vocab - 2, pad_token_id=vocab - 2,
        )  # fmt: skip
        boost = {}
    _copy(code / "llada", path, ["configuration_llada.py", "modeling_llada.py"])
    (path / "config.json").write_text(json.dumps(config, indent=2))
    weights = random_weights(llada_shapes(config), seed, std)
    boost_rows(weights, "model.transformer.ff_out.weight", LLADA_BOOST if boost is None else boost)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(
        path,
        config["vocab_size"],
        specials,
        eos_token="<|endoftext|>",
        mask_token="<|mdm_mask|>",
        pad_token="<|endoftext|>",
    )
    return path


# -- Dream ---------------------------------------------------------------------------------

DREAM_SIZES = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
    num_hidden_layers=2, max_window_layers=2,
)  # fmt: skip


def dream_config(**sizes) -> dict:
    code = realcode_dir()
    assert code is not None, MISSING
    config = json.loads((code / "dream" / "config.json").read_text())
    config.update(DREAM_SIZES)
    config.update(sizes)
    return config


def dream_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Dream's (Qwen2-layout) parameters, from the config."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = h // heads
    v = config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (heads * head_dim, h),
                p + "self_attn.q_proj.bias": (heads * head_dim,),
                p + "self_attn.k_proj.weight": (kv * head_dim, h),
                p + "self_attn.k_proj.bias": (kv * head_dim,),
                p + "self_attn.v_proj.weight": (kv * head_dim, h),
                p + "self_attn.v_proj.bias": (kv * head_dim,),
                p + "self_attn.o_proj.weight": (h, heads * head_dim),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
            }
        )
    return shapes


def build_dream(
    path: Path, *, seed: int = 0, std: float = 0.5, boost: dict[int, float] | None = None, **sizes
) -> Path:
    """A tiny Dream checkpoint in ``path``: upstream code and config, sizes shrunk."""
    code = realcode_dir()
    assert code is not None, MISSING
    config = dream_config(**sizes)
    _copy(
        code / "dream",
        path,
        ["configuration_dream.py", "modeling_dream.py", "generation_utils.py"],
    )
    (path / "config.json").write_text(json.dumps(config, indent=2))
    weights = random_weights(dream_shapes(config), seed, std)
    boost_rows(weights, "lm_head.weight", DREAM_BOOST if boost is None else boost)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    # Dream's from_pretrained reads generation_config.json (the upstream checkpoint ships one)
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")}
    (path / "generation_config.json").write_text(
        json.dumps({**ids, "transformers_version": config["transformers_version"]}, indent=2)
    )
    write_tokenizer(
        path,
        config["vocab_size"],
        DREAM_SPECIALS,
        eos_token="<|endoftext|>",
        mask_token="<|mask|>",
        pad_token="<|endoftext|>",
    )
    return path


# -- DiffuLLaMA ----------------------------------------------------------------------------

DIFFULLAMA_VOCAB = 512
DIFFULLAMA_MASK = 500


def build_diffullama(path: Path, *, seed: int = 0, std: float = 0.5) -> Path:
    """A tiny DiffuLLaMA checkpoint: a plain Llama config (as DiffuLLaMA ships: nothing in it
    says "bidirectional"), random weights, a tokenizer with a mask token."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=DIFFULLAMA_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        architectures=["LlamaForCausalLM"], tie_word_embeddings=False,
    )  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    h, inter, v = 32, 64, DIFFULLAMA_VOCAB
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (v, h),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    save_file(random_weights(shapes, seed, std), str(path / "model.safetensors"))
    write_tokenizer(
        path,
        v,
        {"</s>": DIFFULLAMA_MASK + 1, "<mask>": DIFFULLAMA_MASK},
        eos_token="</s>",
        mask_token="<mask>",
    )
    return path
