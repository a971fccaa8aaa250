"""LSH by random hyperplanes (SimHash), Hamming-ranked candidates, exact re-ranking.

Handbook V (vector databases). Paper: Charikar 2002, "Similarity estimation techniques from rounding
algorithms": for a random Gaussian hyperplane r, P[sign(r·x) != sign(r·y)] = angle(x, y) / pi, so the
Hamming distance between nbits-bit signatures estimates the angle. Search ranks all signatures by
Hamming distance (XOR + popcount on 64-bit words, a small numba loop), keeps the `n_candidates`
closest, and re-scores those exactly with the stored vectors (the metric's true score). The signature
approximates cosine similarity; with metric "l2" it still only proposes candidates.

    python -m pytest -q tests/retrieval/test_indexes.py -k lsh
"""

from __future__ import annotations

import numpy as np

from genlab.errors import ConfigError
from genlab.retrieval.indexes.base import GrowableRows, VectorIndex, top_k_rows
from genlab.retrieval.indexes.hnsw_kernels import _JIT, njit


@njit(**_JIT)
def hamming_matrix(q_codes, codes, out):
    """out[i, j] = popcount(q_codes[i] XOR codes[j]) with the SWAR bit count (numba has no popcnt intrinsic)."""
    m1, m2, m4, h01 = np.uint64(0x5555555555555555), np.uint64(0x3333333333333333), np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(0x0101010101010101)
    for i in range(q_codes.shape[0]):
        for j in range(codes.shape[0]):
            total = 0
            for w in range(codes.shape[1]):
                v = q_codes[i, w] ^ codes[j, w]
                v = v - ((v >> np.uint64(1)) & m1)
                v = (v & m2) + ((v >> np.uint64(2)) & m2)
                v = (v + (v >> np.uint64(4))) & m4
                total += (v * h01) >> np.uint64(56)
            out[i, j] = total


@njit(**_JIT)
def candidate_scores(q, x, cand, l2, out):
    """out[i, c] = exact score of row cand[i, c] for query i, without materialising the gathered rows."""
    for i in range(cand.shape[0]):
        for c in range(cand.shape[1]):
            row = cand[i, c]
            s = np.float32(0.0)
            if l2:
                for t in range(q.shape[1]):
                    d = q[i, t] - x[row, t]
                    s -= d * d
            else:
                for t in range(q.shape[1]):
                    s += q[i, t] * x[row, t]
            out[i, c] = s


class LSHIndex(VectorIndex):
    kind = "lsh"

    def __init__(self, dim: int, metric: str = "cosine", nbits: int = 256, n_candidates: int = 200, seed: int = 0,
                 query_block: int = 32):
        super().__init__(dim, metric)
        if nbits < 64 or nbits % 64:
            raise ConfigError(f"LSH nbits must be a positive multiple of 64, got {nbits}")
        self.nbits, self.n_candidates, self.seed, self.query_block = int(nbits), int(n_candidates), int(seed), int(query_block)
        self.planes = np.random.default_rng(seed).standard_normal((nbits, dim)).astype(np.float32)
        self._vectors = GrowableRows(dim)
        self._codes = GrowableRows(nbits // 64, dtype=np.uint64)

    def _config(self) -> dict:
        return {"nbits": self.nbits, "n_candidates": self.n_candidates, "seed": self.seed, "query_block": self.query_block}

    def signatures(self, x: np.ndarray) -> np.ndarray:
        """(n, nbits/64) uint64: bit i set when x lies on the positive side of hyperplane i."""
        bits = np.packbits((x @ self.planes.T) > 0, axis=1, bitorder="little")
        return np.ascontiguousarray(bits).view(np.uint64)

    def _add_rows(self, x):
        self._vectors.append(x)
        self._codes.append(self.signatures(x))

    def _search_rows(self, q, k, allowed):
        x, codes = self._vectors.view, self._codes.view
        n = len(x)
        n_cand = min(max(self.n_candidates, k), n)
        q_codes = self.signatures(q)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        for s in range(0, len(q), self.query_block):
            qb = q_codes[s:s + self.query_block]
            hamming = np.empty((len(qb), n), np.int32)
            hamming_matrix(qb, codes, hamming)
            if allowed is not None:
                hamming[:, ~allowed] = self.nbits + 1  # never closer than any allowed row
            cand = np.argpartition(hamming, n_cand - 1, axis=1)[:, :n_cand] if n_cand < n else np.tile(np.arange(n), (len(qb), 1))
            # Exact re-rank of the candidates (a numba loop: gathering the rows first costs more than the dots).
            qs = q[s:s + len(qb)]
            scores = np.empty(cand.shape, np.float32)
            candidate_scores(qs, x, cand, self.metric == "l2", scores)
            if allowed is not None:
                scores = np.where(allowed[cand], scores, -np.inf)
            top_s, top_pos = top_k_rows(scores, k)
            out_s[s:s + len(qb)] = top_s
            out_r[s:s + len(qb)] = np.where(top_pos >= 0, np.take_along_axis(cand, np.maximum(top_pos, 0), 1), -1)
        return out_s, out_r

    def _state(self):
        return {"vectors": self._vectors.view, "codes": self._codes.view, "planes": self.planes}

    def _restore(self, state):
        self.planes = state["planes"].astype(np.float32)
        self._vectors = GrowableRows(self.dim)
        self._vectors.append(state["vectors"].astype(np.float32))
        self._codes = GrowableRows(self.nbits // 64, dtype=np.uint64)
        self._codes.append(state["codes"].astype(np.uint64))
