"""Incremental detokenizer: turn a stream of byte-level token ids into UTF-8-safe text pieces.

Handbook V (sampling / streaming output). Byte-level BPE (Radford et al. 2019, GPT-2) tokens are
arbitrary byte strings, so one character (e.g. an emoji, 4 bytes) may be split across tokens.
`push` emits only text whose characters are complete; an unfinished multi-byte sequence at the end
is held until its last byte arrives. Bytes that can never be valid become U+FFFD exactly as
`b"".join(all_token_bytes).decode("utf-8", errors="replace")` would make them, so the pieces
always concatenate to the whole decode.

    python -m pytest -q tests/inference/test_detokenizer.py
"""

from __future__ import annotations

from typing import Callable

# For each lead byte of a 2-4 byte sequence: (total length, allowed range of the *second* byte).
# The narrowed second-byte ranges exclude overlongs (E0, F0), UTF-16 surrogates (ED) and code points
# above U+10FFFF (F4); later bytes are always 80..BF. (Unicode Table 3-7, well-formed UTF-8.)
_SECOND = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _sequence_length(lead: int) -> int:
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0  # ASCII, a continuation byte, or a byte that never starts a valid sequence


def incomplete_tail(data: bytes) -> int:
    """Length of the trailing bytes that are a proper prefix of a well-formed UTF-8 character.

    Only such a tail may still become valid text, so only it is worth holding back; anything else
    decodes the same now as it would later. A lead byte cannot continue an earlier sequence, so the
    tail (if any) starts at the last lead byte among the final 3 bytes.
    """
    for start in range(len(data) - 1, max(len(data) - 4, -1), -1):
        need = _sequence_length(data[start])
        if need == 0:
            if 0x80 <= data[start] <= 0xBF:
                continue  # continuation byte: keep looking back for its lead
            return 0
        tail = data[start:]
        if len(tail) >= need:
            return 0  # complete (or broken in a way more bytes cannot fix)
        lo, hi = _SECOND.get(data[start], (0x80, 0xBF))
        if len(tail) >= 2 and not lo <= tail[1] <= hi:
            return 0
        if any(not 0x80 <= b <= 0xBF for b in tail[2:]):
            return 0
        return len(tail)
    return 0


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text made of complete characters."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self.token_bytes = token_bytes
        self._pending = b""  # bytes of an unfinished character, at most 3

    def push(self, token_id: int) -> str:
        data = self._pending + self.token_bytes(token_id)
        hold = incomplete_tail(data)
        cut = len(data) - hold
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        """End of stream: an unfinished character can no longer complete, so emit it as U+FFFD."""
        data, self._pending = self._pending, b""
        return data.decode("utf-8", errors="replace")
