"""The search-QA world: invented countries, cities, organisations and people, one passage
about each, and one- and two-hop questions about them, all drawn from the environment's seed.

Every name is built from syllables, so no pretrained model knows a single fact of this world:
a question can only be answered from the passages. Each name word is used once in the whole
world, so searching an entity's exact name finds its own passage.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache, cached_property

from environments.searchqa.retriever import bm25s

KINDS = ("country", "city", "organisation", "person")
SIZES = {"country": 12, "city": 60, "organisation": 160, "person": 640}
RIVERS = 24
SPLITS = ("train", "dev", "test")
# Subjects per kind held out for the evaluation splits; every question about a subject goes to
# its subject's split, so no test question asks about an entity a train question asks about.
TEST_SHARE, DEV_SHARE = 1 / 8, 1 / 16

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
ONSETS += ("br", "dr", "kr", "st", "tr", "sh", "th")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "", "", "n", "r", "l", "s", "k")  # mostly open syllables: "Varnolu"
ORGANISATION_SUFFIXES = ("Labs", "Works", "Institute", "Foundry", "Guild", "Company", "Trust")
PROFESSIONS = (
    "banker",
    "baker",
    "botanist",
    "cartographer",
    "chemist",
    "jeweller",
    "lawyer",
    "novelist",
    "pilot",
    "potter",
    "sculptor",
    "surveyor",
    "teacher",
    "weaver",
)
PRODUCTS = (
    "bicycles",
    "clocks",
    "glass",
    "lanterns",
    "maps",
    "paper",
    "pianos",
    "rope",
    "ships",
    "soap",
    "telescopes",
    "textiles",
)


@dataclass(frozen=True)
class Relation:
    """A kind of fact: its sentence in a passage, its question, and the noun phrase that names
    its object ("the organisation that X works for"), which also reads as the subject of a
    second hop. ``target`` is the object's kind, or "value" when it is no entity."""

    sentence: str
    question: str
    phrase: str
    target: str

    def says(self, subject: str, obj: str) -> str:
        return self.sentence.format(s=subject, o=obj)


RELATIONS = {
    "born_in": Relation(
        "{s} was born in {o}.",
        "In which city was {s} born?",
        "the city where {s} was born",
        "city",
    ),
    "works_for": Relation(
        "{s} works for {o}.",
        "Which organisation does {s} work for?",
        "the organisation that {s} works for",
        "organisation",
    ),
    "birth_year": Relation(
        "{s}'s year of birth is {o}.",
        "In what year was {s} born?",
        "the year {s} was born",
        "value",
    ),
    "profession": Relation(
        "{s} works as a {o}.",
        "What is the profession of {s}?",
        "the profession of {s}",
        "value",
    ),
    "headquartered_in": Relation(
        "{s} is headquartered in {o}.",
        "In which city is {s} headquartered?",
        "the city where {s} is headquartered",
        "city",
    ),
    "founded": Relation(
        "{s} was founded in {o}.",
        "In what year was {s} founded?",
        "the year {s} was founded",
        "value",
    ),
    "industry": Relation(
        "{s} makes {o}.",
        "What does {s} make?",
        "what {s} makes",
        "value",
    ),
    "in_country": Relation(
        "{s} is a city in {o}.",
        "In which country is {s}?",
        "the country that {s} is in",
        "country",
    ),
    "river": Relation(
        "{s} lies on the river {o}.",
        "Which river does {s} lie on?",
        "the river {s} lies on",
        "value",
    ),
    "capital": Relation(
        "The capital of {s} is {o}.",
        "What is the capital of {s}?",
        "the capital of {s}",
        "city",
    ),
    "language": Relation(
        "The official language of {s} is {o}.",
        "What is the official language of {s}?",
        "the official language of {s}",
        "value",
    ),
}
# The facts of each kind, in the order its passage states them.
KIND_RELATIONS = {
    "country": ("capital", "language"),
    "city": ("in_country", "founded", "river"),
    "organisation": ("headquartered_in", "founded", "industry"),
    "person": ("born_in", "works_for", "birth_year", "profession"),
}


@cache
def reserved_words() -> frozenset[str]:
    """Words no name may be: a stop word is invisible to the retriever, and a name that is also
    a word of the passages' sentences ("River", "Pilot") would be found everywhere."""
    stopwords = bm25s().stopwords.STOPWORDS_EN  # imported when a world is first built
    return frozenset(
        word.lower()
        for text in (
            *(f"{r.sentence} {r.question} {r.phrase}" for r in RELATIONS.values()),
            *PROFESSIONS,
            *PRODUCTS,
            *ORGANISATION_SUFFIXES,
            *KINDS,
        )
        for word in re.findall(r"[A-Za-z]+", text)
    ) | frozenset(stopwords)


@dataclass(frozen=True)
class Entity:
    """A thing the world knows facts about; its passage states every fact."""

    name: str
    kind: str
    facts: tuple[tuple[str, str], ...]  # (relation, object) in KIND_RELATIONS order

    def fact(self, relation: str) -> str:
        return dict(self.facts)[relation]

    @property
    def passage(self) -> str:
        intro = [f"{self.name} is a country."] if self.kind == "country" else []
        sentences = [RELATIONS[r].says(self.name, obj) for r, obj in self.facts]
        return " ".join(intro + sentences)


@dataclass(frozen=True)
class Question:
    """A question about ``subject`` answered by following ``relations`` from it, one hop
    each; ``answer`` is the object of the last hop."""

    text: str
    answer: str
    subject: str
    relations: tuple[str, ...]


