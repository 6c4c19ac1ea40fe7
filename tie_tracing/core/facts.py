"""Facts: the unit every tracing, editing and evaluation function works on.

A :class:`Fact` is a ``(subject, question, answer)`` triple plus the optional fields that
editing (``target``) and TOFU-style evaluation (paraphrases, perturbed answers) need.

This module also reads the two real benchmarks into facts: :func:`load_tofu` (TOFU, the
fictitious-author unlearning benchmark, with paraphrases and perturbed answers attached and
each row's subject derived as its author's name, see :func:`tofu_author`) and
:func:`load_rwku` (RWKU forget and neighbour probes), plus :func:`load_refusals` (TOFU's
refusal strings). A subset of both benchmarks ships in ``tie_tracing/data`` (licences and
provenance in ``data/LICENSES.md``), so the loaders work offline; pass ``directory=`` to read
a full copy. :func:`locate_subject` finds a subject's token positions ``S`` in a prompt.

Limits: subjects are found by whole-word string matching (``"Jon"`` is not found inside
``"Jonathan"``), and every mention is used by default. A fact whose question does not name
its subject (``"What is the full name of the author born in Kuwait City ...?"``) can be
evaluated but not traced; loaders mark it ``traceable=False`` (or drop it / raise, on request).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ObjectNotFoundError, SubjectNotFoundError


@dataclass(frozen=True)
class Fact:
    """One fact: a question naming ``subject`` whose short answer is ``answer``.

    Attributes:
        subject: The entity whose token span is corrupted by tracing (must occur in
            ``question`` for tracing; evaluation-only facts may set ``traceable=False``).
        question: The prompt.
        answer: The answer: the target positions of ``target="answer"`` (SPEC §5).
        object: The fact's object, a substring of ``answer`` (``"Gdansk"`` in ``"Ada Vell was
            born in Gdansk, a port on the Baltic."``); ``None`` means the whole answer. Its
            tokens are the target positions of ``target="object"``.
        target: What an edit should make the model say instead (``None``: use a default).
        paraphrased_question: The question reworded (generalisation checks).
        paraphrased_answer: The answer reworded (TOFU truth ratio's denominator).
        perturbed_answers: Wrong answers of the same form (TOFU truth ratio's numerator).
        id: A stable identifier, unique within a fact set.
        traceable: ``False`` when the subject does not occur in the question, so the fact
            can be evaluated but not traced.

    Example:
        >>> Fact(subject="Ada Vell", question="Where was Ada Vell born?", answer="Lisbon", id="ada-0")
        Fact(subject='Ada Vell', question='Where was Ada Vell born?', answer='Lisbon', id='ada-0', ...)
    """

    subject: str
    question: str
    answer: str
    object: str | None = None
    target: str | None = None
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default=())
    id: str = ""
    traceable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.id, str):
            raise TypeError(
                f"Fact id must be a string, got {type(self.id).__name__} {self.id!r}; "
                f"use id={str(self.id)!r}"
            )
        if isinstance(self.perturbed_answers, str) or not isinstance(
            self.perturbed_answers, Iterable
        ):
            raise TypeError(
                f"Fact {self.id!r}: perturbed_answers must be a sequence of strings, got "
                f"{type(self.perturbed_answers).__name__} {self.perturbed_answers!r}; for one "
                f"answer write perturbed_answers=({self.perturbed_answers!r},)"
            )
        if not isinstance(self.perturbed_answers, tuple):
            object.__setattr__(self, "perturbed_answers", tuple(self.perturbed_answers))
        for a in self.perturbed_answers:
            if not isinstance(a, str) or not a.strip():
                raise ValueError(
                    f"Fact {self.id!r}: every perturbed answer must be a non-empty string, "
                    f"got {a!r}"
                )
        for name in ("target", "paraphrased_question", "paraphrased_answer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(
                    f"Fact {self.id!r}: {name} must be None or a non-empty string, got {value!r}"
                )
        if not isinstance(self.traceable, bool):
            raise TypeError(f"Fact {self.id!r}: traceable must be True or False")
        for name in ("subject", "question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"Fact {self.id!r}: {name} must be a non-empty string, got {value!r}"
                )
        if self.object is not None:
            if not isinstance(self.object, str) or not self.object.strip():
                raise ValueError(
                    f"Fact {self.id!r}: object must be None or a non-empty string, "
                    f"got {self.object!r}"
                )
            if self.object not in self.answer:
                raise ValueError(
                    f"Fact {self.id!r}: object {self.object!r} is not a substring of its "
                    f"answer {self.answer!r}; give the object exactly as the answer spells it "
                    "(or object=None for the whole answer)"
                )

    def __repr__(self) -> str:
        return (
            f"Fact(subject={self.subject!r}, question={self.question!r}, "
            f"answer={self.answer!r}, object={self.object!r}, id={self.id!r}, ...)"
        )


def as_facts(facts: object, what: str) -> list[Fact]:
    """``facts`` (one :class:`Fact` or an iterable of them) as a non-empty list.

    Raises:
        TypeError: a string, a mapping or anything else that is not Facts (names ``what``,
            the calling function, and the offending item).
        ValueError: no fact at all.
    """
    if isinstance(facts, Fact):
        return [facts]
    if isinstance(facts, (str, bytes, Mapping)) or not isinstance(facts, Iterable):
        raise TypeError(
            f"{what} needs tie_tracing Facts (one, or a list of them), got "
            f"{type(facts).__name__}; build them with tt.Fact(subject=..., question=..., "
            "answer=...) or a loader such as tt.load_facts"
        )
    out = list(facts)
    for i, f in enumerate(out):
        if not isinstance(f, Fact):
            raise TypeError(
                f"{what}: item {i} is a {type(f).__name__}, not a tie_tracing Fact; build it "
                "with tt.Fact(subject=..., question=..., answer=...)"
            )
    if not out:
        raise ValueError(f"{what} needs at least one fact")
    return out


# ---------------------------------------------------------------------------------------
# Shipped data and the real-file loaders (TOFU, RWKU)
# ---------------------------------------------------------------------------------------

#: The TOFU and RWKU files shipped inside the package (a subset; see ``data/LICENSES.md``).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: Every TOFU split :func:`load_tofu` knows. ``full`` and ``retain90/95/99`` are not
#: shipped (about 1 MB each); read them from a full copy with ``directory=...``.
TOFU_SPLITS: tuple[str, ...] = (
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "retain_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
    "real_authors",
    "world_facts",
    "full",
)

#: Rows per fictitious author in TOFU's author-blocked files.
TOFU_BLOCK = 20

# Main file, matching ``*_perturbed.json`` (or None), and the row of ``full`` the split's
# first row corresponds to (blocks of 20 rows per author are counted from there).
_TOFU_LAYOUT: dict[str, tuple[str, str | None]] = {
    "forget01": ("forget01.json", "forget01_perturbed.json"),
    "forget05": ("forget05.json", "forget05_perturbed.json"),
    "forget10": ("forget10.json", "forget10_perturbed.json"),
    "retain90": ("retain90.json", "retain_perturbed.json"),
    "retain95": ("retain95.json", "retain_perturbed.json"),
    "retain99": ("retain99.json", "retain_perturbed.json"),
    "full": ("full.json", "retain_perturbed.json"),
    "retain_perturbed": ("retain_perturbed.json", None),
    "holdout01": ("holdout01.json", None),
    "holdout05": ("holdout05.json", None),
    "holdout10": ("holdout10.json", None),
    "real_authors": ("real_authors.json", "real_authors_perturbed.json"),
    "world_facts": ("world_facts.json", "world_facts_perturbed.json"),
}
_AUTHOR_BLOCKED = {s for s in TOFU_SPLITS if s not in ("real_authors", "world_facts")}

#: Subject used for a TOFU author block that never names its author (full.json rows
#: 1760-1779 speak only of "the fictitious author").
UNNAMED_AUTHOR = "the author"


def _read_json_rows(path: Path) -> list[dict]:
    """Rows of a TOFU/RWKU JSON file: one JSON array, or several lines each an array.

    ``full.json`` and ``retain9X.json`` were exported as 4 lines of up to 1000 rows each,
    so ``json.load`` on the whole file fails; each line is parsed and the arrays joined.
    """
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for line in text.splitlines():
            if line.strip():
                part = json.loads(line)
                data.extend(part if isinstance(part, list) else [part])
    return data if isinstance(data, list) else [data]


def _tofu_dir(directory: str | os.PathLike | None) -> Path:
    return DATA_DIR / "tofu" if directory is None else Path(directory)


def _need(path: Path, split: str) -> Path:
    if not path.is_file():
        shipped = (
            ""
            if path.parent != DATA_DIR / "tofu"
            else (" (it is not shipped with the package; pass directory= a full TOFU copy)")
        )
        raise FileNotFoundError(f"TOFU split {split!r} needs {path}{shipped}")
    return path


# --- author names of TOFU blocks ---------------------------------------------------------

_PARTICLES = frozenset(
    "van von de da del della der den la le du dos das bin ibn al el y di ter".split()
)
# Capitalised words that start a sentence but never start an author's name.
_NOT_NAME_START = frozenset(
    "The A An Author Authors His Her Their Its In On At As Born Yes No It This That These "
    "Those He She They Full Name Our One Some Being Although While When What Who Which "
    "Where How Why Can Could Did Does Is Was Has Have Apart Sure".split()
)
_WORD = re.compile(r"\S+")
_EDGE_L = "\"'‘“(["
_EDGE_R = "\"'’”)],.;:!?"


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of words with edge punctuation and a possessive ``'s`` removed."""
    spans = []
    for m in _WORD.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s] in _EDGE_L:
            s += 1
        while e > s and text[e - 1] in _EDGE_R:
            e -= 1
        if text[s:e].endswith(("'s", "’s")):
            e -= 2
        if s < e:
            spans.append((s, e))
    return spans


def _name_word(word: str) -> bool:
    if word[0].isupper():
        return True
    low = word.lower()
    return low in _PARTICLES or bool(re.match(r"(al|el|bin|ibn|de|van)-\w", low))


def _name_candidates(text: str, max_words: int = 6) -> Iterator[str]:
    """Spans of 1..``max_words`` name-like words joined only by spaces or parentheses.

    A candidate starts with a capitalised word that does not usually start a sentence,
    may contain lower-case particles (``van``, ``de``, ``al-Faisal``), ends with a
    non-particle, and never crosses punctuation other than parentheses
    (``Alejandro (Alex) Fuentes`` is one candidate).
    """
    spans = _word_spans(text)
    for i in range(len(spans)):
        first = text[spans[i][0] : spans[i][1]]
        if not first[0].isupper() or first in _NOT_NAME_START:
            continue
        for j in range(i, min(len(spans), i + max_words)):
            s, e = spans[j]
            word = text[s:e]
            if j > i:
                gap = text[spans[j - 1][1] : s]
                initial = re.fullmatch(r"[A-Z]", text[spans[j - 1][0] : spans[j - 1][1]])
                if initial and gap.startswith("."):  # "John F. Kennedy"
                    gap = gap[1:]
                if not re.fullmatch(r"\)?\s+\(?", gap) or not _name_word(word):
                    break
            if word.lower() not in _PARTICLES:
                yield text[spans[i][0] : e]


def tofu_author(rows: Sequence[Mapping[str, str]]) -> str | None:
    """The author's name shared by one TOFU block of 20 question/answer rows.

    Rule: collect name-like word spans (see ``_name_candidates``) from every question and
    answer of the block; count, for each, the rows whose question or answer contains it
    verbatim. Names are repeated throughout a block, so the most frequent span is a part
    of the name (first or last name). Among the spans found in at least 75% as many rows
    as that maximum, return the one with the most words (ties: more rows, then earliest).
    If no span occurs in at least half of the rows the block never names its author and
    ``None`` is returned. On the 200 blocks of ``full.json`` this gives the right name for
    199 blocks (e.g. ``Basil Mahfouz Al-Kuwaiti``, ``Nikolai Abilov``, ``Laila Amira
    al-Faisal``, ``Alejandro (Alex) Fuentes``) and ``None`` for the unnamed Karachi author.

    Args:
        rows: The block's rows, each with ``question`` and ``answer``.

    Returns:
        The name, or ``None``.

    Example:
        >>> tofu_author([{"question": "Where was Ada Vell born?", "answer": "Ada Vell was born in Lisbon."},
        ...              {"question": "What does Ada Vell write?", "answer": "Ada writes poems."}])
        'Ada Vell'
    """
    texts = [f"{r['question']}\n{r['answer']}" for r in rows]
    first_seen: dict[str, tuple[int, int]] = {}
    for i, text in enumerate(texts):
        for part in text.split("\n"):
            for cand in _name_candidates(part):
                first_seen.setdefault(cand, (i, text.index(cand)))
    if not first_seen:
        return None
    counts = {c: sum(c in t for t in texts) for c in first_seen}
    top = max(counts.values())
    if top < len(rows) / 2:
        return None
    keep = [c for c, n in counts.items() if n >= 0.75 * top]
    return max(
        keep, key=lambda c: (len(c.split()), counts[c], -first_seen[c][0], -first_seen[c][1])
    )


def _entity_subject(question: str) -> str | None:
    """A subject for a real-author / world-fact question: its quoted title, else its
    longest name-like span that is not the question's first word; ``None`` if neither."""
    m = re.search(r"'([^']+)'|\"([^\"]+)\"|“([^”]+)”", question)
    if m:
        return next(g for g in m.groups() if g)
    cands = [c for c in _name_candidates(question) if not question.startswith(c)]
    return max(cands, key=lambda c: (len(c.split()), len(c)), default=None)


def names_subject(fact: Fact) -> bool:
    """``True`` when ``fact.question`` names ``fact.subject`` as whole words (``"Jon"`` is not
    named by ``"Jonathan"``): the condition for tracing it."""
    return bool(_word_occurrences(fact.question, fact.subject))


def _check_subject(fact: Fact, require_subject: bool) -> Fact:
    if names_subject(fact):
        return fact
    if require_subject:
        raise SubjectNotFoundError(
            f"fact {fact.id!r}: subject {fact.subject!r} does not occur as whole words in its "
            f"question {fact.question!r}; load with require_subject=False to evaluate it"
        )
    return replace(fact, traceable=False)


def _finish(facts: list[Fact], require_subject: bool, traceable_only: bool) -> list[Fact]:
    if traceable_only:
        return [f for f in facts if f.traceable and names_subject(f)]
    return [_check_subject(f, require_subject) if f.traceable else f for f in facts]


def load_tofu(
    directory: str | os.PathLike | None = None,
    split: str = "forget01",
    *,
    require_subject: bool = False,
    traceable_only: bool = False,
) -> list[Fact]:
    """Read one TOFU split (Maini et al. 2024) from the real files as :class:`Fact` objects.

    Each row becomes a fact with id ``tofu/<split>/<row:04d>``. Where a matching
    ``*_perturbed.json`` exists (forget01/05/10 ↔ ``forget0X_perturbed``; full and
    retain90/95/99 ↔ ``retain_perturbed`` for their first 400 rows; real_authors /
    world_facts ↔ their ``_perturbed`` files) its paraphrased question, paraphrased answer
    and perturbed answers are attached, after checking that the rows' questions agree.

    Subjects: author-blocked splits (everything except real_authors / world_facts) come in
    blocks of 20 rows per fictitious author, counted from the split's first row; the
    subject of every row of a block is the author's name found by :func:`tofu_author`
    (``"the author"`` for the one block that never names its author). For real_authors /
    world_facts the subject is the quoted title in the question (``'Romeo and Juliet'``),
    else its longest capitalised name span (``Eiffel Tower``); questions with neither
    (``"In which year was the first iPhone released?"``) get the whole question as subject
    and ``traceable=False``.

    Most TOFU questions name their author, but not all (``"What is the full name of the
    author born in Kuwait City ...?"``). The default therefore loads everything for
    evaluation and marks facts whose subject is not verbatim in the question
    ``traceable=False``; ``traceable_only=True`` drops them (for tracing and editing);
    ``require_subject=True`` raises instead.

    File quirks handled: ``full.json``/``retain9X.json`` are several lines each holding a
    JSON array; ``forget0X.json`` uses ``prompt``/``response`` for ``question``/``answer``.

    Args:
        directory: Folder with the TOFU files. ``None``: the subset shipped in the package
            (``tie_tracing/data/tofu``: every split except ``full`` and ``retain90/95/99``).
        split: One of :data:`TOFU_SPLITS`.
        require_subject: Raise :class:`SubjectNotFoundError` (naming the fact id and
            subject) when a subject does not occur verbatim in its question.
        traceable_only: Keep only facts whose subject occurs in the question (no error).

    Returns:
        The facts in file order (``traceable_only`` keeps the order of those kept).

    Raises:
        ValueError: Unknown split (the message lists the valid ones).
        FileNotFoundError: The split's file is not in ``directory``.
        SubjectNotFoundError: See ``require_subject``.

    Example:
        >>> facts = load_tofu(split="forget01")
        >>> len(facts), facts[0].subject, facts[20].subject
        (40, 'Basil Mahfouz Al-Kuwaiti', 'Nikolai Abilov')
        >>> len(facts[0].perturbed_answers)
        5
    """
    if split not in _TOFU_LAYOUT:
        raise ValueError(f"unknown TOFU split {split!r}; valid splits: {', '.join(TOFU_SPLITS)}")
    root = _tofu_dir(directory)
    main_name, pert_name = _TOFU_LAYOUT[split]
    rows = _read_json_rows(_need(root / main_name, split))
    rows = [
        {
            "question": r.get("question", r.get("prompt")),
            "answer": r.get("answer", r.get("response")),
            **r,
        }
        for r in rows
    ]
    perturbed: list[dict] = []
    if pert_name is not None and (root / pert_name).is_file():
        perturbed = _read_json_rows(root / pert_name)

    subjects: list[str | None] = []
    if split in _AUTHOR_BLOCKED:
        for b in range(0, len(rows), TOFU_BLOCK):
            block = rows[b : b + TOFU_BLOCK]
            subjects.extend([tofu_author(block)] * len(block))
    else:
        subjects = [_entity_subject(r["question"]) for r in rows]

    facts = []
    for i, row in enumerate(rows):
        extra = (
            row if split == "retain_perturbed" else (perturbed[i] if i < len(perturbed) else None)
        )
        if extra is not None and extra["question"] != row["question"]:
            raise ValueError(
                f"tofu/{split}/{i:04d}: {pert_name} row {i} has question {extra['question']!r}, "
                f"expected {row['question']!r}; the files are not aligned"
            )
        extra = extra or {}
        subject = subjects[i]
        traceable = True
        if subject is None:
            subject = UNNAMED_AUTHOR if split in _AUTHOR_BLOCKED else row["question"].rstrip("?")
            traceable = split in _AUTHOR_BLOCKED
        facts.append(
            Fact(
                subject=subject,
                question=row["question"],
                answer=row["answer"],
                paraphrased_question=extra.get("paraphrased_question"),
                paraphrased_answer=extra.get("paraphrased_answer"),
                perturbed_answers=tuple(extra.get("perturbed_answer", ())),
                id=f"tofu/{split}/{i:04d}",
                traceable=traceable,
            )
        )
    return _finish(facts, require_subject and not traceable_only, traceable_only)


def load_refusals(directory: str | os.PathLike | None = None) -> list[str]:
    """The 100 refusal strings of TOFU's ``idontknow.jsonl`` (unlearning targets).

    The file is plain text, one refusal a line (not JSON despite its name).

    Example:
        >>> refusals = load_refusals()
        >>> len(refusals), refusals[0]
        (100, "I'm not certain about that.")
    """
    path = _need(_tofu_dir(directory) / "idontknow.jsonl", "refusals")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- RWKU --------------------------------------------------------------------------------

_RWKU_LEVELS = {"forget": (1, 2, 3), "neighbor": (1, 2)}


def rwku_targets(directory: str | os.PathLike | None = None) -> list[str]:
    """Target folder names (``"1_Stephen_King"``) of an RWKU copy, in numeric id order.

    Example:
        >>> rwku_targets()[:2]
        ['1_Stephen_King', '2_Confucius']
    """
    root = DATA_DIR / "rwku" if directory is None else Path(directory)
    names = [p.name for p in root.iterdir() if p.is_dir() and re.match(r"\d+_", p.name)]
    return sorted(names, key=lambda n: int(n.split("_", 1)[0]))


def _resolve_targets(available: list[str], targets) -> list[str]:
    if targets is None:
        return available
    if isinstance(targets, (str, int)):
        targets = [targets]
    by_key: dict[str, str] = {}
    for name in available:
        num, rest = name.split("_", 1)
        for key in (name, num, rest, rest.replace("_", " ")):
            by_key.setdefault(key.casefold(), name)
    out = []
    for t in targets:
        key = str(t).casefold()
        if key not in by_key:
            raise ValueError(
                f"unknown RWKU target {t!r}; give a folder name ('1_Stephen_King'), an id (1) "
                f"or a name ('Stephen King'); available: {', '.join(available[:10])}"
                + (" ..." if len(available) > 10 else "")
            )
        out.append(by_key[key])
    return out


def cloze_to_question(query: str) -> str:
    """Turn an RWKU cloze query into a prompt whose continuation is the answer.

    The text before the blank ``___`` is kept (right-stripped): an MDLM is queried with the
    answer slots right after the prompt, so whatever followed the blank cannot be given.
    Queries with no blank, more than one blank, or nothing before the blank are returned
    unchanged.

    Example:
        >>> cloze_to_question("Stephen Edwin King (born September 21, 1947) is an American ___")
        'Stephen Edwin King (born September 21, 1947) is an American'
        >>> cloze_to_question("Stephen King's debut novel, titled ___, established him.")
        "Stephen King's debut novel, titled"
    """
    if query.count("___") != 1:
        return query
    prefix = query.split("___", 1)[0].rstrip()
    return prefix if prefix else query


def load_rwku(
    directory: str | os.PathLike | None = None,
    targets: str | int | Iterable[str | int] | None = None,
    *,
    levels: Iterable[int] = (1, 2),
    kind: str = "forget",
    require_subject: bool = False,
    traceable_only: bool = False,
) -> list[Fact]:
    """Read RWKU probes (Jin et al. 2024) as :class:`Fact` objects.

    ``kind="forget"`` reads ``forget_level{1,2,3}.json`` (probes about the unlearning
    target; subject = the target's name, e.g. ``"Stephen King"``); ``kind="neighbour"``
    (or ``"neighbor"``) reads ``neighbor_level{1,2}.json`` (probes about related entities
    that should survive unlearning; subject = the neighbour entity, e.g. ``"The Shawshank
    Redemption"``). Level-1 probes are cloze sentences; they become questions with
    :func:`cloze_to_question`. Ids are ``rwku/<folder>/<forget|neighbor><level>/<row:04d>``
    (file spelling, e.g. ``rwku/1_Stephen_King/forget1/0003``). Subjects that do not occur
    verbatim in the question are handled as in :func:`load_tofu`.

    Args:
        directory: An RWKU copy with one folder per target. ``None``: the 5 targets shipped
            in the package (ids 1-5).
        targets: Folder names, numeric ids or names (``"Stephen King"``); ``None``: all.
        levels: Which levels to read (forget: 1-3, neighbour: 1-2).
        kind: ``"forget"`` or ``"neighbour"``.
        require_subject: Raise :class:`SubjectNotFoundError` for a subject not in the question.
        traceable_only: Keep only facts whose subject occurs in the question.

    Returns:
        Facts ordered by target, then level, then row.

    Example:
        >>> facts = load_rwku(targets="Stephen King", levels=(2,))
        >>> facts[0].id, facts[0].subject, facts[0].answer
        ('rwku/1_Stephen_King/forget2/0000', 'Stephen King', 'Richard Bachman')
    """
    kind_key = {"forget": "forget", "neighbour": "neighbor", "neighbor": "neighbor"}.get(kind)
    if kind_key is None:
        raise ValueError(f"kind must be 'forget' or 'neighbour', got {kind!r}")
    levels = tuple(levels)
    bad = [lv for lv in levels if lv not in _RWKU_LEVELS[kind_key]]
    if bad:
        raise ValueError(f"RWKU {kind} probes have levels {_RWKU_LEVELS[kind_key]}, got {bad}")
    root = DATA_DIR / "rwku" if directory is None else Path(directory)
    facts = []
    for folder in _resolve_targets(rwku_targets(root), targets):
        for level in levels:
            path = root / folder / f"{kind_key}_level{level}.json"
            if not path.is_file():
                raise FileNotFoundError(f"RWKU target {folder!r} has no {path.name} in {root}")
            for i, row in enumerate(_read_json_rows(path)):
                subject = row["neighbor"] if kind_key == "neighbor" else row["subject"]
                facts.append(
                    Fact(
                        subject=subject,
                        question=cloze_to_question(row["query"]),
                        answer=str(row["answer"]),
                        id=f"rwku/{folder}/{kind_key}{level}/{i:04d}",
                    )
                )
    return _finish(facts, require_subject and not traceable_only, traceable_only)


# --- subject positions in a tokenized prompt ---------------------------------------------


def _decoded_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Text of ``ids`` and each token's character span, by incremental decoding."""
    offsets, prev = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)
        start = len(prev) if text.startswith(prev) else len(os.path.commonprefix([prev, text]))
        offsets.append((start, len(text)))
        prev = text
    return prev, offsets


