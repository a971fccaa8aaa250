"""genlab.retrieval: embeddings in use — vector indexes, a SQLite document store, hybrid search, reranking, RAG.

Handbook II (embeddings) and V (vector databases, reranking, retrieval-augmented generation).
  indexes/    exact, LSH, IVF-PQ, HNSW behind one interface (add / search / remove / save / load)
  store       SQLite documents + chunks + embeddings, FTS5 BM25, WAL, one transaction per document
  chunking    token or sentence windows with overlap;  hybrid: reciprocal rank fusion (k = 60)
  knowledge   ingest files, keep the vector index in step with the store, hybrid search
  rerank      MMR, late interaction (MaxSim), BERT cross-encoder;  rag: prompt with numbered sources
  metrics     hit rate, MRR, recall@k, NDCG, ANN recall;  embedders: protocol + hashing embedder
  corpus      real paragraphs from pydoc_data.topics and the standard library (benchmarks, tests)
Submodules are imported on use (torch only loads with the encoder or a reranker).

    python -m pytest -q tests/retrieval
"""
