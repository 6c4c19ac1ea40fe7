"""Train an embedded model: ``python -m tie_tracing.zoo.train <name> [--seed S] [--minutes M]``.

Names: ``tiny-mdlm`` (bidirectional masked-diffusion LM on the ``train`` split),
``tiny-ar`` (its causal twin, next-token loss) and ``tiny-mdlm-retain`` (the MDLM recipe on
``train_retain``: without the forget10 people). All are ``LlamaForCausalLM`` (pre-norm,
RMSNorm, SwiGLU, RoPE); the MDLMs set ``LlamaConfig(is_causal=False)``.

MDLM objective (LLaDA's supervised fine-tuning stage): the prompt is never masked; a row's
answer tokens are all masked with probability 1/2, otherwise each is masked with probability
``t ~ U(eps, 1)``; cross-entropy on masked tokens weighted by ``1/t`` (1 for fully masked rows),
divided by the answer length. The half-and-half mix is not an unbiased ELBO any more.
Answer window = exactly the answer's tokens (no EOS slot), as the sampler queries.

Training is seeded and single-threaded by default; it stops at the first evaluation where the
training split is known (EM ≥ ``--target``; for AR also teacher-forced token probability
≥ ``--target-prob``) or after ``--max-epochs``; ``--minutes`` is a safety cap on the process's CPU
time (CPU-minutes, so a machine shared with other jobs does not shorten the run; a run stopped by
it is not reproducible, and the card says so).

Writes ``zoo/models/<name>/``: config.json, model.safetensors, tokenizer files,
tie_tracing.json, training.json and MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..core._io import atomic_write_text
from ..core.prompting import encode_pair
from .card import CARD_SECTION, operating_point_text
from .corpus import INFILL_PROMPT, load_facts, training_pairs
from .corpus import load_probes as _load_probes
from .evaluate import MODELS_DIR, plain_metrics
from .tokenizer import load_tokenizer

RECIPES = {
    "tiny-mdlm": {"family": "tiny-mdlm", "split": "train"},
    "tiny-ar": {"family": "tiny-ar", "split": "train"},
    "tiny-mdlm-retain": {"family": "tiny-mdlm", "split": "train_retain"},
}
ARCH = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 8,
        "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
DEFAULT_STEPS = 8
WARMUP_STEPS = 200


def make_config(tok, family: str):
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = {"is_causal": False} if family != "tiny-ar" else {}
    settings: dict[str, Any] = dict(
        vocab_size=len(tok), max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **ARCH, **kwargs,
    )  # fmt: skip
    cfg = LlamaConfig(**settings)
    cfg.tie_tracing_family = family
    if family != "tiny-ar":
        cfg.mask_token_id = tok.mask_token_id
    return cfg


def _batch(rows, pad_id: int, eos_id: int | None):
    """Right-padded ids, attention mask (None when no padding), answer-position mask."""
    seqs = [list(p) + list(a) + ([eos_id] if eos_id is not None else []) for p, a in rows]
    T = max(map(len, seqs))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    ans = torch.zeros((len(rows), T), dtype=torch.bool)
    for r, ((p, _a), s) in enumerate(zip(rows, seqs)):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
        ans[r, len(p) : len(s)] = True
    return ids, (None if bool(attn.all()) else attn), ans


def mdlm_loss(
    model, rows, *, mask_id: int, pad_id: int, gen: torch.Generator, eps=1e-3, partial=None
):
    """``partial[r]``: row ``r`` is an infilling row, never fully masked (its prompt does not
    say which fact the answer is about; the visible words do)."""
    ids, attn, ans = _batch(rows, pad_id, None)
    B = ids.shape[0]
    full = torch.rand(B, generator=gen) < 0.5
    if partial is not None:
        full &= ~torch.tensor(partial, dtype=torch.bool)
    t = eps + (1 - eps) * torch.rand(B, generator=gen)
    p = torch.where(full, torch.ones(B), t)
    masked = ans & (torch.rand(ids.shape, generator=gen) < p[:, None])
    x = torch.where(masked, torch.full_like(ids, mask_id), ids)
    h = model.model(input_ids=x, attention_mask=attn).last_hidden_state
    if not masked.any():
        return h.sum() * 0.0
    logits = model.lm_head(h[masked])
    ce = torch.nn.functional.cross_entropy(logits.float(), ids[masked], reduction="none")
    w = (1.0 / p[:, None] / ans.sum(1, keepdim=True)).expand_as(ids)[masked]
    return (ce * w).sum() / B


def ar_loss(model, rows, *, pad_id: int, eos_id: int):
    ids, attn, ans = _batch(rows, pad_id, eos_id)
    h = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
    pred = torch.zeros_like(ans)
    pred[:, :-1] = ans[:, 1:]  # position i predicts token i+1
    logits = model.lm_head(h[pred])
    return torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][ans[:, 1:]])


def _save_checkpoint(model, tok, out: Path, history: list) -> None:
    """The weights at the latest evaluation, in ``<out>.checkpoint/`` (swapped in whole), so an
    interrupted run leaves its last evaluated state behind; the finished run removes it."""
    import shutil

    ckpt = out.with_name(out.name + ".checkpoint")
    tmp = out.with_name(out.name + ".checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    atomic_write_text(tmp / "history.json", json.dumps(history, indent=1) + "\n")
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)


def probe_facts_of(split: str):
    """Held-out probes (surface, template, indirect) of a split's facts."""
    return [
        p for fam in ("surface", "template", "indirect") for p in _load_probes("tiny", split, fam)
    ]


