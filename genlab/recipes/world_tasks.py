"""The synthetic world as speedrun material: the pretraining mix, SFT split, eval sets and few-shot pools.

Handbook IV (instruction tuning), V (evaluation). The report card's five columns (a-e) are the issue's
held-out sets; `EVAL_TASKS` maps their summary.json keys to the world's eval-set names.

    python -c "from genlab.recipes.world_tasks import *; print(EVAL_TASKS)"
"""

from __future__ import annotations

import random
import re
from typing import Any

from genlab.data.corpus import stdlib_documents
from genlab.data.world import World, arithmetic, eval_sets, pretraining_documents
from genlab.data.world.conversations import arithmetic_answer

# summary key -> world eval set (issue 3: a new phrasings, b extraction, c addition, d idk, e json).
EVAL_TASKS = {
    "qa_new_phrasings": "qa_new_phrasings",
    "knowledge_extraction": "knowledge_extraction",
    "addition_2digit": "addition_2digit",
    "idk": "idk",
    "json_valid": "json_valid",
}
PRACTICE_KINDS = ("add2", "add2", "add3")  # 2-digit sums (the report card's (c)) twice as often as 3-digit
# Few-shot pools for the base model come from SFT conversations of the matching kind (never eval items).
POOL_KINDS = {
    "qa_new_phrasings": ("fact",), "knowledge_extraction": ("fact",), "addition_2digit": ("arithmetic",),
    "idk": ("idk", "fact"), "json_valid": ("json",),
}


def pretraining_mix(world: World, real_text_bytes: int, seed: int) -> tuple[list[str], list[str]]:
    """(world documents, real-text documents): the world's paraphrased documents plus stdlib prose/code."""
    docs = pretraining_documents(world)
    real = [d.text for d in stdlib_documents(real_text_bytes, seed)] if real_text_bytes else []
    return docs, real



def tokenizer_texts(world: World, documents: list[str], conversations: list[dict[str, Any]]) -> list[str]:
    """What the tokenizer learns from: the documents, and the conversations' messages without people's names.

    The chat's own words ("What", " Answer", " +") get merges, so conversations take ~20% fewer tokens. Names
    are cut out because SFT conversations name only SFT people: learning merges from them spelt those names
    with ~2.0 tokens but the knowledge-extraction people (documents only) with ~3.5, and (b) fell 51% -> 31.5%.
    """
    names = re.compile("|".join(re.escape(p.name) for p in sorted(world.people, key=lambda p: -len(p.name))))
    return documents + [names.sub("", m["content"]) for conv in conversations for m in conv["messages"]]


def eval_items(world: World, limit: int | None = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The report card's eval sets, each cut to `limit` items (a seeded sample) when given."""
    sets = eval_sets(world)
    out = {}
    for key, name in EVAL_TASKS.items():
        items = list(sets[name])
        if limit is not None and len(items) > limit:
            items = random.Random(f"{seed}:{key}").sample(items, limit)
        out[key] = items
    return out


def few_shot_pools(conversations: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Single-turn SFT conversations as solved examples {"messages": [user], "answer": ...} per task."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for conv in conversations:
        msgs = [m for m in conv["messages"] if m["role"] != "system"]
        if len(msgs) == 2 and msgs[0]["role"] == "user" and msgs[1]["role"] == "assistant":
            by_kind.setdefault(conv["kind"], []).append({"messages": [msgs[0]], "answer": msgs[1]["content"]})
    return {task: [item for kind in kinds for item in by_kind.get(kind, [])] for task, kinds in POOL_KINDS.items()}


def arithmetic_practice(world: World, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` extra single-turn addition conversations for the pretraining mix (never eval-reserved problems).

    Sums only (`PRACTICE_KINDS`): their worked steps are what the model can learn, one-digit facts and
    copies; a bare difference or product ("What is 99 minus 64?" -> "35") asks for the whole result in one
    forward pass, which this model never learns, so those tokens taught nothing. The SFT conversations keep
    all kinds."""
    rng = random.Random(f"{seed}:practice")
    out = []
    for _ in range(n):
        problem = arithmetic.sample_problem(rng, world.config.seed, rng.choice(PRACTICE_KINDS), False)
        out.append({"messages": [{"role": "user", "content": arithmetic.question(rng, problem)},
                                 {"role": "assistant", "content": arithmetic_answer(world, problem)}],
                    "kind": "arithmetic"})
    return out
