"""Decode attention that reads the paged KV store in place (no gather copy), compiled with numba.

Handbook VI (PagedAttention). Kwon et al. 2023 (vLLM): the paged attention kernel walks each
sequence's block table and reads keys/values where they live, instead of first copying them into a
contiguous batch. That is what this kernel does for decode steps (one query per sequence):

    for each sequence s, query head h (kv head h // group):
        scores[t] = <q[s, h], K[block(t), slot(t)]> * scale      for the sequence's keys t
        out[s, h] = sum_t softmax(scores)[t] * V[block(t), slot(t)]

Why a kernel: decode attention is memory-bound. The torch path (paged_attention.PagedStep) gathers
every sequence's blocks, padded to the longest, into a workspace and runs SDPA over it: it reads the
keys/values twice and writes them once, padding included. Here each key/value row is read once per
query head in its group, and only up to the sequence's own length; each sequence is computed on its
own, so its result does not depend on the batch. numba is already the project's JIT for hot loops
(genlab.retrieval.indexes.hnsw_kernels); without numba the engine keeps the torch path
(`AVAILABLE` is False). Kernels are cached on disk, so only the first run pays the compile.

Arrays (numpy views of torch tensors, float32 or float64): q [S, H, D] contiguous; k_store, v_store
[Hkv, num_blocks, block_size, D] (one layer of PagedKVCache); tables [S, max_blocks] int64 (padded);
lens [S] int64 (keys per sequence, the new one included); window <= 0 for none; out [S, H, D].

    python -m pytest -q tests/inference/test_paged_kernels.py
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - the serve and test extras install numba
    AVAILABLE = False

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

_JIT = dict(cache=True, fastmath=True, nogil=True)


@njit(**_JIT)
def decode_attention(q, k_store, v_store, tables, lens, scale, window, out):
    S, H, D = q.shape
    n_kv, bs = k_store.shape[0], k_store.shape[2]
    group = H // n_kv
    max_len = 0
    for s in range(S):
        max_len = max(max_len, lens[s])
    scores = np.empty(max_len, dtype=q.dtype)
    acc = np.empty(D, dtype=q.dtype)
    zero = scores.dtype.type(0)  # accumulate in the cache's precision (float32 stays float32: vectorised)
    for s in range(S):
        n = lens[s]
        first = 0 if window <= 0 else max(0, n - window)
        for h in range(H):
            kv = h // group
            top = -np.inf
            for t in range(first, n):
                block, slot = tables[s, t // bs], t % bs
                dot = zero
                for d in range(D):
                    dot += q[s, h, d] * k_store[kv, block, slot, d]
                dot *= scale
                scores[t] = dot
                top = max(top, dot)
            total = zero
            for t in range(first, n):
                e = math.exp(scores[t] - top)
                scores[t] = e
                total += e
            acc[:] = 0.0
            for t in range(first, n):
                block, slot = tables[s, t // bs], t % bs
                w = scores[t]
                for d in range(D):
                    acc[d] += w * v_store[kv, block, slot, d]
            for d in range(D):
                out[s, h, d] = acc[d] / total
