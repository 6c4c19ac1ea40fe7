"""Loaders for the real TOFU / RWKU files, author derivation and subject location."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tie_tracing as tt
from tie_tracing.core.errors import SubjectNotFoundError
from tie_tracing.core.facts import (
    DATA_DIR,
    TOFU_SPLITS,
    cloze_to_question,
    load_refusals,
    load_rwku,
    load_tofu,
    locate_subject,
    names_subject,
    rwku_targets,
    subject_mentions,
    tofu_author,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED / "tofu" / "full.json").is_file(),
    reason="full TOFU/RWKU copy (../shared/data) not present; the shipped subset is tested above",
)


# --- TOFU ----------------------------------------------------------------------------------


def test_forget01_has_two_authors_of_twenty_facts():
    """forget01 = 40 facts: Basil Mahfouz Al-Kuwaiti then Nikolai Abilov, 20 each."""
    facts = load_tofu(split="forget01")
    assert len(facts) == 40
    assert [f.subject for f in facts] == ["Basil Mahfouz Al-Kuwaiti"] * 20 + ["Nikolai Abilov"] * 20
    assert facts[7].id == "tofu/forget01/0007"
    assert facts[0].question.startswith("What is the full name of the author born in Kuwait City")


def test_forget_split_counts():
    """forget05 = 200 and forget10 = 400 facts, in blocks of 20 per author."""
    for split, n in (("forget05", 200), ("forget10", 400)):
        facts = load_tofu(split=split)
        assert len(facts) == n
        subjects = [f.subject for f in facts]
        assert len(set(subjects)) == n // 20
        assert all(len(set(subjects[b : b + 20])) == 1 for b in range(0, n, 20))
    assert load_tofu(split="forget05")[0].subject == "Hina Ameen"
    assert load_tofu(split="forget10")[0].subject == "Hsiao Yun-Hwa"


def test_forget01_paraphrases_and_perturbed_attached():
    """forget01 facts carry the paraphrased question/answer and 5 perturbed answers."""
    facts = load_tofu(split="forget01")
    rows = json.loads((DATA_DIR / "tofu" / "forget01_perturbed.json").read_text())
    for f, row in zip(facts, rows):
        assert f.question == row["question"] and f.answer == row["answer"]
        assert f.paraphrased_question == row["paraphrased_question"]
        assert f.paraphrased_answer == row["paraphrased_answer"]
        assert f.perturbed_answers == tuple(row["perturbed_answer"])
        assert len(f.perturbed_answers) == 5


def test_holdout_real_authors_world_facts_counts():
    """holdout01 = 40; real_authors = 100 and world_facts = 117 with 3 perturbed answers each."""
    holdout = load_tofu(split="holdout01")
    assert len(holdout) == 40
    assert {f.subject for f in holdout} == {"Siriporn Nakharin", "Jun-Suk Hyun"}
    assert all(f.perturbed_answers == () for f in holdout)
    real = load_tofu(split="real_authors")
    assert len(real) == 100 and all(len(f.perturbed_answers) == 3 for f in real)
    assert real[0].subject == "Romeo and Juliet" and real[0].answer == "William Shakespeare"
    world = load_tofu(split="world_facts")
    assert len(world) == 117 and all(len(f.perturbed_answers) == 3 for f in world)
    assert world[0].subject == "Eiffel Tower"


def test_retain_perturbed_is_full_with_perturbations():
    """retain_perturbed = 400 facts (20 authors) with paraphrases and perturbed answers."""
    facts = load_tofu(split="retain_perturbed")
    assert len(facts) == 400
    assert facts[0].subject == "Jaime Vasquez"
    assert all(f.paraphrased_answer and len(f.perturbed_answers) == 5 for f in facts)


def test_unknown_split_lists_valid_ones():
    """An unknown split raises ValueError naming every valid split."""
    with pytest.raises(ValueError, match="forget01.*world_facts"):
        load_tofu(split="forget02")


def test_unshipped_split_names_missing_file():
    """full/retain9X are not shipped; asking for them says where to get them."""
    if (DATA_DIR / "tofu" / "full.json").exists():
        pytest.skip("full.json is shipped in this checkout")
    with pytest.raises(FileNotFoundError, match="full.json.*directory="):
        load_tofu(split="full")


def test_require_subject_and_traceable_flags():
    """Default marks facts whose subject is absent untraceable; require_subject raises;
    traceable_only filters."""
    facts = load_tofu(split="forget01")
    untraceable = [f for f in facts if not f.traceable]
    assert untraceable and all(f.subject not in f.question for f in untraceable)
    assert all(f.subject in f.question for f in facts if f.traceable)
    assert untraceable[0].id == "tofu/forget01/0000"  # "What is the full name of the author ...?"
    with pytest.raises(SubjectNotFoundError, match=r"tofu/forget01/0000.*Basil Mahfouz Al-Kuwaiti"):
        load_tofu(split="forget01", require_subject=True)
    kept = load_tofu(split="forget01", traceable_only=True)
    assert len(kept) == len(facts) - len(untraceable)
    assert all(f.traceable and f.subject in f.question for f in kept)


def test_tofu_author_rule_on_small_blocks():
    """The author rule keeps the longest frequent name and returns None for unnamed blocks."""
    block = [
        {
            "question": "Where was Laila Amira al-Faisal born?",
            "answer": "Laila Amira al-Faisal was born in Riyadh.",
        },
        {"question": "What does Laila write?", "answer": "Laila Amira al-Faisal writes poems."},
        {"question": "Who taught Laila Amira al-Faisal?", "answer": "Her mother, in Riyadh."},
    ]
    assert tofu_author(block) == "Laila Amira al-Faisal"
    unnamed = [
        {"question": "Where was the author born?", "answer": "The author was born in Karachi."}
    ] + [
        {"question": f"what is fact {i} about the author?", "answer": "it varies."}
        for i in range(5)
    ]
    assert tofu_author(unnamed) is None


def test_refusals_are_the_hundred_lines():
    """load_refusals returns the 100 lines of idontknow.jsonl."""
    refusals = load_refusals()
    assert len(refusals) == 100
    assert refusals[0] == "I'm not certain about that."
    assert all(r and "\n" not in r for r in refusals)


def test_public_names_exported():
    """SPEC §12's loaders are top-level names; the helpers are the core layer's."""
    from tie_tracing.core import facts

    for name in ("load_tofu", "load_rwku"):
        assert getattr(tt, name) is getattr(facts, name), name
    for name in ("load_refusals", "locate_subject", "rwku_targets"):
        assert getattr(tt.core, name) is getattr(facts, name) and not hasattr(tt, name), name


@needs_shared
def test_full_copy_splits_and_authors():
    """On the full copy: full = 4000 (200 authors), retain90 = 3600; retain rows get the
    retain_perturbed fields for their first 400 rows; shipped files equal the shared ones."""
    full = load_tofu(SHARED / "tofu", split="full")
    assert len(full) == 4000
    assert len({f.subject for f in full}) == 200
    assert [f.subject for f in full[3960:3980:19]] == ["Basil Mahfouz Al-Kuwaiti"] * 2
    assert full[72 * 20].subject == "Alejandro (Alex) Fuentes"
    assert full[88 * 20].subject == "the author"
    retain = load_tofu(SHARED / "tofu", split="retain90")
    assert len(retain) == 3600
    assert sum(bool(f.perturbed_answers) for f in retain) == 400
    for split in ("forget01", "forget10", "holdout10", "real_authors", "world_facts"):
        shipped = load_tofu(split=split)
        shared = load_tofu(SHARED / "tofu", split=split)
        assert shipped == shared
    for split in TOFU_SPLITS:
        assert load_tofu(SHARED / "tofu", split=split)


# --- RWKU ----------------------------------------------------------------------------------


def test_rwku_counts_and_ids_for_one_target():
    """Stephen King: 8 level-1 and 10 level-2 forget probes, 30 + 30 neighbour probes."""
    assert rwku_targets()[:1] == ["1_Stephen_King"] and len(rwku_targets()) == 5
    forget = load_rwku(targets="Stephen King")
    assert len(forget) == 18
    assert forget[3].id == "rwku/1_Stephen_King/forget1/0003"
    assert {f.subject for f in forget} == {"Stephen King"}
    assert forget[0].question == "Stephen Edwin King (born September 21, 1947) is an American"
    assert forget[0].answer == "author"
    assert (
        forget[8].id == "rwku/1_Stephen_King/forget2/0000" and forget[8].answer == "Richard Bachman"
    )
    assert len(load_rwku(targets=1, levels=(3,))) == len(
        json.loads((DATA_DIR / "rwku" / "1_Stephen_King" / "forget_level3.json").read_text())
    )
    neighbours = load_rwku(targets=["1_Stephen_King"], kind="neighbour")
    assert len(neighbours) == 60
    assert neighbours[0].subject == "The Shawshank Redemption"
    assert neighbours[0].id == "rwku/1_Stephen_King/neighbor1/0000"
    assert len(load_rwku(kind="neighbor", levels=(2,), targets="stephen king")) == 30


def test_rwku_errors_and_flags():
    """Bad kind/level/target raise ValueError; subjects absent from the question are flagged."""
    with pytest.raises(ValueError, match="kind"):
        load_rwku(kind="retain")
    with pytest.raises(ValueError, match="levels"):
        load_rwku(kind="neighbour", levels=(3,))
    with pytest.raises(ValueError, match="unknown RWKU target"):
        load_rwku(targets="Ada Vell")
    facts = load_rwku(targets="Stephen King")
    assert not facts[0].traceable  # "Stephen Edwin King ..." does not contain "Stephen King"
    assert all(f.subject in f.question for f in load_rwku(targets=1, traceable_only=True))
    with pytest.raises(SubjectNotFoundError, match="rwku/1_Stephen_King/forget1/0000"):
        load_rwku(targets=1, require_subject=True)


def test_cloze_to_question():
    """Text before a single blank is kept; other queries are unchanged."""
    assert cloze_to_question("Born in ___") == "Born in"
    assert cloze_to_question("Titled ___, it sold well.") == "Titled"
    assert cloze_to_question("___ wrote it.") == "___ wrote it."
    assert cloze_to_question("A ___ and ___.") == "A ___ and ___."
    assert cloze_to_question("Who wrote it?") == "Who wrote it?"


@needs_shared
def test_rwku_full_copy_totals():
    """Across all 200 targets of the full copy there are 3268 level-1 forget probes."""
    assert len(rwku_targets(SHARED / "rwku")) == 200
    assert len(load_rwku(SHARED / "rwku", levels=(1,))) == 3268


# --- locate_subject --------------------------------------------------------------------


def _byte_bpe(corpus, *, use_regex=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.fixture(scope="module")
def gpt2_like():
    """A GPT-2-style byte-level BPE (regex pre-tokenizer) trained on a tiny corpus."""
    return _byte_bpe(
        ["Where was Ada Vell born? Ada Vell was born in Lisbon. (Ada Vell's poems)"] * 20
    )


@pytest.fixture(scope="module")
def merging():
    """A byte-level BPE without pre-tokenization: merges run across word boundaries."""
    return _byte_bpe(["(Ada Vell) (Ada Vell) x(Ada Vell)"] * 50, use_regex=False)


def _pieces(tok, ids):
    return [tok.decode([i]) for i in ids]


def test_locate_subject_token_span(gpt2_like):
    """Subject found with a leading space mid-sentence and without it at the start."""
    tok = gpt2_like
    ids = tok("Where was Ada Vell born?").input_ids
    pos = locate_subject(tok, ids, "Ada Vell")
    assert "".join(_pieces(tok, [ids[p] for p in pos])).strip() == "Ada Vell"
    ids = tok("Ada Vell was born in Lisbon.").input_ids
    assert locate_subject(tok, ids, "Ada Vell")[0] == 0


def test_locate_subject_every_mention_by_default_first_on_request(gpt2_like):
    """A subject named twice gives both mentions' tokens (non-contiguous) by default and only
    the first with mentions='first'; a single mention gives the same positions either way."""
    tok = gpt2_like
    ids = tok("Ada Vell was born in Lisbon. Where was Ada Vell born?").input_ids
    spans = subject_mentions(tok, ids, "Ada Vell")
    assert len(spans) == 2 and spans[0][0] == 0 and spans[1][0] > spans[0][-1] + 1
    for span in spans:
        assert "".join(_pieces(tok, [ids[p] for p in span])).strip() == "Ada Vell"
    assert locate_subject(tok, ids, "Ada Vell") == spans[0] + spans[1]
    assert locate_subject(tok, ids, "Ada Vell", mentions="first") == spans[0]
    once = tok("Where was Ada Vell born?").input_ids
    assert locate_subject(tok, once, "Ada Vell") == locate_subject(
        tok, once, "Ada Vell", mentions="first"
    )
    with pytest.raises(ValueError, match="mentions must be 'all'"):
        locate_subject(tok, ids, "Ada Vell", mentions="last")


def test_locate_subject_matches_whole_words_only(gpt2_like):
    """'Ada' is not found inside 'Adam' (a partial name is an error naming the fact), but is
    found as a word next to it; overlapping mentions are ambiguous."""
    tok = gpt2_like
    ids = tok("Where was Adam born?").input_ids
    with pytest.raises(SubjectNotFoundError, match="f-9.*only inside a longer word.*Adam"):
        locate_subject(tok, ids, "Ada", fact_id="f-9")
    ids = tok("Adam met Ada in Lisbon.").input_ids
    pos = locate_subject(tok, ids, "Ada", text="Adam met Ada in Lisbon.")
    assert "".join(_pieces(tok, [ids[p] for p in pos])).strip() == "Ada"
    ids = tok("na na na").input_ids
    with pytest.raises(SubjectNotFoundError, match="f-3.*ambiguous"):
        locate_subject(tok, ids, "na na", fact_id="f-3")


def test_loaders_require_whole_word_subjects():
    """A question that names the subject only inside a longer word is not traceable."""
    fact = tt.Fact(subject="Jon", question="Where was Jonathan born?", answer="Oslo", id="j")
    assert not names_subject(fact)
    assert names_subject(tt.Fact(subject="Jon", question="Where was Jon born?", answer="Oslo"))


def test_six_shipped_rwku_forget_questions_repeat_their_subject():
    """Of the 210 traceable shipped RWKU forget probes, 6 name the subject twice: with the
    default mentions='all' both mentions are corrupted (the first alone misses the second)."""
    facts = load_rwku(levels=(1, 2, 3), traceable_only=True)
    assert len(facts) == 210
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for f in facts for w in f.question.replace("\n", " ").split()})
    core = Tokenizer(
        models.WordLevel({w: i + 1 for i, w in enumerate(words)} | {"[UNK]": 0}, "[UNK]")
    )
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    repeated = []
    for f in facts:
        ids = tok(f.question).input_ids
        spans = subject_mentions(tok, ids, f.subject, text=f.question, fact_id=f.id)
        if len(spans) > 1:
            repeated.append(f.id)
            first = locate_subject(tok, ids, f.subject, text=f.question, mentions="first")
            assert locate_subject(tok, ids, f.subject, text=f.question) != first
    assert len(repeated) == 6
    assert "rwku/1_Stephen_King/forget3/0014" in repeated


def test_locate_subject_merged_boundary(merging):
    """When BPE merges the subject with its neighbours, the covering tokens are returned,
    from offsets (text given) and from incremental decoding (ids only) alike."""
    tok = merging
    text = "x(Ada Vell) tail"
    ids = tok(text).input_ids
    for variant in ("Ada Vell", " Ada Vell"):
        sub = tok(variant, add_special_tokens=False).input_ids
        assert all(ids[i : i + len(sub)] != sub for i in range(len(ids)))  # no token match
    with_offsets = locate_subject(tok, ids, "Ada Vell", text=text)
    from_decoding = locate_subject(tok, ids, "Ada Vell")
    assert with_offsets == from_decoding
    covered = "".join(_pieces(tok, [ids[p] for p in with_offsets]))
    assert "Ada Vell" in covered
    assert "Ada Vell" not in "".join(_pieces(tok, [ids[p] for p in with_offsets[1:]]))
    assert "Ada Vell" not in "".join(_pieces(tok, [ids[p] for p in with_offsets[:-1]]))


def test_locate_subject_missing_names_fact(gpt2_like):
    """An absent subject raises SubjectNotFoundError naming the fact id."""
    ids = gpt2_like("Where was Ada Vell born?").input_ids
    with pytest.raises(SubjectNotFoundError, match="tofu/x/0001.*Nikolai"):
        locate_subject(gpt2_like, ids, "Nikolai", fact_id="tofu/x/0001")
