"""BPE training: the incremental trainer learns exactly the merges of the slow reference.

Handbook III (tokenization); Sennrich et al. (2016). `python -m pytest -q tests/tokenizers/test_bpe_train.py`
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.errors import ConfigError
from genlab.tokenizers import GPT4_PATTERN, BPETokenizer
from genlab.tokenizers.bpe_train import Merge, chunk_counts, train_merges, train_merges_reference


def test_incremental_training_equals_full_recount_on_real_text(corpus_text):
    counts = chunk_counts([corpus_text[:25_000]], GPT4_PATTERN)
    fast = train_merges(counts, vocab_size=256 + 200)
    assert len(fast) == 200
    assert fast == train_merges_reference(counts, vocab_size=256 + 200)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(alphabet="aab c\u00e9", min_size=1, max_size=12), st.integers(1, 5), max_size=12))
def test_incremental_training_equals_full_recount_on_repetitive_words(counts):
    # Runs like "aaaa" (overlapping pairs) and many ties are where incremental counts go wrong.
    assert train_merges(counts, 300) == train_merges_reference(counts, 300)


def test_most_frequent_pair_first_and_ties_broken_by_smallest_pair():
    merges = train_merges({"ab": 5, "cd": 5, "xy": 9}, vocab_size=259)
    assert merges == [Merge(ord("x"), ord("y"), 256), Merge(ord("a"), ord("b"), 257), Merge(ord("c"), ord("d"), 258)]


def test_every_learned_token_is_new_and_encodes_to_itself(trained_tokenizer):
    tok = trained_tokenizer
    assert [m.new_id for m in tok.merges] == list(range(256, 256 + len(tok.merges)))
    learned = [tok.token_bytes(m.new_id) for m in tok.merges]
    assert len(set(learned)) == len(learned)  # no two merges spell the same bytes
    # Hence tiktoken's "whole chunk in the vocab -> one token" shortcut agrees with plain BPE.
    assert all(tok._encode_bytes(data) == (256 + rank,) for rank, data in enumerate(learned))


def test_training_stops_when_no_pairs_are_left():
    tokenizer = BPETokenizer.train("ab ab ab", vocab_size=1000)
    assert tokenizer.vocab_size == 256 + 2  # "ab" and " ab"
    assert tokenizer.encode("ab ab") == [256, 257]


def test_special_token_text_teaches_no_merges_and_gets_the_last_ids():
    text = "<|endoftext|>" * 50 + "hello hello"
    tokenizer = BPETokenizer.train(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    assert tokenizer.special_tokens == {"<|endoftext|>": tokenizer.vocab_size - 1}
    learned = {tokenizer.token_bytes(m.new_id) for m in tokenizer.merges}
    assert not any(b"<|" in data or b"|>" in data or b"endof" in data for data in learned)


def test_vocab_size_must_hold_bytes_and_specials():
    with pytest.raises(ConfigError, match="vocab_size=257"):
        BPETokenizer.train("abc", vocab_size=257, special_tokens=["<a>", "<b>"])


def test_training_is_deterministic_and_accepts_an_iterable(corpus_text):
    docs = corpus_text[:30_000].split("\n\n")
    first = BPETokenizer.train(iter(docs), vocab_size=400)
    second = BPETokenizer.train(docs, vocab_size=400)
    assert first.merges == second.merges and len(first.merges) == 144
