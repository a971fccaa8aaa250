"""SFT data: conversations -> rendered examples -> packed or padded batches with loss masks.

Handbook IV (instruction fine-tuning). Packing several conversations into one row avoids
training on padding (Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination");
it is only correct when (1) positions restart at 0 for every conversation and (2) attention never
crosses a conversation boundary. Rows therefore carry `positions` and `segments` (a document id
per token), which `genlab.models.Transformer` turns into a block-diagonal causal mask.

Targets are next tokens: targets[t] = tokens[t + 1] where the loss mask of tokens[t + 1] is 1,
else -100 (ignored by cross entropy). The last token of every conversation gets -100, so nothing
is predicted across a document boundary or into padding. With the mean over non-ignored targets,
a packed batch and the same conversations one per padded row give the same loss (tested).

Too long: an example longer than `seq_len` keeps its first `seq_len` tokens (the end of the
conversation is lost); an example whose kept part has no trained target (e.g. the assistant turn
was cut off) is dropped, since it would only cost compute.

    python -m pytest -q tests/finetune/test_sft_data.py
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from genlab.data.chat import render_chat
from genlab.errors import ConfigError, GenlabError

IGNORE_INDEX = -100


@dataclass
class SFTExample:
    """One rendered conversation: token ids and loss mask (1 = trained), same length."""

    ids: list[int]
    loss_mask: list[int]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise GenlabError(f"SFT example has {len(self.ids)} ids but {len(self.loss_mask)} mask entries")

    def __len__(self) -> int:
        return len(self.ids)

    def truncated(self, seq_len: int) -> "SFTExample":
        return self if len(self.ids) <= seq_len else SFTExample(self.ids[:seq_len], self.loss_mask[:seq_len])

    @property
    def n_targets(self) -> int:
        """How many next-token targets this example trains on (mask of tokens 1.. that are 1)."""
        return sum(self.loss_mask[1:])


@dataclass
class SFTBatch:
    """Tensors [rows, T]: inputs, next-token targets (-100 = ignored), positions, segments.

    segments is None for padded batches (one conversation per row: causal attention suffices,
    as right padding never precedes a real token).
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor | None

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for `model(tokens, **kw)` / `model.loss(tokens, targets, **kw)`."""
        kw = {"positions": self.positions}
        if self.segments is not None:
            kw["segments"] = self.segments
        return kw

    def to(self, device: torch.device | str) -> "SFTBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SFTBatch(move(self.tokens), move(self.targets), move(self.positions), move(self.segments))


def _messages_of(conversation: Any) -> Sequence[Mapping[str, Any]]:
    if isinstance(conversation, Mapping):
        if "messages" not in conversation:
            raise GenlabError(f"conversation has no 'messages' key (keys: {sorted(conversation)})")
        return conversation["messages"]
    return conversation


def render_examples(conversations: Iterable[Any], tokenizer) -> list[SFTExample]:
    """Render conversations ({"messages": [...]} dicts or plain message lists) with the chat format."""
    return [SFTExample(*render_chat(_messages_of(c), tokenizer)) for c in conversations]


def example_targets(example: SFTExample) -> list[int]:
    """Next-token targets of one example: the next id where it is trained, -100 elsewhere and at the end."""
    ids, mask = example.ids, example.loss_mask
    return [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


def _prepare(examples: Iterable[SFTExample], seq_len: int) -> list[SFTExample]:
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2 to hold a next-token target, got {seq_len}")
    kept = [e.truncated(seq_len) for e in examples]
    return [e for e in kept if e.n_targets > 0]


def pack_rows(examples: Sequence[SFTExample], seq_len: int) -> list[list[SFTExample]]:
    """Best-fit bin packing: each example goes to the fullest row it still fits in (else a new row).

    Deterministic for a given order; rows come out in the order they were opened.
    """
    rows: list[list[SFTExample]] = []
    # (room left, row index) kept sorted, so the best fit is one bisect away.
    room: list[tuple[int, int]] = []
    for example in examples:
        n = len(example)
        i = bisect.bisect_left(room, (n, -1))
        if i == len(room):
            rows.append([example])
            bisect.insort(room, (seq_len - n, len(rows) - 1))
        else:
            left, row = room.pop(i)
            rows[row].append(example)
            bisect.insort(room, (left - n, row))
    return rows


def _rows_to_batch(rows: Sequence[Sequence[SFTExample]], seq_len: int, pad_id: int, packed: bool) -> SFTBatch:
    n = len(rows)
    tokens = torch.full((n, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((n, seq_len), dtype=torch.long)
    segments = torch.zeros((n, seq_len), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for doc, example in enumerate(row):
            end = start + len(example)
            tokens[r, start:end] = torch.tensor(example.ids)
            targets[r, start:end] = torch.tensor(example_targets(example))
            positions[r, start:end] = torch.arange(len(example))
            segments[r, start:end] = doc
            start = end
        # Padding: its own segment, positions from 0 (valid for learned position tables), no targets.
        positions[r, start:] = torch.arange(seq_len - start)
        segments[r, start:] = len(row)
    return SFTBatch(tokens, targets, positions, segments if packed else None)


def _chunks(items: list, size: int | None) -> Iterator[list]:
    size = size or max(1, len(items))
    for i in range(0, len(items), size):
        yield items[i:i + size]


def pack(examples: Iterable[SFTExample], seq_len: int, batch_size: int | None = None,
         pad_id: int = 0) -> list[SFTBatch]:
    """Pack examples into rows of exactly `seq_len` tokens; return batches of `batch_size` rows
    (None: a single batch with every row). Each row's positions restart per conversation and its
    segments number the conversations 0, 1, ... (padding gets the next number)."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    rows = pack_rows(_prepare(examples, seq_len), seq_len)
    return [_rows_to_batch(chunk, seq_len, pad_id, packed=True) for chunk in _chunks(rows, batch_size)]


def pad_collate(examples: Sequence[SFTExample], pad_id: int = 0, seq_len: int | None = None) -> SFTBatch:
    """One conversation per row, right-padded to the longest (or truncated to `seq_len`).

    Unlike `pack`, every example is kept (truncated ones too, even without a trained target), so
    the rows match the input one to one.
    """
    if not examples:
        raise GenlabError("pad_collate needs at least one example")
    if seq_len is not None:
        examples = [e.truncated(seq_len) for e in examples]
    width = max(len(e) for e in examples) if seq_len is None else seq_len
    return _rows_to_batch([[e] for e in examples], width, pad_id, packed=False)


def padded_batches(examples: Sequence[SFTExample], batch_size: int, pad_id: int = 0,
                   seq_len: int | None = None) -> list[SFTBatch]:
    """`pad_collate` over consecutive groups of `batch_size` examples (each padded to its longest)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return [pad_collate(chunk, pad_id, seq_len) for chunk in _chunks(list(examples), batch_size)]


def sft_batches(examples: Sequence[SFTExample], seq_len: int, batch_size: int, *, packed: bool = True,
                seed: int = 0, epoch: int = 0, pad_id: int = 0) -> list[SFTBatch]:
    """One epoch of batches: examples shuffled by (seed, epoch), then packed (rows of `seq_len`) or
    padded (`batch_size` conversations per batch, each truncated to `seq_len`)."""
    order = list(examples)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    if packed:
        return pack(order, seq_len, batch_size, pad_id)
    return padded_batches(_prepare(order, seq_len), batch_size, pad_id, seq_len=None)