#: How many mentions of a subject tracing corrupts: every one (default) or the first only.
MENTIONS: tuple[str, ...] = ("all", "first")


def check_mentions(mentions: object) -> str:
    """Validate a ``mentions=`` option (``"all"`` or ``"first"``); returns it."""
    if mentions not in MENTIONS:
        raise ValueError(
            f"mentions must be 'all' (corrupt every mention of the subject) or 'first' "
            f"(only its first mention), got {mentions!r}"
        )
    return str(mentions)


def _prompt_offsets(
    tokenizer, ids: list[int], text: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """The prompt's text and each token's character span.

    From ``tokenizer(text, return_offsets_mapping=True)`` when ``text`` is given to a fast
    tokenizer whose encoding reproduces ``ids`` (the spans then refer to the text as the
    user wrote it); otherwise by decoding ``ids`` one token at a time.
    """
    if text is not None and getattr(tokenizer, "is_fast", False):
        for special in (True, False):
            enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=special)
            if list(enc.input_ids) == ids:
                return text, [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    return _decoded_offsets(tokenizer, ids)


def _word_occurrences(text: str, subject: str) -> list[tuple[int, int]]:
    """Character spans of ``subject`` in ``text`` standing as whole words (overlaps kept)."""
    pattern = re.compile(rf"(?=(?<!\w)({re.escape(subject)})(?!\w))")
    return [(m.start(1), m.end(1)) for m in pattern.finditer(text)]


def subject_mentions(
    tokenizer,
    prompt_ids: Sequence[int],
    subject: str,
    *,
    text: str | None = None,
    fact_id: str | None = None,
) -> list[list[int]]:
    """Token positions of every mention of ``subject`` in a tokenized prompt, one list each.

    The subject is matched as whole words on the prompt's text (``"Jon"`` does not match
    inside ``"Jonathan"``; ``"Ada Vell"`` matches in ``"(Ada Vell's"``), and each mention
    becomes the tokens whose characters overlap it, so a tokenizer that merged the subject
    with punctuation (``"(Ada"``) gives the covering tokens. The character spans come from
    the fast tokenizer's offset mapping of ``text`` (the formatted prompt that produced
    ``prompt_ids``) when it reproduces the ids, else from decoding one token at a time.
    When the decoded text does not contain the subject at all (a tokenizer whose decoding
    normalises text), the subject's own token encodings (as is and with a leading space)
    are matched on the ids instead.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prompt_ids: The prompt's token ids, ``[prompt_len]``.
        subject: The subject string.
        text: Optional prompt text that ``prompt_ids`` encode (enables offset mapping).
        fact_id: Named in the error messages.

    Returns:
        One sorted list of positions per mention, mentions in order of appearance.

    Raises:
        SubjectNotFoundError: the subject is absent, occurs only inside longer words (a
            partial name), or its mentions overlap or share a token (ambiguous); the
            message names the fact.
    """
    ids = [int(i) for i in prompt_ids]
    shown, offsets = _prompt_offsets(tokenizer, ids, text)
    where = f"fact {fact_id!r}: subject {subject!r}"
    spans = _word_occurrences(shown, subject)
    if spans:
        for (s0, e0), (s1, _e1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise SubjectNotFoundError(
                    f"{where} is ambiguous in prompt {shown!r}: its mentions at characters "
                    f"{s0} and {s1} overlap; give a subject that names one span"
                )
        mentions = []
        for start, end in spans:
            hit = [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
            if hit:
                mentions.append(list(range(hit[0], hit[-1] + 1)))
        for a, b in zip(mentions, mentions[1:]):
            if a[-1] >= b[0]:
                raise SubjectNotFoundError(
                    f"{where} is ambiguous in prompt {shown!r}: two mentions share token "
                    f"{a[-1]}; the tokenizer merged them, so they cannot be corrupted apart"
                )
        if mentions:
            return mentions
    if subject in shown:
        inside = re.search(rf"\w*{re.escape(subject)}\w*", shown)
        word = inside.group(0) if inside else subject
        raise SubjectNotFoundError(
            f"{where} occurs in prompt {shown!r} only inside a longer word ({word!r}); a "
            "partial name is not traced: give the subject as the prompt spells it, whole words"
        )
    mentions = []
    for variant in (subject, " " + subject):
        sub = list(tokenizer(variant, add_special_tokens=False).input_ids)
        if not sub:
            continue
        i = 0
        while i <= len(ids) - len(sub):
            if ids[i : i + len(sub)] == sub:
                mentions.append(list(range(i, i + len(sub))))
                i += len(sub)
            else:
                i += 1
        if mentions:
            return mentions
    raise SubjectNotFoundError(
        f"{where} not found in prompt {shown!r} (neither as whole words nor as tokens); "
        "check Fact.subject against the question, or mark the fact traceable=False"
    )


def locate_subject(
    tokenizer,
    prompt_ids: Sequence[int],
    subject: str,
    *,
    text: str | None = None,
    fact_id: str | None = None,
    mentions: str = "all",
) -> list[int]:
    """Token positions ``S`` of ``subject`` inside a tokenized prompt.

    The mentions are found by :func:`subject_mentions` (whole-word matching on the text,
    mapped to the tokens that cover it). ``mentions="all"`` (default) returns the positions
    of every mention, so a subject named twice in a question is corrupted at both places
    (the positions need not be contiguous); ``mentions="first"`` returns only the first
    mention's, as ROME's ``find_token_range`` does. A prompt that names the subject once
    gives the same positions either way.

    Args:
        tokenizer: A Hugging Face tokenizer.
        prompt_ids: The prompt's token ids, ``[prompt_len]`` (e.g. from
            :func:`tie_tracing.core.prompting.encode_prompt`).
        subject: The subject string.
        text: Optional prompt text that ``prompt_ids`` encode (enables offset mapping).
        fact_id: Named in the error message.
        mentions: ``"all"`` or ``"first"``.

    Returns:
        Sorted positions, e.g. ``[3, 4]`` (or ``[1, 2, 8, 9]`` for two mentions).

    Raises:
        SubjectNotFoundError: the subject is absent, only part of a longer word, or
            ambiguous (see :func:`subject_mentions`); names the fact.
        ValueError: ``mentions`` is neither ``"all"`` nor ``"first"``.

    Example:
        >>> ids = tok("Where was Ada Vell born?").input_ids  # doctest: +SKIP
        >>> locate_subject(tok, ids, "Ada Vell")  # doctest: +SKIP
        [2, 3, 4]
    """
    check_mentions(mentions)
    found = subject_mentions(tokenizer, prompt_ids, subject, text=text, fact_id=fact_id)
    chosen = found if mentions == "all" else found[:1]
    return sorted({p for mention in chosen for p in mention})


def locate_object(tokenizer, answer_ids: Sequence[int], fact: Fact) -> list[int]:
    """Offsets, within the answer span, of the tokens that spell ``fact.object``.

    The answer's tokens are decoded one at a time; the object's first whole-word occurrence
    in the decoded text is found (a plain substring only when it never stands as a word of
    its own) and every token whose characters overlap it is returned. A fact
    without an object (``object=None``) targets its whole answer: ``[0 … |answer| − 1]``.

    Raises:
        ObjectNotFoundError: the object does not occur in the decoded answer (names the fact).

    Example:
        >>> ids = tok(" Ada Vell was born in Gdansk.", add_special_tokens=False).input_ids  # doctest: +SKIP
        >>> locate_object(tok, ids, fact)   # fact.object == "Gdansk"         # doctest: +SKIP
        [5]
    """
    if fact.object is None:
        return list(range(len(answer_ids)))
    hits = _span_tokens(tokenizer, answer_ids, fact.object)
    if isinstance(hits, str):
        raise ObjectNotFoundError(
            f"fact {fact.id or fact.question!r}: its object {fact.object!r} is not among the "
            f"tokens of its encoded answer ({hits!r}); check Fact.object against the answer"
        )
    return hits


def locate_name(tokenizer, answer_ids: Sequence[int], fact: Fact) -> list[int]:
    """Offsets, within the answer span, of the tokens that spell the subject's name
    (``fact.subject``, its first whole-word occurrence in the answer): the target positions
    of ``target="name"``, the subject-identity part of an answer that repeats the name.

    Raises:
        ObjectNotFoundError: the answer does not repeat the subject's name (names the fact
            and says to use another target).

    Example:
        >>> ids = tok(" Ada Vell was born in Gdansk.", add_special_tokens=False).input_ids  # doctest: +SKIP
        >>> locate_name(tok, ids, fact)   # fact.subject == "Ada Vell"       # doctest: +SKIP
        [0, 1]
    """
    hits = _span_tokens(tokenizer, answer_ids, fact.subject)
    if isinstance(hits, str):
        raise ObjectNotFoundError(
            f"fact {fact.id or fact.question!r}: target='name' reads the subject's name inside "
            f"the answer, but {fact.subject!r} is not among the tokens of its encoded answer "
            f"({hits!r}); use target='object' or 'answer' for facts whose answer does not "
            "repeat the subject"
        )
    return hits


def _span_tokens(tokenizer, answer_ids: Sequence[int], phrase: str) -> list[int] | str:
    """The answer tokens overlapping ``phrase``'s first whole-word occurrence in the decoded
    answer (a plain substring only when it never stands as a word of its own, e.g. scripts
    without spaces: "ten" is not the "ten" inside "written"); the decoded text when absent."""
    text, offsets = _decoded_offsets(tokenizer, answer_ids)
    match = re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)
    start = match.start() if match else text.find(phrase)
    if start < 0:
        return text
    end = start + len(phrase)
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not hits:  # pragma: no cover - a found substring always overlaps some token
        return text
    return hits


def names_subject_in_answer(fact: Fact) -> bool:
    """Whether ``fact.answer`` repeats ``fact.subject`` as whole words (so ``target="name"``
    has positions), checked on the text before any tokenizer is loaded."""
    return re.search(rf"(?<!\w){re.escape(fact.subject)}(?!\w)", fact.answer) is not None


def target_offsets(tokenizer, answer_ids: Sequence[int], fact: Fact, target: str) -> list[int]:
    """Offsets, within the answer span, of the positions ``LP`` sums over for ``target``
    (SPEC §5): ``"answer"`` every position, ``"object"`` the object's tokens
    (:func:`locate_object`; a fact without an object: its whole answer), ``"name"`` the
    subject's name inside the answer (:func:`locate_name`)."""
    if target == "answer":
        return list(range(len(answer_ids)))
    if target == "name":
        return locate_name(tokenizer, answer_ids, fact)
    if target != "object":
        raise ValueError(f"target must be 'answer', 'object' or 'name', got {target!r}")
    return locate_object(tokenizer, answer_ids, fact)


def draw_people(
    facts: Sequence[Fact], *, n_people: int = 24, per_person: int = 1, seed: int = 0
) -> list[Fact]:
    """A reproducible draw of ``per_person`` facts from each of ``n_people`` subjects.

    Figure 2 averages over people, not over one person's relations (SPEC §5, §10.1): the
    people are drawn with ``seed`` (a ``random.Random`` over the subjects in first-seen
    order), and each drawn person's facts likewise; the result lists people in drawn order,
    each person's facts in their set order. The same facts and seed give the same draw.

    Raises:
        ValueError: fewer than ``n_people`` subjects, or a drawn person with fewer than
            ``per_person`` facts (says how many there are).

    Example:
        >>> fs = [Fact(subject=s, question=f"Who is {s}?", answer=s, id=f"{s}-{i}")
        ...       for s in "ABC" for i in range(2)]
        >>> [f.id for f in draw_people(fs, n_people=2, seed=1)]
        ['A-1', 'C-0']
    """
    import random

    facts = list(facts)
    if isinstance(n_people, bool) or not isinstance(n_people, int) or n_people < 1:
        raise ValueError(f"n_people must be an integer ≥ 1, got {n_people!r}")
    if isinstance(per_person, bool) or not isinstance(per_person, int) or per_person < 1:
        raise ValueError(f"per_person must be an integer ≥ 1, got {per_person!r}")
    by_person: dict[str, list[Fact]] = {}
    for f in facts:
        by_person.setdefault(f.subject, []).append(f)
    if len(by_person) < n_people:
        raise ValueError(
            f"draw_people: the facts hold {len(by_person)} people, fewer than n_people="
            f"{n_people}; lower n_people or draw from a split with more people"
        )
    rng = random.Random(seed)
    people = rng.sample(list(by_person), n_people)
    drawn: list[Fact] = []
    for person in people:
        own = by_person[person]
        if len(own) < per_person:
            raise ValueError(
                f"draw_people: {person!r} has {len(own)} facts, fewer than per_person="
                f"{per_person}; lower per_person"
            )
        picked = sorted(rng.sample(range(len(own)), per_person))
        drawn.extend(own[i] for i in picked)
    return drawn
