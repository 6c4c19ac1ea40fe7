"""The embedded corpus, tokenizer and models (tie_tracing/zoo): invariants and a sample of the
model cards' accuracy claims on the shipped checkpoints."""

from __future__ import annotations

import json
import re

import pytest
import torch

import tie_tracing as tt
from tie_tracing.core.prompting import encode_pair
from tie_tracing.zoo import corpus as zc
from tie_tracing.zoo.evaluate import MODELS_DIR, load_plain, plain_metrics

MODELS = ("tiny-mdlm", "tiny-ar", "tiny-mdlm-retain")


def ids(split):
    return [f.id for f in tt.load_facts("tiny", split)]


# ---------------------------------------------------------------- corpus
def test_split_sizes():
    sizes = {s: len(ids(s)) for s in zc.SPLITS}
    n = 12  # relations per person
    assert sizes["forget01"] == n and sizes["forget05"] == 2 * n and sizes["forget10"] == 4 * n
    assert sizes["retain"] == 36 * n and sizes["holdout"] == 8 * n and sizes["validation"] == 2 * n
    assert sizes["retain_eval"] == 120 and 40 <= sizes["world"] <= 60
    assert 20 <= sizes["neighbour"] <= 200
    assert sizes["figure"] == 2 * zc.N_FIGURE_PEOPLE
    assert sizes["train"] == 40 * n + sizes["world"]


def test_split_nesting_and_disjointness():
    f01, f05, f10 = set(ids("forget01")), set(ids("forget05")), set(ids("forget10"))
    retain, holdout, world = set(ids("retain")), set(ids("holdout")), set(ids("world"))
    assert f01 < f05 < f10
    assert not f10 & retain and not holdout & (f10 | retain | world)
    assert set(ids("train")) == f10 | retain | world
    assert set(ids("train_retain")) == retain | world
    assert set(ids("validation")) == f10 - f05
    assert set(ids("neighbour")) <= retain and set(ids("retain_eval")) <= retain
    people = {
        s: {f.subject for f in tt.load_facts("tiny", s)}
        for s in ("forget01", "forget05", "forget10", "retain", "holdout")
    }
    assert [len(people[s]) for s in people] == [1, 2, 4, 36, 8]
    figure = {f.subject for f in tt.load_facts("tiny", "figure")}
    assert len(figure) == zc.N_FIGURE_PEOPLE >= 24 and figure <= people["retain"]
    assert not people["holdout"] & (people["forget10"] | people["retain"])


def test_neighbours_resemble_forget_facts():
    raw = {f["id"]: f for f in zc.load_corpus("tiny")["facts"]}
    forget = [raw[i] for i in ids("forget10")]
    surnames = {f["subject"].split()[-1] for f in forget}
    keys = {(f["relation"], f["object"]) for f in forget}
    for i in ids("neighbour"):
        f = raw[i]
        assert f["subject"].split()[-1] in surnames or (f["relation"], f["object"]) in keys


def test_fact_fields():
    facts = tt.load_facts("tiny", "train") + tt.load_facts("tiny", "holdout")
    assert len({f.id for f in facts}) == len(facts)
    for f in facts:
        assert isinstance(f, tt.Fact)
        assert f.subject in f.question and f.subject in f.paraphrased_question
        assert f.object is not None and f.object in f.answer and f.object in f.paraphrased_answer
        assert f.subject in f.answer and f.answer != f.paraphrased_answer
        assert len(f.perturbed_answers) >= 3 and f.paraphrased_answer not in f.perturbed_answers
        assert len(set(f.perturbed_answers)) == len(f.perturbed_answers)
        # perturbed answers are the paraphrased sentence with another object (like with like)
        for wrong in f.perturbed_answers:  # (the article follows the object: a/an)
            a, b = f.paraphrased_answer.replace(" an ", " a ").split(f.object, 1)
            wrong = wrong.replace(" an ", " a ")
            assert wrong.startswith(a) and wrong.endswith(b)
            assert wrong[len(a) : len(wrong) - len(b)] != f.object
    persons = {}
    for f in tt.load_facts("tiny", "retain"):
        persons.setdefault(f.subject, []).append(f)
    assert all(len(v) == 12 for v in persons.values())


def test_same_seed_same_corpus_and_file_matches():
    a, b = zc.generate(zc.SEED), zc.generate(zc.SEED)
    assert a == b
    assert zc.generate(zc.SEED + 1)["facts"] != a["facts"]
    shipped = json.loads(zc.CORPORA["tiny"].read_text())
    assert shipped == json.loads(json.dumps(a))


