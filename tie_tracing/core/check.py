"""The checkpoint check: refuse a loaded model that would trace garbage without an error.

:func:`check_model` runs on every :func:`~tie_tracing.core.model.load_model` (``check=False`` skips
it) and behind ``tie-tracing check --model DIR``. Each check targets a silent failure seen on
real checkpoints:

* ``finite`` — every floating parameter and buffer is finite.
* ``initialised`` — no floating parameter or buffer holds subnormal values (what freshly
  allocated, never-written memory typically reads as: ``4.6e-41``, ``-7.8e-22``… float16 is
  exempt, its trained weights are often subnormal), and every rotary ``inv_freq`` buffer is
  positive, at most 1 and non-increasing, as every rope variant computes it.
* ``bidirectional`` — for an MDLM family: changing the last token of a short input changes the
  prediction at the first position (a causal forward would leave it untouched).
* ``deterministic`` — two identical forwards give identical logits, and they are finite.
* ``mask_id`` — the mask id lies inside the model's vocabulary (its logits' width).
* ``tokenizer_mask`` — the tokenizer's mask token, and ``config.mask_token_id``, where they
  exist, are the model's mask id.

Cost: one pass over the weights (chunked; seconds on CPU for an 8B model) and four forwards of
eight tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import CheckpointError

#: The checks, in the order they run.
CHECKS: tuple[str, ...] = (
    "finite",
    "initialised",
    "bidirectional",
    "deterministic",
    "mask_id",
    "tokenizer_mask",
)
_CHUNK = 1 << 24


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``ok`` ``True``/``False``, or ``None`` when it does not apply."""

    check: str
    ok: bool | None
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_model` found, with the model's identity (printed by
    ``tie-tracing check``)."""

    name: str
    family: str
    layers: int
    sites: str
    mask_token_id: int | None
    eos_token_id: int | None
    dtype: str
    device: str
    compat_fixes: tuple[str, ...]
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(f.ok is not False for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.ok is False]

    def __str__(self) -> str:
        lines = [
            f"model          {self.name}",
            f"family         {self.family}",
            f"layers         {self.layers}",
            f"sites          {self.sites}",
            f"mask id        {self.mask_token_id}",
            f"EOS id         {self.eos_token_id}",
            f"dtype          {self.dtype}",
            f"device         {self.device}",
            f"compat fixes   {', '.join(self.compat_fixes) or 'none needed'}",
        ]
        for f in self.findings:
            mark = {True: "ok  ", False: "FAIL", None: "n/a "}[f.ok]
            lines.append(f"[{mark}] {f.check:<15} {f.detail}")
            if f.ok is False and f.fix:
                lines.append(f"       fix: {f.fix}")
        lines.append("checkpoint ok" if self.ok else f"{len(self.failures)} check(s) failed")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`CheckpointError` naming every failed check and its fix."""
        if self.ok:
            return
        parts = [f"{f.check}: {f.detail}" + (f" ({f.fix})" if f.fix else "") for f in self.failures]
        raise CheckpointError(
            f"{self.name} ({self.family}) fails the checkpoint check — "
            + "; ".join(parts)
            + ". load_model(..., check=False) skips the check; `tie-tracing check --model "
            "DIR` prints every finding"
        )


def _scan(model) -> tuple[Finding, Finding]:
    import torch

    module = model._module
    non_finite: list[str] = []
    subnormal: list[str] = []
    rotary: list[str] = []
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        if not torch.is_floating_point(tensor) or tensor.device.type == "meta":
            continue
        flat = tensor.detach().reshape(-1)
        tiny = torch.finfo(tensor.dtype).tiny
        check_tiny = tensor.dtype != torch.float16
        bad_finite = bad_tiny = False
        for start in range(0, flat.numel(), _CHUNK):
            chunk = flat[start : start + _CHUNK]
            if not bad_finite and not bool(torch.isfinite(chunk).all()):
                bad_finite = True
            if check_tiny and not bad_tiny:
                a = chunk.abs()
                bad_tiny = bool(((a < tiny) & (a > 0)).any())
        if bad_finite:
            non_finite.append(name)
        if bad_tiny:
            subnormal.append(name)
        if name.endswith("inv_freq") and not bad_finite and flat.numel():
            f = flat.float()
            if not (bool((f > 0).all()) and bool((f <= 1).all()) and bool((f[1:] <= f[:-1]).all())):
                rotary.append(name)
    finite = (
        Finding("finite", True, f"{len(named)} parameters and buffers are finite")
        if not non_finite
        else Finding(
            "finite",
            False,
            f"NaN or inf in {len(non_finite)} tensors ({', '.join(non_finite[:4])})",
            "the weights are corrupt or were saved after a diverged step: use another checkpoint",
        )
    )
    problems = []
    if subnormal:
        problems.append(
            f"subnormal values typical of uninitialised memory in {', '.join(subnormal[:4])}"
        )
    if rotary:
        problems.append(
            f"rotary inv_freq not positive, ≤ 1 and non-increasing in {', '.join(rotary[:4])}"
        )
    initialised = (
        Finding("initialised", True, "no uninitialised values found (subnormals, rotary inv_freq)")
        if not problems
        else Finding(
            "initialised",
            False,
            "; ".join(problems),
            "a buffer or weight was never written by loading (e.g. a rotary buffer under a newer "
            "transformers): recompute it with the module's own initialisation, or use the "
            "transformers version the checkpoint was written for",
        )
    )
    return finite, initialised


