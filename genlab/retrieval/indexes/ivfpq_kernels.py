"""IVF-PQ scan compiled with numba: per query, build the ADC lookup table and scan the probed lists.

Handbook V (vector databases). Paper: Jégou, Douze & Schmid 2011 (IVFADC). The numpy version of the
scan gathers a (candidates, m) block of table entries per query and spends most of its time in
Python-level bookkeeping; this loop (one table, m byte lookups per vector, a bounded top-k heap) is
what faiss does in C++. Same fallback as hnsw_kernels: plain Python when numba is missing.

    python -m pytest -q tests/retrieval/test_ivfpq.py
"""

from __future__ import annotations

import numpy as np

from genlab.retrieval.indexes.hnsw_kernels import _JIT, heap_pop, heap_push, njit


@njit(**_JIT)
def fill_table(target, codebooks, table, l2):
    """table[j, c] = target_j · codebook[j, c] (ip) or -||target_j - codebook[j, c]||^2 (l2)."""
    m, ksub, dsub = codebooks.shape
    for j in range(m):
        for c in range(ksub):
            s = np.float32(0.0)
            for t in range(dsub):
                if l2:
                    d = target[j * dsub + t] - codebooks[j, c, t]
                    s -= d * d
                else:
                    s += target[j * dsub + t] * codebooks[j, c, t]
            table[j, c] = s


@njit(**_JIT)
def scan(queries, coarse, coarse_scores, probes, codebooks, offsets, codes, order, allowed, use_allowed, l2, k,
         out_s, out_r):
    """Top-k (score, row) per query over the probed lists; scores are higher-is-better."""
    m, ksub, _ = codebooks.shape
    table = np.empty((m, ksub), np.float32)
    target = np.empty(queries.shape[1], np.float32)
    heap_s = np.empty(k + 1, np.float32)
    heap_r = np.empty(k + 1, np.int32)
    for qi in range(queries.shape[0]):
        q = queries[qi]
        if not l2:
            fill_table(q, codebooks, table, False)  # the same table serves every list
        size = 0
        for p in range(probes.shape[1]):
            lst = probes[qi, p]
            if l2:  # residual target q - c_l: one table per list
                for t in range(q.shape[0]):
                    target[t] = q[t] - coarse[lst, t]
                fill_table(target, codebooks, table, True)
                base = np.float32(0.0)
            else:
                base = coarse_scores[qi, lst]
            for pos in range(offsets[lst], offsets[lst + 1]):
                row = order[pos]
                if use_allowed and not allowed[row]:
                    continue
                s = base
                for j in range(m):
                    s += table[j, codes[pos, j]]
                if size < k:
                    size = heap_push(heap_s, heap_r, size, s, row)
                elif s > heap_s[0]:
                    size = heap_pop(heap_s, heap_r, size)
                    size = heap_push(heap_s, heap_r, size, s, row)
        for slot in range(size - 1, -1, -1):  # min-heap pops the worst first
            out_s[qi, slot] = heap_s[0]
            out_r[qi, slot] = heap_r[0]
            size = heap_pop(heap_s, heap_r, size)
