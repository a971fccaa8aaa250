"""HNSW: hierarchical navigable small-world graph index, following hnswlib's construction rules.

Handbook V (vector databases). Paper: Malkov & Yashunin 2016 (arXiv:1603.09320). Rules as in hnswlib:
  * level of a new node = floor(-ln U * mult) with mult = 1/ln M, so P(level >= 1) = 1/M;
  * M links per node above layer 0 and 2M (maxM0) at layer 0; a new node picks M neighbours per layer;
  * neighbours chosen by the heuristic (keep a candidate unless a kept one is closer to it than the
    base point is); an overfull neighbour list is re-selected with the same heuristic;
  * construction searches with ef_construction (raised to at least M), queries with max(ef_search, k);
  * deletion = tombstones: deleted (and filtered-out) nodes are still traversed but never returned.

Choice for speed: the search/insert loops are numba-compiled (see hnsw_kernels.py for why). Searches
are single-threaded, one query after another, like hnswlib with num_threads=1. A filter that leaves
fewer than `exact_below` rows is answered by exact search over those rows, since a graph walk would
visit most of the graph to find them.

    python -m pytest -q tests/retrieval/test_hnsw.py
"""

from __future__ import annotations

import math

import numpy as np

from genlab.errors import ConfigError
from genlab.retrieval.indexes import hnsw_kernels as K
from genlab.retrieval.indexes.base import VectorIndex, exact_scores, top_k_rows


