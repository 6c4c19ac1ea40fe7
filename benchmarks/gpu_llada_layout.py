"""TIE tracing on a random-initialised model with LLaDA-8B's layout: wall time, peak memory, rows/s.

The model has the module tree of LLaDA's remote code (``model.transformer.wte``,
``blocks[i].{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj, up_proj, ff_out}``
with RMSNorm, rotary attention and a SwiGLU MLP, ``ln_f``, the ``ff_out`` head; blocks return
``(x, cache)``) and is recognised as the ``llada`` family, so the tracer takes the same paths
it takes on the real checkpoint. Its weights are random: the TIE values mean nothing, the
costs are the real ones.

On CUDA the default is the full size (d = 4096, 32 layers, 32 heads, MLP 12288, vocabulary
126,464, mask id 126,336) in bfloat16 on one GPU (about 16 GB of weights). On CPU the default is
a reduced width (``--width 256 --layers 4``, vocabulary 8,192) in float32; the test suite runs
an even smaller one.

For each ``T`` in ``--steps`` it traces ``--facts`` facts (each answer ``T`` tokens long, as
LLaDA samples one token per step, so no step is idle) with the exact sweep, the exact sweep
with a horizon, the immediate scan and the attribution scan, and prints one line per run:
``T=<T> mode=<...> wall=<s> peak=<MiB> rows=<n> rows/s=<r>``. Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA (reset per run) and the process's peak RSS on CPU
(a running maximum, so only growth is visible).

The model goes through the package's loader (``tt.load_model``, the compatibility fixes and
the checkpoint check included): ``--checkpoint DIR`` loads a real LLaDA checkpoint; otherwise,
when LLaDA's upstream modelling code is beside the repository (``../shared/realcode``), a
random-weight checkpoint of the requested size is written from it to a temporary directory
and loaded (a ``--vocab`` below LLaDA's moves the mask, EOS and EoT ids to its last ids);
without the upstream code, the in-file layout replica below is wrapped in memory and the run
says so.

Usage::

    python benchmarks/gpu_llada_layout.py                      # full size on a GPU
    python benchmarks/gpu_llada_layout.py --checkpoint /models/LLaDA-8B-Instruct
    python benchmarks/gpu_llada_layout.py --width 256 --layers 4 --threads 1   # CPU
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import PreTrainedTokenizerFast

import tie_tracing as tt

ROOT = Path(__file__).resolve().parents[1]

WORDS = (
    "where was who wrote the book of born in city ada vell mara tov lisbon porto paris "
    "orion lyra river award prize year a an and is"
).split()
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rotary(x: torch.Tensor, theta: float = 500000.0) -> torch.Tensor:
    """Rotary position embedding of ``[batch, heads, seq, head_dim]``."""
    *_, seq, dim = x.shape
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
    angles = torch.arange(seq, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


class LLaDABlock(nn.Module):
    """LLaDA's ``LLaDALlamaBlock``: pre-norm attention and SwiGLU MLP, returns ``(x, cache)``."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = RMSNorm(d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d)
        self.ff_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.ff_out = nn.Linear(ffn, d, bias=False)

    def forward(self, x, attention_bias=None):
        b, s, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (
            proj(h).view(b, s, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        a = nn.functional.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=False)
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, s, d))
        h = self.ff_norm(x)
        x = x + self.ff_out(nn.functional.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, None


class LLaDALayout(nn.Module):
    """``LLaDAModelLM``'s tree: ``model.transformer.{wte, blocks, ln_f, ff_out}``."""

    def __init__(self, *, d: int, layers: int, heads: int, ffn: int, vocab: int):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="llada",
            architectures=["LLaDAModelLM"],
            hidden_size=d,
            intermediate_size=ffn,
            num_attention_heads=heads,
            num_hidden_layers=layers,
            vocab_size=vocab,
        )
        self.model = nn.Module()
        self.model.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, d),
                blocks=nn.ModuleList([LLaDABlock(d, heads, ffn) for _ in range(layers)]),
                ln_f=RMSNorm(d),
                ff_out=nn.Linear(d, vocab, bias=False),
            )
        )

    def forward(self, input_ids):
        t = self.model.transformer
        x = t["wte"](input_ids)
        for block in t["blocks"]:
            x, _ = block(x)
        return SimpleNamespace(logits=t["ff_out"](t["ln_f"](x)))


