"""Knowledge checks of the embedded models (the numbers in their model cards).

Two implementations of the same measurements:

* a small plain-torch greedy evaluator (:func:`greedy_diffuse`, :func:`ar_answer_stats`), used
  while training (no dependence on the rest of the package);
* :func:`evaluate_model`, which loads a shipped model and measures with ``tt.load_model`` /
  ``tt.diffuse`` when those exist (``use_package=True``, the default), falling back to the
  plain evaluator otherwise. The card says which one produced its numbers.

Sampler semantics (SPEC §4, default): query = prompt + ``len(answer)`` masks; for each of
``steps`` steps commit the ``n_k`` most confident masked positions (argmax token, temperature 0),
``n_k`` splitting the masked count evenly with the remainder to the first steps; the mask token
is never committed (excluded from the argmax, as in ``tt.diffuse``).
Exact match (EM) = every answer token equals the reference token.

``python -m tie_tracing.zoo.evaluate <name>`` measures one shipped model; ``python -m
tie_tracing.zoo.cards <name>`` also rewrites its card.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.prompting import encode_pair, group_by_shape
from .corpus import PROBE_FAMILIES, _to_fact, load_corpus, load_facts, probe_records

MODELS_DIR = Path(__file__).resolve().parent / "models"
EVAL_SPLITS = ("forget01", "forget10", "retain_eval", "holdout", "world")
#: Whose never-trained probes the card measures (``mention`` probes name a forget10 person and
#: ask about somebody else, so they exist for ``forget10`` only).
PROBE_SPLITS = ("retain", "forget10")


def step_counts(n_masked: int, steps: int) -> list[int]:
    """``n_k``: ``n_masked`` split evenly over ``steps``, remainder to the first steps."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if k < rem else 0) for k in range(steps)]


@torch.no_grad()
def greedy_diffuse(
    model,
    pairs: Sequence[tuple[list[int], list[int]]],
    mask_id: int,
    steps: int = 8,
    batch_size: int = 256,
) -> tuple[list[list[int]], list[float]]:
    """Low-confidence-remasking greedy sampling of each pair's answer span (plain torch).

    Returns the sampled answer token ids, one list per pair, and the ``masked`` estimate of
    the reference answer's per-token probability (step 0, whole answer masked; geometric
    mean over the answer's tokens). As in ``tt.diffuse``, the mask token is excluded from the
    argmax (a committed position always gets a real token; its confidence is the chosen
    token's probability under the full softmax).
    """
    out: list[list[int] | None] = [None] * len(pairs)
    mask_ids = torch.tensor([mask_id])
    probs_out: list[float | None] = [None] * len(pairs)
    for (lp, la), idx in group_by_shape(pairs).items():
        for s in range(0, len(idx), batch_size):
            rows = idx[s : s + batch_size]
            x = torch.tensor([list(pairs[i][0]) + [mask_id] * la for i in rows])
            ref = torch.tensor([list(pairs[i][1]) for i in rows])
            for k, n_k in enumerate(step_counts(la, steps)):
                logits = model(input_ids=x).logits[:, lp:]
                probs = logits.float().softmax(-1)
                if k == 0:
                    p0 = probs.gather(-1, ref[..., None])[..., 0].log().mean(-1).exp()
                if n_k == 0:
                    continue
                # As tt.diffuse's commit: never commit the mask token (a silent re-mask);
                # the confidence is still the chosen token's probability under the full softmax.
                conf, tokens = probs.index_fill(-1, mask_ids, -math.inf).max(-1)
                masked = x[:, lp:] == mask_id
                conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
                # tt.diffuse's (and generate.py's) tie rule: top-k over each whole row
                row = torch.full(x.shape, -math.inf, dtype=conf.dtype)
                row[:, lp:] = conf
                for r in range(x.shape[0]):
                    pick = row[r].topk(n_k).indices
                    x[r, pick] = tokens[r, pick - lp]
            for r, i in enumerate(rows):
                out[i] = x[r, lp:].tolist()
                probs_out[i] = float(p0[r])
    return out, probs_out  # type: ignore[return-value]


