"""Shared retrieval test data: clustered unit vectors (like real embeddings, unlike isotropic noise)."""

import numpy as np
import pytest


def clustered(n: int, dim: int, n_clusters: int = 40, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    centers = np.random.default_rng(123).standard_normal((n_clusters, dim))  # shared by data and queries
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _exact_topk(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="session")
def exact_topk():
    """Ground truth by brute force: exact_topk(queries, vectors, k) -> (nq, k) row indices."""
    return _exact_topk


@pytest.fixture(scope="session")
def data():
    x = clustered(3000, 32, seed=1)
    q = clustered(100, 32, seed=2)
    return x, q, _exact_topk(q, x, 10)
