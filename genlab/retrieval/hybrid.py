"""Hybrid retrieval by reciprocal rank fusion (RRF) of several rankings (e.g. BM25 and vector search).

Handbook V (retrieval-augmented generation: hybrid search). Paper: Cormack, Clarke & Büttcher 2009,
"Reciprocal Rank Fusion outperforms Condorcet and individual rank learning methods":
score(d) = sum over rankings r of w_r / (k + rank_r(d)), ranks starting at 1, k = 60. Only ranks are
used, so BM25 scores and cosine similarities never need to be put on one scale.

    python -c "from genlab.retrieval.hybrid import reciprocal_rank_fusion as f; print(f([[1, 2], [2, 3]]))"
"""

from __future__ import annotations

from typing import Hashable, Sequence

from genlab.errors import ConfigError


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = 60,
                           weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
    """Fused (id, score) list, best first; ties keep the order in which ids were first seen."""
    if k < 0:
        raise ConfigError(f"RRF k must be >= 0, got {k}")
    if weights is not None and len(weights) != len(rankings):
        raise ConfigError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[Hashable, float] = {}
    for r, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[r])
        seen: set = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:  # a duplicate within one ranking counts once, at its best rank
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
