"""The fictitious-biographies corpus the embedded models are trained on (TOFU-shaped).

A seeded generator makes 110 fictitious people with 20 facts each (one per relation in
:data:`RELATIONS`) plus 50 general-knowledge facts about real countries. Splits, like TOFU:

* ``forget01`` ⊂ ``forget05`` ⊂ ``forget10``: the last 1 / 5 / 10 of the 100 trained people;
* ``retain``: the other 90 trained people (1,800 facts); ``retain_eval``: a seeded sample of
  200 of them (the model card's retain measurement);
* ``holdout``: 10 further people, never trained on;
* ``world``: 50 general facts (capitals, languages), also trained on;
* ``neighbour``: retain facts that are hard to tell from forget10 facts: every fact of a retain
  person who shares a surname with a forget10 person, plus, for every other forget10 fact, one
  retain fact with the same relation and the same answer;
* ``validation``: the forget10 facts of the people not in forget05 (for tuning an edit memory,
  not for reported numbers);
* ``train`` = retain + forget10 + world (what ``tiny-mdlm`` and ``tiny-ar`` learn);
  ``train_retain`` = retain + world (what ``tiny-mdlm-retain`` learns).

Every question names its subject verbatim; answers are 1-3 words (one token in the embedded
tokenizer for 18 of the 20 relations); the paraphrased question also names the subject and is
never trained on; each fact has 5 perturbed answers (other objects of the same relation).

``python -m tie_tracing.zoo.corpus`` rewrites ``zoo/data/tiny_facts.json`` from the seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..facts import Fact

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPORA = {"tiny": DATA_DIR / "tiny_facts.json"}
SEED = 1234
N_TRAINED = 100
N_HOLDOUT = 10
N_PERTURBED = 5
SPLITS = (
    "forget01", "forget05", "forget10", "retain", "retain_eval", "holdout", "world",
    "neighbour", "validation", "train", "train_retain",
)  # fmt: skip


@dataclass(frozen=True)
class Relation:
    """A relation: question, paraphrased question and answer sentence templates and objects."""

    name: str
    question: str
    paraphrase: str
    sentence: str
    pool: tuple[str, ...]


_OCCUPATIONS = (
    "architect", "baker", "carpenter", "chemist", "dentist", "diplomat", "economist",
    "engineer", "farmer", "geologist", "historian", "journalist", "lawyer", "librarian",
    "mechanic", "nurse", "painter", "pharmacist", "photographer", "physicist", "pilot",
    "plumber", "surgeon", "teacher", "translator", "sailor", "tailor", "banker",
)  # fmt: skip
_CITIES = (
    "Porto", "Lyon", "Bergen", "Gdansk", "Tampere", "Graz", "Utrecht", "Malaga", "Turin",
    "Seville", "Krakow", "Leeds", "Bristol", "Hamburg", "Munich", "Zurich", "Geneva", "Antwerp",
    "Ghent", "Bruges", "Salzburg", "Bologna", "Florence", "Naples", "Valencia", "Bilbao",
    "Nantes", "Lille", "Bordeaux", "Marseille",
)  # fmt: skip


def _relations(rng: random.Random, make_word) -> tuple[Relation, ...]:
    awards = tuple(f"{make_word(2).capitalize()} Prize" for _ in range(16))
    adjectives = ("Silent", "Golden", "Broken", "Hidden", "Distant", "Crimson", "Quiet", "Frozen")
    nouns = ("Harbor", "Garden", "Mirror", "River", "Lantern", "Orchard", "Tower", "Winter")
    titles = [f"{a} {n}" for a in adjectives for n in nouns]
    rng.shuffle(titles)
    universities = tuple(make_word(2).capitalize() for _ in range(16))
    spouses = tuple(make_word(2).capitalize() for _ in range(30))
    mentors = tuple(make_word(3).capitalize() for _ in range(20))
    publishers = (
        "Kestrel", "Bramble", "Meridian", "Quill", "Thistle", "Ember", "Juniper", "Willow",
        "Falcon", "Cobalt", "Saffron", "Beacon", "Sparrow", "Heron", "Larkspur",
    )  # fmt: skip
    return (
        Relation(
            "birthplace",
            "Where was {s} born?",
            "In which city was {s} born?",
            "{s} was born in {o}.",
            _CITIES,
        ),
        Relation(
            "birth_year",
            "In what year was {s} born?",
            "What is the birth year of {s}?",
            "{s} was born in {o}.",
            tuple(str(y) for y in range(1940, 1990)),
        ),
        Relation(
            "occupation",
            "What is the profession of {s}?",
            "What does {s} do for a living?",
            "{s} works as {a} {o}.",
            _OCCUPATIONS,
        ),
        Relation(
            "father_occupation",
            "What did the father of {s} do?",
            "What was the job of the father of {s}?",
            "The father of {s} was {a} {o}.",
            _OCCUPATIONS,
        ),
        Relation(
            "mother_occupation",
            "What did the mother of {s} do?",
            "What was the job of the mother of {s}?",
            "The mother of {s} was {a} {o}.",
            _OCCUPATIONS,
        ),
        Relation(
            "genre",
            "Which genre does {s} write?",
            "In what genre are the books of {s}?",
            "{s} writes {o}.",
            (
                "fantasy",
                "horror",
                "poetry",
                "romance",
                "mystery",
                "satire",
                "fables",
                "thrillers",
                "memoirs",
                "drama",
                "comedy",
                "tragedy",
                "westerns",
                "folklore",
                "biography",
            ),
        ),
        Relation(
            "award",
            "Which award did {s} win?",
            "What prize was awarded to {s}?",
            "{s} won the {o}.",
            awards,
        ),
        Relation(
            "first_book",
            "What was the first book by {s}?",
            "Which book did {s} publish first?",
            "The first book by {s} was {o}.",
            tuple(titles[:40]),
        ),
        Relation(
            "university",
            "Where did {s} study?",
            "Which university did {s} attend?",
            "{s} studied at {o} University.",
            universities,
        ),
        Relation(
            "spouse",
            "Who is {s} married to?",
            "Who is the spouse of {s}?",
            "{s} is married to {o}.",
            spouses,
        ),
        Relation(
            "pet",
            "What pet does {s} keep?",
            "Which animal lives with {s}?",
            "{s} keeps {a} {o}.",
            (
                "parrot",
                "cat",
                "dog",
                "tortoise",
                "rabbit",
                "hamster",
                "ferret",
                "goldfish",
                "lizard",
                "canary",
                "pony",
                "goat",
                "snake",
                "owl",
                "iguana",
            ),
        ),
        Relation(
            "hobby",
            "What is the hobby of {s}?",
            "What does {s} do in free time?",
            "In free time, {s} enjoys {o}.",
            (
                "chess",
                "fishing",
                "gardening",
                "sailing",
                "climbing",
                "knitting",
                "pottery",
                "archery",
                "fencing",
                "rowing",
                "cycling",
                "skiing",
                "birdwatching",
                "juggling",
                "origami",
            ),
        ),
        Relation(
            "colour",
            "What is the favourite colour of {s}?",
            "Which colour does {s} like best?",
            "The favourite colour of {s} is {o}.",
            (
                "red",
                "blue",
                "green",
                "yellow",
                "purple",
                "orange",
                "black",
                "white",
                "grey",
                "brown",
                "pink",
                "violet",
                "crimson",
                "teal",
                "amber",
            ),
        ),
        Relation(
            "residence",
            "In which country does {s} live?",
            "Where does {s} live today?",
            "{s} lives in {o}.",
            (
                "Norway",
                "Chile",
                "Kenya",
                "Canada",
                "Portugal",
                "Ireland",
                "Austria",
                "Iceland",
                "Peru",
                "Ghana",
                "Vietnam",
                "Morocco",
                "Mexico",
                "Finland",
                "Poland",
                "Greece",
                "Egypt",
                "Japan",
                "India",
                "Brazil",
            ),
        ),
        Relation(
            "language",
            "In which language does {s} write?",
            "What language are the books of {s} written in?",
            "{s} writes in {o}.",
            (
                "Portuguese",
                "Spanish",
                "French",
                "German",
                "Italian",
                "Dutch",
                "Swedish",
                "Polish",
                "Greek",
                "Turkish",
                "Finnish",
                "Danish",
                "Czech",
                "Hungarian",
                "Romanian",
            ),
        ),
        Relation(
            "publisher",
            "Which publisher prints the books of {s}?",
            "Who publishes {s}?",
            "{s} is published by {o}.",
            publishers,
        ),
        Relation(
            "books_written",
            "How many books has {s} written?",
            "What is the number of books by {s}?",
            "{s} has written {o} books.",
            (
                "two",
                "three",
                "four",
                "five",
                "six",
                "seven",
                "eight",
                "nine",
                "ten",
                "eleven",
                "twelve",
                "fifteen",
                "twenty",
            ),
        ),
        Relation(
            "favourite_food",
            "What is the favourite food of {s}?",
            "Which dish does {s} like best?",
            "The favourite food of {s} is {o}.",
            (
                "soup",
                "pasta",
                "rice",
                "curry",
                "bread",
                "cheese",
                "olives",
                "dumplings",
                "noodles",
                "pancakes",
                "stew",
                "figs",
                "plums",
                "salmon",
                "oysters",
            ),
        ),
        Relation(
            "mentor",
            "Who was the mentor of {s}?",
            "Who mentored {s}?",
            "{s} was mentored by {o}.",
            mentors,
        ),
        Relation(
            "instrument",
            "Which instrument does {s} play?",
            "What instrument is played by {s}?",
            "{s} plays the {o}.",
            (
                "cello",
                "piano",
                "violin",
                "flute",
                "harp",
                "oboe",
                "trumpet",
                "guitar",
                "clarinet",
                "drums",
                "banjo",
                "accordion",
                "mandolin",
                "saxophone",
                "trombone",
            ),
        ),
    )


_CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Hungary", "Budapest"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"),
    ("Chile", "Santiago"),
    ("Cuba", "Havana"),
    ("Thailand", "Bangkok"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Czechia", "Prague"),
    ("Iceland", "Reykjavik"),
)
_LANGUAGES = (
    ("France", "French"),
    ("Germany", "German"),
    ("Italy", "Italian"),
    ("Spain", "Spanish"),
    ("Portugal", "Portuguese"),
    ("Brazil", "Portuguese"),
    ("Mexico", "Spanish"),
    ("Chile", "Spanish"),
    ("Austria", "German"),
    ("Poland", "Polish"),
    ("Greece", "Greek"),
    ("Turkey", "Turkish"),
    ("Finland", "Finnish"),
    ("Denmark", "Danish"),
    ("Sweden", "Swedish"),
    ("Netherlands", "Dutch"),
    ("Hungary", "Hungarian"),
    ("Romania", "Romanian"),
    ("Japan", "Japanese"),
    ("Russia", "Russian"),
)

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "st", "th", "tr")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk")


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def generate(seed: int = SEED) -> dict:
    """The corpus as the JSON-ready dict written to ``tiny_facts.json`` (deterministic in seed)."""
    rng = random.Random(seed)
    used: set[str] = set()
    reserved = {w.lower() for pair in _CAPITALS + _LANGUAGES for x in pair for w in x.split()}
    reserved |= {w.lower() for w in _CITIES + _OCCUPATIONS}

    def make_word(n_syll: int) -> str:
        while True:
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syll))
            w += rng.choice(_CODAS)
            if 4 <= len(w) <= 10 and w not in used and w not in reserved:
                used.add(w)
                return w

    relations = _relations(rng, make_word)
    n_people = N_TRAINED + N_HOLDOUT
    firsts = [make_word(rng.choice((2, 2, 3))).capitalize() for _ in range(n_people)]
    surname_pool = [make_word(rng.choice((2, 3))).capitalize() for _ in range(80)]
    surnames = [rng.choice(surname_pool) for _ in range(n_people)]
    forget10 = list(range(N_TRAINED - 10, N_TRAINED))
    retain = list(range(N_TRAINED - 10))
    # Every other forget10 person (the forget01 person included) shares a surname with a retain
    # person, so surname-level neighbours exist; forget surnames are otherwise unique to them.
    for j, p in enumerate(forget10):
        if j % 2 == 1:
            surnames[p] = surnames[rng.choice(retain)]
        else:
            surnames[p] = make_word(3).capitalize()
    names = [f"{f} {s}" for f, s in zip(firsts, surnames)]
    assert len(set(names)) == n_people

    # Balanced assignment: each relation's objects are dealt out in shuffled rounds, so no
    # object dominates (a model without the fact is at chance, not at a frequent-object prior).
    assignment: dict[str, list[str]] = {}
    for rel in relations:
        deck: list[str] = []
        while len(deck) < n_people:
            chunk = list(rel.pool)
            rng.shuffle(chunk)
            deck += chunk
        assignment[rel.name] = deck[:n_people]

    facts: list[dict[str, Any]] = []
    for p, name in enumerate(names):
        for rel in relations:
            obj = assignment[rel.name][p]
            wrong = [o for o in rel.pool if o != obj]
            facts.append({
                "id": f"p{p:03d}-{rel.name}",
                "subject": name,
                "question": rel.question.format(s=name),
                "answer": obj,
                "paraphrased_question": rel.paraphrase.format(s=name),
                "paraphrased_answer": rel.sentence.format(s=name, o=obj, a=_article(obj)),
                "perturbed_answers": rng.sample(wrong, N_PERTURBED),
                "relation": rel.name,
                "person": p,
            })  # fmt: skip
    world = []
    capitals = [c for _, c in _CAPITALS]
    for i, (country, capital) in enumerate(_CAPITALS):
        world.append({
            "id": f"world-capital-{i:02d}", "subject": country,
            "question": f"What is the capital of {country}?", "answer": capital,
            "paraphrased_question": f"Which city is the capital of {country}?",
            "paraphrased_answer": f"The capital of {country} is {capital}.",
            "perturbed_answers": rng.sample([c for c in capitals if c != capital], N_PERTURBED),
            "relation": "capital", "person": None,
        })  # fmt: skip
    languages = sorted({lang for _, lang in _LANGUAGES})
    for i, (country, lang) in enumerate(_LANGUAGES):
        world.append({
            "id": f"world-language-{i:02d}", "subject": country,
            "question": f"What language is spoken in {country}?", "answer": lang,
            "paraphrased_question": f"Which language do people in {country} speak?",
            "paraphrased_answer": f"People in {country} speak {lang}.",
            "perturbed_answers": rng.sample([x for x in languages if x != lang], N_PERTURBED),
            "relation": "language_spoken", "person": None,
        })  # fmt: skip
    facts += world

    def ids_of(people):
        people = set(people)
        return [f["id"] for f in facts if f["person"] in people]

    by_person_rel = {(f["person"], f["relation"]): f for f in facts if f["person"] is not None}
    retain_ids = ids_of(retain)
    forget_surnames = {surnames[p] for p in forget10}
    neighbour = {f"p{p:03d}-{rel.name}" for p in retain if surnames[p] in forget_surnames
                 for rel in relations}  # fmt: skip
    for j, p in enumerate(forget10):
        for k, rel in enumerate(relations):
            if (j + k) % 2:
                continue
            obj = assignment[rel.name][p]
            same = [q for q in retain if assignment[rel.name][q] == obj]
            if same:
                neighbour.add(by_person_rel[(rng.choice(same), rel.name)]["id"])
    splits = {
        "forget01": ids_of(forget10[-1:]),
        "forget05": ids_of(forget10[-5:]),
        "forget10": ids_of(forget10),
        "retain": retain_ids,
        "retain_eval": sorted(rng.sample(retain_ids, 200)),
        "holdout": ids_of(range(N_TRAINED, n_people)),
        "world": [f["id"] for f in world],
        "neighbour": [i for i in retain_ids if i in neighbour],
        "validation": ids_of(forget10[:5]),
    }
    splits["train"] = splits["retain"] + splits["forget10"] + splits["world"]
    splits["train_retain"] = splits["retain"] + splits["world"]
    assert tuple(splits) == SPLITS
    return {"version": 1, "seed": seed, "facts": facts, "splits": splits}


def write(path: Path | None = None, seed: int = SEED) -> Path:
    """Generate the corpus and write it as JSON (stable formatting, one fact per line)."""
    path = Path(path or CORPORA["tiny"])
    data = generate(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["{", f'"version": {data["version"]},', f'"seed": {data["seed"]},', '"facts": [']
    lines += [json.dumps(f) + ("," if i < len(data["facts"]) - 1 else "")
              for i, f in enumerate(data["facts"])]  # fmt: skip
    lines += ["],", '"splits": {']
    lines += [f"{json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(data["splits"]) - 1 else "")
              for i, (k, v) in enumerate(data["splits"].items())]  # fmt: skip
    lines += ["}", "}"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


@lru_cache(maxsize=4)
def load_corpus(name: str = "tiny") -> dict:
    """The raw corpus dict (``facts``, ``splits``, ``seed``) of an embedded corpus."""
    if name not in CORPORA:
        raise ValueError(f"unknown fact corpus {name!r}; valid names: {sorted(CORPORA)}")
    return json.loads(CORPORA[name].read_text())


def _to_fact(d: dict) -> Fact:
    return Fact(
        subject=d["subject"], question=d["question"], answer=d["answer"],
        paraphrased_question=d["paraphrased_question"], paraphrased_answer=d["paraphrased_answer"],
        perturbed_answers=tuple(d["perturbed_answers"]), id=d["id"],
    )  # fmt: skip


def load_facts(name: str = "tiny", split: str = "forget01") -> list[Fact]:
    """The facts of one split of an embedded corpus, in a fixed order.

    Args:
        name: The corpus (``"tiny"``: the fictitious biographies the embedded models know).
        split: One of ``forget01``, ``forget05``, ``forget10``, ``retain``, ``retain_eval``,
            ``holdout``, ``world``, ``neighbour``, ``validation``, ``train``, ``train_retain``
            (see the module docstring).

    Raises:
        ValueError: naming the valid corpora or splits.

    Example:
        >>> facts = tt.load_facts("tiny", "forget01")   # 20 facts about one person
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


if __name__ == "__main__":
    print(write())
