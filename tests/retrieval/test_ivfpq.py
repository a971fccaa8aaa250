"""k-means, product quantisation and ADC: hand-checkable properties and recall next to faiss IndexIVFPQ.

    python -m pytest -q tests/retrieval/test_ivfpq.py
"""

import numpy as np
import pytest

from genlab.errors import ConfigError, GenlabError
from genlab.retrieval.indexes import IVFPQIndex
from genlab.retrieval.indexes.kmeans import assign, kmeans
from genlab.retrieval.metrics import ann_recall as recall


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_kmeans_recovers_separated_blobs(init):
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    x = (centers[rng.integers(0, 4, 2000)] + 0.3 * rng.standard_normal((2000, 2))).astype(np.float32)
    found = kmeans(x, 4, n_iter=30, seed=3, init=init)
    labels, dists = assign(centers, found)
    assert sorted(labels.tolist()) == [0, 1, 2, 3] and dists.max() < 0.05
    with pytest.raises(ConfigError):
        kmeans(x[:3], 4)


@pytest.fixture(scope="module")
def trained(data):
    x, _, _ = data
    index = IVFPQIndex(32, "ip", nlist=16, m=8, nbits=8, nprobe=16, n_iter=10)
    index.add(x)
    return index


def test_adc_scores_equal_exact_scores_of_decoded_vectors(trained, data):
    """With every list probed, ADC's table sums must equal q · (centroid + PQ reconstruction)."""
    x, q, _ = data
    res = trained.search(q[:5], 10)
    for qi in range(5):
        rows = [trained._row_of[int(i)] for i in res.ids[qi]]
        np.testing.assert_allclose(res.scores[qi], trained.decode(np.array(rows)) @ q[qi], rtol=1e-4, atol=1e-5)


def test_l2_adc_matches_decoded_distances(data):
    x, q, _ = data
    index = IVFPQIndex(32, "l2", nlist=8, m=4, nbits=8, nprobe=8, n_iter=5)
    index.add(x)
    res = index.search(q[:3], 5)
    for qi in range(3):
        rows = np.array([index._row_of[int(i)] for i in res.ids[qi]])
        want = -((index.decode(rows) - q[qi]) ** 2).sum(1)
        np.testing.assert_allclose(res.scores[qi], want, rtol=1e-4, atol=1e-4)


def test_codes_are_one_byte_per_subquantiser_and_reconstruct(trained, data):
    x, _, _ = data
    assert trained._codes.shape == (len(x), 8) and trained._codes.dtype == np.uint8
    err = np.linalg.norm(trained.decode(np.arange(len(x))) - x, axis=1).mean()
    assert err < 0.35  # unit vectors; a random reconstruction would be ~1.4


def test_recall_close_to_faiss(trained, data):
    import faiss

    x, q, truth = data
    faiss.omp_set_num_threads(1)
    ref = faiss.IndexIVFPQ(faiss.IndexFlatIP(32), 32, 16, 8, 8, faiss.METRIC_INNER_PRODUCT)
    ref.train(x)
    ref.add(x)
    for nprobe in (2, 16):
        ref.nprobe = nprobe
        ours = recall(trained.search_nprobe(q, 10, nprobe).ids, truth)
        theirs = recall(ref.search(q, 10)[1], truth)
        assert ours >= theirs - 0.05, (nprobe, ours, theirs)


def test_training_needs_enough_vectors():
    with pytest.raises(GenlabError, match="at least 256"):
        IVFPQIndex(8, nlist=4, m=2).add(np.random.default_rng(0).standard_normal((100, 8)))
    with pytest.raises(ConfigError, match="divisible"):
        IVFPQIndex(10, m=3)
