"""The speedrun's world material: add-only arithmetic practice, and tokenizer texts that spell every
person's name alike (no merges learned from SFT conversations, which name only SFT people).

    python -m pytest -q tests/recipes/test_world_tasks.py
"""

import re
import statistics

from genlab.data.chat import CHAT_SPECIAL_TOKENS
from genlab.data.world import WorldConfig, build_world, sft_conversations
from genlab.recipes.world_tasks import arithmetic_practice, pretraining_mix, tokenizer_texts
from genlab.tokenizers import GPT4_DIGITS_PATTERN, BPETokenizer


def test_arithmetic_practice_is_worked_sums():
    world = build_world(WorldConfig(seed=0, scale=0.25, worked_answers=True))
    practice = arithmetic_practice(world, 300, seed=0)
    assert len(practice) == 300
    for conv in practice:
        question, reply = (m["content"] for m in conv["messages"])
        a, b = map(int, re.findall(r"\d+", question)[:2])
        assert reply.startswith(f"{a} + {b}: ") and reply.endswith(f"Answer: {a + b}")


def test_tokenizer_texts_leave_names_out_so_all_people_tokenize_alike():
    world = build_world(WorldConfig(seed=0, scale=1.0, worked_answers=True))
    docs, _ = pretraining_mix(world, 0, seed=0)
    conversations = sft_conversations(world)
    texts = tokenizer_texts(world, docs, conversations)
    chat_texts = texts[len(docs):]
    assert texts[:len(docs)] == docs and len(chat_texts) == sum(len(c["messages"]) for c in conversations)
    sft_names = {p.name for p in world.people_in("sft")}
    assert not any(name in text for text in chat_texts for name in sft_names)

    def tokens_per_name(train_texts: list[str], vocab_size: int) -> tuple[float, float]:
        tok = BPETokenizer.train(train_texts, vocab_size, special_tokens=CHAT_SPECIAL_TOKENS,
                                 pattern=GPT4_DIGITS_PATTERN)
        count = {True: [], False: []}
        for person in world.people:
            count[person.name in sft_names].append(len(tok.encode(" " + person.name)))
        return statistics.mean(count[True]), statistics.mean(count[False])

    sft_mean, extraction_mean = tokens_per_name(texts, 2560)  # the speedrun's vocabulary: first and last name
    assert sft_mean == extraction_mean == 2.0
    # Why the names go: in a smaller vocabulary, SFT people's names take the merges when left in.
    with_names = docs + [m["content"] for c in conversations for m in c["messages"]]
    sft_mean, extraction_mean = tokens_per_name(with_names, 2048)
    assert extraction_mean - sft_mean > 1.0
    sft_mean, extraction_mean = tokens_per_name(texts, 2048)
    assert abs(extraction_mean - sft_mean) < 0.3