def draw_levels(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """hnswlib's getRandomLevel: floor(-ln(U) / ln(M)), U uniform in (0, 1]."""
    u = 1.0 - rng.random(n)
    return np.floor(-np.log(u) * (1.0 / math.log(m))).astype(np.int32)


class HNSWIndex(VectorIndex):
    kind = "hnsw"

    def __init__(self, dim: int, metric: str = "cosine", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 100, exact_below: int = 2048):
        super().__init__(dim, metric)
        if M < 2:
            raise ConfigError(f"HNSW M must be >= 2, got {M}")
        self.M = int(M)
        self.ef_construction = max(int(ef_construction), self.M)
        self.ef_search = int(ef_search)
        self.seed = int(seed)
        self.exact_below = int(exact_below)
        self._metric_code = 1 if metric == "l2" else 0
        self._n = 0
        self._alloc(16, 16)
        self._state_box = np.array([-1, -1], dtype=np.int64)  # entry point, max level
        self._tag = np.zeros(1, dtype=np.int64)

    def _config(self) -> dict:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "seed": self.seed, "exact_below": self.exact_below}

    # -- storage ---------------------------------------------------------------------------
    def _alloc(self, cap: int, up_cap: int) -> None:
        self._x = np.zeros((cap, self.dim), np.float32)
        self._levels = np.zeros(cap, np.int32)
        self._links0 = np.zeros((cap, 2 * self.M), np.int32)
        self._count0 = np.zeros(cap, np.int32)
        self._up_row = np.full(cap, -1, np.int32)
        self._links_up = np.zeros((up_cap, self.M), np.int32)
        self._count_up = np.zeros(up_cap, np.int32)
        self._n_up = 0
        self._visited = np.zeros(cap, np.int32)

    @staticmethod
    def _grow(a: np.ndarray, rows: int, fill=0) -> np.ndarray:
        if rows <= len(a):
            return a
        out = np.full((max(rows, 2 * len(a)),) + a.shape[1:], fill, dtype=a.dtype)
        out[: len(a)] = a
        return out

    def _reserve(self, n: int, up_rows: int) -> None:
        self._x = self._grow(self._x, n)
        self._levels = self._grow(self._levels, n)
        self._links0 = self._grow(self._links0, n)
        self._count0 = self._grow(self._count0, n)
        self._up_row = self._grow(self._up_row, n, -1)
        if len(self._visited) < len(self._x):
            self._visited = np.zeros(len(self._x), np.int32)
            self._tag[0] = 0
        self._links_up = self._grow(self._links_up, up_rows)
        self._count_up = self._grow(self._count_up, up_rows)

    def _graph(self):
        return self._links0, self._count0, self._up_row, self._links_up, self._count_up

    def _next_tag_guard(self, searches: int) -> None:
        """The visited array stores int32 tags; restart them long before they could wrap."""
        if self._tag[0] + searches >= 2**31 - 1:
            self._visited[:] = 0
            self._tag[0] = 0

    # -- index hooks -----------------------------------------------------------------------
    def _add_rows(self, x: np.ndarray) -> None:
        start, n = self._n, len(x)
        rng = np.random.default_rng([self.seed, start])  # deterministic, also across save/load
        levels = draw_levels(n, self.M, rng)
        self._reserve(start + n, self._n_up + int(levels.sum()))
        self._x[start:start + n] = x
        self._levels[start:start + n] = levels
        for offset in np.flatnonzero(levels):
            self._up_row[start + offset] = self._n_up
            self._n_up += int(levels[offset])
        alive = np.concatenate([self._alive, np.ones(n, bool)]).astype(np.uint8)
        self._next_tag_guard(n * (int(levels.max()) + 1))
        K.insert_range(self._x, self._metric_code, self._levels, start, start + n, self._state_box, self.M,
                       self.ef_construction, alive, bool(not self._alive.all()), *self._graph(), self._visited,
                       self._tag)
        self._n = start + n

    def _search_rows(self, q, k, allowed, ef: int | None = None):
        ef = self.ef_search if ef is None else int(ef)
        if allowed is not None and allowed.sum() <= self.exact_below:
            rows = np.flatnonzero(allowed)
            scores, pos = top_k_rows(exact_scores(q, self._x[rows], self.metric), k)
            return scores, np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)
        out_d = np.full((len(q), k), np.inf, np.float32)
        out_rows = np.full((len(q), k), -1, np.int64)
        ok = allowed.astype(np.uint8) if allowed is not None else np.ones(1, np.uint8)
        self._next_tag_guard(len(q))
        K.search_batch(q, k, ef, self._x, self._metric_code, self._state_box, ok, allowed is not None,
                       *self._graph(), self._visited, self._tag, out_d, out_rows)
        scores = -out_d if self._metric_code == 1 else 1.0 - out_d
        return np.where(out_rows >= 0, scores, -np.inf).astype(np.float32), out_rows

    def search_ef(self, queries: np.ndarray, k: int, ef: int):
        """search() with a one-off ef (for recall/speed sweeps) and no filter."""
        old = self.ef_search
        self.ef_search = ef
        try:
            return self.search(queries, k)
        finally:
            self.ef_search = old

    def _state(self):
        n = self._n
        return {"x": self._x[:n], "levels": self._levels[:n], "links0": self._links0[:n], "count0": self._count0[:n],
                "up_row": self._up_row[:n], "links_up": self._links_up[: self._n_up],
                "count_up": self._count_up[: self._n_up], "entry": self._state_box}

    def _restore(self, state):
        n, n_up = len(state["x"]), len(state["links_up"])
        self._alloc(max(n, 16), max(n_up, 16))
        self._x[:n] = state["x"]
        self._levels[:n] = state["levels"]
        self._links0[:n] = state["links0"]
        self._count0[:n] = state["count0"]
        self._up_row[:n] = state["up_row"]
        self._links_up[:n_up] = state["links_up"]
        self._count_up[:n_up] = state["count_up"]
        self._n, self._n_up = n, n_up
        self._state_box = state["entry"].astype(np.int64).copy()

    # -- introspection (tests) -------------------------------------------------------------
    @property
    def levels(self) -> np.ndarray:
        return self._levels[: self._n]

    def links(self, row: int, layer: int = 0) -> np.ndarray:
        """Neighbour rows of a node at a layer (empty above its level)."""
        if layer == 0:
            return self._links0[row, : self._count0[row]].copy()
        if layer > self._levels[row]:
            return np.empty(0, np.int32)
        r = self._up_row[row] + layer - 1
        return self._links_up[r, : self._count_up[r]].copy()

    @property
    def entry_point(self) -> tuple[int, int]:
        return int(self._state_box[0]), int(self._state_box[1])
