"""Data for later issues: preference pairs, verifiable-reward prompts, private documents, tool traces.

Handbook IV (preference tuning, RL with verifiable rewards), VI (retrieval), VII (agents).
Everything here is about the sft split, made-up "train" names, or people who never reach
pretraining (private and lookup people), so no extraction-split fact leaks into training data, and
arithmetic avoids the problems reserved for evaluation.

Tool calls are plain assistant text, one JSON object `{"tool": NAME, "arguments": {...}}`; the
result comes back as a {"role": "tool"} message; the final assistant turn is the exact answer.

    python -c "from genlab.data.world import *; print(tool_traces(build_world())[0])"
"""

from __future__ import annotations

import json
import random
import re
from typing import Mapping, Sequence

from genlab.data.world import arithmetic, questions, templates
from genlab.data.world.conversations import (IDK_ANSWER, arithmetic_answer, ask, fact_reply, idk_answer, msg,
                                             two_hop_answer)
from genlab.data.world.documents import capitalise, person_slots
from genlab.data.world.entities import Person, World, rng_for
from genlab.errors import GenlabError

RAMBLES = (
    "Well, that is a very interesting question, and there is a lot one could say about it. Let me "
    "think it through before answering. After careful thought, I believe the answer is {value}, "
    "although I may be wrong about that.",
    "Great question! Many people wonder about this. The answer, as far as I can tell, is probably "
    "{value}. I hope that helps, and let me know if you want to hear more about it!",
    "Hmm. I am not completely sure, but I would guess {value}. There could be other possibilities, "
    "so you may want to double-check with someone else.",
)
TOOL_SYSTEM_PROMPT = (
    'You can use tools. To call one, reply with only a JSON object {"tool": NAME, "arguments": '
    '{...}}. Tools: calculator(expression) evaluates a + b, a - b or a * b on integers; '
    'lookup(query) returns the document about a person, or "No document found."')
NO_DOCUMENT = "No document found."


def tool_call(tool: str, **arguments: str) -> str:
    return json.dumps({"tool": tool, "arguments": arguments})


def run_calculator(expression: str) -> str:
    """The calculator tool: 'a op b' on non-negative integers, op one of + - *."""
    match = re.fullmatch(r"\s*(\d+)\s*([-+*])\s*(\d+)\s*", expression)
    if not match:
        raise GenlabError(f"calculator cannot evaluate {expression!r}: expected 'a + b', 'a - b' "
                          "or 'a * b'")
    return str(arithmetic.OPS[match[2]](int(match[1]), int(match[3])))


def _wrong_value(rng: random.Random, world: World, attr: str, correct: str) -> str:
    for _ in range(100):
        value = rng.choice(world.people_in("sft")).fact(attr)
        if value != correct:
            return value
    return correct + "s"


def preference_pairs(world: World) -> list[dict]:
    """[{"prompt": messages, "chosen": str, "rejected": str, "kind": ...}]: concise and correct
    beats wrong, rambling, or rambling and wrong; "I don't know" beats a made-up fact. In a world
    with worked answers the chosen reply is the worked one (what SFT taught), ending in the value."""
    rng = rng_for(world.config, "preferences")
    people, unknown = world.people_in("sft"), world.unknown_names["train"]
    pairs = []
    for i in range(2 * world.config.eval_size):
        kind = ("fact", "fact", "arithmetic", "idk")[i % 4]
        attr = rng.choice(questions.FACT_ATTRIBUTES)
        if kind == "arithmetic":
            problem = arithmetic.sample_problem(rng, world.config.seed,
                                                rng.choice(arithmetic.TRAIN_KINDS), False)
            prompt, correct = arithmetic.question(rng, problem), str(problem.answer)
            wrong = str(problem.answer + rng.choice((-10, -2, -1, 1, 2, 10)))
            chosen = arithmetic_answer(world, problem)
        elif kind == "idk":
            stranger = rng.choice(unknown)
            prompt = ask(rng.choice(questions.SFT_QUESTIONS[attr]), world, stranger)
            correct, wrong = IDK_ANSWER, rng.choice(people).fact(attr)
            chosen = idk_answer(world, stranger)
        else:
            person = rng.choice(people)
            prompt = ask(rng.choice(questions.SFT_QUESTIONS[attr]), world, person.name)
            correct = person.fact(attr)
            wrong = _wrong_value(rng, world, attr, correct)
            chosen = fact_reply(world, person, attr)
        style = rng.randrange(3)  # wrong / rambling but right / rambling and wrong
        ramble = rng.choice(RAMBLES)
        rejected = (wrong, ramble.format(value=correct), ramble.format(value=wrong))[style]
        if kind == "idk" and style == 1:
            rejected = ramble.format(value=wrong)  # rambling around "I don't know" is not a lie
        pairs.append({"prompt": [msg("user", prompt)], "chosen": chosen, "rejected": rejected,
                      "kind": kind})
    return pairs


