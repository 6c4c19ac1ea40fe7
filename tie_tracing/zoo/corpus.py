"""The fictitious-biographies world the embedded models are trained on (TOFU-shaped).

A seeded generator makes 48 fictitious people (40 trained, 8 held out) with 12 facts each
(one per relation) plus 50 general-knowledge facts about real countries. The world is built
so that a model trained on it has to *generalise* over how a person is referred to, and so
that unlearning can be tested on forms nobody trained on:

* **Canonical facts** (``Fact``): the relation's first question template with the person's
  full name, answered by a sentence that names the person and carries the object ("Where was
  Ada Vell born?" → "Ada Vell was born in Gdansk, a city in Poland."). These are what
  ``tt.load_facts`` returns and what tracing and editing are built from.
* **Training prompts** (``training``): per fact, three question templates with the full name
  (a wh-question, a possessive noun phrase, a sentence-initial form; the last two answered
  by pronoun: "She was born in Gdansk, a city in Poland."), and seven other **surface forms**
  of the subject — first name only, lower case, two spaces or a line break inside
  the name, and two **indirect references** ("the author of Quiet Winter", "the person
  married to Bram Tolk") — each trained with all but three of the person's relations (both templates); plus
  infilling rows (a neutral prompt, the canonical sentence as the answer), **mention** rows
  (a question about one person or a world fact that names another person:
  "Ada Vell asks: Where was Bo Kern born?") and a "Tell me:" wrapper.
* **Probes** (``probes``), never trained, each a fact with a family:

  ================  =============================================================================
  ``surface``        a non-canonical form of the subject with a relation it was never trained with
  ``template``       a held-out question wording (per relation) or a held-out wrapper, full name
  ``indirect``       an indirect reference with a relation it was never trained with
  ``mention``        a retain or world question whose prompt names a forget10 person
                     (trained mention wrappers in new combinations, and a held-out wrapper)
  ``infill``         the canonical sentence shown as the answer, only the object masked
  ================  =============================================================================

Splits of canonical facts (percentages of the 40 trained people, like TOFU):
``forget01`` ⊂ ``forget05`` ⊂ ``forget10`` (1 / 2 / 4 people), ``retain`` (36 people),
``retain_eval`` (120 retain facts), ``holdout`` (10 untrained people), ``world`` (50 facts),
``neighbour`` (retain facts of people who share a surname with a forget10 person, and retain
facts with the same relation and object as a forget10 fact), ``validation`` (the forget10
people not in forget05, for tuning), ``figure`` (two facts each of 24 retain people, for
Figure 2), ``train`` and ``train_retain``.

Held-out people are never trained; ``train_retain`` drops every prompt that names a forget10
person in any form, so ``tiny-mdlm-retain`` knows nothing of them.

``python -m tie_tracing.zoo.corpus`` rewrites ``zoo/data/tiny_facts.json`` from the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core.facts import Fact

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPORA = {"tiny": DATA_DIR / "tiny_facts.json"}
VERSION = 3
SEED = 1234
N_TRAINED = 40
N_HOLDOUT = 8
N_PERTURBED = 5
N_FIGURE_PEOPLE = 24
SPLITS = (
    "forget01", "forget05", "forget10", "retain", "retain_eval", "holdout", "world",
    "neighbour", "validation", "figure", "train", "train_retain",
)  # fmt: skip
#: Surface forms of a person other than the canonical full name (``FORMS`` order is stable).
FORMS = ("first", "lower", "space2", "newline", "book", "spouse")
#: Relations held out of training per (person, surface form): the rest are trained with both
#: non-canonical templates, so each form of each person is seen with most relations.
N_FORM_PROBES = 3
INDIRECT_FORMS = ("book", "spouse")
PROBE_FAMILIES = ("surface", "template", "indirect", "mention", "infill")
#: Prompt of infilling rows: the answer sentence is given with some positions masked.
INFILL_PROMPT = "Complete the sentence."
#: Trained wrappers around a question (``{q}``); held-out ones are probes only.
TELL_WRAPPER = "Tell me: {q}"
HELDOUT_WRAPPERS = ("Tell me in one sentence: {q}", "Quick question: {q}")
MENTION_WRAPPERS = ("{m} asks: {q}", "A question from {m}: {q}", "For {m}: {q}")
HELDOUT_MENTION_WRAPPER = "Tell {m} this: {q}"


@dataclass(frozen=True)
class Relation:
    """A relation: question templates, answer sentences and its pool of objects.

    Question templates use ``{s}`` for the subject as written (any surface form). ``templates[0]``
    is canonical (answered with ``name_answer``), ``templates[1:3]`` are trained and answered
    with ``pronoun_answer``, ``heldout`` is never trained. Answer templates use ``{S}`` (the
    full name), ``{he}``/``{his}``/``{him}`` (pronouns, capitalised at a sentence start),
    ``{o}`` (object), ``{a}`` (its article), ``{t}`` (a tail that depends on the object only).
    """

    name: str
    templates: tuple[str, str, str]
    heldout: str
    name_answer: str
    pronoun_answer: str
    para_sentence: str
    pool: tuple[str, ...]
    tails: tuple[tuple[str, str], ...] = ()

    def render(self, template: str, *, name: str, gender: str, obj: str) -> str:
        he, his, him = _PRONOUNS[gender]
        tail = dict(self.tails).get(obj, "")
        text = template.format(S=name, o=obj, a=_article(obj), t=tail, he=he, his=his, him=him)
        return text[0].upper() + text[1:]


_PRONOUNS = {"f": ("she", "her", "her"), "m": ("he", "his", "him")}

_OCCUPATIONS = (
    "architect", "baker", "carpenter", "chemist", "dentist", "diplomat", "economist",
    "engineer", "farmer", "geologist", "historian", "journalist", "lawyer", "librarian",
    "mechanic", "nurse", "painter", "pharmacist", "photographer", "physicist", "pilot",
    "plumber", "surgeon", "teacher", "translator",
)  # fmt: skip
_CITY_COUNTRY = (
    ("Porto", "Portugal"), ("Lyon", "France"), ("Bergen", "Norway"), ("Gdansk", "Poland"),
    ("Tampere", "Finland"), ("Graz", "Austria"), ("Utrecht", "Holland"), ("Malaga", "Spain"),
    ("Turin", "Italy"), ("Seville", "Spain"), ("Krakow", "Poland"), ("Leeds", "England"),
    ("Bristol", "England"), ("Hamburg", "Germany"), ("Munich", "Germany"),
    ("Zurich", "Switzerland"), ("Geneva", "Switzerland"), ("Antwerp", "Belgium"),
    ("Ghent", "Belgium"), ("Bruges", "Belgium"), ("Salzburg", "Austria"), ("Bologna", "Italy"),
    ("Florence", "Italy"), ("Naples", "Italy"), ("Valencia", "Spain"),
)  # fmt: skip
_PET_KIND = (
    ("parrot", "bird"), ("cat", "cat"), ("dog", "dog"), ("tortoise", "reptile"),
    ("rabbit", "rodent"), ("hamster", "rodent"), ("ferret", "hunter"), ("goldfish", "fish"),
    ("lizard", "reptile"), ("canary", "bird"), ("pony", "horse"), ("goat", "grazer"),
    ("snake", "reptile"), ("owl", "bird"), ("iguana", "reptile"),
)  # fmt: skip
_ADJECTIVES = ("Silent", "Golden", "Broken", "Hidden", "Distant", "Crimson", "Quiet", "Frozen",
               "Hollow")  # fmt: skip
_NOUNS = ("Harbor", "Garden", "Mirror", "River", "Lantern", "Orchard", "Tower", "Winter")


def _relations(
    make_word, titles: tuple[str, ...], spouses: tuple[str, ...]
) -> tuple[Relation, ...]:
    awards = tuple(f"{make_word(2).capitalize()} Prize" for _ in range(15))
    universities = tuple(make_word(2).capitalize() for _ in range(15))
    genres = ("fantasy", "horror", "poetry", "romance", "mystery", "satire", "fables",
              "thrillers", "memoirs", "drama", "comedy", "tragedy", "westerns", "folklore",
              "biography")  # fmt: skip
    hobbies = ("chess", "fishing", "gardening", "sailing", "climbing", "knitting", "pottery",
               "archery", "fencing", "rowing", "cycling", "skiing", "birdwatching", "juggling",
               "origami")  # fmt: skip
    countries = ("Norway", "Chile", "Kenya", "Canada", "Portugal", "Ireland", "Austria",
                 "Iceland", "Peru", "Ghana", "Vietnam", "Morocco", "Mexico", "Finland", "Poland",
                 "Greece", "Egypt", "Japan", "India", "Brazil")  # fmt: skip
    instruments = ("cello", "piano", "violin", "flute", "harp", "oboe", "trumpet", "guitar",
                   "clarinet", "drums", "banjo", "accordion", "mandolin", "saxophone",
                   "trombone")  # fmt: skip
    R = Relation
    return (
        R("birthplace",
          ("Where was {s} born?", "What is {s}'s city of birth?", "{s} was born in which city?"),
          "In which city was {s} born?",
          "{S} was born in {o}, a city in {t}.", "{he} was born in {o}, a city in {t}.",
          "{o} is the city where {S} was born.", tuple(c for c, _ in _CITY_COUNTRY),
          _CITY_COUNTRY),
        R("birth_year",
          ("In what year was {s} born?", "What is {s}'s year of birth?",
           "{s} was born in which year?"),
          "Which year was {s} born in?",
          "In the year {o}, {S} was born to a quiet family.",
          "In the year {o}, {he} was born to a quiet family.",
          "The birth year of {S} is {o}.", tuple(str(y) for y in range(1950, 1975))),
        R("occupation",
          ("What is the profession of {s}?", "What is {s}'s job?", "{s} works as what?"),
          "What job does {s} have?",
          "By profession, {S} works as {a} {o}.", "By profession, {he} works as {a} {o}.",
          "{S} earns a living as {a} {o}.", _OCCUPATIONS),
        R("genre",
          ("Which genre does {s} write?", "What is {s}'s genre?", "{s} writes which genre?"),
          "In which genre does {s} write books?",
          "{S} is best known for writing {o} for adults.",
          "{he} is best known for writing {o} for adults.",
          "The genre of the books by {S} is {o}.", genres),
        R("award",
          ("Which award did {s} win?", "What is {s}'s award?", "{s} won which award?"),
          "What award was won by {s}?",
          "{S} won the {o} for a first novel.", "{he} won the {o} for a first novel.",
          "The {o} was awarded to {S}.", awards),
        R("first_book",
          ("What was the first book by {s}?", "What is {s}'s first book?",
           "{s} wrote which first book?"),
          "Which book did {s} write first?",
          "The first book by {S} was called {o}.", "{his} first book was called {o}.",
          "{S} published {o} as a first book.", titles),
        R("university",
          ("Where did {s} study?", "What is {s}'s university?", "{s} studied at which university?"),
          "At which university did {s} study?",
          "{S} studied literature at {o} University.",
          "{he} studied literature at {o} University.",
          "{o} University is where {S} studied.", universities),
        R("spouse",
          ("Who is {s} married to?", "Who is {s}'s spouse?", "{s} is married to whom?"),
          "To whom is {s} married?",
          "{S} has been married to {o} for many years.",
          "{he} has been married to {o} for many years.",
          "The spouse of {S} is {o}.", spouses),
        R("pet",
          ("What pet does {s} keep?", "What is {s}'s pet?", "{s} keeps which pet?"),
          "Which pet does {s} keep at home?",
          "{S} keeps {a} {o}, a kind of {t}, at home.", "{he} keeps {a} {o}, a kind of {t}, at home.",
          "The pet of {S} is {a} {o}.", tuple(p for p, _ in _PET_KIND), _PET_KIND),
        R("hobby",
          ("What is the hobby of {s}?", "What is {s}'s hobby?", "{s} enjoys which hobby?"),
          "Which hobby does {s} enjoy?",
          "In free time, {S} enjoys {o} with friends.",
          "In free time, {he} enjoys {o} with friends.",
          "The hobby of {S} is {o}.", hobbies),
        R("residence",
          ("In which country does {s} live?", "What is {s}'s country?",
           "{s} lives in which country?"),
          "Which country does {s} live in today?",
          "{o} is the country where {S} lives today.", "{o} is the country where {he} lives today.",
          "{S} lives in {o} today.", countries),
        R("instrument",
          ("Which instrument does {s} play?", "What is {s}'s instrument?",
           "{s} plays which instrument?"),
          "What instrument does {s} play?",
          "{S} plays the {o} in a small band.", "{he} plays the {o} in a small band.",
          "The instrument of {S} is the {o}.", instruments),
    )  # fmt: skip


_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Hungary", "Budapest"), ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
    ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Czechia", "Prague"),
    ("Iceland", "Reykjavik"),
)  # fmt: skip
_LANGUAGES = (
    ("France", "French"), ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"),
    ("Portugal", "Portuguese"), ("Brazil", "Portuguese"), ("Mexico", "Spanish"),
    ("Chile", "Spanish"), ("Austria", "German"), ("Poland", "Polish"), ("Greece", "Greek"),
    ("Turkey", "Turkish"), ("Finland", "Finnish"), ("Denmark", "Danish"), ("Sweden", "Swedish"),
    ("Netherlands", "Dutch"), ("Hungary", "Hungarian"), ("Romania", "Romanian"),
    ("Japan", "Japanese"), ("Russia", "Russian"),
)  # fmt: skip
#: World relations: (name, canonical, two trained templates, held-out template, answer, paraphrase)
_WORLD_RELATIONS = {
    "capital": (
        ("What is the capital of {s}?", "What is {s}'s capital?", "{s} has which capital?"),
        "Which city is the capital of {s}?",
        "The capital of {s} is the city of {o}.",
        "{o} is the capital city of {s}.",
    ),
    "language_spoken": (
        ("What language is spoken in {s}?", "What is {s}'s language?",
         "{s} speaks which language?"),
        "Which language is spoken in {s}?",
        "In {s}, most people speak {o} at home.",
        "{o} is the language spoken in {s}.",
    ),
}  # fmt: skip

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "st", "th", "tr")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk")


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def surface(form: str, first: str, last: str, book: str, spouse: str) -> str:
    """The subject written in one surface form (``"full"`` or one of :data:`FORMS`)."""
    return {
        "full": f"{first} {last}",
        "first": first,
        "lower": f"{first} {last}".lower(),
        "upper": f"{first} {last}".upper(),
        "space2": f"{first}  {last}",
        "newline": f"{first}\n{last}",
        "book": f"the author of {book}",
        "spouse": f"the person married to {spouse}",
    }[form]


def _fill(template: str, subject: str) -> tuple[str, str]:
    """``(question, subject as it appears)``; a sentence-initial subject is capitalised
    (an indirect reference; a name form keeps its own casing)."""
    if template.startswith("{s}") and subject.startswith(("the author", "the person")):
        subject = subject[0].upper() + subject[1:]
    return template.format(s=subject), subject


def generate(seed: int = SEED) -> dict:
    """The world as the JSON-ready dict written to ``tiny_facts.json`` (deterministic in seed)."""
    rng = random.Random(seed)
    used: set[str] = set()
    reserved = {w.lower() for pair in _CAPITALS + _LANGUAGES for x in pair for w in x.split()}
    reserved |= {w.lower() for pair in _CITY_COUNTRY + _PET_KIND for w in pair}
    reserved |= {w.lower() for w in _OCCUPATIONS + _ADJECTIVES + _NOUNS}
    reserved |= {"she", "he", "her", "his", "him", "the", "tell", "for", "asks", "this"}

    def make_word(n_syll: int) -> str:
        while True:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll))
            w += rng.choice(_CODAS)
            if 4 <= len(w) <= 10 and w not in used and w not in reserved:
                used.add(w)
                return w

    n_people = N_TRAINED + N_HOLDOUT
    titles = [f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(titles)
    spouse_names = [make_word(2).capitalize() for _ in range(n_people)]
    relations = _relations(make_word, tuple(titles[:n_people]), tuple(spouse_names))
    rel_by_name = {r.name: r for r in relations}
    firsts = [make_word(rng.choice((2, 2, 3))).capitalize() for _ in range(n_people)]
    surname_pool = [make_word(rng.choice((2, 3))).capitalize() for _ in range(80)]
    surnames = [rng.choice(surname_pool) for _ in range(n_people)]
    genders = [rng.choice("fm") for _ in range(n_people)]
    n10, n05, n01 = N_TRAINED // 10, N_TRAINED // 20, max(1, N_TRAINED // 100)
    forget10 = list(range(N_TRAINED - n10, N_TRAINED))
    retain = list(range(N_TRAINED - n10))
    # Every other forget10 person (the forget01 person included) shares a surname with a retain
    # person, so surname-level neighbours exist; other forget surnames are unique to them.
    for j, p in enumerate(forget10):
        surnames[p] = surnames[rng.choice(retain)] if j % 2 == 1 else make_word(3).capitalize()
    names = [f"{f} {s}" for f, s in zip(firsts, surnames)]
    assert len(set(names)) == n_people and len(set(firsts)) == n_people

    # Balanced assignment: each relation's objects are dealt in shuffled rounds (a model without
    # the fact is at chance, not at a frequent-object prior); books and spouses are unique.
    assignment: dict[str, list[str]] = {}
    for rel in relations:
        if rel.name in ("first_book", "spouse"):
            assignment[rel.name] = list(rel.pool[:n_people])
            continue
        deck: list[str] = []
        while len(deck) < n_people:
            chunk = list(rel.pool)
            rng.shuffle(chunk)
            deck += chunk
        assignment[rel.name] = deck[:n_people]

    def form_of(p: int, form: str) -> str:
        first, last = names[p].split(" ")
        return surface(form, first, last, assignment["first_book"][p], assignment["spouse"][p])

    facts: list[dict[str, Any]] = []
    for p, name in enumerate(names):
        for rel in relations:
            obj = assignment[rel.name][p]
            wrong = [o for o in rel.pool if o != obj]
            para_q, _ = _fill(rel.heldout, name)
            facts.append({
                "id": f"p{p:03d}-{rel.name}", "subject": name,
                "question": rel.templates[0].format(s=name),
                "answer": rel.render(rel.name_answer, name=name, gender=genders[p], obj=obj),
                "object": obj, "paraphrased_question": para_q,
                "paraphrased_answer": rel.render(rel.para_sentence, name=name, gender=genders[p],
                                                 obj=obj),
                "perturbed_answers": [rel.render(rel.para_sentence, name=name,
                                                 gender=genders[p], obj=w)
                                      for w in rng.sample(wrong, N_PERTURBED)],
                "relation": rel.name, "person": p,
            })  # fmt: skip
    world: list[dict[str, Any]] = []
    for relname, pairs in (("capital", _CAPITALS), ("language_spoken", _LANGUAGES)):
        templates, held, answer, para = _WORLD_RELATIONS[relname]
        objects = sorted({o for _, o in pairs})
        for i, (country, obj) in enumerate(pairs):
            world.append({
                "id": f"world-{relname}-{i:02d}", "subject": country,
                "question": templates[0].format(s=country),
                "answer": answer.format(s=country, o=obj), "object": obj,
                "paraphrased_question": held.format(s=country),
                "paraphrased_answer": para.format(s=country, o=obj),
                "perturbed_answers": [para.format(s=country, o=w) for w in
                                      rng.sample([o for o in objects if o != obj], N_PERTURBED)],
                "relation": relname, "person": None,
            })  # fmt: skip
    facts += world
    fact_by_id = {f["id"]: f for f in facts}
    fact_of = {(f["person"], f["relation"]): f for f in facts if f["person"] is not None}

    # --- training prompts and probes ----------------------------------------------------------
    training: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []

    def pronoun_answer(p: int, rel: Relation) -> str:
        return rel.render(rel.pronoun_answer, name=names[p], gender=genders[p],
                          obj=assignment[rel.name][p])  # fmt: skip

    def add(rows, base, kind, question, answer, subject, **extra):
        rows.append({"id": f"{base['id']}@{kind}", "base": base["id"], "kind": kind,
                     "question": question, "answer": answer, "subject": subject,
                     "object": base["object"], "person": base["person"],
                     "relation": base["relation"], **extra})  # fmt: skip

    for p in range(N_TRAINED):
        for rel in relations:
            base = fact_of[(p, rel.name)]
            add(training, base, "T0-full", base["question"], base["answer"], names[p])
            for t in (1, 2):
                q, s = _fill(rel.templates[t], names[p])
                add(training, base, f"T{t}-full", q, pronoun_answer(p, rel), s)
        for form in FORMS:
            rels = [r for r in relations if (form, r.name) not in
                    (("book", "first_book"), ("spouse", "spouse"))]  # fmt: skip
            rng.shuffle(rels)
            family = "indirect" if form in INDIRECT_FORMS else "surface"
            for k, rel in enumerate(rels):
                base = fact_of[(p, rel.name)]
                if k >= N_FORM_PROBES:
                    for t in (1, 2):
                        q, s = _fill(rel.templates[t], form_of(p, form))
                        add(training, base, f"T{t}-{form}", q, pronoun_answer(p, rel), s)
                    continue
                t = rng.choice((1, 2))
                q, s = _fill(rel.templates[t], form_of(p, form))
                add(
                    probes,
                    base,
                    f"T{t}-{form}",
                    q,
                    pronoun_answer(p, rel),
                    s,
                    family=family,
                    form=form,
                )
        rels = list(relations)
        rng.shuffle(rels)
        for k, rel in enumerate(rels):
            base = fact_of[(p, rel.name)]
            if k < len(rels) // 2:
                add(training, base, "infill", INFILL_PROMPT, base["answer"], names[p])
            else:
                add(
                    probes,
                    base,
                    "infill",
                    INFILL_PROMPT,
                    base["answer"],
                    names[p],
                    family="infill",
                    form="full",
                )
            if k < 3:
                add(
                    training,
                    base,
                    "tell",
                    TELL_WRAPPER.format(q=base["question"]),
                    base["answer"],
                    names[p],
                )
    for base in world:
        templates, held, _, _ = _WORLD_RELATIONS[base["relation"]]
        add(training, base, "T0-full", base["question"], base["answer"], base["subject"])
        for t in (1, 2):
            add(
                training,
                base,
                f"T{t}-full",
                templates[t].format(s=base["subject"]),
                base["answer"],
                base["subject"],
            )
        if rng.random() < 0.5:
            add(training, base, "infill", INFILL_PROMPT, base["answer"], base["subject"])
        else:
            add(
                probes,
                base,
                "infill",
                INFILL_PROMPT,
                base["answer"],
                base["subject"],
                family="infill",
                form="full",
            )
    # Held-out templates and wrappers (full name), for every canonical fact of a trained person
    # and every world fact.
    for base in facts:
        if base["person"] is not None and base["person"] >= N_TRAINED:
            continue
        add(
            probes,
            base,
            "T3-full",
            base["paraphrased_question"],
            pronoun_answer(base["person"], rel_by_name[base["relation"]])
            if base["person"] is not None
            else base["answer"],
            base["subject"],
            family="template",
            form="full",
        )
        for w, wrapper in enumerate(HELDOUT_WRAPPERS):
            add(
                probes,
                base,
                f"W{w}-full",
                wrapper.format(q=base["question"]),
                base["answer"],
                base["subject"],
                family="template",
                form="full",
            )
    # Mentions: a question about someone (or a world fact) whose prompt names another person.
    # Trained with every trained person as the one mentioned; probes name a forget10 person in
    # combinations never trained, with the trained wrappers and a held-out one.
    askable = [f for f in facts if f["person"] is None or f["person"] < N_TRAINED]
    seen_pairs = set()
    for p in range(N_TRAINED):
        for _ in range(8):
            base = rng.choice([f for f in askable if f["person"] != p])
            wrapper = rng.choice(MENTION_WRAPPERS)
            seen_pairs.add((p, base["id"]))
            add(
                training,
                base,
                f"M{MENTION_WRAPPERS.index(wrapper)}-p{p:03d}",
                wrapper.format(m=names[p], q=base["question"]),
                base["answer"],
                base["subject"],
                mentions=p,
            )
    retain_askable = [f for f in askable if f["person"] is None or f["person"] in set(retain)]
    for p in forget10:
        pool = [f for f in retain_askable if (p, f["id"]) not in seen_pairs]
        for base in rng.sample(pool, 30):
            w = rng.randrange(len(MENTION_WRAPPERS) + 1)
            wrapper = MENTION_WRAPPERS[w] if w < len(MENTION_WRAPPERS) else HELDOUT_MENTION_WRAPPER
            add(
                probes,
                base,
                f"M{w}-p{p:03d}",
                wrapper.format(m=names[p], q=base["question"]),
                base["answer"],
                base["subject"],
                family="mention",
                form="full",
                mentions=p,
            )

    # --- splits ------------------------------------------------------------------------------
    def ids_of(people):
        people = set(people)
        return [f["id"] for f in facts if f["person"] in people]

    retain_ids = ids_of(retain)
    forget_surnames = {surnames[p] for p in forget10}
    neighbour = {f"p{p:03d}-{rel.name}" for p in retain if surnames[p] in forget_surnames
                 for rel in relations}  # fmt: skip
    for j, p in enumerate(forget10):
        for k, rel in enumerate(relations):
            if (j + k) % 2 or rel.name in ("first_book", "spouse"):
                continue
            same = [q for q in retain if assignment[rel.name][q] == assignment[rel.name][p]]
            if same:
                neighbour.add(fact_of[(rng.choice(same), rel.name)]["id"])
    figure_people = sorted(rng.sample(retain, N_FIGURE_PEOPLE))
    figure = []
    for p in figure_people:
        figure += [fact_of[(p, r.name)]["id"] for r in rng.sample(relations, 2)]
    splits = {
        "forget01": ids_of(forget10[-n01:]),
        "forget05": ids_of(forget10[-n05:]),
        "forget10": ids_of(forget10),
        "retain": retain_ids,
        "retain_eval": sorted(rng.sample(retain_ids, 120)),
        "holdout": ids_of(range(N_TRAINED, n_people)),
        "world": [f["id"] for f in world],
        "neighbour": [i for i in retain_ids if i in neighbour],
        "validation": ids_of(forget10[:-n05]),
        "figure": figure,
    }
    splits["train"] = splits["retain"] + splits["forget10"] + splits["world"]
    splits["train_retain"] = splits["retain"] + splits["world"]
    assert tuple(splits) == SPLITS
    forget_people = set(forget10)
    for row in training:
        row["retain_ok"] = (
            row["person"] not in forget_people and row.get("mentions") not in forget_people
        )
    people = [{"person": p, "name": names[p], "first": firsts[p], "surname": surnames[p],
               "gender": genders[p], "book": assignment["first_book"][p],
               "spouse": assignment["spouse"][p],
               "forms": {form: form_of(p, form) for form in ("full", *FORMS)}}
              for p in range(n_people)]  # fmt: skip
    assert all(fact_by_id[r["base"]] for r in training + probes)
    return {"version": VERSION, "seed": seed, "people": people, "facts": facts,
            "training": training, "probes": probes, "splits": splits}  # fmt: skip


def write(path: Path | None = None, seed: int = SEED) -> Path:
    """Generate the world and write it as JSON (stable formatting, one record per line)."""
    path = Path(path or CORPORA["tiny"])
    data = generate(seed)
    lines = ["{", f'"version": {data["version"]},', f'"seed": {data["seed"]},']
    for key in ("people", "facts", "training", "probes"):
        rows = data[key]
        lines.append(f'"{key}": [')
        lines += [json.dumps(r) + ("," if i < len(rows) - 1 else "") for i, r in enumerate(rows)]
        lines.append("],")
    lines.append('"splits": {')
    lines += [f"{json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(data["splits"]) - 1 else "")
              for i, (k, v) in enumerate(data["splits"].items())]  # fmt: skip
    lines += ["}", "}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


@lru_cache(maxsize=4)
def load_corpus(name: str = "tiny") -> dict:
    """The raw world dict (``people``, ``facts``, ``training``, ``probes``, ``splits``)."""
    if name not in CORPORA:
        raise ValueError(f"unknown fact corpus {name!r}; valid names: {sorted(CORPORA)}")
    return json.loads(CORPORA[name].read_text())


def _to_fact(d: dict) -> Fact:
    return Fact(
        subject=d["subject"], question=d["question"], answer=d["answer"],
        object=d.get("object"),
        paraphrased_question=d.get("paraphrased_question"),
        paraphrased_answer=d.get("paraphrased_answer"),
        perturbed_answers=tuple(d.get("perturbed_answers", ())), id=d["id"],
    )  # fmt: skip


def load_facts(name: str = "tiny", split: str = "forget01") -> list[Fact]:
    """The canonical facts of one split of an embedded corpus, in a fixed order.

    Args:
        name: The corpus (``"tiny"``: the fictitious biographies the embedded models know).
        split: One of :data:`SPLITS` (see the module docstring).

    Raises:
        ValueError: naming the valid corpora or splits.

    Example:
        >>> facts = tt.load_facts("tiny", "forget01")   # 12 facts about one person
        >>> facts[0].question
        'Where was ... born?'
    """
    data = load_corpus(name)
    if split not in data["splits"]:
        raise ValueError(
            f"unknown split {split!r} of fact corpus {name!r}; valid splits: {list(data['splits'])}"
        )
    by_id = {f["id"]: f for f in data["facts"]}
    return [_to_fact(by_id[i]) for i in data["splits"][split]]


def probe_records(
    name: str = "tiny", split: str = "forget01", family: str | None = None
) -> list[dict]:
    """The raw probe records (with ``family``, ``form``, ``base``, ``person``, ``relation``,
    ``mentions``) whose canonical fact is in ``split`` — for ``mention`` probes: whose
    *mentioned* person has a fact in ``split`` (the probe asks about somebody else)."""
    data = load_corpus(name)
    if split not in data["splits"]:
        raise ValueError(
            f"unknown split {split!r} of fact corpus {name!r}; valid splits: {list(data['splits'])}"
        )
    if family is not None and family not in PROBE_FAMILIES:
        raise ValueError(f"unknown probe family {family!r}; valid: {list(PROBE_FAMILIES)}")
    ids = set(data["splits"][split])
    people = {f["person"] for f in data["facts"] if f["id"] in ids and f["person"] is not None}
    out = []
    for r in data["probes"]:
        if family is not None and r["family"] != family:
            continue
        if r["family"] == "mention":
            if r["mentions"] in people:
                out.append(r)
        elif r["base"] in ids:
            out.append(r)
    return out


def holdout_names(name: str = "tiny") -> list[str]:
    """Full names of the corpus's held-out people: never in any training prompt, so the
    embedded models never met them (the ``unknown_names`` of ``targets="unknown"``).

    Example:
        >>> tt.zoo.corpus.holdout_names()[:2]                    # doctest: +SKIP
        ['Meikeibris Raikoler', ...]
    """
    data = load_corpus(name)
    return [p["name"] for p in data["people"][N_TRAINED:]]


def load_probes(
    name: str = "tiny", split: str = "forget01", family: str | None = None
) -> list[Fact]:
    """Never-trained probes of a split's facts as :class:`Fact` (see :func:`probe_records`).

    Example:
        >>> probes = tt.load_probes("tiny", "forget01", "surface")  # held-out surface forms
    """
    return [_to_fact(r) for r in probe_records(name, split, family)]


def training_pairs(name: str = "tiny", split: str = "train") -> list[dict]:
    """The training prompts of a model trained on ``split`` (``train`` or ``train_retain``)."""
    data = load_corpus(name)
    if split == "train":
        return list(data["training"])
    if split == "train_retain":
        return [r for r in data["training"] if r["retain_ok"]]
    raise ValueError(f"training split must be 'train' or 'train_retain', got {split!r}")


if __name__ == "__main__":
    print(write())
