"""Split documents into overlapping chunks by tokens or by sentences, keeping character offsets.

Handbook V (retrieval-augmented generation: chunking). Each chunk is an exact slice text[start:end]
of the document, so a hit can always be shown in context. Token windows use any tokenizer that
returns character spans (the encoder's WordPiece `Encoder.token_spans` keeps chunks within the
model's 256-token limit); without one, words and punctuation marks count as tokens. Sentence windows
split after . ! ? followed by whitespace, and at blank lines.

    python -c "from genlab.retrieval.chunking import chunk_text; print(chunk_text('a b c d e f', size=4, overlap=2))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from genlab.errors import ConfigError

TokenSpans = Callable[[str], list[tuple[int, int]]]
_WORDS = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets into the document: text == document[start:end]
    end: int


@dataclass
class ChunkConfig:
    unit: str = "tokens"  # "tokens" or "sentences"
    size: int = 200  # tokens (or sentences) per chunk
    overlap: int = 40  # tokens (or sentences) shared by consecutive chunks

    def __post_init__(self):
        if self.unit not in ("tokens", "sentences"):
            raise ConfigError(f"chunk unit must be 'tokens' or 'sentences', got {self.unit!r}")
        if self.size < 1 or not 0 <= self.overlap < self.size:
            raise ConfigError(f"chunking needs size >= 1 and 0 <= overlap < size, got size={self.size}, overlap={self.overlap}")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Fallback tokenizer: words and single punctuation marks."""
    return [m.span() for m in _WORDS.finditer(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (whitespace between them excluded)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip()) if m.group(0).strip() else m.start()
        if text[start:end].strip():
            spans.append((start, end))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    # Trim leading whitespace inside each span.
    return [(s + len(text[s:e]) - len(text[s:e].lstrip()), e) for s, e in spans]


def _windows(text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    step = size - overlap
    for first in range(0, max(len(spans) - overlap, 1), step):
        window = spans[first:first + size]
        if not window:
            break
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(text[start:end], start, end))
        if first + size >= len(spans):
            break
    return chunks


def chunk_text(text: str, unit: str = "tokens", size: int = 200, overlap: int = 40,
               token_spans: TokenSpans | None = None) -> list[Chunk]:
    """Chunks of `size` units, consecutive ones sharing `overlap` units; [] for blank text."""
    ChunkConfig(unit, size, overlap)  # validates
    if unit == "sentences":
        spans = sentence_spans(text)
    else:
        spans = [(s, e) for s, e in (token_spans or word_spans)(text) if e > s]
    return _windows(text, spans, size, overlap) if spans else []
