"""Tests for the synthetic world generator (genlab.data.world), issue 3 section 1.

Handbook IV/V; Allen-Zhu & Li, "Physics of Language Models 3.1". Budget: < 10 s on 2 cores.

    python -m pytest -q tests/data/test_world.py
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from genlab.data.world import (IDK_ANSWER, WorldConfig, build_world, eval_sets, exact_match,
                               export_jsonl, json_item_ok, normalize_answer, preference_pairs,
                               pretraining_documents, private_documents, read_jsonl,
                               run_calculator, sft_conversations, tool_traces, verifiable_prompts)
from genlab.data.world import questions
from genlab.data.world.worked import final_answer
from genlab.errors import ConfigError, GenlabError


def everything(world) -> dict:
    return {"docs": pretraining_documents(world), "sft": sft_conversations(world),
            "eval": eval_sets(world), "prefs": preference_pairs(world),
            "verifiable": verifiable_prompts(world), "private": private_documents(world),
            "tools": tool_traces(world)}


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig())


@pytest.fixture(scope="module")
def data(world):
    return everything(world)


def _texts(conversations) -> list[str]:
    return [m["content"] for c in conversations for m in c["messages"]]


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[A-Z][a-z]+", t)}


def _name_parts(names) -> set[str]:
    return {part for n in names for part in n.split()}


# ---------------------------------------------------------------- sizes, determinism, config


def test_default_scale_meets_the_minimums(world, data):
    assert len(world.people) >= 200 and len(world.splits["extraction"]) >= 100
    assert set(world.splits["sft"]).isdisjoint(world.splits["extraction"])
    assert len(data["docs"]) >= 200 * 6 and len(data["sft"]) >= 3000
    for name in ("qa_new_phrasings", "knowledge_extraction", "addition_2digit", "arithmetic", "idk",
                 "json_valid"):
        assert len(data["eval"][name]) >= 200, name
    assert len(data["eval"]["two_hop_extraction"]) >= 100
    asked = {n for it in data["eval"]["knowledge_extraction"] for n in world.splits["extraction"]
             if n in it["messages"][0]["content"]}
    assert asked == set(world.splits["extraction"])  # every extraction person is tested
    assert len(data["prefs"]) >= 200 and len(data["verifiable"]) >= 200
    sums = [v for v in data["verifiable"] if v["kind"] == "arithmetic"]  # the worked kind only: 2-digit sums
    assert len(sums) >= 100 and all(len(re.findall(r"\b[1-9]\d\b", v["messages"][0]["content"])) == 2
                                    and int(v["answer"]) < 199 for v in sums)
    assert len(data["private"]["documents"]) >= 50 and len(data["private"]["questions"]) >= 150
    assert {t["kind"] for t in data["tools"]} == {"calculator", "lookup", "lookup_miss", "direct"}
    kinds = {c["kind"] for c in data["sft"]}
    assert {"fact", "two_hop", "arithmetic", "json", "idk", "multi_turn"} <= kinds


def test_same_seed_same_output_and_other_seed_differs(world, data):
    again = everything(build_world(WorldConfig()))
    assert json.dumps(again, sort_keys=True) == json.dumps(data, sort_keys=True)
    other_world = build_world(WorldConfig(seed=1))
    other = pretraining_documents(other_world)
    assert other != data["docs"]
    assert [p.name for p in other_world.people] != [p.name for p in world.people]
    assert sft_conversations(other_world) != data["sft"]


def test_scale_knob_and_config_errors():
    small = build_world(WorldConfig(scale=0.1))
    assert len(small.people) < 200 and len(small.splits["extraction"]) >= 2
    assert len(build_world(WorldConfig(scale=2.0)).people) == 400
    for bad in (dict(scale=0), dict(bios_per_person=99), dict(extraction_fraction=1.0),
                dict(sft_questions_per_fact=0)):
        with pytest.raises(ConfigError):
            WorldConfig(**bad)


# ---------------------------------------------------------------- split integrity


def test_friends_pair_inside_each_split(world):
    for p in world.people:
        friend = world.person(p.friend)
        assert friend.split == p.split and friend.friend == p.name and friend.name != p.name


def test_no_extraction_or_unseen_person_in_training_chats(world, data):
    hidden = _name_parts(world.splits["extraction"] + world.unknown_names["eval"]
                         + [p.name for p in world.private_people])
    for key in ("sft", "tools"):
        assert not _words(_texts(data[key])) & hidden, key
    prefs = [m["content"] for p in data["prefs"] for m in p["prompt"]]
    prefs += [p["chosen"] for p in data["prefs"]] + [p["rejected"] for p in data["prefs"]]
    assert not _words(prefs) & hidden
    answers = [v["answer"] for v in data["verifiable"]]
    assert not _words(_texts(data["verifiable"]) + answers) & hidden
    # ...while SFT does talk about every sft-split person (so the check above can see names).
    assert _name_parts(world.splits["sft"]) <= _words(_texts(data["sft"]))


def test_pretraining_covers_world_people_and_only_them(world, data):
    words = _words(data["docs"])
    assert _name_parts(p.name for p in world.people) <= words
    never = [p.name for p in world.private_people + world.lookup_people]
    never += world.unknown_names["train"] + world.unknown_names["eval"]
    assert not _name_parts(never) & words


def test_nonexistent_names_exist_nowhere_in_the_world(world):
    real = _name_parts(p.name for p in world.people + world.private_people + world.lookup_people)
    train, held = world.unknown_names["train"], world.unknown_names["eval"]
    assert not _name_parts(train + held) & real
    assert not set(train) & set(held)
    pattern = re.compile(r"^[A-Z][a-z]{2,8} [A-Z][a-z]{2,8}$")  # generated the same way
    assert all(pattern.match(n) for n in train + held + [p.name for p in world.people])


def test_heldout_phrasings_never_occur_in_sft(data):
    regexes = [questions.template_regex(t) for pool in questions.HELDOUT_QUESTIONS.values()
               for t in pool]
    user_turns = [m["content"] for c in data["sft"] for m in c["messages"] if m["role"] == "user"]
    for regex in regexes:
        assert not any(regex.match(u) for u in user_turns), regex.pattern
    # The regexes do recognise held-out prompts, so the check above can fail.
    for item in data["eval"]["qa_new_phrasings"]:
        assert any(r.match(item["messages"][0]["content"]) for r in regexes)


def test_eval_arithmetic_never_seen_in_training(data):
    def problems(texts):
        found = set()
        for t in texts:
            for a, op, b in re.findall(r"(\d+) ([-+*]) (\d+)", t):
                x, y = (a, b) if op == "-" else tuple(sorted((a, b)))
                found.add((op, x, y))
        return found
    held = problems(i["messages"][0]["content"] for k in ("addition_2digit", "arithmetic")
                    for i in data["eval"][k])
    train = problems(_texts(data["sft"]) + _texts(data["verifiable"])
                     + [m["content"] for p in data["prefs"] for m in p["prompt"]])
    assert len(held) >= 390 and len(train) > 1000 and not held & train


# ---------------------------------------------------------------- paraphrases of facts


def _paraphrase_counts(world, docs) -> dict[tuple[str, str], int]:
    """(person, attribute) -> distinct sentence shapes stating it with the person's full name."""
    names = {p.name for p in world.people}
    by_person = defaultdict(set)
    for doc in docs:
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", doc):
            for m in re.finditer(r"(?=([A-Z][a-z]+ [A-Z][a-z]+))", sentence):
                if m[1] in names:
                    by_person[m[1]].add(sentence)
    counts = {}
    for p in world.people:
        values = {a: p.fact(a) for a in questions.FACT_ATTRIBUTES}
        shapes = defaultdict(set)
        for sentence in by_person[p.name]:
            masked = sentence.replace(p.name, "<NAME>").replace(p.friend, "<FRIEND>")
            present = []
            for attr, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
                pattern = re.compile(rf"\b{re.escape(value)}\b", re.IGNORECASE)
                value_slot = "<FRIEND>" if attr == "friend" else None
                if (value_slot in masked) if value_slot else pattern.search(masked):
                    present.append(attr)
                    if not value_slot:
                        masked = pattern.sub(f"<{attr}>", masked)
            for attr in present:
                shapes[attr].add(masked)
        for attr in values:
            counts[(p.name, attr)] = len(shapes[attr])
    return counts