@dataclass(frozen=True)
class World:
    """Every entity (countries, cities, organisations, people, in that order) and the
    questions of each split."""

    entities: tuple[Entity, ...]
    splits: dict[str, tuple[Question, ...]]

    @cached_property
    def by_name(self) -> dict[str, Entity]:
        return {entity.name: entity for entity in self.entities}

    def follow(self, subject: str, relations: tuple[str, ...]) -> list[tuple[str, str, str]]:
        """The hops of a question: (entity, relation, object) for each relation in turn."""
        by_name, hops, name = self.by_name, [], subject
        for relation in relations:
            obj = by_name[name].fact(relation)
            hops.append((name, relation, obj))
            name = obj
        return hops


def invented_words(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct capitalised words of two or three syllables."""
    words: dict[str, None] = {}  # insertion-ordered, so the draw order fixes the list
    while len(words) < count:
        syllables = rng.choice((2, 2, 3))
        word = "".join(
            rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)
        )
        if word not in reserved_words():
            words[word.capitalize()] = None
    return list(words)


def build_entities(seed: int) -> tuple[Entity, ...]:
    """The entities of world ``seed``: every country has at least one city, its capital among
    them; organisations stand in cities; people are born in cities and work for
    organisations."""
    rng = random.Random(f"searchqa-world-{seed}")
    needed = sum(SIZES.values()) + SIZES["person"] + SIZES["country"] + RIVERS
    words = iter(invented_words(rng, needed))
    countries = [next(words) for _ in range(SIZES["country"])]
    languages = [next(words) for _ in range(SIZES["country"])]
    rivers = [next(words) for _ in range(RIVERS)]
    cities = [next(words) for _ in range(SIZES["city"])]
    city_country = {
        city: countries[i] if i < len(countries) else rng.choice(countries)
        for i, city in enumerate(cities)
    }
    organisations = [
        f"{next(words)} {rng.choice(ORGANISATION_SUFFIXES)}" for _ in range(SIZES["organisation"])
    ]
    people = [f"{next(words)} {next(words)}" for _ in range(SIZES["person"])]

    entities = []
    for country, language in zip(countries, languages, strict=True):
        capital = rng.choice([c for c in cities if city_country[c] == country])
        entities.append(Entity(country, "country", (("capital", capital), ("language", language))))
    for city in cities:
        facts = (
            ("in_country", city_country[city]),
            ("founded", str(rng.randint(900, 1800))),
            ("river", rng.choice(rivers)),
        )
        entities.append(Entity(city, "city", facts))
    for organisation in organisations:
        facts = (
            ("headquartered_in", rng.choice(cities)),
            ("founded", str(rng.randint(1850, 2015))),
            ("industry", rng.choice(PRODUCTS)),
        )
        entities.append(Entity(organisation, "organisation", facts))
    for person in people:
        facts = (
            ("born_in", rng.choice(cities)),
            ("works_for", rng.choice(organisations)),
            ("birth_year", str(rng.randint(1940, 2004))),
            ("profession", rng.choice(PROFESSIONS)),
        )
        entities.append(Entity(person, "person", facts))
    return tuple(entities)


def two_hop_chains(kind: str) -> list[tuple[str, str]]:
    """Every (first, second) relation pair a question about a ``kind`` can follow. A second hop
    back to the subject's own kind is left out: its answer is often the subject itself."""
    return [
        (first, second)
        for first in KIND_RELATIONS[kind]
        if RELATIONS[first].target in KIND_RELATIONS
        for second in KIND_RELATIONS[RELATIONS[first].target]
        if RELATIONS[second].target != kind
    ]


def question_text(subject: str, relations: tuple[str, ...]) -> str:
    """The question, each earlier hop folded into the subject of the next as its phrase."""
    about = subject
    for relation in relations[:-1]:
        about = RELATIONS[relation].phrase.format(s=about)
    return RELATIONS[relations[-1]].question.format(s=about)


def build_questions(entities: tuple[Entity, ...], seed: int) -> dict[str, list[Question]]:
    """Two questions per entity, one of one hop and one of two, each in its subject's split;
    each split in a seeded order."""
    world = World(entities, {})
    ask = random.Random(f"searchqa-questions-{seed}")
    asked: dict[str, list[Question]] = {}
    for entity in entities:
        one = (ask.choice(KIND_RELATIONS[entity.kind]),)
        two = ask.choice(two_hop_chains(entity.kind))
        asked[entity.name] = [
            Question(
                question_text(entity.name, hops),
                world.follow(entity.name, hops)[-1][2],
                entity.name,
                hops,
            )
            for hops in (one, two)
        ]
    split_rng = random.Random(f"searchqa-splits-{seed}")
    splits: dict[str, list[Question]] = {split: [] for split in SPLITS}
    for kind in KINDS:
        subjects = [e.name for e in entities if e.kind == kind]
        split_rng.shuffle(subjects)
        n_test, n_dev = round(len(subjects) * TEST_SHARE), round(len(subjects) * DEV_SHARE)
        for i, subject in enumerate(subjects):
            split = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
            splits[split] += asked[subject]
    for questions in splits.values():
        # Mixed kinds and hops in every prefix, so `--limit N` measures a fair sample.
        split_rng.shuffle(questions)
    return splits


@cache
def build_world(seed: int) -> World:
    """World ``seed``, built once per process (about a tenth of a second)."""
    entities = build_entities(seed)
    questions = build_questions(entities, seed)
    return World(entities, {split: tuple(qs) for split, qs in questions.items()})