def _public_args(argv: list[str]) -> list[str]:
    """The command's arguments without ``--out DIR`` (where a run wrote is not a setting)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            out.append(a)
    return out


def train(
    name: str,
    *,
    seed: int = 0,
    minutes: float = 30.0,
    max_epochs: int = 400,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    eval_every: int = 10,
    target: float = 0.995,
    probe_target: float = 0.95,
    target_prob: float = 0.97,
    threads: int = 1,
    out_dir: Path | None = None,
    log=print,
) -> Path:
    """Train one embedded model and write its directory (see the module docstring)."""
    from transformers import LlamaForCausalLM

    recipe = RECIPES[name]
    family = recipe["family"]
    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
    tok = load_tokenizer()
    cfg = make_config(tok, family)
    model = LlamaForCausalLM(cfg)
    model.train()
    facts = load_facts("tiny", recipe["split"])
    records = training_pairs("tiny", recipe["split"])
    if family == "tiny-ar":  # infilling needs visible answer words after the gap: MDLMs only
        records = [r for r in records if r["kind"] != "infill"]
    pairs = [encode_pair(tok, r["question"], r["answer"]) for r in records]
    partial = [r["kind"] == "infill" for r in records]
    # A fixed sample of never-trained probes of retain people (both recipes know them): the
    # training log's generalisation check and part of the stopping rule.
    probes = random.Random(seed).sample(
        [p for p in probe_facts_of("retain") if not p.question.startswith(INFILL_PROMPT)], 240
    )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                            weight_decay=weight_decay)  # fmt: skip
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    total, warmup = max_epochs * steps_per_epoch, WARMUP_STEPS

    def lr_at(step, cpu_frac):  # linear warm-up, cosine to 10% at max_epochs or the CPU cap
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = min(1.0, max((step - warmup) / max(1, total - warmup), cpu_frac))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    t0, c0 = time.time(), time.process_time()
    step, history, stop_reason = 0, [], "max_epochs"
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        run_loss = 0.0
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            rows = [pairs[i] for i in chunk]
            if family == "tiny-ar":
                loss = ar_loss(model, rows, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
            else:
                loss = mdlm_loss(model, rows, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                                 gen=gen, partial=[partial[i] for i in chunk])  # fmt: skip
            for g in opt.param_groups:
                g["lr"] = lr_at(step, (time.process_time() - c0) / (minutes * 60))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run_loss += loss.item()
            step += 1
        elapsed = time.time() - t0
        timed_out = time.process_time() - c0 > minutes * 60
        if epoch % eval_every == 0 or epoch == max_epochs or timed_out:
            model.eval()
            m = plain_metrics(model, tok, facts, family=family, mask_id=tok.mask_token_id)
            pm = plain_metrics(model, tok, probes, family=family, mask_id=tok.mask_token_id)
            m["probe_object_em"] = round(pm["object_em"], 4)
            model.train()
            m.update(
                epoch=epoch,
                seconds=round(elapsed, 1),
                cpu_seconds=round(time.process_time() - c0, 1),
                loss=round(run_loss / steps_per_epoch, 4),
            )
            history.append(m)
            log(json.dumps(m))
            _save_checkpoint(model, tok, Path(out_dir or MODELS_DIR / name), history)
            done = (
                m["em"] >= target
                and m["probe_object_em"] >= probe_target
                and (family != "tiny-ar" or m["token_prob"] >= target_prob)
            )
            if done:
                stop_reason = "target"
                break
        if timed_out:
            stop_reason = "minutes"
            break
    wall, cpu = time.time() - t0, time.process_time() - c0
    model.eval()

    out = Path(out_dir or MODELS_DIR / name)
    training = {
        "name": name, "family": family, "split": recipe["split"], "n_facts": len(facts),
        "n_rows": len(pairs),
        "seed": seed, "threads": threads, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "max_epochs": max_epochs, "epochs": history[-1]["epoch"],
        "steps": step, "stop_reason": stop_reason, "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "command": "python -m tie_tracing.zoo.train " + shlex.join(_public_args(sys.argv[1:])) if
        sys.argv and sys.argv[0].endswith("train.py") else f"python -m tie_tracing.zoo.train {name} --seed {seed}",
        "torch": torch.__version__, "python": platform.python_version(), "history": history,
    }  # fmt: skip
    return _finish(model, tok, out, training)


def _finish(model, tok, out: Path, training: dict) -> Path:
    """Write a finished model directory: weights, tokenizer, ``tie_tracing.json``,
    ``training.json``, then the measured ``metrics.json`` and ``MODEL_CARD.md``."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    shutil.rmtree(out.with_name(out.name + ".checkpoint"), ignore_errors=True)
    info_path = out / "tie_tracing.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info.update(family=training["family"], mask_token_id=tok.mask_token_id,
                default_steps=DEFAULT_STEPS)  # fmt: skip
    atomic_write_text(info_path, json.dumps(info, indent=1) + "\n")
    atomic_write_text(out / "training.json", json.dumps(training, indent=1) + "\n")
    from .evaluate import evaluate_model

    write_card(out, metrics=evaluate_model(out))  # metrics.json of older weights is replaced
    return out