@torch.no_grad()
def ar_answer_stats(
    model, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 256
) -> tuple[list[float], list[list[int]]]:
    """Teacher-forced per-token answer probability (geometric mean over the answer's tokens)
    and the greedy continuation of ``len(answer)`` tokens, for a causal model."""
    probs: list[float | None] = [None] * len(pairs)
    greedy: list[list[int] | None] = [None] * len(pairs)
    for (lp, la), idx in group_by_shape(pairs).items():
        for s in range(0, len(idx), batch_size):
            rows = idx[s : s + batch_size]
            x = torch.tensor([list(pairs[i][0]) + list(pairs[i][1]) for i in rows])
            logp = model(input_ids=x).logits[:, lp - 1 : lp + la - 1].float().log_softmax(-1)
            tok_lp = logp.gather(-1, x[:, lp:, None])[..., 0]
            g = x[:, :lp]
            for _ in range(la):
                nxt = model(input_ids=g).logits[:, -1].argmax(-1, keepdim=True)
                g = torch.cat([g, nxt], 1)
            for r, i in enumerate(rows):
                probs[i] = float(tok_lp[r].mean().exp())
                greedy[i] = g[r, lp:].tolist()
    return probs, greedy  # type: ignore[return-value]


def _pairs(tok, facts, paraphrase: bool = False):
    return [encode_pair(tok, f.paraphrased_question if paraphrase else f.question, f.answer)
            for f in facts]  # fmt: skip


def _object_hits(tok, facts, pairs, predictions) -> list[bool]:
    """Per fact: every token of its object (``locate_object``) was produced."""
    from ..core.facts import locate_object

    hits = []
    for f, (_, a), pred in zip(facts, pairs, predictions):
        offsets = locate_object(tok, a, f)
        hits.append(all(pred[i] == a[i] for i in offsets))
    return hits


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def plain_metrics(
    model, tok, facts, *, family: str, mask_id: int | None, steps: int = 8, paraphrase: bool = False
) -> dict:
    """EM (and for AR the teacher-forced per-token probability) with the plain evaluator."""
    pairs = _pairs(tok, facts, paraphrase)
    if family == "tiny-ar":
        probs, pred = ar_answer_stats(model, pairs)
    else:
        assert mask_id is not None, "an MDLM needs its mask id"
        pred, probs = greedy_diffuse(model, pairs, mask_id, steps=steps)
    em = [p == list(a) for p, (_, a) in zip(pred, pairs)]
    obj = _object_hits(tok, facts, pairs, pred)
    return {
        "n": len(facts),
        "em": sum(em) / len(em),
        "object_em": sum(obj) / len(obj),
        "token_prob": sum(probs) / len(probs),
    }


def _package_metrics(lm, facts, *, steps: int, paraphrase: bool) -> dict:
    """The same measurement through a ``tt.load_model`` model and ``tt.diffuse``."""
    import dataclasses

    from .. import core as tt

    if paraphrase:
        facts = [dataclasses.replace(f, question=f.paraphrased_question) for f in facts]
    res = tt.diffuse(lm, facts, steps=steps, target="answer", progress=False)
    assert res.target_logprobs is not None
    em, obj, probs, commit, busy = [], [], [], [], []
    for r, f in enumerate(facts):
        _, answer_ids = lm.encode(f.question, f.answer)
        final = res.answer_tokens(r)[-1].tolist()
        em.append(final == list(answer_ids))
        offsets = res.object_offsets[r]
        obj.append(all(final[i] == answer_ids[i] for i in offsets))
        probs.append(math.exp(float(res.target_logprobs[r, 0]) / len(answer_ids)))
        commits = res.commits(r)
        commit.append(int(commits[offsets[0]]))
        busy.append(all(bool((commits >= k).any()) for k in range(steps)))
    hist = {str(k): commit.count(k) for k in range(steps)}
    return {
        "n": len(facts),
        "em": sum(em) / len(em),
        "object_em": sum(obj) / len(obj),
        "object_em_ci95": list(wilson_interval(sum(obj), len(obj))),
        "token_prob": sum(probs) / len(probs),
        "object_commit_step_histogram": hist,
        "share_every_step_active": sum(busy) / len(busy),
    }


def chance_em(split: str, limit: int | None = None) -> float:
    """Object EM of a guesser that knows each fact's relation but not its subject: the mean
    over facts of 1 / (number of distinct objects of the relation in the corpus)."""
    raw = load_corpus("tiny")
    objects: dict[str, set[str]] = {}
    for f in raw["facts"]:
        objects.setdefault(f["relation"], set()).add(f["object"])
    by_id = {f["id"]: f for f in raw["facts"]}
    rels = [by_id[i]["relation"] for i in raw["splits"][split][:limit]]
    return sum(1 / len(objects[r]) for r in rels) / len(rels)


