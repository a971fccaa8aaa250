"""Chunking by tokens and sentences: exact slices, sizes, overlaps.

    python -m pytest -q tests/retrieval/test_chunking.py
"""

import pytest
from hypothesis import given, settings, strategies as st

from genlab.errors import ConfigError
from genlab.retrieval.chunking import chunk_text, sentence_spans, word_spans


def test_token_windows_hand_checked():
    chunks = chunk_text("a b c d e f g", "tokens", size=4, overlap=2)
    assert [c.text for c in chunks] == ["a b c d", "c d e f", "e f g"]
    assert [(c.start, c.end) for c in chunks] == [(0, 7), (4, 11), (8, 13)]
    assert [c.text for c in chunk_text("a b c d e f", "tokens", 4, 2)] == ["a b c d", "c d e f"]  # no tail repeat
    assert [c.text for c in chunk_text("a b", "tokens", 4, 1)] == ["a b"]
    assert chunk_text("   \n ", "tokens", 4, 1) == []


def test_sentence_windows_hand_checked():
    text = "Hello there. How are you?  I am fine! Really.\n\nNew paragraph without a stop"
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Hello there.", "How are you?", "I am fine!", "Really.", "New paragraph without a stop"]
    chunks = chunk_text(text, "sentences", size=2, overlap=1)
    assert [c.text for c in chunks] == ["Hello there. How are you?", "How are you?  I am fine!",
                                        "I am fine! Really.", "Really.\n\nNew paragraph without a stop"]


def test_custom_token_spans_drive_the_windows():
    spans = lambda text: [(i, i + 2) for i in range(0, len(text), 2)]  # noqa: E731  (2-character "tokens")
    assert [c.text for c in chunk_text("abcdefgh", "tokens", 2, 0, spans)] == ["abcd", "efgh"]


def test_bad_configs():
    with pytest.raises(ConfigError):
        chunk_text("x", "tokens", 4, 4)
    with pytest.raises(ConfigError):
        chunk_text("x", "paragraphs", 4, 1)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab .!?\n", max_size=120), st.integers(1, 6), st.integers(0, 5))
def test_chunks_are_slices_cover_every_token_and_overlap(text, size, overlap):
    overlap = min(overlap, size - 1)
    chunks = chunk_text(text, "tokens", size, overlap)
    assert all(text[c.start:c.end] == c.text for c in chunks)
    tokens = word_spans(text)
    covered = {t for c in chunks for t in tokens if c.start <= t[0] and t[1] <= c.end}
    assert covered == set(tokens)
    for c in chunks:
        assert len([t for t in tokens if c.start <= t[0] and t[1] <= c.end]) <= size
