"""Rewrite a shipped model's card: ``python -m tie_tracing.zoo.cards <name> [--plain]``.

Measures the model with :func:`.evaluate.evaluate_model` (printed as JSON, as
``python -m tie_tracing.zoo.evaluate <name>`` does) and rewrites ``models/<name>/metrics.json``
and ``MODEL_CARD.md`` with :func:`.train.write_card`. Training rewrites the card itself at the end
of a run; this command refreshes the numbers of an existing model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .evaluate import MODELS_DIR, evaluate_model
from .train import write_card


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="an embedded model's name or a model directory")
    ap.add_argument("--plain", action="store_true", help="use the plain evaluator only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate_model(args.name, use_package=not args.plain)
    print(json.dumps(res, indent=1))
    path = Path(args.name) if Path(args.name).is_dir() else MODELS_DIR / args.name
    write_card(path, metrics=res)


if __name__ == "__main__":
    main()
