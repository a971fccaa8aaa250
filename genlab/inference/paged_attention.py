"""Paged KV cache and paged attention (block-table kernel or gather) over a flattened batch of sequences.

Handbook VI (KV caching, PagedAttention). Kwon et al. 2023 (vLLM). The store is one tensor per
k/v of shape [n_layer, n_kv_head, num_blocks, block_size, head_dim]; a token at position p of a
sequence lives in slot p % block_size of physical block block_table[p // block_size]. Heads come
before blocks so that, per head, consecutive blocks are consecutive memory: a sequence whose
blocks are consecutive is read in place, and a gather yields [head, sequence, key, dim] directly.

A step runs ONE model forward over all scheduled tokens, flattened to a batch of one row [1, N]
with explicit per-token positions. `PagedStep` is the cache object handed to
`Transformer.forward(cache=...)`: it has `provides_attention = True`, so each attention layer
gives it its q, k, v (after RoPE) and it stores k, v into their slots and attends:
- decode tokens (one query per sequence) in one batched computation: with numba, a kernel that
  reads each sequence's keys/values in place through its block table (paged_kernels.py, about 3x
  faster than the copy below; the engine's fused decode step calls it directly); otherwise each
  sequence's blocks are gathered through its (padded) block table into a reused buffer
  [n_kv_head, S, keys, head_dim] (one copy; none for a lone sequence whose blocks are consecutive),
  then one SDPA call over all sequences with an additive mask for the padding;
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

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genlab.inference import paged_kernels
from genlab.models.attention import reference_attention
from genlab.models.config import ModelConfig


class PagedKVCache:
    """The physical KV store, allocated once (zeros: never-written slots must not hold NaN)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (config.n_layer, config.n_kv_head, num_blocks, block_size, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.config, self.num_blocks, self.block_size = config, num_blocks, block_size
        # Decode through block tables: the numba kernel reads blocks in place (paged_kernels.py); else gather + SDPA.
        self.decode_kernel = (paged_kernels.AVAILABLE and config.attn_impl != "reference"
                              and self.k.device.type == "cpu" and dtype in (torch.float32, torch.float64))
        # Gather buffers, reused by every layer and step: a fresh multi-MB tensor per call would be
        # page-faulted in each time, which costs more than the copy itself.
        self._workspace = torch.empty(0, dtype=dtype, device=device)

    def workspace(self, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two contiguous buffers [n_kv_head, n_blocks, block_size, head_dim] (keys, values), grown on demand."""
        shape = (self.k.shape[1], n_blocks) + tuple(self.k.shape[3:])
        numel = shape[0] * n_blocks * shape[2] * shape[3]
        if self._workspace.numel() < 2 * numel:
            self._workspace = torch.empty(2 * numel, dtype=self.k.dtype, device=self.k.device)
        return self._workspace[:numel].view(shape), self._workspace[numel:2 * numel].view(shape)

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


def _consecutive(blocks: list[int]) -> bool:
    return blocks[-1] - blocks[0] == len(blocks) - 1 and all(b == a + 1 for a, b in zip(blocks, blocks[1:]))


class PagedStep:
    """Per-step metadata (slots, decode/prefill groups) plus `attend` for the model's layers.

    Built once per step and shared by every layer, so per-layer work is only the store and the
    attention itself; the lone-token step (single-stream decode) skips index tensors entirely.
    """

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
            if c.length == 1:
                p = c.start
                slot_block.append(c.block_table[p // bs])
                slot_offset.append(p % bs)
                positions.append(p)
                decode_rows.append(row)
                decode_tables.append(c.block_table)
                decode_lens.append(p + 1)
            else:
                span = range(c.start, c.start + c.length)
                slot_block.extend(c.block_table[p // bs] for p in span)
                slot_offset.extend(p % bs for p in span)
                positions.extend(span)
                self.prefills.append((row, c))
            row += c.length
        self.num_tokens = row
        self.max_position = max(positions)  # read by Transformer.forward (RoPE table length)
        # One array for positions and slots (one allocation instead of three); rows are views. The
        # numpy rows feed the kernels (fused_decode.py), the torch rows the model's own forward.
        self.meta = np.array([positions, slot_block, slot_offset], dtype=np.int64)
        meta = torch.from_numpy(self.meta) if device.type == "cpu" else torch.tensor(self.meta, device=device)
        self.positions, self.slot_block, self.slot_offset = meta[0:1], meta[1], meta[2]
        self.single_slot = (slot_block[0], slot_offset[0]) if row == 1 else None  # stored by a plain copy
        self.all_decode = not self.prefills  # the common case: no row bookkeeping needed
        self.decode_rows = None
        self.decode_span = None  # (first block, n_blocks, n_keys): one sequence read in place
        if not decode_rows:
            return
        if not self.all_decode:
            self.decode_rows = torch.tensor(decode_rows, dtype=torch.long, device=device)
        n_blocks = -(-max(decode_lens) // bs)
        if (len(decode_rows) == 1 and self.window is None and not cache.decode_kernel
                and _consecutive(decode_tables[0][:n_blocks])):
            self.decode_span = (decode_tables[0][0], n_blocks, decode_lens[0])
            return
        # Pad every table to n_blocks with block 0: padded slots are masked out (or never read by the kernel).
        padded = [t[:-(-n // bs)] + [0] * (n_blocks + n // -bs) for t, n in zip(decode_tables, decode_lens)]
        if cache.decode_kernel:
            self.kernel_tables = np.array(padded, dtype=np.int64)
            self.kernel_lens = np.array(decode_lens, dtype=np.int64)
            return
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
        index = None if _consecutive(blocks) else torch.tensor(blocks, dtype=torch.long, device=self.cache.k.device)

        def one(store: torch.Tensor) -> torch.Tensor:
            st = store[layer]  # [Hkv, num_blocks, bs, D]
            g = st[:, blocks[0]:blocks[0] + len(blocks)] if index is None else st.index_select(1, index)
            h, nb, bs, d = g.shape
            return g.reshape(1, h, nb * bs, d)[:, :, :length]
        return one(self.cache.k), one(self.cache.v)

    def _decode_attention(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """One query per sequence, q [S, H, D] -> [S, H, D]: softmax(q K^T / sqrt(d)) V.

        With numba: the block-table kernel (every batch, a lone sequence included). Otherwise one SDPA
        call over keys/values as [S, Hkv, K, D]: a view of the store for a lone sequence with consecutive
        blocks, else a gather through the padded block tables (one copy per k/v) with the padding masked.
        The engine's fused decode step (fused_decode.py) calls the kernel itself and skips this method.
        """
        S, H, D = q.shape
        store_k, store_v = self.cache.k[layer], self.cache.v[layer]  # [Hkv, num_blocks, bs, D]
        n_kv, bs = store_k.shape[0], store_k.shape[2]
        if self.cache.decode_kernel:
            out = torch.empty(S, H, D, dtype=q.dtype, device=q.device)
            paged_kernels.decode_attention(q.contiguous().numpy(), store_k.numpy(), store_v.numpy(), self.kernel_tables,
                                           self.kernel_lens, 1.0 / math.sqrt(D), self.window or 0, out.numpy())
            return out
        if self.decode_span is not None:
            first, nb, n = self.decode_span
            k = store_k[:, first:first + nb].view(1, n_kv, nb * bs, D)[:, :, :n]
            v = store_v[:, first:first + nb].view(1, n_kv, nb * bs, D)[:, :, :n]
            mask = None
        else:
            buf_k, buf_v = self.cache.workspace(len(self.decode_blocks))
            k = torch.index_select(store_k, 1, self.decode_blocks, out=buf_k).view(n_kv, S, -1, D).transpose(0, 1)
            v = torch.index_select(store_v, 1, self.decode_blocks, out=buf_v).view(n_kv, S, -1, D).transpose(0, 1)
            mask = self.decode_bias
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=n_kv != H)
        return out.view(S, H, D)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this step's k/v [1, Hkv, N, D] in their slots; return attention output [1, H, N, D]."""
        store_k, store_v = self.cache.k[layer], self.cache.v[layer]  # [Hkv, num_blocks, bs, D]
        if self.single_slot is not None:
            block, offset = self.single_slot
            store_k[:, block, offset] = k[0, :, 0]
            store_v[:, block, offset] = v[0, :, 0]
        else:
            store_k[:, self.slot_block, self.slot_offset] = k[0]
            store_v[:, self.slot_block, self.slot_offset] = v[0]
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