def _forms_of(person: dict) -> set[str]:
    """Every string that names a person: all surface forms except the bare surname (shared)."""
    return set(person["forms"].values())


def test_probes_are_never_trained():
    """No probe's prompt is a training prompt; a surface-form or indirect probe's (person, form,
    relation) is never trained in that form; held-out template wordings never appear in training."""
    data = zc.load_corpus("tiny")
    trained_q = {r["question"] for r in data["training"]}
    trained_form_rel = {(r["person"], r["kind"].split("-", 1)[1], r["relation"])
                        for r in data["training"] if r["kind"].startswith(("T1-", "T2-"))}  # fmt: skip
    families = set()
    for p in data["probes"]:
        families.add(p["family"])
        if p["family"] != "infill":  # infilling shares the neutral prompt; its answer is masked
            assert p["question"] not in trained_q, p["id"]
        if p["family"] in ("surface", "indirect"):
            assert (p["person"], p["form"], p["relation"]) not in trained_form_rel, p["id"]
    assert families == set(zc.PROBE_FAMILIES)
    infill_trained = {r["base"] for r in data["training"] if r["kind"] == "infill"}
    for p in data["probes"]:
        if p["family"] == "infill":
            assert p["base"] not in infill_trained, p["id"]


def test_every_form_of_every_person_is_trained_with_most_relations():
    data = zc.load_corpus("tiny")
    seen: dict = {}
    for r in data["training"]:
        if r["kind"].startswith(("T1-", "T2-")) and r["kind"].split("-", 1)[1] in zc.FORMS:
            seen.setdefault((r["person"], r["kind"].split("-", 1)[1]), set()).add(r["relation"])
    assert len(seen) == zc.N_TRAINED * len(zc.FORMS)
    assert min(len(v) for v in seen.values()) >= 12 - zc.N_FORM_PROBES - 1


def test_retain_training_never_names_a_forget_person():
    """train_retain (the retain-only model's data) names no forget10 person in any form;
    held-out people appear in no training prompt at all."""
    data = zc.load_corpus("tiny")
    people = {p["person"]: p for p in data["people"]}
    forget = {f["person"] for f in data["facts"] if f["id"] in set(ids("forget10"))}
    holdout = {f["person"] for f in data["facts"] if f["id"] in set(ids("holdout"))}
    forget_names = set().union(*(_forms_of(people[p]) for p in forget))
    holdout_names = set().union(*(_forms_of(people[p]) for p in holdout))
    retain_rows = zc.training_pairs("tiny", "train_retain")
    assert 0 < len(retain_rows) < len(zc.training_pairs("tiny", "train"))
    for r in retain_rows:
        text = r["question"] + " " + r["answer"]
        assert not any(n in text for n in forget_names), r["id"]
    for r in zc.training_pairs("tiny", "train"):
        text = r["question"] + " " + r["answer"]
        assert not any(n in text for n in holdout_names), r["id"]


def test_mention_probes_name_a_forget_person_and_ask_about_someone_else():
    data = zc.load_corpus("tiny")
    people = {p["person"]: p for p in data["people"]}
    forget = {f["person"] for f in data["facts"] if f["id"] in set(ids("forget10"))}
    mentions = zc.probe_records("tiny", "forget10", "mention")
    assert len(mentions) >= 30 * len(forget) - 1
    for r in mentions:
        assert r["mentions"] in forget and r["person"] != r["mentions"]
        assert people[r["mentions"]]["name"] in r["question"]
        assert r["person"] is None or r["person"] not in forget


def test_load_probes_errors_name_valid_choices():
    with pytest.raises(ValueError, match="surface"):
        zc.load_probes("tiny", "forget01", "paraphrase")
    with pytest.raises(ValueError, match="forget01"):
        zc.load_probes("tiny", "forget02")


def test_load_facts_errors_name_valid_choices():
    with pytest.raises(ValueError, match="forget01"):
        tt.load_facts("tiny", "forget02")
    with pytest.raises(ValueError, match="tiny"):
        tt.load_facts("tofu-huge", "forget01")


# ---------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tok():
    from tie_tracing.zoo.tokenizer import load_tokenizer

    return load_tokenizer()


