"""Token datasets: one flat array of token ids on disk, memory-mapped, with a train/val split.

Handbook III (pretraining recipes: data pipeline). The layout follows nanoGPT's `train.bin` (a raw
uint16 array read with `np.memmap`), plus a small JSON header so the file says its own dtype, length
and vocabulary size:

    bytes 0..7   magic b"GLTOKENS"
    bytes 8..11  header length H (uint32, little endian)
    bytes 12..   JSON header {"version", "dtype", "count", "vocab_size"}, space-padded so the data
                 starts on a 64-byte boundary
    then         `count` token ids, little-endian uint16 (vocab <= 65535) or uint32

Training batches are random windows drawn with a seeded `torch.Generator` (so a checkpoint can save and
restore the data order); validation batches are the contiguous tail of the file read in order, so every
evaluation sees the same tokens.

    python -m pytest -q tests/data/test_tokens.py
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genlab.atomic import atomic_open
from genlab.errors import ConfigError, GenlabError

MAGIC = b"GLTOKENS"
ALIGN = 64
FORMAT_VERSION = 1
Split = Literal["train", "val"]


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id below vocab_size (ids are < vocab_size)."""
    return np.dtype("<u2") if vocab_size <= 2**16 - 1 else np.dtype("<u4")


def write_tokens(path: str | Path, ids: Iterable[int] | np.ndarray | torch.Tensor, vocab_size: int | None = None) -> Path:
    """Write token ids to `path` atomically (temp file in the same folder + os.replace).

    vocab_size defaults to max(id) + 1; every id must lie in [0, vocab_size).
    """
    path = Path(path)
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids) if isinstance(ids, (np.ndarray, list, tuple)) else np.fromiter(ids, dtype=np.int64)
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise GenlabError(f"refusing to write an empty token file: {path}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise GenlabError(f"token ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    vocab_size = hi + 1 if vocab_size is None else int(vocab_size)
    if lo < 0 or hi >= vocab_size:
        raise GenlabError(f"token ids must lie in [0, {vocab_size}), found range [{lo}, {hi}]")
    dtype = token_dtype(vocab_size)
    header = json.dumps({"version": FORMAT_VERSION, "dtype": dtype.name, "count": int(arr.size),
                         "vocab_size": vocab_size}).encode()
    pad = -(len(MAGIC) + 4 + len(header)) % ALIGN
    header += b" " * pad
    with atomic_open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        f.write(arr.astype(dtype, copy=False).tobytes())
    return path


def read_header(path: str | Path) -> tuple[dict, int]:
    """The JSON header and the byte offset where the ids start; GenlabError for a foreign or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"token file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
            raise GenlabError(f"{path} is not a genlab token file (missing {MAGIC!r} header; write it with write_tokens)")
        (n,) = struct.unpack("<I", head[len(MAGIC):])
        raw = f.read(n)
    try:
        header = json.loads(raw.decode())
        count, dtype = int(header["count"]), np.dtype(header["dtype"])
        int(header["vocab_size"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise GenlabError(f"{path}: unreadable token file header ({e})") from None
    offset = len(MAGIC) + 4 + n
    expected = offset + count * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise GenlabError(f"{path}: file has {actual} bytes but its header promises {expected} (truncated or corrupt)")
    return header, offset


def read_tokens(path: str | Path) -> np.memmap:
    """All ids of a token file as a read-only memory map (no copy into RAM)."""
    header, offset = read_header(path)
    return np.memmap(path, dtype=np.dtype(header["dtype"]).newbyteorder("<"), mode="r", offset=offset,
                     shape=(int(header["count"]),))


class TokenDataset:
    """A token file split into a train head and a contiguous validation tail (`val_fraction` of the tokens)."""

    def __init__(self, path: str | Path, val_fraction: float = 0.1) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path)
        header, _ = read_header(self.path)
        self.vocab_size = int(header["vocab_size"])
        self.tokens = read_tokens(self.path)
        n_val = int(round(len(self.tokens) * val_fraction))
        self.split_index = len(self.tokens) - n_val
        self.val_fraction = val_fraction

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, split: Split) -> np.ndarray:
        if split == "train":
            return self.tokens[: self.split_index]
        if split == "val":
            return self.tokens[self.split_index:]
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")

    def _check_fits(self, split: Split, data: np.ndarray, seq_len: int) -> None:
        if seq_len <= 0:
            raise ConfigError(f"seq_len must be positive, got {seq_len}")
        if len(data) < seq_len + 1:
            raise ConfigError(f"the {split} split of {self.path} has {len(data)} tokens, fewer than "
                              f"seq_len + 1 = {seq_len + 1}; use more data, a shorter seq_len or another val_fraction")

    @staticmethod
    def _windows(data: np.ndarray, starts: Iterable[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([np.asarray(data[s: s + seq_len + 1], dtype=np.int64) for s in starts])
        rows_t = torch.from_numpy(rows)
        return rows_t[:, :-1], rows_t[:, 1:]

    def batch(self, split: Split, batch_size: int, seq_len: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y int64 [batch_size, seq_len]: random windows from the split, y = x shifted by one token."""
        data = self.split(split)
        self._check_fits(split, data, seq_len)
        starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
        return self._windows(data, starts.tolist(), seq_len)

    def sequential_batches(self, split: Split, batch_size: int, seq_len: int,
                           max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows in file order, batch_size at a time (the last batch may be smaller).

        Deterministic: every call yields the same batches, so evaluations at different steps compare.
        """
        data = self.split(split)
        self._check_fits(split, data, seq_len)
        starts = list(range(0, len(data) - seq_len, seq_len))
        for i, b in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self._windows(data, starts[b: b + batch_size], seq_len)

    def val_batches(self, batch_size: int, seq_len: int,
                    max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation stream: `sequential_batches` over the validation tail."""
        return self.sequential_batches("val", batch_size, seq_len, max_batches)
