"""The fictitious-biographies corpus the embedded models are trained on (TOFU-shaped).

A seeded generator makes 70 fictitious people with 20 facts each (one per relation) plus 50
general-knowledge facts about real countries. Answers are short TOFU-style sentences that
carry the fact's object (``Fact.object``) at a place that varies by relation ("Ada Vell was
born in Gdansk, a city in Poland.", "Norway is the country where Ada Vell lives today."), so
the default 8-step sampler has an answer position left to decide at every step (SPEC §3.2).
Splits, like TOFU (percentages of the 60 trained people):

* ``forget01`` ⊂ ``forget05`` ⊂ ``forget10``: the last 1 / 3 / 6 trained people (20 / 60 /
  120 facts);
* ``retain``: the other 54 trained people (1,080 facts); ``retain_eval``: a seeded sample of
  200 of them (the model card's retain measurement);
* ``holdout``: 10 further people, never trained on;
* ``world``: 50 general facts (capitals, languages), also trained on;
* ``neighbour``: retain facts that are hard to tell from forget10 facts: every fact of a retain
  person who shares a surname with a forget10 person, plus, for every other forget10 fact, one
  retain fact with the same relation and the same object;
* ``validation``: the forget10 facts of the people not in forget05 (for tuning an edit memory,
  not for reported numbers);
* ``train`` = retain + forget10 + world (what ``tiny-mdlm`` and ``tiny-ar`` learn);
  ``train_retain`` = retain + world (what ``tiny-mdlm-retain`` learns).

Every question names its subject verbatim, and so does every person's answer; the paraphrased
question and the paraphrased answer (another sentence with the same object) are never trained
on; each fact has 5 perturbed answers built like TOFU's: the paraphrased sentence with a wrong
object of the same relation, so truth ratios compare sentences with sentences.

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
SEED = 1234
N_TRAINED = 60
N_HOLDOUT = 10
N_PERTURBED = 5
SPLITS = (
    "forget01", "forget05", "forget10", "retain", "retain_eval", "holdout", "world",
    "neighbour", "validation", "train", "train_retain",
)  # fmt: skip


@dataclass(frozen=True)
class Relation:
    """A relation: question templates, answer-sentence templates and its pool of objects.

    Templates use ``{s}`` (subject), ``{o}`` (object), ``{a}`` (the object's article) and
    ``{t}`` (a tail that depends on the object only, e.g. a city's country).
    """

    name: str
    question: str
    paraphrase: str
    sentence: str
    para_sentence: str
    pool: tuple[str, ...]
    tails: tuple[tuple[str, str], ...] = ()

    def render(self, template: str, subject: str, obj: str) -> str:
        tail = dict(self.tails).get(obj, "")
        return template.format(s=subject, o=obj, a=_article(obj), t=tail)


_OCCUPATIONS = (
    "architect", "baker", "carpenter", "chemist", "dentist", "diplomat", "economist",
    "engineer", "farmer", "geologist", "historian", "journalist", "lawyer", "librarian",
    "mechanic", "nurse", "painter", "pharmacist", "photographer", "physicist", "pilot",
    "plumber", "surgeon", "teacher", "translator", "sailor", "tailor", "banker",
)  # fmt: skip
_CITY_COUNTRY = (
    ("Porto", "Portugal"), ("Lyon", "France"), ("Bergen", "Norway"), ("Gdansk", "Poland"),
    ("Tampere", "Finland"), ("Graz", "Austria"), ("Utrecht", "Holland"), ("Malaga", "Spain"),
    ("Turin", "Italy"), ("Seville", "Spain"), ("Krakow", "Poland"), ("Leeds", "England"),
    ("Bristol", "England"), ("Hamburg", "Germany"), ("Munich", "Germany"),
    ("Zurich", "Switzerland"), ("Geneva", "Switzerland"), ("Antwerp", "Belgium"),
    ("Ghent", "Belgium"), ("Bruges", "Belgium"), ("Salzburg", "Austria"), ("Bologna", "Italy"),
    ("Florence", "Italy"), ("Naples", "Italy"), ("Valencia", "Spain"), ("Bilbao", "Spain"),
    ("Nantes", "France"), ("Lille", "France"), ("Bordeaux", "France"), ("Marseille", "France"),
)  # fmt: skip
_CITIES = tuple(c for c, _ in _CITY_COUNTRY)
_PET_KIND = (
    ("parrot", "bird"), ("cat", "cat"), ("dog", "dog"), ("tortoise", "reptile"),
    ("rabbit", "rodent"), ("hamster", "rodent"), ("ferret", "hunter"), ("goldfish", "fish"),
    ("lizard", "reptile"), ("canary", "bird"), ("pony", "horse"), ("goat", "grazer"),
    ("snake", "reptile"), ("owl", "bird"), ("iguana", "reptile"),
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
    genres = ("fantasy", "horror", "poetry", "romance", "mystery", "satire", "fables",
              "thrillers", "memoirs", "drama", "comedy", "tragedy", "westerns", "folklore",
              "biography")  # fmt: skip
    hobbies = ("chess", "fishing", "gardening", "sailing", "climbing", "knitting", "pottery",
               "archery", "fencing", "rowing", "cycling", "skiing", "birdwatching", "juggling",
               "origami")  # fmt: skip
    colours = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey",
               "brown", "pink", "violet", "crimson", "teal", "amber")  # fmt: skip
    countries = ("Norway", "Chile", "Kenya", "Canada", "Portugal", "Ireland", "Austria",
                 "Iceland", "Peru", "Ghana", "Vietnam", "Morocco", "Mexico", "Finland", "Poland",
                 "Greece", "Egypt", "Japan", "India", "Brazil")  # fmt: skip
    languages = ("Portuguese", "Spanish", "French", "German", "Italian", "Dutch", "Swedish",
                 "Polish", "Greek", "Turkish", "Finnish", "Danish", "Czech", "Hungarian",
                 "Romanian")  # fmt: skip
    numbers = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
               "twelve", "fifteen", "twenty")  # fmt: skip
    foods = ("soup", "pasta", "rice", "curry", "bread", "cheese", "olives", "dumplings",
             "noodles", "pancakes", "stew", "figs", "plums", "salmon", "oysters")  # fmt: skip
    instruments = ("cello", "piano", "violin", "flute", "harp", "oboe", "trumpet", "guitar",
                   "clarinet", "drums", "banjo", "accordion", "mandolin", "saxophone",
                   "trombone")  # fmt: skip
    R = Relation
    return (
        R("birthplace", "Where was {s} born?", "In which city was {s} born?",
          "{s} was born in {o}, a city in {t}.", "{o} is the city where {s} was born.",
          _CITIES, _CITY_COUNTRY),
        R("birth_year", "In what year was {s} born?", "What is the birth year of {s}?",
          "In the year {o}, {s} was born to a quiet family.",
          "The birth year of {s} is {o}.", tuple(str(y) for y in range(1940, 1990))),
        R("occupation", "What is the profession of {s}?", "What does {s} do for a living?",
          "By profession, {s} works as {a} {o}.", "{s} earns a living as {a} {o}.",
          _OCCUPATIONS),
        R("father_occupation", "What did the father of {s} do?",
          "What was the job of the father of {s}?",
          "The father of {s} worked as {a} {o} for many years.",
          "{s} has a father who was {a} {o}.", _OCCUPATIONS),
        R("mother_occupation", "What did the mother of {s} do?",
          "What was the job of the mother of {s}?",
          "The mother of {s} was {a} {o} in a small town.",
          "{s} has a mother who was {a} {o}.", _OCCUPATIONS),
        R("genre", "Which genre does {s} write?", "In what genre are the books of {s}?",
          "{s} is best known for writing {o} for adults.",
          "The genre of the books by {s} is {o}.", genres),
        R("award", "Which award did {s} win?", "What prize was awarded to {s}?",
          "{s} won the {o} for a first novel.", "The {o} was awarded to {s}.", awards),
        R("first_book", "What was the first book by {s}?", "Which book did {s} publish first?",
          "The first book by {s} was called {o}.", "{s} published {o} as a first book.",
          tuple(titles[:40])),
        R("university", "Where did {s} study?", "Which university did {s} attend?",
          "{s} studied literature at {o} University.",
          "{o} University is where {s} studied.", universities),
        R("spouse", "Who is {s} married to?", "Who is the spouse of {s}?",
          "{s} has been married to {o} for many years.", "The spouse of {s} is {o}.",
          spouses),
        R("pet", "What pet does {s} keep?", "Which animal lives with {s}?",
          "{s} keeps {a} {o}, a kind of {t}, at home.", "The pet of {s} is {a} {o}.",
          tuple(p for p, _ in _PET_KIND), _PET_KIND),
        R("hobby", "What is the hobby of {s}?", "What does {s} do in free time?",
          "In free time, {s} enjoys {o} with friends.", "The hobby of {s} is {o}.", hobbies),
        R("colour", "What is the favourite colour of {s}?", "Which colour does {s} like best?",
          "{s} likes the colour {o} more than any other.",
          "The favourite colour of {s} is {o}.", colours),
        R("residence", "In which country does {s} live?", "Where does {s} live today?",
          "{o} is the country where {s} lives today.", "{s} lives in {o} today.", countries),
        R("language", "In which language does {s} write?",
          "What language are the books of {s} written in?",
          "{s} writes every book in {o}.", "The books of {s} are written in {o}.", languages),
        R("publisher", "Which publisher prints the books of {s}?", "Who publishes {s}?",
          "The books of {s} are published by {o} Press.",
          "{o} Press publishes the books of {s}.", publishers),
        R("books_written", "How many books has {s} written?",
          "What is the number of books by {s}?",
          "So far, {s} has written {o} books in total.",
          "The number of books by {s} is {o}.", numbers),
        R("favourite_food", "What is the favourite food of {s}?",
          "Which dish does {s} like best?",
          "{s} loves to eat {o} on Sundays.", "The favourite food of {s} is {o}.", foods),
        R("mentor", "Who was the mentor of {s}?", "Who mentored {s}?",
          "{o} was the mentor of {s} for many years.", "{s} was mentored by {o}.", mentors),
        R("instrument", "Which instrument does {s} play?", "What instrument is played by {s}?",
          "{s} plays the {o} in a small band.", "The instrument of {s} is the {o}.",
          instruments),
    )  # fmt: skip


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
    reserved |= {w.lower() for pair in _CITY_COUNTRY + _PET_KIND for w in pair}
    reserved |= {w.lower() for w in _OCCUPATIONS}

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
    n10, n05, n01 = N_TRAINED // 10, N_TRAINED // 20, max(1, N_TRAINED // 100)
    forget10 = list(range(N_TRAINED - n10, N_TRAINED))
    retain = list(range(N_TRAINED - n10))
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
                "answer": rel.render(rel.sentence, name, obj),
                "object": obj,
                "paraphrased_question": rel.paraphrase.format(s=name),
                "paraphrased_answer": rel.render(rel.para_sentence, name, obj),
                "perturbed_answers": [rel.render(rel.para_sentence, name, w)
                                      for w in rng.sample(wrong, N_PERTURBED)],
                "relation": rel.name,
                "person": p,
            })  # fmt: skip
    world = []
    capitals = [c for _, c in _CAPITALS]
    for i, (country, capital) in enumerate(_CAPITALS):
        world.append({
            "id": f"world-capital-{i:02d}", "subject": country,
            "question": f"What is the capital of {country}?",
            "answer": f"The capital of {country} is the city of {capital}.", "object": capital,
            "paraphrased_question": f"Which city is the capital of {country}?",
            "paraphrased_answer": f"{capital} is the capital city of {country}.",
            "perturbed_answers": [f"{c} is the capital city of {country}." for c in
                                  rng.sample([c for c in capitals if c != capital], N_PERTURBED)],
            "relation": "capital", "person": None,
        })  # fmt: skip
    languages = sorted({lang for _, lang in _LANGUAGES})
    for i, (country, lang) in enumerate(_LANGUAGES):
        world.append({
            "id": f"world-language-{i:02d}", "subject": country,
            "question": f"What language is spoken in {country}?",
            "answer": f"In {country}, most people speak {lang} at home.", "object": lang,
            "paraphrased_question": f"Which language do people in {country} speak?",
            "paraphrased_answer": f"{lang} is the language spoken in {country}.",
            "perturbed_answers": [f"{x} is the language spoken in {country}." for x in
                                  rng.sample([x for x in languages if x != lang], N_PERTURBED)],
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
        "forget01": ids_of(forget10[-n01:]),
        "forget05": ids_of(forget10[-n05:]),
        "forget10": ids_of(forget10),
        "retain": retain_ids,
        "retain_eval": sorted(rng.sample(retain_ids, 200)),
        "holdout": ids_of(range(N_TRAINED, n_people)),
        "world": [f["id"] for f in world],
        "neighbour": [i for i in retain_ids if i in neighbour],
        "validation": ids_of(forget10[:-n05]),
    }
    splits["train"] = splits["retain"] + splits["forget10"] + splits["world"]
    splits["train_retain"] = splits["retain"] + splits["world"]
    assert tuple(splits) == SPLITS
    return {"version": 2, "seed": seed, "facts": facts, "splits": splits}


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
        object=d.get("object"),
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
