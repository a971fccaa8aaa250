"""Crash test: SIGKILL an ingesting process midway; every committed document must be intact and searchable.

    python -m pytest -q tests/retrieval/test_crash.py
"""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from genlab.retrieval.chunking import ChunkConfig
from genlab.retrieval.embedders import HashingEmbedder
from genlab.retrieval.knowledge import KnowledgeBase, RetrievalConfig

ROOT = Path(__file__).resolve().parents[2]

DOC_SOURCE = textwrap.dedent('''
    import random
    def doc_text(i):
        rng = random.Random(i)
        words = [rng.choice(["river", "stone", "cloud", "ember", "frost", "maple", "quartz", "harbor"]) for _ in range(400)]
        return f"document {i} uniqtoken{i:05d} " + " ".join(words)
''')
CHILD = DOC_SOURCE + textwrap.dedent('''
    import sys
    from genlab.retrieval.embedders import HashingEmbedder
    from genlab.retrieval.chunking import ChunkConfig
    from genlab.retrieval.knowledge import KnowledgeBase, RetrievalConfig
    kb = KnowledgeBase(sys.argv[1], HashingEmbedder(64), RetrievalConfig(chunk=ChunkConfig("tokens", 60, 10)))
    kb.ingest((f"doc{i:05d}.txt", doc_text(i), {"i": i}) for i in range(100000))
''')
namespace: dict = {}
exec(DOC_SOURCE, namespace)
doc_text = namespace["doc_text"]


def committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM documents").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_midway_loses_nothing_committed(tmp_path):
    db = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while committed(db) < 25:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed midway, not finished

    config = RetrievalConfig(chunk=ChunkConfig("tokens", 60, 10))
    with KnowledgeBase(db, HashingEmbedder(64), config) as kb:
        assert kb.store.integrity_check()
        docs = kb.store.documents()
        n = len(docs)
        assert n >= 25
        assert [d.source for d in docs] == [f"doc{i:05d}.txt" for i in range(n)]  # a committed prefix, no holes
        orphans = kb.store.conn.execute("SELECT count(*) FROM chunks WHERE doc_id NOT IN (SELECT id FROM documents)")
        assert orphans.fetchone()[0] == 0
        for i, doc in enumerate(docs):
            assert doc.text == doc_text(i) and doc.metadata == {"i": i}
            rows = kb.store.conn.execute("SELECT text, start, end, embedding FROM chunks WHERE doc_id = ? ORDER BY ord",
                                         (doc.id,)).fetchall()
            assert len(rows) == doc.n_chunks > 1
            assert all(t == doc.text[s:e] and emb is not None for t, s, e, emb in rows)
            hits = kb.search(f"uniqtoken{i:05d}", k=1, mode="bm25")
            assert hits and hits[0].source == doc.source
        first_chunk = kb.search("uniqtoken00003", k=1, mode="bm25")[0].text
        assert kb.search(first_chunk, k=1, mode="vector")[0].source == "doc00003.txt"

        # Resuming the ingest skips what is there and adds the rest.
        report = kb.ingest((f"doc{i:05d}.txt", doc_text(i), {"i": i}) for i in range(n + 3))
        assert (report.unchanged, report.added) == (n, 3)
