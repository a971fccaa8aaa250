"""Knowledge base: ingest files into the SQLite store, keep a vector index beside it, hybrid search.

Handbook V (vector databases, RAG). Ingest = read -> chunk -> embed -> one transaction per document
(see store.py). Search runs BM25 (FTS5) and vector search, each for `candidates` chunks, and fuses
the two rankings by reciprocal rank fusion (k = 60); an optional reranker reorders the fused list.

The vector index is derived data: it is rebuilt from the embeddings stored in SQLite whenever the
store's generation changed, and cached next to the database as `<db>.g<generation>.<kind>.npz`
(written atomically). Small collections use exact search; from `hnsw_above` chunks on, HNSW.

    python -m pytest -q tests/retrieval/test_knowledge.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from genlab.errors import ConfigError, GenlabError
from genlab.retrieval.chunking import ChunkConfig, chunk_text
from genlab.retrieval.embedders import Embedder
from genlab.retrieval.hybrid import reciprocal_rank_fusion
from genlab.retrieval.indexes import ExactIndex, HNSWIndex, VectorIndex
from genlab.retrieval.indexes.base import Filter, matches
from genlab.retrieval.store import ChunkRecord, DocumentStore, content_hash

TEXT_SUFFIXES = (".txt", ".md", ".py")
MODES = ("hybrid", "vector", "bm25")


@dataclass
class Hit:
    chunk_id: int
    doc_id: int
    source: str
    text: str
    score: float  # of the last stage that ranked it (RRF, BM25, cosine, or the reranker)
    start: int
    end: int
    metadata: dict
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank in each retriever that found it
    vector: np.ndarray | None = None
    line: int = 1  # 1-based line where the chunk starts in its document

    @classmethod
    def from_record(cls, rec: ChunkRecord, score: float, ranks: dict[str, int]) -> "Hit":
        return cls(rec.id, rec.doc_id, rec.source, rec.text, float(score), rec.start, rec.end, rec.metadata, ranks,
                   rec.vector, rec.line)


class Reranker(Protocol):
    def rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]: ...


@dataclass
class RetrievalConfig:
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    mode: str = "hybrid"  # "hybrid", "vector" or "bm25"
    candidates: int = 50  # chunks taken from each retriever before fusion / reranking
    rrf_k: int = 60
    hnsw_above: int = 20000  # exact search below this many chunks, HNSW from here on
    batch_size: int = 32

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"retrieval mode must be one of {MODES}, got {self.mode!r}")


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks: int = 0
    sources: list[str] = field(default_factory=list)


def find_text_files(paths: Sequence[str | Path], suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[Path]:
    """Files named directly, plus every file with a known suffix under named directories (sorted)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes))
        elif p.is_file():
            if p.suffix not in suffixes:
                raise GenlabError(f"{p}: unsupported file type {p.suffix!r} (supported: {', '.join(suffixes)})")
            found.append(p)
        else:
            raise GenlabError(f"no such file or directory: {p}")
    return list(dict.fromkeys(f.resolve() for f in found))


