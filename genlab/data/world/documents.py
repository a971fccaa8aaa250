"""Pretraining documents of the synthetic world: biographies, town descriptions, registers, stories.

Handbook IV; Allen-Zhu & Li, "Physics of Language Models 3.1" (bioS multi+permute): each person
gets `bios_per_person` biographies that state every fact with a *different* paraphrase, in a
shuffled sentence order, always using the full name. Towns get several differently worded
descriptions; stories and letters put the same facts into running narrative. Only the sft and
extraction splits appear here; made-up, private and lookup people never do.

    python -c "from genlab.data.world import *; d = pretraining_documents(build_world()); print(len(d)); print(d[0])"
"""

from __future__ import annotations

import random

from genlab.data.world import templates, vocab
from genlab.data.world.entities import Person, Town, World, rng_for


def capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def person_slots(world: World, person: Person) -> dict[str, str]:
    """Template slot values for `person` (and the home town's facts)."""
    subj, obj, poss = vocab.PRONOUNS[person.pronoun]
    town = world.town(person.town)
    return {"name": person.name, "first": person.first, "subj": subj, "Subj": capitalise(subj),
            "obj": obj, "poss": poss, "town": town.name, "job": person.job,
            "a_job": vocab.with_article(person.job), "age": str(person.age),
            "species": person.pet_species, "a_species": vocab.with_article(person.pet_species),
            "pet": person.pet_name, "colour": person.colour, "friend": person.friend,
            "hobby": person.hobby, "region": town.region, "river": town.river,
            "founded": str(town.founded), "food": town.food}


def _distinct(rng: random.Random, pool: tuple[str, ...], k: int) -> list[str]:
    """`k` templates, all different while the pool lasts (then the pool is reused, reshuffled)."""
    out: list[str] = []
    while len(out) < k:
        out += rng.sample(pool, min(len(pool), k - len(out)))
    return out


def biographies(world: World, person: Person, rng: random.Random) -> list[str]:
    k = world.config.bios_per_person
    slots = person_slots(world, person)
    chosen = {attr: _distinct(rng, pool, k) for attr, pool in templates.BIO_SENTENCES.items()}
    bios = []
    for i in range(k):
        sentences = [capitalise(chosen[attr][i].format(**slots)) for attr in chosen]
        rng.shuffle(sentences)
        opener = rng.choice(templates.BIO_OPENERS).format(**slots)
        closer = rng.choice(templates.BIO_CLOSERS).format(**slots)
        body = " ".join(s for s in [opener, *sentences, closer] if s)
        style = rng.randrange(3)  # plain paragraph, titled, or two paragraphs
        if style == 1:
            body = f"{person.name}\n\n{body}"
        elif style == 2:
            cut = len(sentences) // 2 + 1
            body = " ".join([opener, *sentences[:cut]]).strip() + "\n\n" + " ".join(
                [*sentences[cut:], closer]).strip()
        bios.append(body)
    return bios


def town_descriptions(world: World, town: Town, rng: random.Random) -> list[str]:
    k = world.config.town_docs_per_town
    slots = {"town": town.name, "region": town.region, "river": town.river,
             "founded": str(town.founded), "food": town.food}
    residents = [p.name for p in world.people if p.town == town.name]
    chosen = {attr: _distinct(rng, pool, k) for attr, pool in templates.TOWN_SENTENCES.items()}
    docs = []
    for i in range(k):
        sentences = [capitalise(chosen[attr][i].format(**slots)) for attr in chosen]
        extra = rng.choice(templates.TOWN_EXTRAS)
        sentences.append(extra.format(**slots, weekday=rng.choice(vocab.WEEKDAYS)))
        if residents:
            some = rng.sample(residents, min(4, len(residents)))
            listed = ", ".join(some[:-1]) + " and " + some[-1] if len(some) > 1 else some[0]
            sentences.append(rng.choice(templates.RESIDENT_SENTENCES).format(**slots,
                                                                            residents=listed))
        rng.shuffle(sentences)
        docs.append(" ".join(sentences))
    return docs


def town_register(world: World, town: Town) -> str | None:
    """A tabular document: the residents of a town with age and job, one per line."""
    residents = sorted((p for p in world.people if p.town == town.name), key=lambda p: p.name)
    if not residents:
        return None
    lines = [f"Register of residents, {town.name}", "name, age, job"]
    lines += [f"{p.name}, {p.age}, {p.job}" for p in residents]
    return "\n".join(lines)


def stories(world: World, person: Person, rng: random.Random) -> list[str]:
    slots = person_slots(world, person)
    docs = []
    for template in _distinct(rng, templates.STORIES, world.config.stories_per_person):
        docs.append(template.format(**slots, weather=rng.choice(vocab.WEATHERS),
                                    time=rng.choice(vocab.TIMES_OF_DAY),
                                    weekday=rng.choice(vocab.WEEKDAYS),
                                    object=rng.choice(vocab.OBJECTS)))
    return docs


def letter(world: World, person: Person, rng: random.Random) -> str:
    slots = person_slots(world, person)
    return rng.choice(templates.LETTERS).format(**slots, weather=rng.choice(vocab.WEATHERS))


def pretraining_documents(world: World) -> list[str]:
    """All synthetic pretraining documents, shuffled; the caller mixes in real text."""
    rng = rng_for(world.config, "documents")
    docs: list[str] = []
    for person in world.people:
        docs += biographies(world, person, rng)
        docs += stories(world, person, rng)
        docs.append(letter(world, person, rng))
    for town in world.towns:
        docs += town_descriptions(world, town, rng)
        register = town_register(world, town)
        if register:
            docs.append(register)
    rng.shuffle(docs)
    return docs