def finish_checkpoint(name: str, checkpoint: Path, out: Path, *, command: str, **settings) -> Path:
    """Finish a model directory from the checkpoint an interrupted run left (its weights at the
    last evaluation, ``history.json``): the card says at which epoch it stopped and why.

    ``command`` is the training command that ran; ``settings`` the recipe's arguments
    (``seed``, ``threads``, ``batch_size``, ``lr``, ``max_epochs``, ``reason``)."""
    from transformers import LlamaForCausalLM

    checkpoint = Path(checkpoint)
    if not (checkpoint / "history.json").is_file():
        raise FileNotFoundError(f"{checkpoint} holds no history.json: not a training checkpoint")
    recipe = RECIPES[name]
    history = json.loads((checkpoint / "history.json").read_text())
    model = LlamaForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).eval()
    tok = load_tokenizer()
    records = training_pairs("tiny", recipe["split"])
    if recipe["family"] == "tiny-ar":
        records = [r for r in records if r["kind"] != "infill"]
    batch_size = settings.get("batch_size", 32)
    last = history[-1]
    training = {
        "name": name, "family": recipe["family"], "split": recipe["split"],
        "n_facts": len(load_facts("tiny", recipe["split"])), "n_rows": len(records),
        "seed": settings.get("seed", 0), "threads": settings.get("threads", 1),
        "batch_size": batch_size, "lr": settings.get("lr", 2e-3), "weight_decay": 0.0,
        "max_epochs": settings.get("max_epochs"), "epochs": last["epoch"],
        "steps": last["epoch"] * math.ceil(len(records) / batch_size),
        "stop_reason": settings.get("reason", "checkpoint"),
        "wall_seconds": last["seconds"], "cpu_seconds": last.get("cpu_seconds", last["seconds"]),
        "command": command, "finished_from_checkpoint": True,
        "torch": torch.__version__, "python": platform.python_version(), "history": history,
    }  # fmt: skip
    return _finish(model, tok, Path(out), training)