class KnowledgeBase:
    def __init__(self, db_path: str | Path, embedder: Embedder, config: RetrievalConfig | None = None):
        self.embedder = embedder
        self.config = config or RetrievalConfig()
        self.store = DocumentStore(db_path)
        self.store.bind_embedder(embedder.name, embedder.dim)
        self._index: VectorIndex | None = None
        self._index_generation = -1

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "KnowledgeBase":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- ingest -----------------------------------------------------------------------------
    def ingest(self, items: Iterable[tuple[str, str, dict | None]], progress: Callable[[str, str], None] | None = None) -> IngestReport:
        """Add (source, text, metadata) items; each document commits on its own. progress(source, status)."""
        report = IngestReport()
        spans = getattr(self.embedder, "token_spans", None)
        c = self.config.chunk
        for source, text, metadata in items:
            old = self.store.document(source)
            if old is not None and old.content_hash == content_hash(text) and old.metadata == (metadata or {}):
                status = "unchanged"  # skip chunking and embedding entirely
            else:
                chunks = chunk_text(text, c.unit, c.size, c.overlap, spans if c.unit == "tokens" else None)
                vectors = self.embedder.embed([ch.text for ch in chunks], batch_size=self.config.batch_size)
                _, status = self.store.upsert_document(source, text, chunks, vectors, metadata)
                report.chunks += len(chunks)
            setattr(report, status, getattr(report, status) + 1)
            report.sources.append(source)
            if progress is not None:
                progress(source, status)
        return report

    def ingest_paths(self, paths: Sequence[str | Path], progress: Callable[[str, str], None] | None = None) -> IngestReport:
        files = find_text_files(paths)

        def items():
            for f in files:
                yield str(f), f.read_text(encoding="utf-8", errors="replace"), {"suffix": f.suffix}

        return self.ingest(items(), progress)

    # -- vector index -----------------------------------------------------------------------
    def _cache_path(self, generation: int, kind: str) -> Path | None:
        if str(self.store.path) == ":memory:":
            return None
        return self.store.path.with_name(f"{self.store.path.name}.g{generation}.{kind}.npz")

    def vector_index(self) -> VectorIndex:
        """The vector index over all stored chunk embeddings, rebuilt only when the store changed."""
        generation = self.store.generation
        if self._index is not None and self._index_generation == generation:
            return self._index
        n_chunks = self.store.count()[1]
        kind = "hnsw" if n_chunks >= self.config.hnsw_above else "exact"
        cache = self._cache_path(generation, kind)
        if cache is not None and cache.is_file():
            index = VectorIndex.load(cache)
        else:
            ids, matrix, metadata = self.store.embeddings(self.embedder.dim)
            index = HNSWIndex(self.embedder.dim) if kind == "hnsw" else ExactIndex(self.embedder.dim)
            if len(ids):
                index.add(matrix, ids, metadata)
            if cache is not None:
                for stale in cache.parent.glob(f"{self.store.path.name}.g*.npz"):
                    stale.unlink(missing_ok=True)
                index.save(cache)
        self._index, self._index_generation = index, generation
        return index

    # -- search -----------------------------------------------------------------------------
    def vector_ranking(self, query: str, n: int, filter: Filter = None) -> list[tuple[int, float]]:
        q = self.embedder.embed([query])
        res = self.vector_index().search(q, n, filter)
        return [(int(i), float(s)) for i, s in zip(res.ids[0], res.scores[0]) if i >= 0]

    def bm25_ranking(self, query: str, n: int, filter: Filter = None) -> list[tuple[int, float]]:
        if filter is None:
            return self.store.bm25_search(query, n)
        # Filters apply to document metadata; over-fetch, then keep matching chunks.
        ranked = self.store.bm25_search(query, 4 * n)
        keep = {r.id for r in self.store.chunks([i for i, _ in ranked])
                if matches({**r.metadata, "source": r.source, "doc_id": r.doc_id}, filter)}
        return [(i, s) for i, s in ranked if i in keep][:n]

    def search(self, query: str, k: int = 5, mode: str | None = None, filter: Filter = None,
               reranker: Reranker | None = None) -> list[Hit]:
        """Top-k chunks for a query: BM25, vector, or both fused by RRF; then an optional reranker."""
        mode = mode or self.config.mode
        if mode not in MODES:
            raise ConfigError(f"retrieval mode must be one of {MODES}, got {mode!r}")
        if k < 1:
            raise GenlabError(f"k must be >= 1, got {k}")
        n = max(self.config.candidates, k)
        rankings: dict[str, list[tuple[int, float]]] = {}
        if mode in ("hybrid", "bm25"):
            rankings["bm25"] = self.bm25_ranking(query, n, filter)
        if mode in ("hybrid", "vector"):
            rankings["vector"] = self.vector_ranking(query, n, filter)
        if mode == "hybrid":
            fused = reciprocal_rank_fusion([[i for i, _ in r] for r in rankings.values()], k=self.config.rrf_k)
        else:
            fused = next(iter(rankings.values()))
        keep = fused if reranker is not None else fused[:k]
        ranks = {name: {i: pos for pos, (i, _) in enumerate(r, start=1)} for name, r in rankings.items()}
        records = {r.id: r for r in self.store.chunks([i for i, _ in keep])}
        hits = [Hit.from_record(records[i], s, {name: rk[i] for name, rk in ranks.items() if i in rk})
                for i, s in keep if i in records]
        return reranker.rerank(query, hits, k) if reranker is not None else hits
