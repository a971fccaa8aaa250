"""Stop-string matcher: hold-back, truncation at the first-completing stop, chunking independence.

    python -m pytest -q tests/inference/test_stops.py
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.errors import ConfigError
from genlab.inference.stops import StopStringMatcher, find_first_stop


def stream(chunks: list[str], stops: list[str]) -> tuple[list[str], bool]:
    m = StopStringMatcher(stops)
    pieces, stopped = [], False
    for c in chunks:
        emit, stopped = m.feed(c)
        pieces.append(emit)
        if stopped:
            break
    if not stopped:
        pieces.append(m.flush())
    return pieces, stopped


def expected(text: str, stops: list[str]) -> str:
    cut = find_first_stop(text, stops)
    return text if cut is None else text[:cut]


def test_stop_split_across_chunks_is_held_then_dropped():
    pieces, stopped = stream(["Hello wor", "ld", "!\nUser:", " more"], ["\nUser:"])
    assert stopped and pieces == ["Hello wor", "ld", "!"]


def test_false_alarm_is_released_when_it_cannot_be_a_stop():
    m = StopStringMatcher(["###"])
    assert m.feed("a#") == ("a", False)
    assert m.feed("#") == ("", False)
    assert m.feed("b") == ("##b", False)
    assert m.flush() == ""


def test_held_prefix_released_by_flush():
    m = StopStringMatcher(["END"])
    assert m.feed("the EN") == ("the ", False)
    assert m.flush() == "EN"


def test_first_to_complete_wins():
    # "bc" completes (at 3) before "abcd" (at 4), so the cut is after "a" whatever the chunking
    assert expected("xabcd", ["abcd", "bc"]) == "xa"
    assert stream(["xabcd"], ["abcd", "bc"])[0] == ["xa"]
    assert stream(["xab", "cd"], ["abcd", "bc"])[0] == ["x", "a"]
    # same end: the longer (earlier-starting) stop wins
    assert expected("xabc", ["bc", "abc"]) == "x"


def test_no_stops_passes_text_through():
    assert stream(["a", "b"], []) == (["a", "b", ""], False)


def test_empty_stop_string_is_rejected():
    with pytest.raises(ConfigError, match="stop"):
        StopStringMatcher(["ok", ""])


def test_feed_after_stop_emits_nothing():
    m = StopStringMatcher(["x"])
    assert m.feed("ax") == ("a", True)
    assert m.feed("more") == ("", True) and m.flush() == ""


alphabet = st.sampled_from("ab\nc#")
stop_lists = st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet, max_size=40), stop_lists, st.data())
def test_any_chunking_gives_text_truncated_at_first_stop(text, stops, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    points = [0, *cuts, len(text)]
    chunks = [text[a:b] for a, b in zip(points, points[1:])]
    pieces, stopped = stream(chunks, stops)
    assert "".join(pieces) == expected(text, stops)
    assert stopped == (find_first_stop(text, stops) is not None)
    # nothing is held longer than needed: before the stop, after each chunk exactly the part of
    # the text so far that cannot still grow into a stop string has been emitted
    consumed = emitted = ""
    for chunk, piece in zip(chunks, pieces):
        consumed += chunk
        emitted += piece
        if find_first_stop(consumed, stops) is not None:
            break
        held = max([k for k in range(1, len(consumed) + 1) for s in stops
                    if k < len(s) and s.startswith(consumed[-k:])], default=0)
        assert emitted == consumed[:len(consumed) - held]
