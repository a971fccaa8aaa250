"""SFT conversations in messages format: facts, two-hop facts, arithmetic, JSON, "I don't know".

Handbook IV (instruct fine-tuning). Only the sft split of people is ever asked about here (with
`questions.SFT_QUESTIONS`, never the held-out phrasings); made-up names from the "train" pool get
`IDK_ANSWER`. Answers are short and exact so exact-match evaluation can score them. Each item is
{"messages": [{"role", "content"}...], "kind": str}; export writes only "messages".

    python -c "from genlab.data.world import *; c = sft_conversations(build_world()); print(len(c), c[0])"
"""

from __future__ import annotations

import json
import random
import zlib

from genlab.data.world import arithmetic, questions, worked
from genlab.data.world.entities import Person, World, rng_for

IDK_ANSWER = "I don't know."
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly and exactly.",
    "Answer each question with a short, exact answer.",
)
SYSTEM_PROMPT_RATE = 0.2  # share of SFT conversations that open with a system message


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def poss_of(world: World, name: str) -> str:
    """Possessive pronoun for a world person; 'their' for anyone else (made-up names)."""
    try:
        return {"she": "her", "he": "his", "they": "their"}[world.person(name).pronoun]
    except KeyError:
        return "their"


def ask(template: str, world: World, name: str) -> str:
    return template.format(name=name, poss=poss_of(world, name))


def two_hop_answer(world: World, person: Person, hop: str) -> str:
    if hop.startswith("friend_"):
        return world.person(person.friend).fact(hop.removeprefix("friend_"))
    return str(getattr(world.town(person.town), hop))


def json_answer(person: Person, keys: list[str]) -> str:
    """The exact JSON object a formatting task expects (age as a number, the rest strings)."""
    obj: dict[str, object] = {}
    for key in keys:
        attr = questions.JSON_KEYS[key]
        obj[key] = person.age if attr == "age" else person.fact(attr)
    return json.dumps(obj)


def json_reserved(seed: int, name: str, keys: list[str]) -> bool:
    """A fifth of (person, key list) combinations is kept for the JSON evaluation set."""
    return zlib.crc32(f"{seed}:json:{name}:{','.join(keys)}".encode()) % 5 == 0


def random_json_keys(rng: random.Random) -> list[str]:
    keys = rng.sample([k for k in questions.JSON_KEYS if k != "name"], rng.choice((1, 2, 2, 3)))
    return (["name"] if rng.random() < 0.5 else []) + keys


def json_person_prompt(rng: random.Random, name: str, keys: list[str]) -> str:
    phrase = questions.json_keys_phrase(keys)
    return rng.choice(questions.JSON_PERSON_TEMPLATES).format(name=name, keys=phrase)


