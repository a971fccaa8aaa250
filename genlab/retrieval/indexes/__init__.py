"""Vector indexes with one interface (add / search / remove / save / load): exact, LSH, IVF-PQ, HNSW.

Handbook V (vector databases). `load_index(path)` reads any saved index back as its own class.

    python -m pytest -q tests/retrieval/test_indexes.py
"""

from genlab.retrieval.indexes.base import Filter, SearchResult, VectorIndex
from genlab.retrieval.indexes.exact import ExactIndex
from genlab.retrieval.indexes.hnsw import HNSWIndex
from genlab.retrieval.indexes.ivfpq import IVFPQIndex
from genlab.retrieval.indexes.lsh import LSHIndex


def load_index(path) -> VectorIndex:
    """Load an index saved by any genlab index class."""
    return VectorIndex.load(path)


__all__ = ["Filter", "SearchResult", "VectorIndex", "ExactIndex", "HNSWIndex", "IVFPQIndex", "LSHIndex", "load_index"]
