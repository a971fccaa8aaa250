"""The no-download corpus: real prose + stdlib code, deterministic, truncated at document ends.

Handbook III (tokenization) data. `python -m pytest -q tests/data/test_corpus.py`
"""

from __future__ import annotations

import time

import pytest

from genlab.data.corpus import DOCUMENT_SEPARATOR, pieces, split_documents, stdlib_corpus, stdlib_documents
from genlab.errors import ConfigError


def test_corpus_is_deterministic_bounded_and_fast():
    start = time.perf_counter()
    text = stdlib_corpus(5_000_000)
    assert time.perf_counter() - start < 3.0
    assert 4_900_000 <= len(text.encode("utf-8")) <= 5_000_000
    assert stdlib_corpus(5_000_000) == text
    assert stdlib_corpus(5_000_000, seed=1) != text  # the seed shuffles the source files


def test_prose_comes_first_then_code_and_no_test_packages():
    docs = stdlib_documents(2_000_000)
    assert docs[0].source.startswith("pydoc:") and "Python" in "".join(d.text for d in docs[:20])
    code = [d for d in docs if d.source.endswith(".py")]
    assert len(code) > 20 and any("def " in d.text for d in code)
    assert not any(part in ("test", "tests", "site-packages") for d in code for part in d.source.split("/")[:-1])


def test_truncation_happens_at_document_boundaries():
    docs = stdlib_documents(200_000, seed=3)
    text = stdlib_corpus(200_000, seed=3)
    assert text == DOCUMENT_SEPARATOR.join(d.text for d in docs)
    assert len(text.encode("utf-8")) <= 200_000
    full = {d.source: d.text for d in stdlib_documents(seed=3)}
    assert all(full[d.source] == d.text for d in docs)  # whole documents only
    assert stdlib_corpus(0) == ""


def test_split_documents_is_a_deterministic_partition():
    docs = [f"doc {i}" for i in range(50)]
    train, val = split_documents(docs, val_fraction=0.2, seed=7)
    assert len(val) == 10 and sorted(train + val) == sorted(docs)
    assert train == [d for d in docs if d in train]  # order kept
    assert split_documents(docs, 0.2, seed=7) == (train, val)
    assert split_documents(docs, 0.2, seed=8) != (train, val)
    assert [len(part) for part in split_documents(["a", "b"], 0.01)] == [1, 1]  # each side gets one
    with pytest.raises(ConfigError, match="val_fraction"):
        split_documents(docs, 1.5)


def test_pieces_cut_at_line_ends_within_the_size():
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(200))
    parts = pieces([text, "short"], 100)
    assert "".join(parts[:-1]) == text and parts[-1] == "short"
    assert all(len(p.encode()) <= 100 and p.endswith("\n") for p in parts[:-1])
    assert len(pieces(["a" * 500], 100)) == 1  # a line longer than the size stays whole
    # Held-out pieces are about the asked fraction of the bytes, whatever the documents' sizes.
    docs = [d.text for d in stdlib_documents(40_000, seed=0)]
    _, val = split_documents(pieces(docs, 2048), val_fraction=0.1, seed=0)
    assert 0.05 < sum(map(len, val)) / sum(map(len, docs)) < 0.2
    with pytest.raises(ConfigError):
        pieces(docs, 0)