def test_every_fact_appears_in_many_paraphrases(world, data):
    counts = _paraphrase_counts(world, data["docs"])
    n = world.config.bios_per_person
    assert min(counts.values()) >= n, min(counts.items(), key=lambda kv: kv[1])


def test_paraphrase_count_tracks_biographies_per_person():
    few = build_world(WorldConfig(scale=0.1, bios_per_person=1, stories_per_person=0))
    counts = _paraphrase_counts(few, pretraining_documents(few))
    assert min(counts.values()) < 3  # one biography cannot give many shapes: the check can fail


def test_town_facts_in_several_paraphrases(world, data):
    by_town = defaultdict(list)
    for doc in data["docs"]:
        for sentence in re.split(r"(?<=[.!?])\s+", doc):
            for word in set(re.findall(r"[A-Z][a-z]+", sentence)):
                by_town[word].append(sentence)
    for town in world.towns:
        for value in (town.region, town.river, str(town.founded), town.food):
            shapes = {s.replace(town.name, "<T>").replace(value, "<V>")
                      for s in by_town[town.name] if value in s}
            assert len(shapes) >= world.config.town_docs_per_town, (town.name, value)


# ---------------------------------------------------------------- answers are right


def _solve(text: str) -> int | None:
    for pattern, fn in ((r"(\d+) \+ (\d+)", int.__add__), (r"(\d+) plus (\d+)", int.__add__),
                        (r"Add (\d+) and (\d+)", int.__add__), (r"(\d+) - (\d+)", int.__sub__),
                        (r"(\d+) minus (\d+)", int.__sub__), (r"(\d+) \* (\d+)", int.__mul__),
                        (r"(\d+) times (\d+)", int.__mul__),
                        (r"Multiply (\d+) by (\d+)", int.__mul__)):
        m = re.search(pattern, text)
        if m:
            return fn(int(m[1]), int(m[2]))
    m = re.search(r"Subtract (\d+) from (\d+)", text)
    return int(m[2]) - int(m[1]) if m else None