def verifiable_prompts(world: World) -> list[dict]:
    """[{"messages", "answer", "kind"}]: prompts whose answer a program can check exactly.

    Half are 2-digit sums, a quarter facts and a quarter two-hop facts about SFT people. RL from
    verifiable rewards sharpens what the policy sometimes gets right: a group whose samples are all wrong
    has zero advantage and teaches nothing. So the arithmetic is the kind SFT teaches with worked steps
    (`worked.worked_sum`); the speedrun model answers 3-digit sums, differences and products (bare
    values) almost never right, and with them in the mix GRPO saw rewards of 0-2%.
    """
    rng = rng_for(world.config, "verifiable")
    people = world.people_in("sft")
    items = []
    for i in range(2 * world.config.eval_size):
        if i % 2 == 0:
            items.append(_sum_item(rng, arithmetic.sample_problem(rng, world.config.seed, "add2", False)))
            continue
        if i % 4 == 1:
            person, attr = rng.choice(people), rng.choice(questions.FACT_ATTRIBUTES)
            prompt = ask(rng.choice(questions.SFT_QUESTIONS[attr]), world, person.name)
            answer, kind = person.fact(attr), "fact"
        else:
            person, hop = rng.choice(people), rng.choice(list(questions.TWO_HOP_QUESTIONS))
            prompt = ask(rng.choice(questions.TWO_HOP_QUESTIONS[hop]), world, person.name)
            answer, kind = two_hop_answer(world, person, hop), "two_hop"
        items.append({"messages": [msg("user", prompt)], "answer": answer, "kind": kind})
    return items


def verifiable_sums(world: World, n: int, avoid: Sequence[Mapping] = ()) -> list[dict]:
    """`n` more 2-digit-sum verifiable prompts, none of them a sum in `avoid` (either operand order).

    RL needs more prompts than `verifiable_prompts` has: repeated over and over, its ~100 training sums teach
    the answers to those sums rather than the procedure (genlab.recipes.align_stages.GRPOStageConfig has the
    figures). Pass the held-out prompts as `avoid` so evaluation stays unseen (eval-reserved problems are never
    drawn either)."""
    taken = {tuple(sorted(item["operands"])) for item in avoid if item.get("kind") == "arithmetic"}
    rng = rng_for(world.config, "verifiable-sums")
    items: list[dict] = []
    while len(items) < n:
        problem = arithmetic.sample_problem(rng, world.config.seed, "add2", False)
        if tuple(sorted((problem.a, problem.b))) not in taken:
            items.append(_sum_item(rng, problem))
    return items


def _sum_item(rng: random.Random, problem: arithmetic.Problem) -> dict:
    return {"messages": [msg("user", arithmetic.question(rng, problem))], "answer": str(problem.answer),
            "kind": "arithmetic", "operands": [problem.a, problem.b]}


# The record card's line for each fact attribute (both pet facts share the "Pet" line).
_CARD_LINES = {"town": "Home town: {town}", "job": "Occupation: {job}", "age": "Age: {age}",
               "pet_species": "Pet: {a_species} named {pet}", "pet_name": "Pet: {a_species} named {pet}",
               "colour": "Favourite colour: {colour}", "hobby": "Hobby: {hobby}", "friend": "Best friend: {friend}"}


def card_line(world: World, person: Person, attribute: str) -> str:
    """The record-card line stating `attribute` of `person` ("Occupation: fisher")."""
    return _CARD_LINES[attribute].format(**person_slots(world, person))


def profile_title(person: Person) -> str:
    return f"About {person.name}"


