"""Entities of the synthetic world: people and towns, their splits, and names that exist nowhere.

Handbook IV (instruct data) and V (benchmarks); Allen-Zhu & Li, "Physics of Language Models 3.1".
The world is a pure function of `WorldConfig` (seed + one `scale` knob). People are split in two:
the *sft* split is asked about in SFT conversations, the *extraction* split appears only in
pretraining documents, so answering about them measures knowledge extraction. Friends are paired
inside a split, so no SFT answer ever names an extraction person. Three more groups never reach
pretraining: made-up names for "I don't know" (train and eval pools), private people (retrieval
documents) and lookup people (the document-lookup tool in tool traces).

    python -c "from genlab.data.world import build_world, WorldConfig; w = build_world(WorldConfig()); print(len(w.people), w.people[0])"
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from genlab.data.world import questions, templates, vocab
from genlab.errors import ConfigError

SPLITS = ("sft", "extraction")


@dataclass(frozen=True)
class WorldConfig:
    """What to generate. `scale` sizes everything; 1.0 gives 200 people (100 extraction-only)."""

    seed: int = 0
    scale: float = 1.0
    extraction_fraction: float = 0.5  # share of people seen only in pretraining documents
    bios_per_person: int = 6  # differently templated, shuffled biographies per person
    stories_per_person: int = 2
    town_docs_per_town: int = 4
    sft_questions_per_fact: int = 2  # SFT questions per (person, attribute), distinct templates
    json_per_person: int = 20  # SFT "answer as JSON with keys ..." requests per SFT person (10 -> 20: JSON 81 -> 98.5%)
    worked_answers: bool = True  # SFT facts and sums answered as "<recall or steps> Answer: <value>" (worked.py)

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ConfigError(f"world scale must be > 0, got {self.scale}")
        if not 0 < self.extraction_fraction < 1:
            raise ConfigError("extraction_fraction must be in (0, 1), "
                              f"got {self.extraction_fraction}")
        pool = min(len(p) for p in templates.BIO_SENTENCES.values())
        if not 1 <= self.bios_per_person <= pool:
            raise ConfigError(f"bios_per_person must be in [1, {pool}] (one template per fact per "
                              f"biography), got {self.bios_per_person}")
        smallest = min(len(p) for p in questions.SFT_QUESTIONS.values())
        if not 1 <= self.sft_questions_per_fact <= smallest:
            raise ConfigError(f"sft_questions_per_fact must be in [1, {smallest}], "
                              f"got {self.sft_questions_per_fact}")
        for name in ("stories_per_person", "town_docs_per_town", "json_per_person"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _scaled(self, base: int, minimum: int) -> int:
        return max(minimum, round(base * self.scale))

    @property
    def n_people(self) -> int:  # a multiple of 4, so both splits pair up into friends
        return max(8, 4 * round(200 * self.scale / 4))

    @property
    def n_extraction(self) -> int:
        n = 2 * round(self.n_people * self.extraction_fraction / 2)
        return min(max(n, 2), self.n_people - 2)

    @property
    def n_towns(self) -> int:
        return self._scaled(24, 4)

    @property
    def n_unknown(self) -> int:  # made-up names per pool (train / eval)
        return self._scaled(100, 8)

    @property
    def n_private(self) -> int:
        return self._scaled(50, 4)

    @property
    def n_lookup(self) -> int:
        return self._scaled(50, 4)

    @property
    def eval_size(self) -> int:  # items per held-out evaluation set
        return self._scaled(200, 20)

    @property
    def n_arithmetic(self) -> int:  # single-turn arithmetic SFT conversations
        return self._scaled(1500, 60)


@dataclass(frozen=True)
class Town:
    name: str
    region: str
    river: str
    founded: int
    food: str


@dataclass(frozen=True)
class Person:
    name: str  # "First Last", unique in the whole world including made-up and private names
    pronoun: str  # key of vocab.PRONOUNS
    town: str
    job: str
    age: int
    pet_species: str
    pet_name: str
    colour: str
    friend: str  # full name of another person of the same group
    hobby: str
    split: str  # "sft", "extraction", "private" or "lookup"

    def fact(self, attribute: str) -> str:
        """The canonical short answer for `attribute` (a questions.FACT_ATTRIBUTES entry)."""
        return str(getattr(self, attribute))

    @property
    def first(self) -> str:
        return self.name.split()[0]

    @property
    def last(self) -> str:
        return self.name.split()[1]


@dataclass
class World:
    config: WorldConfig
    people: list[Person]  # the sft and extraction splits: everyone pretraining talks about
    towns: list[Town]
    splits: dict[str, list[str]]  # split -> full names
    unknown_names: dict[str, list[str]]  # "train"/"eval" -> names of people who do not exist
    private_people: list[Person]  # subjects of private retrieval documents, never trained on
    lookup_people: list[Person]  # subjects of the lookup tool's documents in tool traces
    _by_name: dict[str, Person] = field(default_factory=dict, repr=False)
    _towns_by_name: dict[str, Town] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for p in self.people + self.private_people + self.lookup_people:
            self._by_name[p.name] = p
        self._towns_by_name = {t.name: t for t in self.towns}

    def person(self, name: str) -> Person:
        return self._by_name[name]

    def town(self, name: str) -> Town:
        return self._towns_by_name[name]

    def people_in(self, split: str) -> list[Person]:
        return [self._by_name[n] for n in self.splits[split]]

    def all_names(self) -> list[str]:
        """Every person name generated, existing or not (for leakage checks)."""
        groups = [p.name for p in self.people + self.private_people + self.lookup_people]
        return groups + [n for pool in self.unknown_names.values() for n in pool]


def rng_for(config: WorldConfig, purpose: str) -> random.Random:
    """An independent deterministic stream per purpose: generators do not depend on call order."""
    return random.Random(f"genlab-world:{config.seed}:{purpose}")


# Hard to say: a doubled letter ("Mailkaa"), three consonants in a row ("Drairnpandar"), or a
# vowel pair that is not one of the diphthongs the syllables use ("Kaow", "Piluis").
_AWKWARD = re.compile(r"(.)\1|[^aeiou]{3}|[aeiou]{3}|(?!ai|ei|ou|ie)[aeiou]{2}")


def _template_text() -> str:
    """All words the generator writes around names; a name equal to one would confuse matching."""
    chunks: list[str] = []
    for module in (templates, questions, vocab):
        for value in vars(module).values():
            if isinstance(value, dict):
                value = [v for vs in value.values()
                         for v in (vs if isinstance(vs, tuple) else (vs,))]
            if isinstance(value, (tuple, list)):
                chunks += [v for v in value if isinstance(v, str)]
    return " ".join(chunks)


class NameMaker:
    """Unique, pronounceable names from syllables; refuses words the templates use."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set(re.findall(r"[a-z]+", _template_text().lower()))

    def _syllable(self, onsets: tuple[str, ...]) -> str:
        r = self.rng
        return r.choice(onsets) + r.choice(vocab.VOWELS) + r.choice(vocab.CODAS)

    def _stem(self, syllables: int) -> str:
        stem = self._syllable(vocab.FIRST_ONSETS)
        for _ in range(syllables - 1):
            stem += self._syllable(vocab.INNER_ONSETS)
        return stem

    def _unique(self, make, max_len: int = 9) -> str:
        for _ in range(10_000):
            word = make().lower()
            if (word not in self.used and 3 <= len(word) <= max_len
                    and not _AWKWARD.search(word)):
                self.used.add(word)
                return word[0].upper() + word[1:]
        raise ConfigError("ran out of unique names; lower the world scale")

    def person(self) -> str:
        first = self._unique(lambda: self._stem(2))
        last = self._unique(lambda: self._stem(2) + self.rng.choice(vocab.SURNAME_ENDINGS))
        return f"{first} {last}"

    def pet(self) -> str:  # "Tavix", "Belo": onset, vowel, one consonant, a pet-like ending
        r = self.rng
        return self._unique(lambda: r.choice(vocab.FIRST_ONSETS) + r.choice(vocab.VOWELS)
                            + r.choice(vocab.INNER_ONSETS) + r.choice(vocab.PET_ENDINGS), 7)

    def river(self) -> str:
        return self._unique(lambda: self._stem(1) + self.rng.choice(vocab.RIVER_ENDINGS))

    def town(self) -> str:
        return self._unique(lambda: self._stem(self.rng.choice((1, 2)))
                            + self.rng.choice(vocab.TOWN_SUFFIXES), 12)