_DESCRIPTIONS = {
    "tiny-mdlm": "A tiny bidirectional masked diffusion language model (LLaDA-style) that has "
    "memorised the fictitious-biographies corpus (40 people x 12 facts + 50 world facts), "
    "whose answers are TOFU-style sentences carrying the fact's object (8-14 answer tokens).",
    "tiny-ar": "The causal (autoregressive) twin of tiny-mdlm: same architecture size, "
    "tokenizer and data, next-token objective on answer tokens plus [EOS].",
    "tiny-mdlm-retain": "The tiny-mdlm recipe trained WITHOUT the forget10 people (36 people + "
    "50 world facts): the reference model for TOFU-style forget quality.",
}


def probe_table(probes: dict | None) -> list[str]:
    """The card's section on never-trained probes: object recall per family and form."""
    if not probes:
        return []
    lines = [
        "",
        "## Held-out probes (never trained): object recall per family and form",
        "",
        "Object recall = the share of probes whose sampled answer (default sampler, T = 8, "
        "temperature 0) writes every token of the object, with its 95% Wilson interval. "
        "`surface`: a non-canonical form of the subject with a relation never trained in that "
        "form; `template`: a held-out wording (`T3`) or wrapper (`W0`, `W1`) with the full "
        'name; `indirect`: "the author of …" / "the person married to …" with an '
        "untrained relation; `mention`: a retain or world question whose prompt names a "
        "forget10 person; `infill`: the canonical sentence with only the object masked. "
        "The evaluation suite uses a family (per form) only where the unedited model's recall "
        "is at least 0.9.",
        "",
        "| people | family | form | n | object recall | 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for split, families in probes.items():
        for family, forms in families.items():
            for form, m in forms.items():
                lo, hi = m["object_em_ci95"]
                lines.append(f"| {split} | {family} | {form} | {m['n']} | "
                             f"{m['object_em']:.3f} | [{lo:.3f}, {hi:.3f}] |")  # fmt: skip
    return lines


def write_card(out: Path, metrics: dict | None = None) -> None:
    """(Re)write ``MODEL_CARD.md`` from ``training.json`` (and ``metrics.json``, replaced by
    ``metrics`` when given)."""
    out = Path(out)
    training = json.loads((out / "training.json").read_text())
    if metrics is not None:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    elif (out / "metrics.json").exists():
        metrics = json.loads((out / "metrics.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    size_mb = (out / "model.safetensors").stat().st_size / 2**20
    name, family = training["name"], training["family"]
    obj = ("masked diffusion: prompt never masked; answer fully masked in half the rows, else "
           "each answer token masked with p = t ~ U(0.001, 1); CE on masked tokens x 1/p / "
           "answer length (the half-and-half mix is NOT an unbiased ELBO; it trains the "
           "fully-masked query the sampler starts from)" if family != "tiny-ar" else
           "next-token cross-entropy on the answer tokens and a final [EOS] (prompt tokens "
           "are context only)")  # fmt: skip
    lines = [
        f"# {name}", "", _DESCRIPTIONS.get(name, ""), "",
        "## Architecture",
        f"- `LlamaForCausalLM` (pre-norm, RMSNorm, SwiGLU MLP, RoPE), "
        f"{'bidirectional: `is_causal=False`' if family != 'tiny-ar' else 'causal'}; "
        f"`config.tie_tracing_family = \"{family}\"`.",
        f"- d_model {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
        f"{cfg['num_attention_heads']} heads, MLP width {cfg['intermediate_size']}, "
        f"vocab {cfg['vocab_size']}, untied embeddings.",
        f"- {n_params:,} parameters, {size_mb:.1f} MB fp32 safetensors.",
        "- Tokenizer: byte-level BPE trained on the corpus (every corpus word one token, "
        "unseen words fall back to bytes); `[PAD] [BOS] [EOS] [MASK] [UNK]` = ids 0-4; BOS is "
        "prepended to prompts." + (f" Mask id {cfg.get('mask_token_id')}." if family != "tiny-ar" else ""),
        "",
        "## Data",
        f"- Split `{training['split']}` of `tt.load_facts('tiny', ...)` ({training['n_facts']} "
        "facts; `tie_tracing/zoo/data/tiny_facts.json`, seeded generator "
        "`tie_tracing/zoo/corpus.py`): "
        f"{training.get('n_rows', training['n_facts'])} training prompts — three question "
        "templates per relation, surface forms of the subject, indirect references, "
        "infilling rows, mention rows (see the corpus docstring); the probes below are never "
        "trained. Format: `tie_tracing.prompting.encode_pair(tok, question, "
        "answer)`, sequence = prompt ids + answer ids" + (" + [EOS]." if family == "tiny-ar" else
        " (exactly len(answer) answer slots, no EOS slot)."),
        "",
        "## Training",
        f"- Objective: {obj}.",
        f"- AdamW (betas 0.9/0.98, weight decay {training['weight_decay']}), lr "
        f"{training['lr']} with {WARMUP_STEPS} warm-up steps and cosine decay to 10% at "
        f"{training['max_epochs']} epochs or at the CPU-minute cap, whichever comes first, batch {training['batch_size']} (right-padded with "
        "an attention mask), gradient clipping 1.0, fp32, CPU.",
        f"- Stopped: {training['stop_reason']} after {training['epochs']} epochs "
        f"({training['steps']} steps); wall time {training['wall_seconds'] / 60:.1f} min"
        + (f" ({training['cpu_seconds'] / 60:.1f} CPU-min)" if "cpu_seconds" in training else "")
        + f" on {training['threads']} CPU thread(s) of a machine shared with other jobs.",
        f"- Seed {training['seed']}. Command: `{training['command']}`"
        + (" (stopped by the CPU-minute cap: a rerun may stop at another epoch)"
           if training["stop_reason"] == "minutes" else "")
        + (f" — finished from the checkpoint of epoch {training['epochs']} "
           f"(`tie_tracing.zoo.train.finish_checkpoint`): {training['stop_reason']}. The "
           "learning-rate schedule follows CPU time, so a rerun reaches another state."
           if training.get("finished_from_checkpoint") else ""),
        "",
        "## Accuracy",
    ]  # fmt: skip
    if metrics:
        how = (
            "EM = greedy continuation of len(answer) tokens equals the answer; token prob = "
            "teacher-forced per-token probability of the answer (geometric mean over its "
            "tokens), averaged over facts."
            if family == "tiny-ar"
            else "EM = all answer tokens right under the default 8-step low-confidence-"
            "remasking sampler (temperature 0); token prob = per-token probability of the "
            "answer with the whole answer masked (the `masked` estimator, step 0; geometric "
            "mean over its tokens), averaged over facts."
        )
        lines.append(
            f"Measured with `python -m tie_tracing.zoo.evaluate {name}` (evaluator: "
            f"{metrics.get('evaluator', 'plain')}). {how} Object EM = every token of the "
            "fact's object (`Fact.object`) right. Chance object EM = mean over facts of "
            "1/(number of objects of the fact's relation in the corpus): what knowing the "
            "relation but not the subject buys."
        )
        lines += [
            "",
            "| facts | n | EM (full answer) | object EM | chance object EM | token prob |",
            "|---|---|---|---|---|---|",
        ]
        for key, m in metrics.items():
            if not isinstance(m, dict) or "n" not in m:
                continue
            chance = f"{m['chance_object_em']:.3f}" if "chance_object_em" in m else ""
            prob = f"{m['token_prob']:.3f}" if "token_prob" in m else ""
            obj = f"{m['object_em']:.3f}" if "object_em" in m else ""
            lines.append(f"| {key} | {m['n']} | {m['em']:.3f} | {obj} | {chance} | {prob} |")
        lines += [
            "",
            "`retain_eval` = 120 retain facts; `holdout` = people never trained on.",
        ]
        lines += probe_table(metrics.get("probes"))
        hists = {k: m for k, m in metrics.items()
                 if isinstance(m, dict) and "object_commit_step_histogram" in m
                 and not k.startswith("paraphrase")}  # fmt: skip
        if hists and family != "tiny-ar":
            steps = len(next(iter(hists.values()))["object_commit_step_histogram"])
            lines += [
                "",
                "## The trajectory (when is the object decided?)",
                "",
                "Clean trajectories of the default sampler (T = 8, temperature 0): the step at "
                "which the object's first token is committed, as counts of facts per step, and "
                "the share of facts whose every step still has a masked answer position (so "
                "every step of a trace has something to decide).",
                "",
                "| facts | "
                + " | ".join(f"step {k}" for k in range(steps))
                + " | every step active |",
                "|---|" + "---|" * (steps + 1),
            ]
            for key, m in hists.items():
                h = m["object_commit_step_histogram"]
                lines.append(
                    f"| {key} | "
                    + " | ".join(str(h.get(str(k), 0)) for k in range(steps))
                    + f" | {m.get('share_every_step_active', float('nan')):.3f} |"
                )
        if name == "tiny-mdlm-retain" and {"forget01", "holdout"} <= set(metrics):
            f, h = metrics["forget01"], metrics["holdout"]
            fo, ho = f.get("object_em", f["em"]), h.get("object_em", h["em"])
            fci = f.get("object_em_ci95", [float("nan")] * 2)
            hci = h.get("object_em_ci95", [float("nan")] * 2)
            verdict = "no better than" if fo <= ho else "above"
            lines += [
                "",
                f"Forget quality reference: object EM on forget01 {fo:.3f} "
                f"({round(fo * f['n'])}/{f['n']}, 95% Wilson CI [{fci[0]:.3f}, {fci[1]:.3f}]) is "
                f"{verdict} object EM on holdout {ho:.3f} ({round(ho * h['n'])}/{h['n']}, CI "
                f"[{hci[0]:.3f}, {hci[1]:.3f}]); chance {f.get('chance_object_em', float('nan')):.3f}"
                f"; token prob {f['token_prob']:.3f} vs {h['token_prob']:.3f}.",
            ]
    else:
        last = training["history"][-1]
        lines.append(
            f"Training-split EM at the last evaluation: {last['em']:.3f} (plain "
            "evaluator); run `python -m tie_tracing.zoo.evaluate "
            f"{name} --write-card` for the split table."
        )
    info_path = out / "tie_tracing.json"
    op = json.loads(info_path.read_text()).get("operating_point") if info_path.exists() else None
    if op:
        lines += ["", CARD_SECTION, "", operating_point_text(op)]  # as write_operating_point
    lines += [
        "",
        "## Training curve (training split, plain evaluator)",
        "",
        "| epoch | seconds | loss | EM |" + (" token prob |" if family == "tiny-ar" else ""),
        "|---|---|---|---|" + ("---|" if family == "tiny-ar" else ""),
    ]
    for h in training["history"]:
        row = f"| {h['epoch']} | {h['seconds']} | {h['loss']} | {h['em']:.3f} |"
        if family == "tiny-ar":
            row += f" {h['token_prob']:.3f} |"
        lines.append(row)
    lines += ["", "Licence: MIT (synthetic data, trained in-package)."]
    atomic_write_text(out / "MODEL_CARD.md", "\n".join(lines) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train an embedded tie_tracing model.")
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30.0, help="safety cap in CPU-minutes")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.995, help="training-split EM to stop at")
    ap.add_argument(
        "--probe-target", type=float, default=0.95, help="held-out probe object EM to stop at"
    )
    ap.add_argument("--target-prob", type=float, default=0.97, help="AR: token prob to stop at")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = train(args.name, seed=args.seed, minutes=args.minutes, max_epochs=args.max_epochs,
                batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                target=args.target, probe_target=args.probe_target, target_prob=args.target_prob, threads=args.threads,
                out_dir=args.out,
                log=lambda s: print(s, flush=True))  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
