"""HNSW against hnswlib's rules: level distribution, link limits, the neighbour heuristic, recall equal
to hnswlib's at the same ef, tombstones.

    python -m pytest -q tests/retrieval/test_hnsw.py
"""

import numpy as np
import pytest

from genlab.retrieval.indexes import HNSWIndex
from genlab.retrieval.indexes import hnsw_kernels as K
from genlab.retrieval.indexes.hnsw import draw_levels
from genlab.retrieval.metrics import ann_recall as recall


def test_level_distribution_follows_one_over_ln_m():
    levels = draw_levels(400_000, 16, np.random.default_rng(0))
    # P(level >= l) = M^-l: 1/16 and 1/256 (binomial standard errors ~0.0004 and ~0.00003)
    assert abs((levels >= 1).mean() - 1 / 16) < 0.002
    assert abs((levels >= 2).mean() - 1 / 256) < 0.0004
    assert abs(levels.mean() - 1 / 15) < 0.002  # E[level] = sum_l M^-l = 1/(M-1)


def test_heuristic_prunes_candidates_shadowed_by_a_closer_kept_one():
    """Base at the origin (L2). b is closer to a than to the base, so a shadows it; c survives."""
    x = np.array([[0, 0], [1, 0], [1.1, 0.1], [-1.2, 0], [0, 3]], np.float32)
    d = np.array([1.0, 1.1 ** 2 + 0.01, 1.44, 9.0], np.float32)  # squared distances to the base, ascending
    cand = np.array([1, 2, 3, 4], np.int32)
    out = np.zeros(4, np.int32)
    n = K.select_heuristic(x, 1, cand, d, 4, 3, out)
    assert out[:n].tolist() == [1, 3, 4]  # b (row 2) pruned: dist(a, b)=0.02 < dist(base, b)=1.22
    n = K.select_heuristic(x, 1, cand, d, 4, 2, out)
    assert out[:n].tolist() == [1, 3]  # stops at M
    n = K.select_heuristic(x, 1, cand[:2], d[:2], 2, 3, out)
    assert out[:n].tolist() == [1, 2]  # fewer candidates than M: all kept, no pruning


@pytest.fixture(scope="module")
def graph(data):
    x, _, _ = data
    index = HNSWIndex(32, "ip", M=8, ef_construction=64)
    index.add(x)
    return index


def test_link_limits_and_validity(graph, data):
    x, _, _ = data
    n, m = len(x), graph.M
    for row in range(n):
        links0 = graph.links(row, 0)
        assert 0 < len(links0) <= 2 * m and row not in links0 and len(set(links0)) == len(links0)
        assert ((links0 >= 0) & (links0 < n)).all()
        for layer in range(1, graph.levels[row] + 1):
            up = graph.links(row, layer)
            assert len(up) <= m and all(graph.levels[j] >= layer for j in up)
    entry, top = graph.entry_point
    assert top == graph.levels.max() and graph.levels[entry] == top


def test_recall_matches_hnswlib_at_same_ef(graph, data):
    import hnswlib

    x, q, truth = data
    ref = hnswlib.Index(space="ip", dim=32)
    ref.init_index(max_elements=len(x), M=8, ef_construction=64, random_seed=100)
    ref.add_items(x, num_threads=1)
    for ef in (10, 20, 64):
        ref.set_ef(ef)
        theirs = recall(ref.knn_query(q, k=10, num_threads=1)[0], truth)
        ours = recall(graph.search_ef(q, 10, ef).ids, truth)
        assert ours >= theirs - 0.03, (ef, ours, theirs)
    assert recall(graph.search_ef(q, 10, 64).ids, truth) >= 0.95


def test_scores_are_true_inner_products(graph, data):
    x, q, _ = data
    res = graph.search(q[:10], 5)
    np.testing.assert_allclose(res.scores, np.take_along_axis(q[:10] @ x.T, res.ids, 1), atol=1e-5)


def test_tombstones_are_traversed_but_never_returned(data, exact_topk):
    x, q, _ = data
    index = HNSWIndex(32, M=8, ef_construction=64, exact_below=0)  # force graph search even for filters
    index.add(x)
    dead = np.arange(0, len(x), 2)
    index.remove(dead)
    alive = np.arange(1, len(x), 2)
    res = index.search(q, 10)
    assert not set(res.ids.ravel()) & set(dead.tolist())
    assert recall(res.ids, alive[exact_topk(q, x[alive], 10)]) >= 0.9
    index.add(x[:50] * -1, ids=np.arange(10_000, 10_050))  # inserting next to tombstones still links up
    res = index.search(-x[:5], 1)
    assert res.ids[:, 0].tolist() == list(range(10_000, 10_005))


def test_deterministic_build_and_level_caps(data):
    x, q, _ = data
    a, b = HNSWIndex(32, M=8, ef_construction=32), HNSWIndex(32, M=8, ef_construction=32)
    a.add(x[:500])
    b.add(x[:500])
    np.testing.assert_array_equal(a.levels, b.levels)
    np.testing.assert_array_equal(a.search(q, 5).ids, b.search(q, 5).ids)
    assert HNSWIndex(32, M=8, ef_construction=3).ef_construction == 8  # raised to at least M, as hnswlib
