"""Held-out evaluation sets (a)-(e) of issue 3, the SQuAD answer normaliser and the JSON checker.

Handbook V (benchmarks). Items are {"messages": [prompt turns], "answer": str, "kind": set name,
"detail": attribute or problem kind} (JSON items add "keys"). The sets:
  qa_new_phrasings     (a) sft-split people, phrasings never used in SFT
  knowledge_extraction (b) extraction-split people (pretraining only), SFT phrasings
  two_hop_extraction       extraction people, two-hop questions (home town's river, friend's job...)
  addition_2digit      (c) 2-digit additions reserved for eval (never in any training set)
  arithmetic               3-digit add/subtract, 2-digit subtract, small multiply, reserved too
  idk                  (d) made-up names from the eval pool -> IDK_ANSWER
  json_valid           (e) JSON formatting with required keys; score with `json_item_ok`
Normalisation follows the SQuAD v1.1 evaluation script (lowercase, drop punctuation and the
articles a/an/the, squeeze whitespace).

    python -c "from genlab.data.world import *; s = eval_sets(build_world()); print({k: len(v) for k, v in s.items()})"
"""

from __future__ import annotations

import json
import re
import string

from genlab.data.world import arithmetic, questions
from genlab.data.world.conversations import (IDK_ANSWER, ask, json_answer, json_person_prompt,
                                             json_reserved, msg, random_json_keys, two_hop_answer)
from genlab.data.world.entities import World, rng_for
from genlab.data.world.worked import final_answer

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> bool:
    """Normalised equality of the prediction's final answer (after any "Answer:", worked.py) and the answer."""
    return normalize_answer(final_answer(prediction)) == normalize_answer(answer)


def json_item_ok(text: str, item: dict) -> bool:
    """True iff `text` (whitespace aside) is a JSON object with exactly the item's keys."""
    try:
        obj = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and set(obj) == set(item["keys"])


def _item(kind: str, detail: str, prompt: str, answer: str) -> dict:
    return {"messages": [msg("user", prompt)], "answer": answer, "kind": kind, "detail": detail}


def _person_questions(world: World, rng, split: str, kind: str, bank: dict,
                      size: int) -> list[dict]:
    """`size` questions cycling over the split's people, each one's attributes in random order."""
    people = world.people_in(split)
    rng.shuffle(people)
    orders = {p.name: rng.sample(list(bank), len(bank)) for p in people}
    items = []
    for i in range(size):
        person = people[i % len(people)]
        attr = orders[person.name][(i // len(people)) % len(bank)]
        prompt = ask(rng.choice(bank[attr]), world, person.name)
        answer = person.fact(attr) if attr in questions.FACT_ATTRIBUTES else two_hop_answer(
            world, person, attr)
        items.append(_item(kind, attr, prompt, answer))
    return items


def _arithmetic_items(world: World, rng, kind: str, problem_kinds: tuple[str, ...],
                      size: int) -> list[dict]:
    seen, items = set(), []
    for _ in range(100 * size):  # the reserved pool is finite: stop early rather than loop forever
        if len(items) == size:
            break
        problem = arithmetic.sample_problem(rng, world.config.seed, rng.choice(problem_kinds), True)
        key = (problem.op, *(sorted((problem.a, problem.b)) if problem.op in "+*" else
                             (problem.a, problem.b)))
        if key in seen:  # 38 + 47 and 47 + 38 count as one problem
            continue
        seen.add(key)
        prompt = arithmetic.EVAL_TEMPLATE[problem.op].format(a=problem.a, b=problem.b)
        items.append(_item(kind, problem.kind, prompt, str(problem.answer)))
    return items


def _idk_items(world: World, rng, size: int) -> list[dict]:
    names = world.unknown_names["eval"]
    pools = {**questions.SFT_QUESTIONS, **questions.TWO_HOP_QUESTIONS}
    items = []
    for i in range(size):
        attr = rng.choice(list(pools))
        items.append(_item("idk", attr, ask(rng.choice(pools[attr]), world, names[i % len(names)]),
                           IDK_ANSWER))
    return items


def _json_items(world: World, rng, size: int) -> list[dict]:
    people = world.people_in("sft")
    items = []
    while len(items) < size:
        if len(items) % 5 == 4:  # every fifth item: arithmetic answered as {"result": ...}
            problem = arithmetic.sample_problem(rng, world.config.seed, "add2", True)
            question = arithmetic.EVAL_TEMPLATE["+"].format(a=problem.a, b=problem.b)
            prompt = rng.choice(questions.JSON_ARITHMETIC_TEMPLATES).format(question=question)
            item = _item("json_valid", "arithmetic", prompt, json.dumps({"result": problem.answer}))
            item["keys"] = ["result"]
        else:
            person, keys = rng.choice(people), random_json_keys(rng)
            if not json_reserved(world.config.seed, person.name, keys):
                continue
            item = _item("json_valid", "person", json_person_prompt(rng, person.name, keys),
                         json_answer(person, keys))
            item["keys"] = keys
        items.append(item)
    return items


def eval_sets(world: World) -> dict[str, list[dict]]:
    """The held-out evaluation sets, keyed by the names summary.json uses."""
    rng = rng_for(world.config, "eval")
    size = world.config.eval_size
    return {
        "qa_new_phrasings": _person_questions(world, rng, "sft", "qa_new_phrasings",
                                              questions.HELDOUT_QUESTIONS, size),
        "knowledge_extraction": _person_questions(world, rng, "extraction", "knowledge_extraction",
                                                  questions.SFT_QUESTIONS, size),
        "two_hop_extraction": _person_questions(world, rng, "extraction", "two_hop_extraction",
                                                questions.TWO_HOP_QUESTIONS, size // 2),
        "addition_2digit": _arithmetic_items(world, rng, "addition_2digit", ("add2",), size),
        "arithmetic": _arithmetic_items(world, rng, "arithmetic",
                                        ("add3", "sub2", "sub3", "mul"), size),
        "idk": _idk_items(world, rng, size),
        "json_valid": _json_items(world, rng, size),
    }