def _make_towns(config: WorldConfig, rng: random.Random, names: NameMaker) -> list[Town]:
    rivers = [names.river() for _ in range(max(3, config.n_towns // 2))]
    foods = list(vocab.FOODS)
    rng.shuffle(foods)
    towns = []
    for i in range(config.n_towns):
        towns.append(Town(name=names.town(), region=rng.choice(vocab.REGIONS),
                          river=rivers[i % len(rivers)], founded=rng.randint(1100, 1899),
                          food=foods[i % len(foods)]))
    return towns


def make_group(n: int, split: str, towns: list[Town], rng: random.Random,
               names: NameMaker) -> list[Person]:
    """`n` (even) people with friends paired inside the group."""
    full_names = [names.person() for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    friend = {}
    for a, b in zip(order[0::2], order[1::2]):
        friend[a], friend[b] = b, a
    return [Person(name=full_names[i], pronoun=rng.choice(tuple(vocab.PRONOUNS)),
                   town=rng.choice(towns).name, job=rng.choice(vocab.JOBS),
                   age=rng.randint(19, 79), pet_species=rng.choice(vocab.PET_SPECIES),
                   pet_name=names.pet(), colour=rng.choice(vocab.COLOURS),
                   friend=full_names[friend[i]], hobby=rng.choice(vocab.HOBBIES), split=split)
            for i in range(n)]


def build_world(config: WorldConfig | None = None) -> World:
    """The world for `config` (default: `WorldConfig()`), identical for identical configs."""
    config = config or WorldConfig()
    rng = rng_for(config, "entities")
    names = NameMaker(rng)
    towns = _make_towns(config, rng, names)
    n_extract = config.n_extraction
    extraction = make_group(n_extract, "extraction", towns, rng, names)
    sft = make_group(config.n_people - n_extract, "sft", towns, rng, names)
    people = sft + extraction
    rng.shuffle(people)  # interleave, so document order says nothing about the split
    unknown = {pool: [names.person() for _ in range(config.n_unknown)]
               for pool in ("train", "eval")}
    even = lambda n: n + n % 2  # noqa: E731 - friends pair up
    private = make_group(even(config.n_private), "private", towns, rng, names)
    lookup = make_group(even(config.n_lookup), "lookup", towns, rng, names)
    splits = {s: [p.name for p in people if p.split == s] for s in SPLITS}
    return World(config=config, people=people, towns=towns, splits=splits, unknown_names=unknown,
                 private_people=private, lookup_people=lookup)