def tokenizer(mask_id: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the facts' words; ``[MASK]`` gets LLaDA's id."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    vocab["[MASK]"] = mask_id
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


def facts(n: int, answer_len: int) -> list[tt.Fact]:
    """``n`` facts whose answers are ``answer_len`` words long."""
    stems = [
        ("ada vell", "where was ada vell born", "lisbon porto paris river"),
        ("mara tov", "who wrote the book of mara tov", "orion lyra award prize"),
    ]
    out = []
    for i in range(n):
        subject, question, answer = stems[i % len(stems)]
        words = (answer.split() * answer_len)[:answer_len]
        out.append(tt.Fact(subject, question, " ".join(words), id=f"llada-layout-{i}"))
    return out


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def load(args, device, dtype, heads: int, mask_id: int):
    """The model through tt.load_model (see the module docstring), and what it is."""
    if args.checkpoint:
        model = tt.load_model(args.checkpoint, trust_remote_code=True, dtype=dtype, device=device)
        return model, f"checkpoint {args.checkpoint}"
    sys.path.insert(0, str(ROOT / "tests"))
    import upstream_checkpoints as U

    if U.realcode_dir() is not None:
        folder = Path(tempfile.mkdtemp(prefix="llada-layout-"))
        vocab = None if args.vocab >= 126464 else args.vocab
        U.build_llada(
            folder, boost={}, std=0.02, vocab=vocab, d_model=args.width, n_heads=heads,
            n_kv_heads=heads, n_layers=args.layers, mlp_hidden_size=3 * args.width,
        )  # fmt: skip
        model = tt.load_model(
            folder, trust_remote_code=True, dtype=dtype, device=device,
            mask_token_id=None if vocab is None else vocab - 1, progress=False,
        )  # fmt: skip
        return model, (
            f"LLaDA upstream code through tt.load_model, random weights, d={args.width} "
            f"heads={heads} vocab={vocab or 126464}"
        )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = LLaDALayout(
                d=args.width, layers=args.layers, heads=heads, ffn=3 * args.width, vocab=args.vocab
            ).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    for p in module.parameters():
        p.requires_grad_(False)
    model = tt.core.TracedModel.from_module(
        module, tokenizer(mask_id), name="llada-layout-random", mask_token_id=mask_id
    )
    return model, (
        f"LLaDA layout replica in memory (no upstream code beside the repository), random "
        f"weights, d={args.width} heads={heads} vocab={args.vocab}"
    )


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--width", type=int, default=4096 if cuda else 256)
    parser.add_argument("--layers", type=int, default=32 if cuda else 4)
    parser.add_argument("--heads", type=int, default=None, help="default: width // 128")
    parser.add_argument("--vocab", type=int, default=126464 if cuda else 8192)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--facts", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--max-memory", default=None, help="budget, e.g. 60GB (default: device)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--checkpoint", default=None, help="a real LLaDA checkpoint directory")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads = args.heads or max(1, args.width // 128)
    mask_id = 126336 if args.vocab > 126336 else args.vocab - 1
    torch.manual_seed(0)
    start = time.perf_counter()
    model, source = load(args, device, dtype, heads, mask_id)
    module = model._module
    n_params = sum(p.numel() for p in module.parameters())
    print(
        f"model: {source}, layers={model.num_layers} params={n_params / 1e9:.2f}B "
        f"dtype={dtype} device={device} "
        f"(built in {time.perf_counter() - start:.1f} s); threads={torch.get_num_threads()}"
    )
    runs = [
        ("exact", {}),
        (f"horizon={args.horizon}", {"horizon": args.horizon}),
        ("immediate", {"mode": "immediate"}),
        ("attribution", {"mode": "attribution"}),
    ]
    for steps in args.steps:
        batch = facts(args.facts, steps)
        for name, kw in runs:
            if "horizon" in kw and kw["horizon"] >= steps - 1:
                kw = {}  # the horizon would be exact
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights know no facts
                result = tt.trace_tie(
                    model, batch, steps=steps, progress=False, max_memory=args.max_memory, **kw
                )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - t0
            stats = result.config["engine_stats"]
            rows = stats["rows"]
            rate = rows / wall if wall > 0 else math.nan
            print(
                f"T={steps} mode={name} wall={wall:.2f}s peak={peak_mib(device):.0f}MiB "
                f"rows={rows} rows/s={rate:.1f} forwards={stats['forwards']} "
                f"rows_per_forward={max(stats.get('rows_per_forward', [0]))} "
                f"sum|TIE|={float(result.tie.abs().nansum()):.3f}"
            )


if __name__ == "__main__":
    main()
