"""Pre-tokenizer and byte alphabet: the fast ASCII path equals the plain `regex` split.

Handbook III (tokenization); GPT-2 byte-to-unicode table (Radford et al., 2019).
`python -m pytest -q tests/tokenizers/test_pretokenize.py`
"""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex
from tokenizers import pre_tokenizers as hf_pre

from genlab.tokenizers.pretokenize import (
    GPT2_PATTERN,
    GPT4_DIGITS_PATTERN,
    GPT4_PATTERN,
    PreTokenizer,
    bytes_to_token_string,
    bytes_to_unicode,
    pretokenize,
    token_string_to_bytes,
)

# Characters that stress the cut points and the ASCII/Unicode seams.
_PIECES = st.sampled_from(
    ["\n", "\n\n", " ", "  ", "\t", "\r\n", "a", "Z", "'s", "'LL", "7", "123456", "!", "?!", "é", "日本", "👋🏽",
     "\u00a0", "\u3000", "\x1c", "\x85", "٣", "x\n", "\ny", ".\n", "\n ", "ab", " cd", "--"]
)  # fmt: skip
_TEXTS = st.lists(_PIECES | st.text(max_size=3), max_size=40).map("".join)


def test_byte_alphabet_matches_hugging_face_bytelevel():
    table = bytes_to_unicode()
    assert sorted(table.values()) == sorted(hf_pre.ByteLevel.alphabet())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    every_byte = bytes(range(256))
    assert token_string_to_bytes(bytes_to_token_string(every_byte)) == every_byte


def test_stdlib_text_splits_like_regex_and_like_hugging_face(corpus_text):
    text = corpus_text[:60_000]
    for pattern in (GPT4_PATTERN, GPT2_PATTERN, GPT4_DIGITS_PATTERN):
        chunks = PreTokenizer(pattern).split(text)
        assert chunks == regex.findall(pattern, text)
        assert "".join(chunks) == text
    hf_split = hf_pre.Split(Regex(GPT4_PATTERN), "isolated").pre_tokenize_str(text)
    assert pretokenize(text) == [piece for piece, _ in hf_split]


def test_gpt4_pattern_groups_digits_and_keeps_contractions():
    assert pretokenize("I'm 1234567 years") == ["I", "'m", " ", "123", "456", "7", " years"]
    assert pretokenize("hello  world\n\n") == ["hello", " ", " world", "\n\n"]


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_fast_split_equals_regex_findall(text):
    for pattern in (GPT4_PATTERN, GPT2_PATTERN, GPT4_DIGITS_PATTERN):
        assert PreTokenizer(pattern).split(text) == regex.findall(pattern, text)


def test_digits_pattern_splits_every_digit_and_matches_hugging_face():
    text = "Add 47 and 385: 432, x2y 1999\n"
    assert PreTokenizer(GPT4_DIGITS_PATTERN).split(text) == [
        "Add", " ", "4", "7", " and", " ", "3", "8", "5", ":", " ", "4", "3", "2", ",", " x", "2", "y", " ", "1", "9", "9", "9", "\n"]
    hf_split = hf_pre.Split(Regex(GPT4_DIGITS_PATTERN), "isolated").pre_tokenize_str(text)
    assert PreTokenizer(GPT4_DIGITS_PATTERN).split(text) == [piece for piece, _ in hf_split]


def test_unknown_pattern_keeps_the_text_between_matches():
    # HF Split(behavior="Isolated") keeps unmatched text as pieces; so must we.
    assert PreTokenizer(r"\d+").split("ab12cd3") == ["ab", "12", "cd", "3"]
