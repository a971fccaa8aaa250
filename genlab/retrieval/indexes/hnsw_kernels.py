"""HNSW hot loops compiled with numba: distances, binary heaps, layer search, insertion, batch query.

Handbook V (vector databases). Paper: Malkov & Yashunin 2016, "Efficient and robust approximate
nearest neighbor search using Hierarchical Navigable Small World graphs"; the rules follow hnswlib
(hnswalg.h): searchBaseLayer / searchBaseLayerST, getNeighborsByHeuristic2, mutuallyConnectNewElement.

Why numba: graph search is a pointer-chasing loop (pop a candidate, visit up to 2M neighbours, push
into two heaps); there is nothing for numpy to vectorise, and per-step Python costs ~100x a
384-float dot product. numba compiles the plain-Python loops below to machine code (fastmath lets
LLVM vectorise the dot products), is already a test dependency, and keeps the code readable as
Python. Kernels are cached on disk (`cache=True`) so only the first run pays the compile. Without
numba the same functions run as (very slow) plain Python, so results stay correct.

Graph layout (all numpy, owned by genlab.retrieval.indexes.hnsw.HNSWIndex):
  links0 (cap, 2M) int32 + count0 (cap,)      layer-0 neighbours of each node
  up_row (cap,) int32                          first row in links_up for the node's layer 1 (-1 if level 0)
  links_up (rows, M) int32 + count_up (rows,)  row up_row[node] + layer - 1 holds that layer's links
Distances are "lower is closer": 1 - <q,x> for inner product (metric 0), squared L2 (metric 1).

    python -m pytest -q tests/retrieval/test_hnsw.py
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a test dependency; fall back to plain Python
    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

_JIT = dict(cache=True, fastmath=True, nogil=True)


@njit(**_JIT)
def dist_to(q, x, j, metric):
    s = np.float32(0.0)
    if metric == 0:
        for t in range(q.shape[0]):
            s += q[t] * x[j, t]
        return np.float32(1.0) - s
    for t in range(q.shape[0]):
        d = q[t] - x[j, t]
        s += d * d
    return s


# -- binary min-heap on parallel arrays (keys float32, values int32); returns the new size --------
@njit(**_JIT)
def heap_push(keys, vals, size, key, val):
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return size + 1


@njit(**_JIT)
def heap_pop(keys, vals, size):
    """Remove the root (caller reads keys[0], vals[0] first)."""
    size -= 1
    key = keys[size]
    val = vals[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        vals[i] = vals[child]
        i = child
    keys[i] = key
    vals[i] = val
    return size


@njit(**_JIT)
def neighbours(node, layer, links0, count0, up_row, links_up, count_up):
    if layer == 0:
        return links0[node], count0[node]
    r = up_row[node] + layer - 1
    return links_up[r], count_up[r]


@njit(**_JIT)
def greedy_descend(q, x, metric, entry, top_layer, stop_layer, links0, count0, up_row, links_up, count_up):
    """Move to the closest node layer by layer from top_layer down to stop_layer + 1 (ef = 1)."""
    cur = entry
    cur_d = dist_to(q, x, cur, metric)
    for layer in range(top_layer, stop_layer, -1):
        changed = True
        while changed:
            changed = False
            row, cnt = neighbours(cur, layer, links0, count0, up_row, links_up, count_up)
            for i in range(cnt):
                c = row[i]
                d = dist_to(q, x, c, metric)
                if d < cur_d:
                    cur_d = d
                    cur = c
                    changed = True
    return cur


@njit(**_JIT)
def search_layer(q, x, metric, entry, layer, ef, ok, use_ok, stop_when_full, links0, count0, up_row, links_up,
                 count_up, visited, tag, cand_k, cand_v, top_k, top_v):
    """Best-first search of one layer. Results: a max-heap (keys = -distance) in top_k/top_v; returns its size.

    Nodes with ok[node] == 0 (tombstones, filtered out) are traversed but never returned (hnswlib's rule).
    """
    n_cand = 0
    n_top = 0
    visited[entry] = tag
    d = dist_to(q, x, entry, metric)
    lower = np.float32(np.inf)
    if not use_ok or ok[entry]:
        n_top = heap_push(top_k, top_v, n_top, -d, entry)
        lower = d
    n_cand = heap_push(cand_k, cand_v, n_cand, d, entry)
    while n_cand > 0:
        cd = cand_k[0]
        cur = cand_v[0]
        if cd > lower and (n_top == ef or not stop_when_full):
            break
        n_cand = heap_pop(cand_k, cand_v, n_cand)
        row, cnt = neighbours(cur, layer, links0, count0, up_row, links_up, count_up)
        for i in range(cnt):
            c = row[i]
            if visited[c] == tag:
                continue
            visited[c] = tag
            dc = dist_to(q, x, c, metric)
            if n_top < ef or lower > dc:
                n_cand = heap_push(cand_k, cand_v, n_cand, dc, c)
                if not use_ok or ok[c]:
                    n_top = heap_push(top_k, top_v, n_top, -dc, c)
                if n_top > ef:
                    n_top = heap_pop(top_k, top_v, n_top)
                if n_top > 0:
                    lower = -top_k[0]
    return n_top


@njit(**_JIT)
def select_heuristic(x, metric, cand_ids, cand_d, n, m, out):
    """hnswlib's getNeighborsByHeuristic2 on candidates sorted by distance: keep c unless a kept node
    is closer to c than c is to the base point. Fewer than m candidates are all kept. Returns the count."""
    if n < m:
        for i in range(n):
            out[i] = cand_ids[i]
        return n
    kept = 0
    for i in range(n):
        if kept >= m:
            break
        c = cand_ids[i]
        good = True
        for j in range(kept):
            if dist_to(x[out[j]], x, c, metric) < cand_d[i]:
                good = False
                break
        if good:
            out[kept] = c
            kept += 1
    return kept


@njit(**_JIT)
def connect(node, layer, m, m_max, x, metric, top_k, top_v, n_top, links0, count0, up_row, links_up, count_up):
    """mutuallyConnectNewElement: link node to up to m heuristic-chosen candidates, and back; returns the
    closest chosen neighbour (the next layer's entry point)."""
    order = np.argsort(-top_k[:n_top])  # keys are -distance: ascending distance
    ids = top_v[:n_top][order].copy()
    ds = -top_k[:n_top][order]
    chosen = np.empty(m, np.int32)
    n_chosen = select_heuristic(x, metric, ids, ds, n_top, m, chosen)
    row, _ = neighbours(node, layer, links0, count0, up_row, links_up, count_up)
    for i in range(n_chosen):
        row[i] = chosen[i]
    if layer == 0:
        count0[node] = n_chosen
    else:
        count_up[up_row[node] + layer - 1] = n_chosen
    buf_ids = np.empty(m_max + 1, np.int32)
    buf_d = np.empty(m_max + 1, np.float32)
    for i in range(n_chosen):
        s = chosen[i]
        srow, cnt = neighbours(s, layer, links0, count0, up_row, links_up, count_up)
        if cnt < m_max:
            srow[cnt] = node
            cnt += 1
        else:
            # Full: re-select s's links among its old links plus the new node with the same heuristic.
            buf_ids[0] = node
            buf_d[0] = dist_to(x[node], x, s, metric)
            for j in range(cnt):
                buf_ids[j + 1] = srow[j]
                buf_d[j + 1] = dist_to(x[srow[j]], x, s, metric)
            o = np.argsort(buf_d[: cnt + 1])
            cnt = select_heuristic(x, metric, buf_ids[o], buf_d[o], cnt + 1, m_max, srow)
        if layer == 0:
            count0[s] = cnt
        else:
            count_up[up_row[s] + layer - 1] = cnt
    return chosen[0] if n_chosen > 0 else node


@njit(**_JIT)
def insert_range(x, metric, levels, start, end, state, m, ef_construction, alive, has_tombstones,
                 links0, count0, up_row, links_up, count_up, visited, tag_box):
    """Insert nodes start..end-1 (vectors and levels already stored). state = [entry, max_level]."""
    n_cap = x.shape[0]
    cand_k = np.empty(n_cap + 1, np.float32)
    cand_v = np.empty(n_cap + 1, np.int32)
    top_k = np.empty(ef_construction + 2, np.float32)
    top_v = np.empty(ef_construction + 2, np.int32)
    for node in range(start, end):
        level = levels[node]
        if state[0] < 0:
            state[0] = node
            state[1] = level
            continue
        q = x[node]
        entry = state[0]
        max_level = state[1]
        if level < max_level:
            entry = greedy_descend(q, x, metric, entry, max_level, level, links0, count0, up_row, links_up, count_up)
        for layer in range(min(level, max_level), -1, -1):
            tag_box[0] += 1
            n_top = search_layer(q, x, metric, entry, layer, ef_construction, alive, has_tombstones, True, links0,
                                 count0, up_row, links_up, count_up, visited, tag_box[0], cand_k, cand_v, top_k, top_v)
            if n_top == 0:  # only tombstones around: fall back to linking the entry point
                top_k[0] = -dist_to(q, x, entry, metric)
                top_v[0] = entry
                n_top = 1
            m_max = 2 * m if layer == 0 else m
            entry = connect(node, layer, m, m_max, x, metric, top_k, top_v, n_top, links0, count0, up_row,
                            links_up, count_up)
        if level > max_level:
            state[0] = node
            state[1] = level


@njit(**_JIT)
def search_batch(queries, k, ef, x, metric, state, ok, use_ok, links0, count0, up_row, links_up, count_up,
                 visited, tag_box, out_d, out_rows):
    """For each query: greedy descent to layer 1, then a layer-0 search with max(ef, k); write the k best."""
    ef = max(ef, k)
    n_cap = x.shape[0]
    cand_k = np.empty(n_cap + 1, np.float32)
    cand_v = np.empty(n_cap + 1, np.int32)
    top_k = np.empty(ef + 2, np.float32)
    top_v = np.empty(ef + 2, np.int32)
    for qi in range(queries.shape[0]):
        q = queries[qi]
        entry = greedy_descend(q, x, metric, state[0], state[1], 0, links0, count0, up_row, links_up, count_up)
        tag_box[0] += 1
        n_top = search_layer(q, x, metric, entry, 0, ef, ok, use_ok, use_ok, links0, count0, up_row, links_up,
                             count_up, visited, tag_box[0], cand_k, cand_v, top_k, top_v)
        while n_top > k:
            n_top = heap_pop(top_k, top_v, n_top)
        for slot in range(n_top - 1, -1, -1):  # the max-heap pops furthest first
            out_d[qi, slot] = -top_k[0]
            out_rows[qi, slot] = top_v[0]
            n_top = heap_pop(top_k, top_v, n_top)