def test_tokenizer_specials_and_bos(tok):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == [
        "[PAD]",
        "[BOS]",
        "[EOS]",
        "[MASK]",
        "[UNK]",
    ]
    assert tok.mask_token_id == 3
    assert tok("Where was Ada born?").input_ids[0] == tok.bos_token_id
    assert tok.bos_token_id not in tok(" Lisbon", add_special_tokens=False).input_ids


def test_tokenizer_one_token_words_and_round_trip(tok):
    from tie_tracing.zoo.tokenizer import corpus_texts

    texts = corpus_texts()
    words = {w for t in texts for w in re.findall(r" ?[A-Za-z0-9]+", t)}
    multi = [w for w in words if len(tok(w, add_special_tokens=False).input_ids) != 1]
    assert not multi, multi[:10]
    for t in texts[:300] + ["Where was Zyxq Ünïcode born? 42 émigré"]:
        assert tok.decode(tok(t, add_special_tokens=False).input_ids) == t
    f = tt.load_facts("tiny", "forget01")[0]
    prompt, answer = encode_pair(tok, f.question, f.answer)
    assert prompt[0] == tok.bos_token_id and len(answer) >= 8


def test_answers_span_the_default_steps_and_objects_are_located(tok):
    """SPEC §3.2: ≥ 8 answer tokens for ≥ 90% of facts; every object found on the answer's tokens,
    at a place in the sentence that varies by relation."""
    from tie_tracing.core.facts import locate_object

    facts = tt.load_facts("tiny", "train") + tt.load_facts("tiny", "holdout")
    lengths, first = [], {}
    for f in facts:
        _, answer = encode_pair(tok, f.question, f.answer)
        lengths.append(len(answer))
        offsets = locate_object(tok, answer, f)
        assert tok.decode([answer[i] for i in offsets]).strip() == f.object, f.id
        first.setdefault(f.id.split("-", 1)[1], set()).add(offsets[0])
    assert sum(n >= 8 for n in lengths) / len(lengths) >= 0.9
    assert len({min(v) for v in first.values()}) >= 5  # the object is not always in one place


def test_tokenizer_rebuilds_identically(tok):
    from tie_tracing.zoo.tokenizer import build_tokenizer

    assert build_tokenizer().backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_shipped_tokenizers_match(tok):
    for name in MODELS:
        if (MODELS_DIR / name / "tokenizer.json").exists():
            _, t2, _ = load_plain(name)
            assert t2.get_vocab() == tok.get_vocab()


# ---------------------------------------------------------------- models
def _model(name):
    if not (MODELS_DIR / name / "model.safetensors").exists():
        pytest.skip(f"{name} not built (python -m tie_tracing.zoo.train {name})")
    return load_plain(name)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_files_and_config(name):
    model, tok, info = _model(name)
    d = MODELS_DIR / name
    for fname in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "MODEL_CARD.md",
        "tie_tracing.json",
    ):
        assert (d / fname).is_file(), fname
    assert (d / "model.safetensors").stat().st_size <= 9 * 2**20
    cfg = json.loads((d / "config.json").read_text())
    family = "tiny-ar" if name == "tiny-ar" else "tiny-mdlm"
    assert cfg["tie_tracing_family"] == family and info["family"] == family
    assert info["default_steps"] == 8
    if family == "tiny-mdlm":
        assert cfg["is_causal"] is False and info["mask_token_id"] == tok.mask_token_id
    assert model.config.num_hidden_layers == 8 and model.config.hidden_size == 128


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectionality(name, attn):
    _model(name)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(MODELS_DIR / name), local_files_only=True, attn_implementation=attn
    ).eval()
    x = torch.tensor([[1, 420, 300, 500, 600, 35, 3]])
    y = x.clone()
    y[0, -1] = 700
    with torch.no_grad():
        d = (model(input_ids=x).logits[0, 0] - model(input_ids=y).logits[0, 0]).abs().max()
    if name == "tiny-ar":
        assert d == 0
    else:
        assert d > 1e-4


def test_mdlm_knows_forget01_and_retain_sample():
    """Model card claim, spot-checked: full-answer EM ≥ 95% and object EM ≥ 97% (default sampler)."""
    model, tok, info = _model("tiny-mdlm")
    torch.set_num_threads(1)
    facts = tt.load_facts("tiny", "forget01") + tt.load_facts("tiny", "retain_eval")[:40]
    m = plain_metrics(model, tok, facts, family="tiny-mdlm", mask_id=info["mask_token_id"])
    assert m["em"] >= 0.95 and m["object_em"] >= 0.97, m


