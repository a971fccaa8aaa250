"""k-means (Lloyd's algorithm with k-means++ seeding), used by IVF's coarse quantiser and by PQ codebooks.

Handbook V (vector databases). Papers: Lloyd 1982; Arthur & Vassilvitskii 2007, "k-means++".
Seeds are random points (as faiss) or k-means++. Empty clusters are re-seeded with the points farthest from their centroid, as faiss does.

    python -m pytest -q tests/retrieval/test_ivfpq.py -k kmeans
"""

from __future__ import annotations

import numpy as np

from genlab.errors import ConfigError


def assign(x: np.ndarray, centroids: np.ndarray, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row: (labels, squared distances)."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(len(x), np.int64)
    dists = np.empty(len(x), np.float32)
    for s in range(0, len(x), block):
        xb = x[s:s + block]
        d = c_sq[None, :] - 2.0 * (xb @ centroids.T)  # ||x||^2 is the same for every centroid
        labels[s:s + block] = np.argmin(d, axis=1)
        dists[s:s + block] = np.maximum(d[np.arange(len(xb)), labels[s:s + block]] + np.einsum("ij,ij->i", xb, xb), 0)
    return labels, dists


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Seed k centroids, each drawn with probability proportional to squared distance to the nearest seed."""
    centroids = np.empty((k, x.shape[1]), np.float32)
    centroids[0] = x[rng.integers(len(x))]
    closest = np.einsum("ij,ij->i", x - centroids[0], x - centroids[0])
    for i in range(1, k):
        total = closest.sum()
        pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=closest / total)
        centroids[i] = x[pick]
        diff = x - centroids[i]
        closest = np.minimum(closest, np.einsum("ij,ij->i", diff, diff))
    return centroids


def kmeans(x: np.ndarray, k: int, n_iter: int = 20, seed: int = 0, max_points: int | None = None,
           init: str = "random") -> np.ndarray:
    """Centroids (k, d) float32 of the rows of x. max_points subsamples the training set.

    init "random" picks k distinct points (faiss's default, O(k) cheap); "k-means++" spreads the seeds
    (better for small k, but k sequential passes over the data)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k < 1 or len(x) < k:
        raise ConfigError(f"k-means needs at least k={k} points, got {len(x)}")
    rng = np.random.default_rng(seed)
    if max_points is not None and len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    if init == "k-means++":
        centroids = kmeans_plus_plus(x, k, rng)
    elif init == "random":
        centroids = x[rng.choice(len(x), k, replace=False)].copy()
    else:
        raise ConfigError(f"unknown k-means init {init!r}")
    for _ in range(n_iter):
        labels, dists = assign(x, centroids)
        counts = np.bincount(labels, minlength=k)
        nonempty = counts > 0
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
        sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)  # per-cluster sums, sorted by label
        new = centroids.copy()
        new[nonempty] = (sums / counts[nonempty, None]).astype(np.float32)
        empty = np.flatnonzero(~nonempty)
        if len(empty):
            far = np.argsort(-dists)[: len(empty)]
            new[empty] = x[far]
        if np.allclose(new, centroids, atol=1e-7):
            centroids = new
            break
        centroids = new
    return centroids
