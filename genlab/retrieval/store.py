"""Document store on SQLite (standard library): documents, chunks, embeddings and an FTS5 BM25 index.

Handbook V (vector databases, RAG). Papers: Robertson & Zaragoza 2009, "The Probabilistic Relevance
Framework: BM25 and Beyond" (FTS5's bm25(): k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5)/(n + 0.5))).

Durability: WAL journal, foreign keys on, and every document is written in its own transaction
(BEGIN IMMEDIATE ... COMMIT), so a killed ingest loses at most the document in flight; everything
committed before stays intact and searchable. Re-ingesting a source whose text changed deletes its
old chunks (FTS rows go with them through triggers) and inserts the new ones in the same transaction;
unchanged text (same SHA-256) is skipped. A `generation` counter bumps on every change so derived
vector indexes know when they are stale. Embeddings are float32 BLOBs beside their chunks.

    python -m pytest -q tests/retrieval/test_store.py
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from genlab.errors import GenlabError
from genlab.retrieval.chunking import Chunk

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    n_chunks INTEGER NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    embedding BLOB
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id, ord);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='{tokenizer}');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""


@dataclass
class Document:
    id: int
    source: str
    text: str
    metadata: dict
    n_chunks: int
    content_hash: str


@dataclass
class ChunkRecord:
    id: int
    doc_id: int
    source: str
    ord: int
    text: str
    start: int
    end: int
    metadata: dict
    vector: np.ndarray | None = None  # the stored embedding, when one was saved
    line: int = 1  # 1-based line of the document where the chunk starts


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: every word quoted, any word may match (OR)."""
    words = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


class DocumentStore:
    def __init__(self, path: str | Path, tokenizer: str = "porter unicode61"):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per document.
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(_SCHEMA.format(tokenizer=tokenizer))
        except sqlite3.DatabaseError as e:
            raise GenlabError(f"cannot open document store {path}: {e}") from e
        with self.transaction():
            if self._meta("schema_version") is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("generation", "0")
        if self._meta("schema_version") != str(SCHEMA_VERSION):
            raise GenlabError(f"{path} has store schema {self._meta('schema_version')}, expected {SCHEMA_VERSION}")

    # -- plumbing ---------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "DocumentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE (take the write lock up front) ... COMMIT, or ROLLBACK on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                          (key, value))

    @property
    def generation(self) -> int:
        """Bumped by every committed change; derived indexes compare it to know they are stale."""
        return int(self._meta("generation") or 0)

    def _bump(self) -> None:
        self._set_meta("generation", str(self.generation + 1))

    def bind_embedder(self, name: str, dim: int) -> None:
        """Record which embedder fills this store; refuse a different one later."""
        have = self._meta("embedder")
        if have is None:
            with self.transaction():
                self._set_meta("embedder", json.dumps({"name": name, "dim": dim}))
            return
        stored = json.loads(have)
        if stored != {"name": name, "dim": dim}:
            raise GenlabError(f"{self.path} holds embeddings from {stored['name']} (dim {stored['dim']}); "
                              f"cannot mix with {name} (dim {dim}) — use another store")

    # -- writes -----------------------------------------------------------------------------
    def upsert_document(self, source: str, text: str, chunks: Sequence[Chunk], embeddings: np.ndarray | None = None,
                        metadata: dict | None = None) -> tuple[int, str]:
        """Add or replace one document with its chunks in one transaction.

        Returns (doc_id, status) with status "added", "updated" or "unchanged"."""
        if embeddings is not None and len(embeddings) != len(chunks):
            raise GenlabError(f"{source}: {len(chunks)} chunks but {len(embeddings)} embeddings")
        digest = content_hash(text)
        meta_json = json.dumps(metadata or {}, sort_keys=True)
        with self.transaction() as db:
            old = db.execute("SELECT id, content_hash, metadata FROM documents WHERE source = ?", (source,)).fetchone()
            if old is not None and old[1] == digest and old[2] == meta_json:
                return old[0], "unchanged"
            if old is not None:
                db.execute("DELETE FROM chunks WHERE doc_id = ?", (old[0],))
                db.execute("DELETE FROM documents WHERE id = ?", (old[0],))
            doc_id = db.execute(
                "INSERT INTO documents(source, content_hash, text, metadata, n_chunks, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                (source, digest, text, meta_json, len(chunks), time.time())).lastrowid
            blobs = [None] * len(chunks) if embeddings is None else [np.asarray(e, np.float32).tobytes() for e in embeddings]
            db.executemany("INSERT INTO chunks(doc_id, ord, text, start, end, embedding) VALUES (?, ?, ?, ?, ?, ?)",
                           [(doc_id, i, c.text, c.start, c.end, b) for i, (c, b) in enumerate(zip(chunks, blobs))])
            self._bump()
        return doc_id, ("updated" if old is not None else "added")

    def delete_document(self, source: str) -> bool:
        with self.transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE source = ?", (source,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],))
            db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
            self._bump()
        return True

    # -- reads ------------------------------------------------------------------------------
    def document(self, source: str) -> Document | None:
        row = self.conn.execute("SELECT id, source, text, metadata, n_chunks, content_hash FROM documents WHERE source = ?",
                                (source,)).fetchone()
        return None if row is None else Document(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    def documents(self) -> list[Document]:
        rows = self.conn.execute("SELECT id, source, text, metadata, n_chunks, content_hash FROM documents ORDER BY id")
        return [Document(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def count(self) -> tuple[int, int]:
        """(documents, chunks)."""
        docs = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        return docs, self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def chunks(self, ids: Sequence[int]) -> list[ChunkRecord]:
        """Chunk records in the order of ids (unknown ids are skipped)."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        found: dict[int, ChunkRecord] = {}
        for s in range(0, len(ids), 500):  # SQLite caps bound parameters per statement
            part = ids[s:s + 500]
            rows = self.conn.execute(
                f"SELECT c.id, c.doc_id, d.source, c.ord, c.text, c.start, c.end, d.metadata, c.embedding, "
                f"1 + length(substr(d.text, 1, c.start)) - length(replace(substr(d.text, 1, c.start), char(10), '')) "
                f"FROM chunks c "
                f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({','.join('?' * len(part))})", part)
            for r in rows:
                vector = None if r[8] is None else np.frombuffer(r[8], dtype=np.float32)
                found[r[0]] = ChunkRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), vector, r[9])
        return [found[i] for i in ids if i in found]

    def embeddings(self, dim: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(chunk ids, (n, dim) float32 matrix, per-chunk metadata) of every chunk with an embedding."""
        rows = self.conn.execute(
            "SELECT c.id, c.embedding, d.source, d.id, d.metadata FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.embedding IS NOT NULL ORDER BY c.id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = np.zeros((len(rows), dim), np.float32)
        for i, r in enumerate(rows):
            vec = np.frombuffer(r[1], dtype=np.float32)
            if len(vec) != dim:
                raise GenlabError(f"chunk {r[0]} has a {len(vec)}-dim embedding, expected {dim}")
            matrix[i] = vec
        metadata = [{**json.loads(r[4]), "source": r[2], "doc_id": r[3]} for r in rows]
        return ids, matrix, metadata

    def bm25_search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) best first; FTS5's bm25() is negated so higher is better."""
        expression = fts_query(query)
        if not expression:
            return []
        rows = self.conn.execute(
            "SELECT rowid, bm25(chunks_fts) AS score FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY score LIMIT ?",
            (expression, int(k))).fetchall()
        return [(r[0], -r[1]) for r in rows]

    def integrity_check(self) -> bool:
        ok = self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        try:
            self.conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError:
            return False
        return ok