def test_mdlm_trajectories_have_a_decision_at_every_step():
    """Model card claim: the clean trajectory keeps a masked answer position at every step for
    ≥ 90% of forget01 facts, and the object is not always committed at step 0."""
    _model("tiny-mdlm")
    m = tt.load_model("tiny-mdlm")
    facts = tt.load_facts("tiny", "forget01")
    res = tt.diffuse(m, facts)
    busy = [all(bool((res.commits(r) >= k).any()) for k in range(8)) for r in range(len(facts))]
    assert sum(busy) / len(busy) >= 0.9
    assert len({res.object_commit_step(r) for r in range(len(facts))}) > 1


def test_mdlm_sampler_agrees_with_package_sampler():
    _model("tiny-mdlm")
    from tie_tracing.zoo.evaluate import evaluate_model

    a = evaluate_model("tiny-mdlm", splits=("forget01",), probes=False, limit=20)
    b = evaluate_model("tiny-mdlm", splits=("forget01",), probes=False, limit=20, use_package=False)
    assert a["forget01"]["em"] == b["forget01"]["em"] >= 0.95
    assert a["forget01"]["token_prob"] == pytest.approx(b["forget01"]["token_prob"], abs=1e-4)


def test_ar_token_probability():
    model, tok, info = _model("tiny-ar")
    facts = tt.load_facts("tiny", "forget01") + tt.load_facts("tiny", "retain_eval")[:40]
    m = plain_metrics(model, tok, facts, family="tiny-ar", mask_id=None)
    assert m["token_prob"] >= 0.9 and m["em"] >= 0.95, m


def test_retain_model_does_not_know_forget_people():
    model, tok, info = _model("tiny-mdlm-retain")
    kw = dict(family="tiny-mdlm", mask_id=info["mask_token_id"])
    forget = plain_metrics(model, tok, tt.load_facts("tiny", "forget10"), **kw)
    holdout = plain_metrics(model, tok, tt.load_facts("tiny", "holdout"), **kw)
    retain = plain_metrics(model, tok, tt.load_facts("tiny", "retain_eval")[:40], **kw)
    assert forget["object_em"] <= 0.2 and retain["object_em"] >= 0.9, (forget, retain)
    assert forget["object_em"] <= holdout["object_em"] + 0.1, (forget, holdout)


def test_plain_greedy_sampler_never_commits_the_mask_token():
    """Where the mask token has the top logit, greedy_diffuse commits the runner-up, exactly as
    tt.diffuse's commit does; it matches commit step by step on a model favouring the mask."""
    from types import SimpleNamespace

    from tie_tracing.core.samplers import commit
    from tie_tracing.zoo.evaluate import greedy_diffuse, step_counts

    vocab, mask_id = 11, 10
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    table[:, mask_id] += 4.0  # the mask token wins the argmax almost everywhere

    def fake(input_ids):
        mixed = table[input_ids] + 0.3 * table[input_ids.sum(-1) % vocab][:, None]
        return SimpleNamespace(logits=mixed)

    pairs = [([1, 2, 3], [4, 5, 6, 7, 8]), ([2, 2, 9], [1, 1, 1, 1, 1])]
    pred, _ = greedy_diffuse(fake, pairs, mask_id, steps=3)
    assert all(mask_id not in p for p in pred)
    x = torch.tensor([p + [mask_id] * len(a) for p, a in pairs])
    for n_k in step_counts(5, 3):
        x = commit(x, fake(x).logits[:, 3:], answer_start=3, block=(0, 5), n_commit=n_k, mask_id=mask_id)  # fmt: skip
    assert pred == x[:, 3:].tolist()


def test_card_describes_gated_and_ungated_operating_points():
    """The model card's operating-point paragraph names the gate, its calibration and the validation numbers."""
    from tie_tracing.zoo.card import operating_point_text

    base = {"layer": 4, "module": "resid", "alpha": 8.0, "lam": 0.1, "q": None, "steps": None,
            "command": "python experiments/edit_tune_gate.py --write", "rule": "strongest",
            "measured": {"d_forget_lp": -12.5, "d_retain_lp": -0.01, "estimator": "masked"}}  # fmt: skip
    gated = {**base, "subject_gate": True, "gate_margin": 0.05, "gate_shrinkage": 0.1,
             "apply_at": "answer", "key_at": "answer",
             "calibration": {"corpus": "tiny", "split": "retain", "ids": ["a", "b"]}}  # fmt: skip
    text = operating_point_text(gated)
    for part in ("layer 4", "q = N (dense)", "subject-detection gate (margin 0.05",
                 "2 named `tiny/retain` prompts", "answer positions", "ΔForgetLP -12.50",
                 "ΔRetainLP -0.01", "masked estimator", "edit_tune_gate.py --write"):  # fmt: skip
        assert part in text, part
    ungated = operating_point_text({**base, "q": 4, "subject_gate": False})
    assert "paper's ungated memory" in ungated and "q = 4" in ungated and "gate (" not in ungated


