"""``tie-tracing check --model DIR``: load a checkpoint and print what the checkpoint check finds.

Prints the family, the sites, the mask and EOS ids, the dtype and device, the compatibility
fixes loading applied (:mod:`~tie_tracing.core.compat`) and each check's finding
(:mod:`~tie_tracing.core.check`); exits 0 when every check passes, 1 when one fails (the report is
printed either way), 2 on a bad argument. Arguments are checked before the model is loaded;
nothing here imports torch until then, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(sub, common) -> argparse.ArgumentParser:
    """Register ``check`` on the ``tie-tracing`` subparsers (``common`` adds shared options)."""
    p = sub.add_parser(
        "check",
        help="load a checkpoint and report what the checkpoint check finds",
        description="Load a checkpoint (embedded name or local directory) through the same "
        "loader as every command, apply the named compatibility fixes, and print the family, "
        "sites, mask/EOS ids, dtype and each check's finding: finite and initialised weights "
        "and buffers, bidirectional attention (MDLMs), deterministic logits, the mask id in "
        "the vocabulary and agreeing with the tokenizer. Exit status 1 when a check fails.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="embedded name or local checkpoint directory")
    p.add_argument(
        "--family",
        default=None,
        help="backbone family, when the config does not say (e.g. diffullama)",
    )
    p.add_argument("--dtype", default=None, choices=DTYPES, help="unset: the checkpoint's own")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1; unset: cpu")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own modelling code (LLaDA, Dream)",
    )
    common(p, model=False)
    return p


def validate(args: argparse.Namespace, error) -> None:
    """Check the arguments before anything is loaded; ``error(message, hint)`` raises."""
    from .core.model import EMBEDDED_MODELS

    if args.model not in EMBEDDED_MODELS:
        path = Path(args.model).expanduser()
        if not path.is_dir():
            error(
                f"--model {args.model!r} is neither an embedded model "
                f"({', '.join(EMBEDDED_MODELS)}) nor a directory",
                "give a local checkpoint directory",
            )
        if not (path / "config.json").is_file():
            error(f"--model {args.model!r} has no config.json", "point --model at the checkpoint")
    if args.family is not None:
        from .core.backbones import BACKBONES

        if args.family not in BACKBONES:
            error(
                f"--family {args.family!r} is not a known family",
                f"one of {', '.join(sorted(BACKBONES))}",
            )
    if args.device is not None:
        from .core.checkpoints import check_device

        try:
            check_device(args.device, "--device")
        except ValueError as exc:
            error(str(exc), "use --device cpu, or run where the device is")


def run(args: argparse.Namespace) -> int:
    import torch

    from .core.check import check_model
    from .core.model import load_model

    model = load_model(
        args.model,
        family=args.family,
        trust_remote_code=args.trust_remote_code,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        device=args.device,
        progress=not args.quiet,
        check=False,
    )
    report = check_model(model)
    print(report)
    return 0 if report.ok else 1