def _with_system(rng: random.Random, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if rng.random() < SYSTEM_PROMPT_RATE:
        return [msg("system", rng.choice(SYSTEM_PROMPTS)), *messages]
    return messages


def _qa(rng: random.Random, kind: str, question: str, answer: str) -> dict:
    return {"messages": _with_system(rng, [msg("user", question), msg("assistant", answer)]),
            "kind": kind}


def _fact_conversations(world: World, rng: random.Random) -> list[dict]:
    out = []
    k = world.config.sft_questions_per_fact
    for person in world.people_in("sft"):
        for attr in questions.FACT_ATTRIBUTES:
            answer = fact_reply(world, person, attr)
            for template in rng.sample(questions.SFT_QUESTIONS[attr], k):
                out.append(_qa(rng, "fact", ask(template, world, person.name), answer))
        for hop, pool in questions.TWO_HOP_QUESTIONS.items():
            out.append(_qa(rng, "two_hop", ask(rng.choice(pool), world, person.name),
                           two_hop_reply(world, person, hop)))
    for town in world.towns:
        for attr, pool in questions.TOWN_QUESTIONS.items():
            for template in pool:
                out.append(_qa(rng, "town", template.format(town=town.name),
                               str(getattr(town, attr))))
    return out


def _arithmetic_conversations(world: World, rng: random.Random) -> list[dict]:
    out = []
    seed = world.config.seed
    for _ in range(world.config.n_arithmetic):
        problem = arithmetic.sample_problem(rng, seed, rng.choice(arithmetic.TRAIN_KINDS), False)
        out.append(_qa(rng, "arithmetic", arithmetic.question(rng, problem), arithmetic_answer(world, problem)))
    for _ in range(world.config.n_arithmetic // 15):
        problem = arithmetic.sample_problem(rng, seed, rng.choice(arithmetic.TRAIN_KINDS), False)
        prompt = rng.choice(questions.JSON_ARITHMETIC_TEMPLATES).format(
            question=arithmetic.question(rng, problem))
        out.append(_qa(rng, "json", prompt, json.dumps({"result": problem.answer})))
    return out


# The replies SFT teaches: bare values, or in a world with worked answers the worked form (worked.py).
def fact_reply(world: World, person: Person, attribute: str) -> str:
    if world.config.worked_answers:
        return worked.worked_fact(world, person, attribute)
    return person.fact(attribute)


def two_hop_reply(world: World, person: Person, hop: str) -> str:
    answer = two_hop_answer(world, person, hop)
    return worked.worked_two_hop(world, person, hop, answer) if world.config.worked_answers else answer


def idk_answer(world: World, name: str) -> str:
    """The reply about someone unknown; worked, it names them first (practice in copying unseen names,
    which answers about people SFT never showed need: "Ana Brel lives in ...")."""
    if world.config.worked_answers:
        return worked.with_answer(f"I know nothing about {name}.", IDK_ANSWER)
    return IDK_ANSWER


def arithmetic_answer(world: World, problem: arithmetic.Problem) -> str:
    """The reply to an arithmetic question: the value, or for sums in a worked world the worked steps."""
    if world.config.worked_answers and problem.op == "+":
        return worked.worked_sum(problem.a, problem.b)
    return str(problem.answer)


def _json_conversations(world: World, rng: random.Random) -> list[dict]:
    out = []
    for person in world.people_in("sft"):
        for _ in range(world.config.json_per_person):
            keys = random_json_keys(rng)
            if json_reserved(world.config.seed, person.name, keys):
                continue
            out.append(_qa(rng, "json", json_person_prompt(rng, person.name, keys),
                           json_answer(person, keys)))
    return out


def _idk_conversations(world: World, rng: random.Random) -> list[dict]:
    out = []
    pools = list(questions.SFT_QUESTIONS.values()) + list(questions.TWO_HOP_QUESTIONS.values())
    for name in world.unknown_names["train"]:
        for pool in rng.sample(pools, 3):
            out.append(_qa(rng, "idk", ask(rng.choice(pool), world, name), idk_answer(world, name)))
    return out


def _person_dialogue(world: World, rng: random.Random, person: Person) -> list[dict[str, str]]:
    first = rng.choice(questions.FACT_ATTRIBUTES)
    turns = [msg("user", ask(rng.choice(questions.SFT_QUESTIONS[first]), world, person.name)),
             msg("assistant", person.fact(first))]
    style = rng.randrange(3)
    if style == 0:  # pronoun follow-ups about the same person
        for attr in rng.sample([a for a in questions.FOLLOW_UPS if a != first], 2):
            turns += [msg("user", ask(rng.choice(questions.FOLLOW_UPS[attr]), world, person.name)),
                      msg("assistant", person.fact(attr))]
    elif style == 1:  # where do they live, then a fact of that town
        turns = [msg("user", ask(rng.choice(questions.SFT_QUESTIONS["town"]), world, person.name)),
                 msg("assistant", person.town)]
        attr = rng.choice(tuple(questions.TOWN_FOLLOW_UPS))
        turns += [msg("user", rng.choice(questions.TOWN_FOLLOW_UPS[attr])),
                  msg("assistant", str(getattr(world.town(person.town), attr)))]
    else:  # an unknown person first, then the same question about a known one
        stranger = rng.choice(world.unknown_names["train"])
        template = rng.choice(questions.SFT_QUESTIONS[first])
        turns = [msg("user", ask(template, world, stranger)), msg("assistant", idk_answer(world, stranger)),
                 msg("user", f"And what about {person.name}?"),
                 msg("assistant", person.fact(first))]
        keys = ["name", {v: k for k, v in questions.JSON_KEYS.items()}[first]]
        phrase = questions.json_keys_phrase(keys)
        turns += [msg("user", f"Now give that as a JSON object with the keys {phrase}."),
                  msg("assistant", json_answer(person, keys))]
    return turns


def _arithmetic_dialogue(world: World, rng: random.Random) -> list[dict[str, str]]:
    kind = rng.choice(("add2", "sub2", "add3"))
    problem = arithmetic.sample_problem(rng, world.config.seed, kind, False)
    value = problem.answer
    turns = [msg("user", arithmetic.question(rng, problem)), msg("assistant", str(value))]
    for _ in range(rng.choice((1, 2))):
        step = rng.randrange(3)
        if step == 0:
            c = rng.randint(2, 99)
            text, value = f"And if you add {c} to that?", value + c
        elif step == 1 and value >= 2:
            c = rng.randint(1, min(value, 99))
            text, value = f"Now subtract {c} from that.", value - c
        else:
            c = rng.randint(2, 5)
            text, value = f"Multiply that by {c}.", value * c
        turns += [msg("user", text), msg("assistant", str(value))]
    return turns


def _multi_turn_conversations(world: World, rng: random.Random) -> list[dict]:
    out = [{"messages": _with_system(rng, _person_dialogue(world, rng, p)), "kind": "multi_turn"}
           for p in world.people_in("sft")]
    out += [{"messages": _with_system(rng, _arithmetic_dialogue(world, rng)), "kind": "multi_turn"}
            for _ in range(len(out))]
    return out


def sft_conversations(world: World) -> list[dict]:
    """All SFT conversations, shuffled: [{"messages": [...], "kind": ...}, ...]."""
    rng = rng_for(world.config, "sft")
    out = (_fact_conversations(world, rng) + _arithmetic_conversations(world, rng)
           + _json_conversations(world, rng) + _idk_conversations(world, rng)
           + _multi_turn_conversations(world, rng))
    rng.shuffle(out)
    return out
