"""IVF-PQ: inverted file over k-means cells, residuals compressed by product quantisation, ADC search.

Handbook V (vector databases). Paper: Jégou, Douze & Schmid 2011, "Product quantization for nearest
neighbor search" (IVFADC). Layout as faiss IndexIVFPQ (by_residual, 8-bit codes):
  * coarse quantiser: nlist k-means centroids; a vector lives in the list of its nearest centroid;
  * residual r = x - c split into m sub-vectors, each replaced by the id of its nearest of 2^nbits
    sub-centroids (one k-means per sub-space) -> m bytes per vector;
  * asymmetric distance computation (ADC): per query, a lookup table T[j, code] of sub-distances, so
    a stored vector scores as a sum of m table entries. Inner product: q·c + sum_j T[j, code_j] with
    T = q_j·codebook_j (the same table for every list); L2: T_l[j, code] = ||(q - c_l)_j - codebook_j||^2.
The scan is a numba loop (ivfpq_kernels.py). No exact re-ranking, like faiss's IndexIVFPQ: scores are approximations. Train once (explicitly with
`train`, or automatically on the first add) on at least max(nlist, 2^nbits) vectors.

    python -m pytest -q tests/retrieval/test_ivfpq.py
"""

from __future__ import annotations

import numpy as np

from genlab.errors import ConfigError, GenlabError
from genlab.retrieval.indexes.base import VectorIndex
from genlab.retrieval.indexes.ivfpq_kernels import scan
from genlab.retrieval.indexes.kmeans import assign, kmeans


class IVFPQIndex(VectorIndex):
    kind = "ivfpq"

    def __init__(self, dim: int, metric: str = "cosine", nlist: int = 256, m: int = 48, nbits: int = 8,
                 nprobe: int = 16, n_iter: int = 20, max_train_points: int = 65536, seed: int = 0):
        super().__init__(dim, metric)
        if dim % m:
            raise ConfigError(f"PQ needs dim divisible by m: {dim} % {m} != 0")
        if not 1 <= nbits <= 8:
            raise ConfigError(f"nbits must be in 1..8 (one byte per code), got {nbits}")
        self.nlist, self.m, self.nbits, self.nprobe = int(nlist), int(m), int(nbits), int(nprobe)
        self.n_iter, self.max_train_points, self.seed = int(n_iter), int(max_train_points), int(seed)
        self.ksub = 1 << self.nbits
        self.dsub = dim // m
        self.coarse: np.ndarray | None = None  # (nlist, dim)
        self.codebooks: np.ndarray | None = None  # (m, ksub, dsub)
        self._codes = np.empty((0, m), np.uint8)
        self._lists = np.empty(0, np.int32)
        self._csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # cached (order, offsets, codes by list)

    def _config(self) -> dict:
        return {"nlist": self.nlist, "m": self.m, "nbits": self.nbits, "nprobe": self.nprobe, "n_iter": self.n_iter,
                "max_train_points": self.max_train_points, "seed": self.seed}

    @property
    def is_trained(self) -> bool:
        return self.coarse is not None

    def train(self, vectors: np.ndarray) -> None:
        """Fit the coarse centroids and the PQ codebooks on (a sample of) vectors."""
        x = self._prepare(vectors, "training vectors")
        need = max(self.nlist, self.ksub)
        if len(x) < need:
            raise GenlabError(f"IVF-PQ training needs at least {need} vectors (nlist={self.nlist}, 2^nbits={self.ksub}), got {len(x)}")
        self.coarse = kmeans(x, self.nlist, self.n_iter, self.seed, self.max_train_points)
        labels, _ = assign(x, self.coarse)
        residuals = x - self.coarse[labels]
        self.codebooks = np.stack([
            kmeans(residuals[:, j * self.dsub:(j + 1) * self.dsub], self.ksub, self.n_iter, self.seed + 1 + j,
                   self.max_train_points)
            for j in range(self.m)])

    def encode(self, residuals: np.ndarray) -> np.ndarray:
        """PQ codes (n, m) uint8 of residual vectors."""
        codes = np.empty((len(residuals), self.m), np.uint8)
        for j in range(self.m):
            codes[:, j], _ = assign(np.ascontiguousarray(residuals[:, j * self.dsub:(j + 1) * self.dsub]), self.codebooks[j])
        return codes

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Reconstructed vectors c + sum of sub-centroids (for tests and inspection)."""
        parts = [self.codebooks[j][self._codes[rows, j]] for j in range(self.m)]
        return self.coarse[self._lists[rows]] + np.concatenate(parts, axis=1)

    def _add_rows(self, x):
        if not self.is_trained:
            self.train(x)
        labels, _ = assign(x, self.coarse)
        self._codes = np.concatenate([self._codes, self.encode(x - self.coarse[labels])])
        self._lists = np.concatenate([self._lists, labels.astype(np.int32)])
        self._csr = None

    def _inverted_lists(self):
        if self._csr is None:
            order = np.argsort(self._lists, kind="stable")
            offsets = np.concatenate([[0], np.cumsum(np.bincount(self._lists, minlength=self.nlist))])
            self._csr = (order.astype(np.int64), offsets.astype(np.int64), np.ascontiguousarray(self._codes[order]))
        return self._csr

    def _search_rows(self, q, k, allowed, nprobe: int | None = None):
        nprobe = min(self.nprobe if nprobe is None else int(nprobe), self.nlist)
        order, offsets, codes = self._inverted_lists()
        l2 = self.metric == "l2"
        if l2:
            coarse_scores = 2.0 * (q @ self.coarse.T) - np.einsum("ij,ij->i", self.coarse, self.coarse)[None, :]
        else:
            coarse_scores = q @ self.coarse.T
        probes = np.ascontiguousarray(np.argsort(-coarse_scores, axis=1)[:, :nprobe])
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        ok = allowed.astype(np.uint8) if allowed is not None else np.ones(1, np.uint8)
        scan(q, self.coarse, coarse_scores.astype(np.float32), probes, self.codebooks, offsets, codes, order, ok,
             allowed is not None, l2, k, out_s, out_r)
        return out_s, out_r

    def search_nprobe(self, queries: np.ndarray, k: int, nprobe: int):
        """search() with a one-off nprobe (for recall/speed sweeps) and no filter."""
        old = self.nprobe
        self.nprobe = nprobe
        try:
            return self.search(queries, k)
        finally:
            self.nprobe = old

    def _state(self):
        state = {"codes": self._codes, "lists": self._lists}
        if self.is_trained:
            state.update(coarse=self.coarse, codebooks=self.codebooks)
        return state

    def _restore(self, state):
        self._codes, self._lists = state["codes"].astype(np.uint8), state["lists"].astype(np.int32)
        if "coarse" in state:
            self.coarse, self.codebooks = state["coarse"].astype(np.float32), state["codebooks"].astype(np.float32)
