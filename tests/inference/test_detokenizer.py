"""Incremental UTF-8-safe detokenizer vs whole-stream decode and Python's incremental UTF-8 codec.

    python -m pytest -q tests/inference/test_detokenizer.py
"""

import codecs

from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.inference.detokenizer import IncrementalDetokenizer, incomplete_tail


def run(tokens: list[bytes]) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(lambda i: tokens[i])
    pieces = [detok.push(i) for i in range(len(tokens))]
    return pieces, detok.flush()


def test_emoji_split_over_four_tokens_is_held_until_complete():
    tokens = [b"a"] + [bytes([b]) for b in "🙂".encode()] + [b"b"]
    pieces, tail = run(tokens)
    assert pieces == ["a", "", "", "", "🙂", "b"] and tail == ""


def test_unfinished_character_at_end_becomes_replacement_on_flush():
    pieces, tail = run([b"ok", "é".encode()[:1]])
    assert pieces == ["ok", ""] and tail == "\ufffd"


def test_invalid_bytes_are_emitted_at_once_not_held():
    # 0xFF never appears in UTF-8; 0xE0 0x80 is an overlong start: both are already broken
    pieces, _ = run([b"x\xff", b"\xe0\x80", b"y"])
    assert pieces == ["x\ufffd", "\ufffd\ufffd", "y"]


def test_incomplete_tail_lengths():
    assert incomplete_tail(b"abc") == 0
    assert incomplete_tail("€".encode()[:2]) == 2
    assert incomplete_tail("€".encode()) == 0
    assert incomplete_tail("𝄞".encode()[:3]) == 3
    assert incomplete_tail(b"\xed\xa0") == 0  # would be a surrogate: never valid, do not hold
    assert incomplete_tail(b"\xf4\x90") == 0  # above U+10FFFF
    assert incomplete_tail(b"\x80\x80") == 0


# Token streams: real UTF-8 text cut at arbitrary byte positions, mixed with arbitrary bytes.
utf8_chunks = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12).map(str.encode)
token_stream = st.lists(st.one_of(utf8_chunks, st.binary(max_size=4)), max_size=12).flatmap(
    lambda parts: st.lists(st.integers(0, max(0, len(b"".join(parts)))), max_size=10).map(
        lambda cuts: split_at(b"".join(parts), cuts)))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(set([0, len(data), *cuts]))
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


@settings(max_examples=300, deadline=None)
@given(token_stream)
def test_pushes_concatenate_to_whole_decode_and_match_codec(tokens):
    whole = b"".join(tokens)
    pieces, tail = run(tokens)
    assert "".join(pieces) + tail == whole.decode("utf-8", errors="replace")
    # After every push the text so far is a prefix of the whole decode (no replacement character
    # produced early) and holds at least what the stdlib's incremental decoder emits (nothing held
    # that is already decidable). CPython's codec is lazier in one case: it holds b"\xed\xa0.."
    # (a surrogate prefix, never valid), which we emit at once as U+FFFD U+FFFD.
    codec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ours, theirs, expected = "", "", "".join(pieces) + tail
    for token, piece in zip(tokens, pieces):
        ours += piece
        theirs += codec.decode(token, final=False)
        assert expected.startswith(ours) and ours.startswith(theirs)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), st.data())
def test_valid_text_never_yields_replacement_characters(text, data):
    raw = text.encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=len(raw)))
    pieces, tail = run(split_at(raw, cuts))
    assert all("\ufffd" not in p or "\ufffd" in text for p in pieces)
    assert "".join(pieces) == text and tail == ""