def test_arithmetic_answers_are_correct(data):
    checked = 0
    for conv in data["sft"]:
        turns = [m for m in conv["messages"] if m["role"] != "system"]
        if conv["kind"] == "arithmetic" or (conv["kind"] == "multi_turn"
                                            and _solve(turns[0]["content"]) is not None):
            value = _solve(turns[0]["content"])
            assert final_answer(turns[1]["content"]) == str(value)
            for user, reply in zip(turns[2::2], turns[3::2]):  # "add 7 to that", ...
                c = int(re.search(r"\d+", user["content"])[0])
                value = (value + c if "add" in user["content"] else value - c
                         if "ubtract" in user["content"] else value * c)
                assert reply["content"] == str(value)
            checked += 1
    items = data["eval"]["addition_2digit"] + data["eval"]["arithmetic"]
    items += [v for v in data["verifiable"] if v["kind"] == "arithmetic"]
    for item in items:
        assert item["answer"] == str(_solve(item["messages"][0]["content"]))
        checked += 1
    for item in data["eval"]["addition_2digit"]:
        assert re.fullmatch(r"What is \d\d \+ \d\d\?", item["messages"][0]["content"])
    for trace in data["tools"]:
        if trace["kind"] == "calculator":
            call = json.loads(trace["messages"][2]["content"])
            assert trace["messages"][3] == {"role": "tool", "content": str(
                _solve(call["arguments"]["expression"]))}
            assert trace["messages"][4]["content"] == trace["messages"][3]["content"]
    assert checked > 1500
    assert run_calculator("123456 * 789") == str(123456 * 789)
    with pytest.raises(GenlabError):
        run_calculator("__import__('os')")


