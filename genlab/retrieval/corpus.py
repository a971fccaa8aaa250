"""Real text present on every machine: paragraphs of pydoc_data.topics and the standard library sources.

Handbook V (vector databases): the ANN benchmark and retrieval tests need real text to embed, and
nothing may be downloaded. The Python language reference (`pydoc_data.topics`) gives prose; the
standard library's own `.py` files give code and docstrings. Both are split on blank lines.
Order is deterministic (sorted files, first occurrence wins on duplicates).

    python -c "from genlab.retrieval.corpus import stdlib_paragraphs; print(len(stdlib_paragraphs(1000)))"
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

_BLANK_LINES = re.compile(r"\n\s*\n")


def split_paragraphs(text: str, min_chars: int = 40, max_chars: int = 1200) -> list[str]:
    """Blank-line separated blocks, stripped, kept when min_chars <= len <= max_chars."""
    blocks = (b.strip() for b in _BLANK_LINES.split(text))
    return [b for b in blocks if min_chars <= len(b) <= max_chars]


def pydoc_paragraphs(min_chars: int = 40, max_chars: int = 1200) -> list[str]:
    """Paragraphs of the Python language reference shipped as pydoc_data.topics."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for name in sorted(topics):
        out.extend(split_paragraphs(topics[name], min_chars, max_chars))
    return out


def stdlib_source_files() -> list[Path]:
    """The standard library's .py files (tests and site-packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def stdlib_paragraphs(limit: int | None = None, min_chars: int = 40, max_chars: int = 1200) -> list[str]:
    """Unique paragraphs: the language reference first, then standard-library sources, up to limit."""
    seen: set[str] = set()
    out: list[str] = []

    def take(paragraphs: list[str]) -> bool:
        for p in paragraphs:
            if p not in seen:
                seen.add(p)
                out.append(p)
                if limit is not None and len(out) >= limit:
                    return True
        return False

    if take(pydoc_paragraphs(min_chars, max_chars)):
        return out
    for path in stdlib_source_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files are latin-1 test fixtures; skip them
        if take(split_paragraphs(text, min_chars, max_chars)):
            break
    return out
