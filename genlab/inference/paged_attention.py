"""Paged KV cache and gather-based paged attention over a flattened batch of sequences.

Handbook VI (KV caching, PagedAttention). Kwon et al. 2023 (vLLM). The store is one tensor per
k/v of shape [n_layer, num_blocks, n_kv_head, block_size, head_dim]; a token at position p of a
sequence lives in slot p % block_size of physical block block_table[p // block_size].

A step runs ONE model forward over all scheduled tokens, flattened to a batch of one row [1, N]
with explicit per-token positions. `PagedStep` is the cache object handed to
`Transformer.forward(cache=...)`: it has `provides_attention = True`, so each attention layer
gives it its q, k, v (after RoPE) and it stores k, v into their slots and attends:
- decode tokens (one query per sequence) in one batched computation: each sequence's blocks are
  gathered through its (padded) block table into a reused buffer [S, n_blocks, n_kv_head,
  block_size, head_dim] (one copy), scored block by block with one batched matmul, softmaxed over
  all of the sequence's slots (padding masked), and the values summed back over blocks;
- prefill chunks one sequence at a time (few per step, each a large matmul): a chunk that starts
  at position 0 attends to its own keys (plain causal); a later chunk (chunked prefill, prefix
  cache hit, re-prefill) gathers the earlier keys through its block table and masks causally.
Prefill uses the model's own kernel: SDPA, or `reference_attention` when the model asks for it.
Sliding window masks are supported; ALiBi is not (the engine refuses it with a ConfigError).
Speed note (CPU): decode attention is memory-bound; the gather copy is as costly as the cache
copy in transformers' DynamicCache (torch.cat per step), and a fresh multi-MB tensor per layer would
be page-faulted in each time, hence the reused workspace.

    python -m pytest -q tests/inference/test_paged_attention.py
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genlab.models.attention import reference_attention
from genlab.models.config import ModelConfig


class PagedKVCache:
    """The physical KV store, allocated once (zeros: never-written slots must not hold NaN)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (config.n_layer, num_blocks, config.n_kv_head, block_size, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.config, self.num_blocks, self.block_size = config, num_blocks, block_size
        # Gather buffers, reused by every layer and step: a fresh multi-MB tensor per call would be
        # page-faulted in each time, which costs more than the copy itself.
        self._workspace = torch.empty((0,) + shape[2:], dtype=dtype, device=device)

    def workspace(self, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two buffers of n_blocks blocks each (for keys and values), grown on demand."""
        if self._workspace.shape[0] < 2 * n_blocks:
            self._workspace = torch.empty((2 * n_blocks,) + self._workspace.shape[1:],
                                          dtype=self.k.dtype, device=self.k.device)
        return self._workspace[:n_blocks], self._workspace[n_blocks:2 * n_blocks]

    def step(self, chunks: list["Chunk"]) -> "PagedStep":
        return PagedStep(self, chunks)


@dataclass
class Chunk:
    """One sequence's share of a step: tokens at positions [start, start + length)."""

    block_table: list[int]
    start: int
    length: int


def _attend(q, k, v, mask, is_causal: bool, reference: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v; q [B, H, Tq, D], k/v [B, Hkv, Tk, D], bool mask [B, 1, Tq, Tk] or None."""
    if reference:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if mask is None:
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - q.shape[2])
        return reference_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                          enable_gqa=k.shape[1] != q.shape[1])


class PagedStep:
    """Per-step metadata (slots, decode/prefill groups) plus `attend` for the model's layers."""

    provides_attention = True

    def __init__(self, cache: PagedKVCache, chunks: list[Chunk]) -> None:
        self.cache = cache
        bs = cache.block_size
        device = cache.k.device
        self.window = cache.config.sliding_window
        self.reference = cache.config.attn_impl == "reference"
        slot_block: list[int] = []
        slot_offset: list[int] = []
        positions: list[int] = []
        decode_rows, decode_tables, decode_lens = [], [], []
        self.prefills: list[tuple[int, Chunk]] = []  # (first row in the flat batch, chunk)
        row = 0
        for c in chunks:
            span = range(c.start, c.start + c.length)
            slot_block.extend(c.block_table[p // bs] for p in span)
            slot_offset.extend(p % bs for p in span)
            positions.extend(span)
            if c.length == 1:
                decode_rows.append(row)
                decode_tables.append(c.block_table)
                decode_lens.append(c.start + 1)
            else:
                self.prefills.append((row, c))
            row += c.length
        self.num_tokens = row
        self.slot_block = torch.tensor(slot_block, dtype=torch.long, device=device)
        self.slot_offset = torch.tensor(slot_offset, dtype=torch.long, device=device)
        self.positions = torch.tensor([positions], dtype=torch.long, device=device)
        self.all_decode = not self.prefills  # the common case: no row bookkeeping needed
        self.decode_rows = torch.tensor(decode_rows, dtype=torch.long, device=device) if decode_rows else None
        if decode_rows:
            n_blocks = -(-max(decode_lens) // bs)
            # Pad every table to n_blocks with block 0: padded slots are masked out below.
            padded = [t[:-(-n // bs)] + [0] * (n_blocks + n // -bs) for t, n in zip(decode_tables, decode_lens)]
            self.decode_blocks = torch.tensor(padded, dtype=torch.long, device=device).flatten()
            key_pos = torch.arange(n_blocks * bs, device=device)
            lens = torch.tensor(decode_lens, device=device)[:, None]
            allowed = key_pos < lens
            if self.window is not None:
                allowed &= key_pos > lens - 1 - self.window
            # additive mask [S, 1, 1, K]: 0 where allowed, -inf elsewhere
            zero = torch.zeros((), dtype=cache.k.dtype, device=device)
            self.decode_bias = torch.where(allowed, zero, float("-inf"))[:, None, None]

    def _gather(self, layer: int, blocks: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sequence's first `length` keys/values through its block table, as [1, Hkv, length, D]."""
        index = torch.tensor(blocks, dtype=torch.long, device=self.cache.k.device)

        def one(store: torch.Tensor) -> torch.Tensor:
            g = store[layer].index_select(0, index)  # [nb, Hkv, bs, D]
            nb, h, bs, d = g.shape
            return g.transpose(0, 1).reshape(1, h, nb * bs, d)[:, :, :length]
        return one(self.cache.k), one(self.cache.v)

    def _decode_attention(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """One query per sequence, q [S, H, D] -> [S, H, D], attending block by block.

        Each sequence's blocks are gathered ([S, nb, Hkv, bs, D], one copy) and used in place:
        scores per block by one batched matmul, a softmax over all of the sequence's slots, and the
        probability-weighted values summed over blocks. Same math as softmax(q K^T / sqrt(d)) V.
        """
        S, H, D = q.shape
        store_k, store_v = self.cache.k[layer], self.cache.v[layer]
        n_kv, bs = store_k.shape[1], store_k.shape[2]
        rep = H // n_kv  # query head h reads kv head h // rep (GQA)
        buf_k, buf_v = self.cache.workspace(len(self.decode_blocks))
        k = torch.index_select(store_k, 0, self.decode_blocks, out=buf_k).view(S, -1, n_kv, bs, D)
        v = torch.index_select(store_v, 0, self.decode_blocks, out=buf_v).view(S, -1, n_kv, bs, D)
        nb = k.shape[1]
        q = (q * D ** -0.5).view(S, 1, n_kv, rep, D)
        scores = torch.matmul(q, k.transpose(-1, -2))  # [S, nb, Hkv, rep, bs]
        scores = scores.permute(0, 2, 3, 1, 4).reshape(S, n_kv, rep, nb * bs) + self.decode_bias
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
        probs = probs.view(S, n_kv, rep, nb, bs).permute(0, 3, 1, 2, 4)  # [S, nb, Hkv, rep, bs]
        return torch.matmul(probs, v).sum(dim=1).reshape(S, H, D)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's k/v [1, Hkv, N, D] in their slots; return attention output [1, H, N, D]."""
        store_k, store_v = self.cache.k[layer], self.cache.v[layer]
        store_k[self.slot_block, :, self.slot_offset] = k[0].transpose(0, 1)
        store_v[self.slot_block, :, self.slot_offset] = v[0].transpose(0, 1)
        if self.all_decode:  # one query per sequence, rows in sequence order
            return self._decode_attention(layer, q[0].transpose(0, 1)).transpose(0, 1)[None]
        out = torch.empty_like(q)
        if self.decode_rows is not None:
            qd = q[0, :, self.decode_rows].transpose(0, 1)
            out[0, :, self.decode_rows] = self._decode_attention(layer, qd).transpose(0, 1)
        bs = self.cache.block_size
        for row, c in self.prefills:
            qp = q[:, :, row:row + c.length]
            end = c.start + c.length
            if c.start == 0 and self.window is None:
                kp, vp, mask = k[:, :, row:row + c.length], v[:, :, row:row + c.length], None
            else:
                kp, vp = self._gather(layer, c.block_table[:-(-end // bs)], end)
                diff = torch.arange(c.start, end, device=q.device)[:, None] - torch.arange(end, device=q.device)
                mask = diff >= 0
                if self.window is not None:
                    mask &= diff < self.window
                mask = mask[None, None]
            out[:, :, row:row + c.length] = _attend(qp, kp, vp, mask, True, self.reference)
        return out
