"""Atomic file writes: write a temporary file beside the target, fsync it, then rename it into place.

A reader (or a crash) sees either the old file or the new one, never a half-written one. Every layer
that persists something (token files, tokenizers, checkpoints, indexes, run files) writes through here.

    python -c "from genlab.atomic import write_json; write_json('/tmp/x.json', {'a': 1})"
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", mode_bits: int = 0o644) -> Iterator[IO]:
    """Open a temporary file for writing; on success it is fsynced and renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode_bits)  # mkstemp makes owner-only files; ours are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Indented JSON plus a newline; `dumps_kwargs` go to json.dumps (e.g. allow_nan=False)."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")
