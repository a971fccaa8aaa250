"""Exact (brute-force) vector search: one matrix product per query block, then a partial sort.

Handbook V (vector databases): the ground truth every approximate index is measured against
(faiss calls it IndexFlat). Cost O(n·d) per query; memory 4·n·d bytes.

    python -m pytest -q tests/retrieval/test_indexes.py -k exact
"""

from __future__ import annotations

import numpy as np

from genlab.retrieval.indexes.base import GrowableRows, VectorIndex, exact_scores, top_k_rows


class ExactIndex(VectorIndex):
    kind = "exact"

    def __init__(self, dim: int, metric: str = "cosine", query_block: int = 256):
        super().__init__(dim, metric)
        self.query_block = query_block  # bounds the (block, n) score matrix held at once
        self._vectors = GrowableRows(dim)

    def _config(self) -> dict:
        return {"query_block": self.query_block}

    def _add_rows(self, x: np.ndarray) -> None:
        self._vectors.append(x)

    def vectors(self) -> np.ndarray:
        """All stored rows (tombstoned ones included), in row order."""
        return self._vectors.view

    def _search_rows(self, q, k, allowed):
        x = self._vectors.view
        sq = np.einsum("ij,ij->i", x, x) if self.metric == "l2" else None
        scores_out, rows_out = [], []
        for start in range(0, len(q), self.query_block):
            scores = exact_scores(q[start:start + self.query_block], x, self.metric, sq)
            if allowed is not None:
                scores[:, ~allowed] = -np.inf
            s, r = top_k_rows(scores, k)
            scores_out.append(s)
            rows_out.append(r)
        return np.concatenate(scores_out), np.concatenate(rows_out)

    def _state(self):
        return {"vectors": self._vectors.view}

    def _restore(self, state):
        self._vectors = GrowableRows(self.dim)
        self._vectors.append(state["vectors"].astype(np.float32))
