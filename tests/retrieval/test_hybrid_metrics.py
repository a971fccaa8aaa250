"""Reciprocal rank fusion and retrieval metrics on hand-computed cases; NDCG vs scikit-learn.

    python -m pytest -q tests/retrieval/test_hybrid_metrics.py
"""

import math

import numpy as np
import pytest

from genlab.retrieval.hybrid import reciprocal_rank_fusion
from genlab.retrieval.metrics import (ann_recall, hit_at_k, mean_metrics, ndcg_at_k, precision_at_k, recall_at_k,
                                      reciprocal_rank)


def test_rrf_hand_computed():
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["c"] == pytest.approx(1 / 63)
    assert fused["d"] == pytest.approx(1 / 62)
    assert [i for i, _ in reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]])] == ["b", "a", "d", "c"]


def test_rrf_weights_ties_and_duplicates():
    assert [i for i, _ in reciprocal_rank_fusion([["x"], ["y"]])] == ["x", "y"]  # tie: first seen wins
    assert dict(reciprocal_rank_fusion([["x", "x"]], k=0))["x"] == 1.0  # duplicate counted once
    fused = reciprocal_rank_fusion([["x"], ["y"]], k=1, weights=[1.0, 3.0])
    assert fused == [("y", 1.5), ("x", 0.5)]


def test_metrics_hand_computed():
    ranked = ["d3", "d1", "d7", "d2"]
    relevant = {"d1", "d2", "d9"}
    assert hit_at_k(ranked, relevant, 1) == 0 and hit_at_k(ranked, relevant, 2) == 1
    assert reciprocal_rank(ranked, relevant) == 0.5 and reciprocal_rank(ranked, relevant, k=1) == 0.0
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert precision_at_k(ranked, relevant, 4) == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, relevant, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a"], {"b"}, 3) == 0.0 and recall_at_k(["a"], set(), 3) == 0.0


def test_ann_recall_ignores_empty_slots():
    assert ann_recall(np.array([[1, 2, -1], [7, 8, 9]]), np.array([[2, 3, 1], [1, 2, 3]])) == pytest.approx((2 / 3 + 0) / 2)


def test_mean_metrics():
    out = mean_metrics([["a", "b"], ["c", "d"]], [{"b"}, {"x"}], k=2)
    assert out["hit@2"] == 0.5 and out["mrr@2"] == 0.25 and out["recall@2"] == 0.5


def test_graded_ndcg_matches_sklearn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        grades = rng.integers(0, 4, 12).astype(float)
        scores = rng.standard_normal(12)
        ranked = list(np.argsort(-scores))
        for k in (3, 5, 12):
            ours = ndcg_at_k(ranked, {i: g for i, g in enumerate(grades)}, k)
            assert ours == pytest.approx(ndcg_score([grades], [scores], k=k), abs=1e-9)
