"""Supervised fine-tuning: conversations as a dataset the training loop can draw from.

Handbook IV (instruction fine-tuning); Ouyang et al. 2022 (SFT stage), Krell et al. 2021 (packing).
`SFTDataset` renders conversations with the chat format, packs them into rows with positions and segment
ids (no attention across conversations) and hands out batches epoch by epoch, shuffled by seed, so the
trainer (genlab.train.trainer.train) runs SFT with its checkpoints, resume, metrics and progress.

    genlab sft --help
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import torch

from genlab.errors import GenlabError
from genlab.finetune.sft_data import SFTBatch, SFTExample, pack, render_examples
from genlab.train.trainer import TrainConfig


class SFTDataset:
    """Packed SFT rows; `batch` returns (tokens, targets, model kwargs) for the trainer.

    With documents only (no conversations) it is a document-packed pretraining set: the speedrun
    pretrains on it, so every row starts its documents at their first token."""

    def __init__(self, train_conversations: Sequence[Any], tokenizer, seq_len: int,
                 val_conversations: Sequence[Any] = (), seed: int = 0, pad_id: int = 0,
                 documents: Sequence[Sequence[int]] = (), val_documents: Sequence[Sequence[int]] = ()) -> None:
        """documents: token id lists (BOS included) trained on every token, packed beside the conversations:
        replay of pretraining text, so fine-tuning does not erase the facts the base model stored. A document
        longer than `seq_len` is cut into `seq_len` pieces (each trained on its tokens after the first), not
        truncated: replay keeps all of its text."""
        self.seq_len, self.seed, self.pad_id = seq_len, seed, pad_id
        self.train_examples = render_examples(train_conversations, tokenizer) + self._pieces(documents, seq_len)
        self.val_examples = render_examples(val_conversations, tokenizer) + self._pieces(val_documents, seq_len)
        if not self.train_examples:
            raise GenlabError("no SFT conversations to train on")
        # Rows are packed once, from a seeded shuffle (so a row mixes conversation kinds); `batch` samples rows.
        order = list(self.train_examples)
        random.Random(seed).shuffle(order)
        self.rows = pack(order, seq_len, batch_size=1, pad_id=pad_id)
        self.n_target_tokens = sum(e.n_targets for e in self.train_examples)

    @staticmethod
    def _pieces(documents: Sequence[Sequence[int]], seq_len: int) -> list[SFTExample]:
        """Documents as examples trained on every token after the first, cut into seq_len pieces."""
        pieces = (ids[i:i + seq_len] for ids in documents for i in range(0, len(ids), seq_len))
        return [SFTExample(list(p), [0] + [1] * (len(p) - 1)) for p in pieces if len(p) > 1]

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _stack(rows: Sequence[SFTBatch]) -> SFTBatch:
        cat = lambda name: torch.cat([getattr(r, name) for r in rows])  # noqa: E731
        return SFTBatch(cat("tokens"), cat("targets"), cat("positions"), cat("segments"))

    def batch(self, split: str, batch_size: int, seq_len: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """`batch_size` packed rows drawn uniformly by `generator` (stateless, so resume is exact)."""
        if split != "train":
            raise GenlabError("SFTDataset.batch draws training rows; use val_batches for evaluation")
        picked = torch.randint(len(self.rows), (batch_size,), generator=generator).tolist()
        b = self._stack([self.rows[i] for i in picked])
        return b.tokens, b.targets, b.model_kwargs()

    def val_batches(self, batch_size: int, seq_len: int,
                    max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        examples = self.val_examples or self.train_examples[: 4 * batch_size]
        for i, b in enumerate(pack(examples, self.seq_len, batch_size, self.pad_id)):
            if max_batches is not None and i >= max_batches:
                return
            yield b.tokens, b.targets, b.model_kwargs()


def sft_train_config(steps: int, batch_size: int, seq_len: int, lr: float, seed: int, run_dir: str | None,
                     **overrides: Any) -> TrainConfig:
    """The SFT schedule: short warmup (5%), cosine to zero, no weight decay, no periodic eval."""
    return TrainConfig(**{**dict(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                                 warmup=max(1, steps // 20), min_lr_ratio=0.0, weight_decay=0.0, eval_every=0,
                                 eval_batches=4, seed=seed, run_dir=run_dir), **overrides})