def load_plain(name_or_dir: str | Path):
    """``(model, tokenizer, info)`` of a shipped model, loaded with transformers only."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    path = Path(name_or_dir)
    if not path.is_dir():
        path = MODELS_DIR / str(name_or_dir)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    model.eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    info = json.loads((path / "tie_tracing.json").read_text())
    return model, tok, info


@torch.no_grad()
def infill_recall(model, tok, facts, mask_id: int) -> dict:
    """Object recall with only the object masked (the ``infill`` probes): the answer sentence is
    visible except the object's tokens, which are filled greedily, most confident first (one
    forward per token, the mask token never committed). Plain torch, one fact at a time."""
    from ..core.facts import locate_object

    hits = []
    for f in facts:
        prompt, answer = encode_pair(tok, f.question, f.answer)
        offsets = [len(prompt) + i for i in locate_object(tok, answer, f)]
        x = torch.tensor([list(prompt) + list(answer)])
        x[0, offsets] = mask_id
        left = list(offsets)
        while left:
            probs = model(input_ids=x).logits[0].float().softmax(-1)
            probs[:, mask_id] = -math.inf
            conf, tokens = probs.max(-1)
            pick = max(left, key=lambda i: float(conf[i]))
            x[0, pick] = tokens[pick]
            left.remove(pick)
        full = list(prompt) + list(answer)
        hits.append(all(int(x[0, i]) == full[i] for i in offsets))
    return {"n": len(facts), "object_em": sum(hits) / max(1, len(hits))}


def probe_recall(
    model,
    tok,
    info: dict,
    lm=None,
    *,
    steps: int = 8,
    splits: Sequence[str] = PROBE_SPLITS,
    limit: int | None = None,
) -> dict:
    """Object recall on the never-trained probes, ``{split: {family: {form: {n, object_em,
    object_em_ci95}}}}`` (form ``"all"``: the family as a whole), under the default sampler
    (``tt.diffuse`` through ``lm`` when given, else the plain evaluator); ``infill`` probes mask
    only the object (:func:`infill_recall`)."""
    out: dict = {}
    for split in splits:
        per_split: dict = {}
        for family in PROBE_FAMILIES:
            if family == "infill" and info["family"] == "tiny-ar":
                continue  # the causal twin trains no infilling rows: it cannot see the answer
            records = probe_records("tiny", split, family)[:limit]
            if not records:
                continue
            groups: dict[str, list] = {"all": records}
            for r in records:
                groups.setdefault(
                    r["form"] if family != "template" else r["kind"].split("-")[0], []
                ).append(r)
            per_form = {}
            for form, rows in groups.items():
                facts = [_to_fact(r) for r in rows]
                if family == "infill":  # only the object is masked: the subject stays visible
                    m = infill_recall(model, tok, facts, info["mask_token_id"])
                elif lm is not None:
                    m = _package_metrics(lm, facts, steps=steps, paraphrase=False)
                else:
                    m = plain_metrics(model, tok, facts, family=info["family"],
                                      mask_id=info.get("mask_token_id"), steps=steps)  # fmt: skip
                hits = round(m["object_em"] * m["n"])
                per_form[form] = {"n": m["n"], "object_em": m["object_em"],
                                  "object_em_ci95": list(wilson_interval(hits, m["n"]))}  # fmt: skip
            per_split[family] = per_form
        out[split] = per_split
    return out


def evaluate_model(
    name: str | Path,
    *,
    splits: Sequence[str] = EVAL_SPLITS,
    steps: int = 8,
    paraphrase_splits: Sequence[str] = (),
    probes: bool = True,
    use_package: bool = True,
    limit: int | None = None,
) -> dict:
    """Card metrics of a shipped model: ``{split: {...}, "probes": {...}, "evaluator": ...}``
    (``probes``: :func:`probe_recall`). ``name``: an embedded model name or a model directory;
    ``limit`` keeps the first facts of each split (for quick tests)."""
    model, tok, info = load_plain(name)
    family, mask_id = info["family"], info.get("mask_token_id")
    lm = None
    if use_package and family != "tiny-ar":
        from .. import core as tt

        path = Path(name) if Path(name).is_dir() else MODELS_DIR / str(name)
        lm = tt.load_model(str(path))
    evaluator = "tt.load_model + tt.diffuse" if lm is not None else "plain (zoo.evaluate)"
    results: dict = {}
    jobs = [(s, False) for s in splits] + [(s, True) for s in paraphrase_splits]
    for split, para in jobs:
        facts = load_facts("tiny", split)[:limit]
        key = f"paraphrase:{split}" if para else split
        if lm is not None:
            results[key] = _package_metrics(lm, facts, steps=steps, paraphrase=para)
        else:
            results[key] = plain_metrics(model, tok, facts, family=family, mask_id=mask_id,
                                         steps=steps, paraphrase=para)  # fmt: skip
        if not para:
            results[key]["chance_object_em"] = chance_em(split, limit)
    if probes:
        results["probes"] = probe_recall(model, tok, info, lm, steps=steps, limit=limit)
    results["evaluator"] = evaluator
    return results


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--plain", action="store_true", help="use the plain evaluator only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = evaluate_model(args.name, use_package=not args.plain)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
