"""Knowledge base: file ingest, replace-on-change, hybrid search, filters, cached vector index, RAG end to end.

    python -m pytest -q tests/retrieval/test_knowledge.py
"""

import pytest

from genlab.errors import GenlabError
from genlab.retrieval.chunking import ChunkConfig
from genlab.retrieval.embedders import HashingEmbedder
from genlab.retrieval.knowledge import KnowledgeBase, RetrievalConfig, find_text_files
from genlab.retrieval.rag import ExtractiveGenerator, RAGPipeline
from genlab.retrieval.rerank import MMRReranker

FILES = {
    "zoo.md": "# Zoo\nThe city zoo opens at nine in the morning. Penguins are fed at noon every day.",
    "notes/park.txt": "The park has a large lake. Ducks and swans live on the lake all year.",
    "code/util.py": "def parse_config(path):\n    \"\"\"Read a TOML configuration file and return a dict.\"\"\"\n    return {}\n",
    "notes/ignored.bin": "binary stuff",
}


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "docs"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def make_kb(tmp_path, **config):
    config.setdefault("chunk", ChunkConfig("tokens", 12, 3))
    return KnowledgeBase(tmp_path / "kb.db", HashingEmbedder(128), RetrievalConfig(**config))


def test_find_text_files(corpus):
    names = sorted(p.name for p in find_text_files([corpus]))
    assert names == ["park.txt", "util.py", "zoo.md"]
    with pytest.raises(GenlabError, match="unsupported"):
        find_text_files([corpus / "notes" / "ignored.bin"])
    with pytest.raises(GenlabError, match="no such"):
        find_text_files([corpus / "missing.md"])


def test_ingest_update_and_hybrid_search(corpus, tmp_path):
    with make_kb(tmp_path) as kb:
        report = kb.ingest_paths([corpus])
        assert (report.added, report.updated, report.unchanged) == (3, 0, 0) and report.chunks >= 4
        assert kb.ingest_paths([corpus]).unchanged == 3
        hits = kb.search("when are the penguins fed", k=3)
        assert hits[0].source.endswith("zoo.md") and set(hits[0].ranks) == {"bm25", "vector"}
        assert "Penguins" in hits[0].text or "penguins" in hits[0].text
        (corpus / "zoo.md").write_text("The zoo is closed for renovation until spring.")
        report = kb.ingest_paths([corpus])
        assert (report.updated, report.unchanged) == (1, 2)
        assert not any("zoo" in h.source for h in kb.search("penguins fed noon", k=3, mode="bm25"))
        assert kb.search("renovation", k=1)[0].source.endswith("zoo.md")
        only_py = kb.search("configuration file", k=3, filter={"suffix": ".py"})
        assert only_py and all(h.source.endswith(".py") for h in only_py)
        assert all(h.source.endswith(".txt") for h in kb.search("lake", k=3, mode="vector", filter={"suffix": ".txt"}))
        with pytest.raises(GenlabError):
            kb.search("x", k=0)


def test_vector_index_is_cached_per_generation(corpus, tmp_path):
    with make_kb(tmp_path) as kb:
        kb.ingest_paths([corpus])
        kb.vector_index()
        cached = list(tmp_path.glob("kb.db.g*.npz"))
        assert [p.name for p in cached] == [f"kb.db.g{kb.store.generation}.exact.npz"]
    with make_kb(tmp_path) as kb:
        kb.store.embeddings = None  # would fail if the index were rebuilt instead of loaded
        assert len(kb.vector_index()) == kb.store.count()[1]
    with make_kb(tmp_path, hnsw_above=2) as kb:
        (corpus / "park.txt").unlink(missing_ok=True)
        (corpus / "notes" / "park.txt").write_text("A changed park description about geese.")
        kb.ingest_paths([corpus])
        assert type(kb.vector_index()).__name__ == "HNSWIndex"
        assert [p.name for p in tmp_path.glob("kb.db.g*.npz")] == [f"kb.db.g{kb.store.generation}.hnsw.npz"]


def test_mmr_rerank_and_rag_end_to_end(corpus, tmp_path):
    with make_kb(tmp_path) as kb:
        kb.ingest_paths([corpus])
        hits = kb.search("lake ducks swans", k=2, reranker=MMRReranker(kb.embedder, 0.7))
        assert len(hits) == 2 and hits[0].source.endswith("park.txt")
        rag = RAGPipeline.from_knowledge_base(kb, ExtractiveGenerator())
        answer = rag.ask("When are the penguins fed?")
        assert answer.citations and answer.cited_sources[0].source.endswith("zoo.md")
        assert "noon" in answer.answer


def test_embedder_mismatch_is_refused(corpus, tmp_path):
    with make_kb(tmp_path) as kb:
        kb.ingest_paths([corpus])
    with pytest.raises(GenlabError, match="cannot mix"):
        KnowledgeBase(tmp_path / "kb.db", HashingEmbedder(64))


def test_real_minilm_finds_a_paraphrase(tmp_path):
    from genlab.retrieval.embedders import SentenceEmbedder

    with KnowledgeBase(tmp_path / "m.db", SentenceEmbedder(), RetrievalConfig(chunk=ChunkConfig("tokens", 64, 8))) as kb:
        kb.ingest([("zoo", FILES["zoo.md"], None), ("park", FILES["notes/park.txt"], None),
                   ("code", FILES["code/util.py"], None)])
        assert kb.search("at what hour do the animal keepers give food to the birds", k=1, mode="vector")[0].source == "zoo"
        assert kb.search("load settings from disk", k=1, mode="vector")[0].source == "code"
