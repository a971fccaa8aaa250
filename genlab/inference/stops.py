"""Stop strings for streaming generation: hold back what may become a stop, cut at the first one.

Handbook V (sampling / decoding control). Follows OpenAI's `stop` semantics: generation ends at the
first stop string and the stop string itself is not returned. "First" means the one that
*completes* first (earliest end position; among stops ending at the same place, the one starting
earliest), because that is where a streaming server must stop. The result therefore does not
depend on how the text was chunked. Text that might still turn into a stop string (a suffix of the
text so far that is a prefix of some stop string) is held back, so nothing is emitted and then
retracted.

    python -m pytest -q tests/inference/test_stops.py
"""

from __future__ import annotations

from genlab.errors import ConfigError


def find_first_stop(text: str, stops: list[str]) -> int | None:
    """Start index of the first-completing stop string in `text`, or None (non-streaming reference)."""
    best: tuple[int, int] | None = None  # (end, start)
    for s in stops:
        i = text.find(s)  # the leftmost occurrence of s also ends first
        if i >= 0 and (best is None or (i + len(s), i) < best):
            best = (i + len(s), i)
    return None if best is None else best[1]


class StopStringMatcher:
    """`feed(text) -> (emit, stopped)`; call `flush()` at the end to get the held-back remainder."""

    def __init__(self, stops: list[str]) -> None:
        if any(not isinstance(s, str) or not s for s in stops):
            raise ConfigError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = list(stops)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for n in range(min(len(text), self._longest - 1), 0, -1):
            suffix = text[-n:]
            if any(s.startswith(suffix) for s in self.stops):
                return n
        return 0

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        # Emitted text never holds the start of a stop (that part would have been held), so any
        # stop occurrence lies wholly inside `buf`.
        cut = find_first_stop(buf, self.stops)
        if cut is not None:
            self._held, self.stopped = "", True
            return buf[:cut], True
        hold = self._held_suffix_len(buf)
        self._held = buf[len(buf) - hold:]
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """End of text without a stop: the held part was not a stop after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
