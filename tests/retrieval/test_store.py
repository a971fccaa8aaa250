"""SQLite store: WAL, one transaction per document, replace-on-change, rollback, FTS5 BM25 vs its formula.

    python -m pytest -q tests/retrieval/test_store.py
"""

import math
import re

import numpy as np
import pytest

from genlab.errors import GenlabError
from genlab.retrieval.chunking import Chunk, chunk_text
from genlab.retrieval.store import DocumentStore, fts_query


def chunks_of(text: str) -> list[Chunk]:
    return chunk_text(text, "tokens", 4, 1)


@pytest.fixture()
def store(tmp_path):
    with DocumentStore(tmp_path / "s.db") as s:
        yield s


def test_wal_mode_and_schema(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.integrity_check()


def test_upsert_unchanged_updated_and_replaced_chunks(store):
    text = "alpha beta gamma delta epsilon zeta eta theta"
    vec = np.ones((len(chunks_of(text)), 3), np.float32)
    doc_id, status = store.upsert_document("a.txt", text, chunks_of(text), vec, {"lang": "en"})
    assert status == "added" and store.count() == (1, len(vec))
    gen = store.generation
    assert store.upsert_document("a.txt", text, chunks_of(text), vec, {"lang": "en"})[1] == "unchanged"
    assert store.generation == gen  # nothing changed, nothing bumped
    assert [c for c, _ in store.bm25_search("gamma")]
    new_text = "completely different words now and then"
    new_chunks = chunks_of(new_text)
    _, status = store.upsert_document("a.txt", new_text, new_chunks, np.zeros((len(new_chunks), 3), np.float32))
    assert status == "updated" and store.generation == gen + 1
    assert store.count() == (1, 2) and len(new_chunks) == 2
    assert store.bm25_search("gamma") == []  # old chunks gone from the full-text index too
    hits = store.bm25_search("different")
    (rec,) = store.chunks([hits[0][0]])
    assert rec.source == "a.txt" and "different" in rec.text and rec.vector.tolist() == [0, 0, 0] and rec.line == 1
    assert store.integrity_check()


def test_failed_write_rolls_back_and_keeps_old_version(store):
    store.upsert_document("a.txt", "old words here", chunks_of("old words here"))
    bad = [Chunk("fine", 0, 4), Chunk(None, 4, 8)]  # NOT NULL violation on the second chunk
    with pytest.raises(Exception):
        store.upsert_document("a.txt", "new text", bad)
    doc = store.document("a.txt")
    assert doc.text == "old words here" and store.count() == (1, 1)
    assert store.bm25_search("old") and not store.bm25_search("fine")
    with pytest.raises(GenlabError, match="embeddings"):
        store.upsert_document("b.txt", "x y", chunks_of("x y"), np.zeros((5, 3)))


def test_chunk_line_numbers(store):
    text = "line one\nline two\n\nline four has words\nfive"
    store.upsert_document("l.txt", text, chunk_text(text, "tokens", 2, 0))
    recs = store.chunks(range(1, 20))
    assert [(r.text, r.line) for r in recs] == [("line one", 1), ("line two", 2), ("line four", 4), ("has words", 4),
                                                ("five", 5)]


def test_delete_document(store):
    store.upsert_document("a.txt", "one two three", chunks_of("one two three"))
    assert store.delete_document("a.txt") and not store.delete_document("a.txt")
    assert store.count() == (0, 0) and store.bm25_search("two") == []


def test_embedder_binding_refuses_mixing(store):
    store.bind_embedder("m1", 3)
    store.bind_embedder("m1", 3)
    with pytest.raises(GenlabError, match="cannot mix"):
        store.bind_embedder("m2", 3)


def test_fts_query_escapes_syntax():
    assert fts_query('what "is" NEAR(a b) OR -x*?') == '"what" OR "is" OR "near" OR "a" OR "b" OR "or" OR "x"'
    assert fts_query("!!!") == ""


def test_bm25_scores_equal_the_okapi_formula(tmp_path):
    """FTS5's bm25() (k1=1.2, b=0.75, idf=ln((N-n+.5)/(n+.5)), floored at 1e-6) recomputed by hand."""
    docs = ["apple banana apple cherry", "banana banana date", "cherry date elder fig grape",
            "apple", "fig fig fig fig banana", "grape elder", "kiwi lemon mango", "date kiwi"]
    with DocumentStore(tmp_path / "b.db", tokenizer="unicode61") as s:
        for i, d in enumerate(docs):
            s.upsert_document(f"d{i}", d, [Chunk(d, 0, len(d))])
        ids = {rec.id: rec.text for rec in s.chunks(range(1, 20))}
        tokens = {cid: re.findall(r"\w+", t) for cid, t in ids.items()}
        n_docs, avgdl = len(tokens), sum(map(len, tokens.values())) / len(tokens)

        def bm25(query_terms, cid):
            score = 0.0
            for term in query_terms:
                n = sum(term in t for t in tokens.values())
                idf = math.log((n_docs - n + 0.5) / (n + 0.5))
                idf = idf if idf > 0 else 1e-6
                f = tokens[cid].count(term)
                score += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(tokens[cid]) / avgdl))
            return score

        for query in ("apple", "banana fig", "date kiwi lemon", "cherry grape"):
            got = s.bm25_search(query, k=20)
            want = sorted(((cid, bm25(query.split(), cid)) for cid in tokens
                           if set(query.split()) & set(tokens[cid])), key=lambda kv: -kv[1])
            assert len(got) == len(want)
            np.testing.assert_allclose([sc for _, sc in got], [sc for _, sc in want], rtol=1e-6)
            assert {c for c, _ in got} == {c for c, _ in want}