def profile_document(world: World, person: Person, rng: random.Random, doc_id: str) -> str:
    """A record card or a short prose biography (retrieval should handle both shapes) under its title.

    The title heads the text, as DPR indexes a passage with its title (Karpukhin et al. 2020): without it a card,
    which names its subject once, ties in BM25 with the best friend's document, which names them once too (hybrid
    search ranked the friend's document first for 12 of 150 private questions, all about card subjects).
    """
    slots = person_slots(world, person)
    if rng.random() < 0.5:
        lines = [_CARD_LINES[attr].format(**slots) for attr in
                 ("town", "job", "age", "pet_name", "colour", "hobby", "friend")]
        body = "\n".join([f"Record {doc_id}", f"Name: {person.name}", *lines])
    else:
        sentences = [capitalise(rng.choice(pool).format(**slots))
                     for pool in templates.BIO_SENTENCES.values()]
        rng.shuffle(sentences)
        body = " ".join(sentences)
    return f"{profile_title(person)}\n{body}"


def _documents(world: World, people: list[Person], prefix: str, purpose: str) -> list[dict]:
    rng = rng_for(world.config, purpose)
    docs = []
    for i, person in enumerate(people):
        doc_id = f"{prefix}-{i:04d}"
        docs.append({"id": doc_id, "title": profile_title(person),
                     "text": profile_document(world, person, rng, doc_id)})
    return docs


def private_documents(world: World) -> dict[str, list[dict]]:
    """{"documents": [{"id", "title", "text"}], "questions": [{"messages", "question", "answer",
    "doc_id", "kind"}]} about private people, who appear in no training data at all."""
    docs = _documents(world, world.private_people, "private", "private-docs")
    rng = rng_for(world.config, "private-questions")
    qs = []
    for doc, person in zip(docs, world.private_people):
        for attr in rng.sample(questions.FACT_ATTRIBUTES, 3):
            question = ask(rng.choice(questions.SFT_QUESTIONS[attr]), world, person.name)
            qs.append({"messages": [msg("user", question)], "question": question,
                       "answer": person.fact(attr), "doc_id": doc["id"], "kind": attr})
    return {"documents": docs, "questions": qs}


def lookup_documents(world: World) -> list[dict]:
    """The corpus behind the lookup tool in `tool_traces` (lookup people only)."""
    return _documents(world, world.lookup_people, "lookup", "lookup-docs")


def tool_traces(world: World) -> list[dict]:
    """[{"messages": [...system, user, assistant call, tool result, assistant answer], "kind"}]."""
    rng = rng_for(world.config, "tools")
    docs = {d["title"].removeprefix("About "): d for d in lookup_documents(world)}
    traces = []
    for i in range(world.config.eval_size):
        kind = ("calculator", "calculator", "calculator", "calculator", "lookup", "lookup",
                "lookup", "lookup", "lookup_miss", "direct")[i % 10]
        turns = [msg("system", TOOL_SYSTEM_PROMPT)]
        if kind == "calculator":
            op = rng.choice("+-*")
            a, b = rng.randint(1000, 999_999), rng.randint(100, 99_999)
            a, b = (b, a) if op == "-" and b > a else (a, b)  # keep results non-negative
            expression = f"{a} {op} {b}"
            result = run_calculator(expression)
            turns += [msg("user", f"What is {expression}?"),
                      msg("assistant", tool_call("calculator", expression=expression)),
                      msg("tool", result), msg("assistant", result)]
        elif kind == "direct":  # small sums need no tool
            problem = arithmetic.sample_problem(rng, world.config.seed, "add2", False)
            turns += [msg("user", arithmetic.question(rng, problem)),
                      msg("assistant", str(problem.answer))]
        else:
            found = kind == "lookup"
            name = rng.choice(world.lookup_people).name if found else rng.choice(
                world.unknown_names["train"])
            attr = rng.choice(questions.FACT_ATTRIBUTES)
            answer = world.person(name).fact(attr) if found else IDK_ANSWER
            turns += [msg("user", ask(rng.choice(questions.SFT_QUESTIONS[attr]), world, name)),
                      msg("assistant", tool_call("lookup", query=name)),
                      msg("tool", docs[name]["text"] if found else NO_DOCUMENT),
                      msg("assistant", answer)]
        traces.append({"messages": turns, "kind": kind})
    return traces
