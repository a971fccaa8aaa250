"""Retrieval metrics with their standard definitions: hit rate, MRR, recall@k, precision@k, NDCG@k.

Handbook V (RAG evaluation). Definitions (per query, then averaged over queries):
  hit@k       1 if any relevant item is in the top k, else 0
  MRR@k       1 / rank of the first relevant item in the top k (0 if none) (Voorhees 1999)
  recall@k    |relevant ∩ top k| / |relevant|
  precision@k |relevant ∩ top k| / k
  ann_recall  |found ∩ exact top-k| / k, the usual figure for vector indexes
  NDCG@k      DCG@k / IDCG@k with DCG = sum_i rel_i / log2(i + 1), i = 1..k (Järvelin & Kekäläinen 2002,
              linear gain, as scikit-learn's ndcg_score); IDCG is the DCG of the ideal ordering.
`relevant` is a set of ids, or a dict id -> graded relevance (> 0 counts as relevant).

    python -m pytest -q tests/retrieval/test_metrics.py
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence, Union

from genlab.errors import GenlabError

Relevant = Union[set, frozenset, Sequence[Hashable], Mapping[Hashable, float]]


def _grades(relevant: Relevant) -> dict:
    if isinstance(relevant, Mapping):
        return {k: float(v) for k, v in relevant.items() if v > 0}
    return {k: 1.0 for k in relevant}


def hit_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    rel = _grades(relevant)
    return float(any(item in rel for item in ranked[:k]))


def reciprocal_rank(ranked: Sequence[Hashable], relevant: Relevant, k: int | None = None) -> float:
    rel = _grades(relevant)
    for rank, item in enumerate(ranked[:k] if k else ranked, start=1):
        if item in rel:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    rel = _grades(relevant)
    if not rel:
        return 0.0
    return len(set(ranked[:k]) & rel.keys()) / len(rel)


def precision_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    rel = _grades(relevant)
    return len(set(ranked[:k]) & rel.keys()) / k


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    rel = _grades(relevant)
    dcg = sum(rel.get(item, 0.0) / math.log2(i + 2) for i, item in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def ann_recall(found_ids, true_ids) -> float:
    """Vector-index recall@k: mean over queries of |found ∩ true| / |true| (rows of id arrays; -1 = empty slot)."""
    total = 0.0
    for found, true in zip(found_ids, true_ids):
        found_set = {int(i) for i in found if int(i) >= 0}
        total += len(found_set & {int(i) for i in true}) / max(len(true), 1)
    return total / max(len(true_ids), 1)


def mean_metrics(runs: Sequence[Sequence[Hashable]], qrels: Sequence[Relevant], k: int = 10) -> dict[str, float]:
    """Average of every metric over queries: runs[i] is the ranking for the query judged by qrels[i]."""
    if len(runs) != len(qrels):
        raise GenlabError(f"{len(runs)} rankings but {len(qrels)} relevance sets")
    n = max(len(runs), 1)
    return {
        f"hit@{k}": sum(hit_at_k(r, q, k) for r, q in zip(runs, qrels)) / n,
        f"mrr@{k}": sum(reciprocal_rank(r, q, k) for r, q in zip(runs, qrels)) / n,
        f"recall@{k}": sum(recall_at_k(r, q, k) for r, q in zip(runs, qrels)) / n,
        f"precision@{k}": sum(precision_at_k(r, q, k) for r, q in zip(runs, qrels)) / n,
        f"ndcg@{k}": sum(ndcg_at_k(r, q, k) for r, q in zip(runs, qrels)) / n,
    }