def _probe_ids(model, length: int = 8):
    """A short query: ``length // 2`` ordinary tokens, then mask tokens (MDLMs; an ordinary
    token instead where the mask id is outside the vocabulary, which its own check reports)."""
    import torch

    vocab = _vocab(model)
    mask = model.mask_token_id
    if mask is not None and not 0 <= int(mask) < vocab:
        mask = None
    special = {mask, getattr(model.tokenizer, "eos_token_id", None)}
    ordinary = [i for i in range(min(vocab, 200) // 2, min(vocab, 200)) if i not in special]
    ids = ordinary[: length // 2]
    rest = [mask if mask is not None else ordinary[-1]] * (length - len(ids))
    return torch.tensor([ids + rest], device=model.param_device), ordinary


def _vocab(model) -> int:
    weight: Any = model.embedding_module().weight
    return int(weight.shape[0])


def _forward(model, ids):
    import torch

    with torch.no_grad():
        return model.forward_logits(ids)


def _forwards(model) -> tuple[Finding, Finding, int]:
    import torch

    ids, ordinary = _probe_ids(model)
    first = _forward(model, ids)
    again = _forward(model, ids)
    width = int(first.shape[-1])
    if not bool(torch.isfinite(first).all()):
        det = Finding(
            "deterministic",
            False,
            "the logits of a short query are not finite",
            "the weights or the forward are broken (check dtype overflow, e.g. float16)",
        )
    elif not torch.equal(first, again):
        diff = float((first.float() - again.float()).abs().max())
        det = Finding(
            "deterministic",
            False,
            f"two identical forwards differ (max |Δlogit| {diff:.3g})",
            "put the model in eval mode (dropout), or find the state the forward carries",
        )
    else:
        det = Finding("deterministic", True, "two identical forwards give identical logits")
    if model.is_causal:
        return Finding("bidirectional", None, "causal (AR) model: not an MDLM"), det, width
    changes = []
    for token in (ordinary[-1], ordinary[-2]):
        other = ids.clone()
        other[0, -1] = token
        # index 0 of the aligned logits is the forward's position 0 for every family
        changes.append(
            float((_forward(model, other)[0, 0].float() - first[0, 0].float()).abs().max())
        )
    if max(changes) > 0:
        bi = Finding(
            "bidirectional",
            True,
            f"changing the last token moves the first position's logits (max |Δ| {max(changes):.3g})",
        )
    else:
        bi = Finding(
            "bidirectional",
            False,
            "changing the last token leaves the first position's logits unchanged: the "
            "attention is causal",
            "an MDLM must attend in both directions: check the family (family='diffullama' "
            "passes a full attention mask) and the modelling code's attention mask",
        )
    return bi, det, width


def _mask_checks(model, width: int) -> tuple[Finding, Finding]:
    mask = model.mask_token_id
    vocab = min(width, _vocab(model))
    if mask is None:
        return (
            Finding("mask_id", None, "causal (AR) model: no mask token"),
            Finding("tokenizer_mask", None, "causal (AR) model: no mask token"),
        )
    in_vocab = (
        Finding("mask_id", True, f"mask id {mask} lies in the vocabulary (0 … {vocab - 1})")
        if 0 <= int(mask) < vocab
        else Finding(
            "mask_id",
            False,
            f"mask id {mask} lies outside the vocabulary (0 … {vocab - 1})",
            "give the checkpoint's own mask id (mask_token_id=...) or the right family",
        )
    )
    disagree = []
    tok_mask = getattr(model.tokenizer, "mask_token_id", None)
    if tok_mask is not None and int(tok_mask) != int(mask):
        disagree.append(
            f"the tokenizer's mask token {model.tokenizer.mask_token!r} is id {tok_mask}"
        )
    config = getattr(model._module, "config", None)
    cfg_mask = getattr(config, "mask_token_id", None)
    if isinstance(cfg_mask, int) and cfg_mask != int(mask):
        disagree.append(f"config.mask_token_id is {cfg_mask}")
    if disagree:
        tok = Finding(
            "tokenizer_mask",
            False,
            f"the model uses mask id {mask}, but " + " and ".join(disagree),
            "use the tokenizer and config shipped with the weights, or pass the right "
            "mask_token_id",
        )
    else:
        seen = [s for s, v in (("tokenizer", tok_mask), ("config", cfg_mask)) if v is not None]
        tok = Finding(
            "tokenizer_mask",
            True,
            f"{' and '.join(seen)} {'agree' if len(seen) > 1 else 'agrees'} on mask id {mask}"
            if seen
            else f"neither tokenizer nor config names a mask token; using the table's {mask}",
        )
    return in_vocab, tok


def check_model(model) -> CheckReport:
    """Run every check of :data:`CHECKS` on a loaded :class:`~tie_tracing.core.model.TracedModel`.

    Returns:
        A :class:`CheckReport`; ``report.raise_for_failures()`` raises ``CheckpointError``
        naming each failure and its fix.
    """
    finite, initialised = _scan(model)
    bidirectional, deterministic, width = _forwards(model)
    mask_id, tokenizer_mask = _mask_checks(model, width)
    weight: Any = model.embedding_module().weight
    config = getattr(model._module, "config", None)
    eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    b = model.backbone
    return CheckReport(
        name=model.name,
        family=b.family,
        layers=model.num_layers,
        sites=f"resid={b.blocks}.<i>, attn=<block>.{b.attn}, mlp=<block>.{b.mlp}; "
        f"embedding={b.embedding}; shifted={b.shifted}",
        mask_token_id=model.mask_token_id,
        eos_token_id=eos if isinstance(eos, int) else None,
        dtype=str(weight.dtype).replace("torch.", ""),
        device=str(weight.device),
        compat_fixes=tuple(model.info.get("compat_fixes", ())),
        findings=(finite, initialised, bidirectional, deterministic, mask_id, tokenizer_mask),
    )
