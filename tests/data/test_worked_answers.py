"""Worked answers: recall-then-answer facts, written-out two-hop chains and place-value sums, all ending
in "Answer: <value>"; the evaluation reads the value back; a worked world differs from the plain one
only in those replies.

    python -m pytest -q tests/data/test_worked_answers.py
"""

import re

import pytest

from genlab.data.world import WorldConfig, build_world, exact_match, sft_conversations
from genlab.data.world.worked import final_answer, worked_sum


def test_final_answer_takes_the_text_after_the_last_mark():
    assert final_answer("Ana lives in Wuby. Answer: Wuby") == "Wuby"
    assert final_answer("Answer: 3. Answer:  85 ") == "85"
    assert final_answer("just 85") == "just 85"
    assert exact_match("47 + 38: 7+8=15, 4+3+1=8. Answer: 85", "85")
    assert not exact_match("47 + 38: 7+8=15. Answer: 84", "85")


@pytest.mark.parametrize("a, b", [(47, 38), (10, 10), (99, 99), (50, 31), (216, 161), (905, 97), (999, 1)])
def test_worked_sums_add_column_by_column_with_carries(a, b):
    text = worked_sum(a, b)
    assert text.startswith(f"{a} + {b}: ") and final_answer(text) == str(a + b)
    steps = re.findall(r"(\d(?:\+\d)+)=(\d+)", text)
    assert len(steps) == len(str(max(a, b)))
    carry, digits = 0, ""
    for column, (terms, total) in enumerate(steps):  # units first: the column's digits, then the carry
        values = [int(t) for t in terms.split("+")]
        expected = [int(str(n)[::-1][column]) for n in (a, b) if column < len(str(n))] + [1] * carry
        assert values == expected and sum(values) == int(total)
        carry, digits = int(total) // 10, str(int(total) % 10) + digits
    assert int(str(carry or "") + digits) == a + b


@pytest.fixture(scope="module")
def worlds():
    return build_world(WorldConfig(scale=0.25, worked_answers=False)), build_world(WorldConfig(scale=0.25))


def test_worked_world_changes_only_the_replies_it_works(worlds):
    plain_world, worked_world = worlds
    plain, worked = sft_conversations(plain_world), sft_conversations(worked_world)
    assert len(plain) == len(worked)
    changed = {"fact": 0, "two_hop": 0, "arithmetic": 0, "idk": 0, "multi_turn": 0}
    for p, w in zip(plain, worked):
        assert p["kind"] == w["kind"] and len(p["messages"]) == len(w["messages"])
        for mp, mw in zip(p["messages"], w["messages"]):
            assert mp["role"] == mw["role"]
            if mp == mw:
                continue
            assert mp["role"] == "assistant" and p["kind"] in changed
            assert "Answer:" in mw["content"] and final_answer(mw["content"]) == mp["content"]
            changed[p["kind"]] += 1
    assert all(changed.values()), changed
    for conv in worked:  # the reasoning names the person asked about (recall), sums only for "+"
        question, reply = conv["messages"][-2]["content"], conv["messages"][-1]["content"]
        if conv["kind"] == "fact":
            assert reply.startswith("I know that ") and reply.split(" Answer:")[0].split(" ")[3] in question
        if conv["kind"] == "arithmetic":
            assert ("Answer:" in reply) == ("+" in question or "plus" in question or "Add" in question)


def test_worked_preference_pairs_choose_the_worked_reply(worlds):
    from genlab.data.world import preference_pairs

    plain, worked = preference_pairs(worlds[0]), preference_pairs(worlds[1])
    assert [p["prompt"] for p in plain] == [p["prompt"] for p in worked]
    assert [p["rejected"] for p in plain] == [p["rejected"] for p in worked]
    assert all(final_answer(w["chosen"]) == p["chosen"] for p, w in zip(plain, worked))
    assert sum("Answer:" in w["chosen"] for w in worked) > len(worked) // 3


def _contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i:i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_worked_replies_spell_the_name_with_the_question_tokens():
    """A BPE learned on the world's documents makes names single tokens with their leading space (" Brel");
    the reply must spell the name with those same ids so copying it from the question (and completing the
    pretraining sentence about it) works for people SFT never showed. A reply opening with the name fails this."""
    from genlab.data.world import pretraining_documents
    from genlab.tokenizers import GPT4_DIGITS_PATTERN, BPETokenizer

    world = build_world(WorldConfig(scale=0.25))
    tokenizer = BPETokenizer.train(pretraining_documents(world), 1024, pattern=GPT4_DIGITS_PATTERN)
    convs = [c for c in sft_conversations(world) if c["kind"] in ("fact", "two_hop", "idk")]
    names = {p.name for p in world.people} | set(world.unknown_names["train"])
    assert len(tokenizer.encode(" " + world.people[0].name)) < len(world.people[0].name) / 3  # merged into few tokens
    checked = 0
    for conv in convs:
        question, reply = conv["messages"][-2]["content"], conv["messages"][-1]["content"]
        name = next(n for n in names if n in question)
        if question.startswith(name):
            continue  # the question spells it without a leading space; the reply cannot match both spellings
        assert _contains(tokenizer.encode(reply), tokenizer.encode(" " + name)), (question, reply)
        assert _contains(tokenizer.encode(question), tokenizer.encode(" " + name))
        checked += 1
    assert checked > len(convs) // 2
    bare = tokenizer.encode(world.people[0].name + " lives in " + world.people[0].town + ".")
    assert not _contains(bare, tokenizer.encode(" " + world.people[0].name))  # why the reply needs a lead