def test_fact_answers_match_the_world(world, data):
    names = [p.name for p in world.people]
    for key in ("qa_new_phrasings", "knowledge_extraction"):
        for item in data["eval"][key]:
            prompt = item["messages"][0]["content"]
            (name,) = [n for n in names if n in prompt]
            assert item["answer"] == world.person(name).fact(item["detail"])
            want = "sft" if key == "qa_new_phrasings" else "extraction"
            assert world.person(name).split == want
    for item in data["eval"]["two_hop_extraction"]:
        (name,) = [n for n in names if n in item["messages"][0]["content"]]
        person, hop = world.person(name), item["detail"]
        if hop.startswith("friend_"):
            expected = world.person(person.friend).fact(hop[len("friend_"):])
        else:
            expected = str(getattr(world.town(person.town), hop))
        assert item["answer"] == expected
    assert all(i["answer"] == IDK_ANSWER for i in data["eval"]["idk"])
    for conv in data["sft"]:
        answers = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        assert all(len(final_answer(a).split()) <= 4 for a in answers if not a.startswith("{")), answers


def test_private_questions_are_answered_by_their_document(data):
    docs = {d["id"]: d["text"] for d in data["private"]["documents"]}
    for q in data["private"]["questions"]:
        assert q["answer"].lower() in docs[q["doc_id"]].lower()


def test_json_items_validate_with_the_checker(world, data):
    for item in data["eval"]["json_valid"]:
        assert json_item_ok(item["answer"], item)
        assert json_item_ok("  " + item["answer"] + "\n", item)
        prompt_keys = re.findall(r'"(\w+)"', item["messages"][0]["content"])
        assert prompt_keys == item["keys"]
    item = {"keys": ["name", "town"]}
    assert json_item_ok('{"town": "X", "name": "Y"}', item)
    for bad in ('{"name": "Y"}', '{"name": 1, "town": 2, "age": 3}', '["name", "town"]',
                "name: Y, town: X", '{"name": "Y", "town": "X"', ""):
        assert not json_item_ok(bad, item), bad
    for conv in data["sft"]:  # SFT JSON answers are exact, with the keys the prompt asks for
        if conv["kind"] == "json":
            user = conv["messages"][-2]["content"]
            answer = json.loads(conv["messages"][-1]["content"])
            assert list(answer) == re.findall(r'"(\w+)"', user)
            if "name" in answer:
                assert answer["name"] in user


def test_normalize_answer_follows_squad():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("  An apple, a day ") == "apple day"
    assert normalize_answer(IDK_ANSWER) == "i dont know"
    assert exact_match("Ossel.", "the Ossel") and not exact_match("Ossel", "Osel")
    assert exact_match("1,234", "1234")


# ---------------------------------------------------------------- export


def test_export_round_trips(tmp_path, world, data):
    written = export_jsonl(world, tmp_path)
    assert [r["text"] for r in read_jsonl(written["pretrain"])] == data["docs"]
    assert read_jsonl(written["sft"]) == [{"messages": c["messages"]} for c in data["sft"]]
    for name, items in data["eval"].items():
        assert read_jsonl(tmp_path / f"eval_{name}.jsonl") == items
    assert read_jsonl(written["verifiable"]) == data["verifiable"]
    prefs = read_jsonl(written["preferences"])
    assert [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in prefs] \
        == [(p["prompt"], p["chosen"], p["rejected"]) for p in data["prefs"]]
    assert {m["role"] for p in prefs for m in p["chosen"] + p["rejected"]} == {"assistant"}
    assert read_jsonl(written["private_docs"]) == data["private"]["documents"]
    traces = read_jsonl(written["tool_traces"])
    assert any(m["role"] == "tool" for t in traces for m in t["messages"])
    roles = {m["role"] for r in read_jsonl(written["sft"]) + traces for m in r["messages"]}
    assert roles == {"system", "user", "assistant", "tool"}
    assert json.loads(written["world"].read_text())["splits"] == world.splits
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files behind
    with pytest.raises(GenlabError):
        read_jsonl(tmp_path / "missing.jsonl")