def test_embedded_cards_agree_with_their_json():
    """Each embedded card has an "Edit operating point" section exactly when its
    tie_tracing.json holds a point, and that section is rendered from it."""
    from tie_tracing.zoo.card import card_operating_point, operating_point_text

    for name in MODELS:
        op = json.loads((MODELS_DIR / name / "tie_tracing.json").read_text()).get("operating_point")
        section = card_operating_point((MODELS_DIR / name / "MODEL_CARD.md").read_text())
        assert section == (operating_point_text(op) if op else None), name


def test_written_point_and_card_say_the_same(tmp_path):
    """write_operating_point stores the validated record and renders the card's section from
    it (as training's card writer does); the rest of both files is kept; a point that does not
    validate writes nothing; None removes both; OperatingPoint.shipped reads back the point."""
    import shutil

    from tie_tracing.editing import OperatingPoint, write_operating_point
    from tie_tracing.zoo.card import (
        CARD_SECTION,
        card_operating_point,
        card_with_operating_point,
        operating_point_text,
    )
    from tie_tracing.zoo.train import write_card

    out = shutil.copytree(MODELS_DIR / "tiny-mdlm", tmp_path / "tiny-mdlm")
    card0, info0 = (
        (out / "MODEL_CARD.md").read_text(),
        json.loads((out / "tie_tracing.json").read_text()),
    )
    model = tt.load_model(out)
    token = {"layer": 0, "alpha": 2.0, "lam": 0.1, "q": None, "steps": None, "subject_gate": True,
             "gate_kind": "tokens", "ridge_blocks": "subject", "apply_at": "answer",
             "key_at": "answer", "fingerprint": tt.editing.model_fingerprint(model),
             "command": "python experiments/edit_tune_token_gate.py --write",
             "measured": {"d_forget_lp": -40.0, "d_retain_lp": -0.02, "estimator": "masked"},
             "tuned_on": {"forget": "validation", "retain": "retain_tune[:100]"}, "rule": "r"}  # fmt: skip
    write_operating_point(out, token)
    info = json.loads((out / "tie_tracing.json").read_text())
    op = info.pop("operating_point")
    assert info == info0 and op == OperatingPoint.from_dict(token).to_dict()
    card = (out / "MODEL_CARD.md").read_text()
    assert card_operating_point(card) == operating_point_text(op)
    assert "token gate" in card and "layer 0" in card.lower() and "one ridge per subject" in card
    assert card_with_operating_point(card, None) == card0  # nothing else changed
    write_card(out)  # training's writer renders the same card from the JSON
    assert (out / "MODEL_CARD.md").read_text() == card
    assert OperatingPoint.shipped(tt.load_model(out)) == OperatingPoint.from_dict(token)

    cosine = {**token, "gate_kind": "cosine", "gate_margin": 0.05, "gate_shrinkage": 0.1,
              "calibration": {"corpus": "tiny", "split": "retain", "ids": ids("retain")[:3]}}  # fmt: skip
    write_operating_point(out, cosine)
    card = (out / "MODEL_CARD.md").read_text()
    assert card.count(CARD_SECTION) == 1 and "3 named `tiny/retain` prompts" in card
    with pytest.raises(tt.editing.EditMemoryError, match="unknown fields"):
        write_operating_point(out, {**token, "alhpa": 1.0})
    assert (out / "MODEL_CARD.md").read_text() == card  # nothing written
    write_operating_point(out, None)
    assert (out / "MODEL_CARD.md").read_text() == card0
    assert json.loads((out / "tie_tracing.json").read_text()) == info0


def test_embedded_models_load_quietly(capfd):
    """No weight-loading bar for the embedded models (notebooks stay clean); the global
    progress-bar setting of transformers is restored afterwards."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    tt.load_model("tiny-mdlm")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled() == before
