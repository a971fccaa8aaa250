"""Real text that needs no download: the Python standard library's sources plus its prose docs.

Handbook III (tokenization) and every chapter that wants "real text" use this corpus. It is built
from files present on every machine that runs Python: `pydoc_data.topics` (the language
reference, ~0.5 MB of English prose) and the standard library's own `.py` files (~12 MB of code
and docstrings; test packages and site-packages are skipped). The prose comes first, then the
source files in an order shuffled by `seed`, so a small `max_bytes` still mixes prose and code.

    python -c "from genlab.data.corpus import stdlib_corpus; print(len(stdlib_corpus(1_000_000)))"
"""

from __future__ import annotations

import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from genlab.errors import ConfigError

# Directories whose contents are not "the standard library" proper: the test suites are huge and
# repetitive, third-party packages vary by machine (which would break determinism).
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
DOCUMENT_SEPARATOR = "\n\n"

T = TypeVar("T")


@dataclass(frozen=True)
class Document:
    """One corpus document: its text and where it came from (a topic name or a relative path)."""

    source: str
    text: str


def stdlib_source_paths() -> list[Path]:
    """The standard library's `.py` files, in a deterministic (sorted) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        # Sorting in place makes os.walk itself visit directories in a fixed order.
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
        paths.extend(Path(directory) / name for name in sorted(files) if name.endswith(".py"))
    return paths


def _prose_documents() -> list[Document]:
    from pydoc_data.topics import topics  # the language reference, shipped with CPython

    return [Document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


def stdlib_documents(max_bytes: int | None = None, seed: int = 0) -> list[Document]:
    """Prose topics, then shuffled stdlib sources, up to `max_bytes` UTF-8 bytes of joined text.

    Truncation happens at document boundaries: a document that would overflow the budget is
    skipped and later (smaller) ones may still fit, so the result stays deterministic for a
    given (`max_bytes`, `seed`, Python version).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = stdlib_source_paths()
    random.Random(seed).shuffle(paths)
    budget = float("inf") if max_bytes is None else max_bytes
    separator_bytes = len(DOCUMENT_SEPARATOR)
    documents: list[Document] = []
    used = 0

    def try_add(document: Document) -> None:
        nonlocal used
        size = len(document.text.encode("utf-8")) + (separator_bytes if documents else 0)
        if used + size <= budget:
            documents.append(document)
            used += size

    for document in _prose_documents():
        try_add(document)
    for path in paths:
        if budget - used <= separator_bytes:
            break
        if path.stat().st_size > budget - used:  # cheap early skip: bytes on disk == UTF-8 bytes
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # unreadable or non-UTF-8 files would make the corpus machine-dependent
        if text.strip():
            try_add(Document(str(path.relative_to(root)), text))
    return documents


def stdlib_corpus(max_bytes: int | None = None, seed: int = 0) -> str:
    """The corpus as one string: documents joined by a blank line; at most `max_bytes` UTF-8 bytes."""
    return DOCUMENT_SEPARATOR.join(d.text for d in stdlib_documents(max_bytes, seed))


def pieces(texts: Iterable[str], max_bytes: int) -> list[str]:
    """Each text cut at line ends into pieces of at most ~`max_bytes` UTF-8 bytes (a longer line stays whole).

    A held-out split of whole documents can be a few hundred bytes when documents vary in size; splitting
    pieces instead holds out about the asked fraction of the bytes.
    """
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be >= 1, got {max_bytes}")
    out: list[str] = []
    for text in texts:
        piece, size = [], 0
        for line in text.splitlines(keepends=True):
            n = len(line.encode("utf-8"))
            if piece and size + n > max_bytes:
                out.append("".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += n
        if piece:
            out.append("".join(piece))
    return out


def split_documents(documents: Sequence[T], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split documents (whole, never cut) into train and validation lists, keeping their order.

    At least one document goes to each side when there are two or more.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1], got {val_fraction}")
    count = len(documents)
    n_val = round(count * val_fraction)
    if count >= 2:
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), count - 1 if val_fraction < 1 else count)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    val_indices = set(order[:n_val])
    train = [d for i, d in enumerate(documents) if i not in val_indices]
    val = [d for i, d in enumerate(documents) if i in val_indices]
    return train, val
