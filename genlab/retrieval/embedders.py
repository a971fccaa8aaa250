"""What retrieval needs from an embedding model, and a dependency-free hashing embedder for tests.

Handbook II (embeddings). `Embedder` is the protocol the knowledge base uses; genlab's BERT
`Encoder` (genlab.models.encoder) satisfies it via `SentenceEmbedder`. `HashingEmbedder` maps words
to signed buckets (the "hashing trick", Weinberger et al. 2009) and L2-normalises: no model, no
download, deterministic — lexical overlap only, for fast tests and crash tests, not for quality.

    python -c "from genlab.retrieval.embedders import HashingEmbedder; print(HashingEmbedder(8).embed(['a b']))"
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

Progress = Callable[[int], None]


class Embedder(Protocol):
    name: str  # recorded in the store so vectors from different models never mix
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray: ...


class HashingEmbedder:
    """Signed feature hashing of lower-cased word unigrams, L2-normalised."""

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _bucket(self, word: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return h % self.dim, (1.0 if (h >> 63) else -1.0)

    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                b, sign = self._bucket(word)
                out[i, b] += sign
            if progress is not None and (i + 1) % batch_size == 0:
                progress(batch_size)
        if progress is not None and len(texts) % batch_size:
            progress(len(texts) % batch_size)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class SentenceEmbedder:
    """genlab's BERT encoder behind the Embedder protocol, with token spans for chunking."""

    def __init__(self, model_dir: str | Path | None = None):
        from genlab.models.encoder import Encoder, default_model_dir

        path = Path(model_dir) if model_dir is not None else default_model_dir()
        self.encoder = Encoder.from_pretrained(path)
        self.dim = self.encoder.dim
        self.name = f"bert:{path.resolve().name if path.name != 'model' else path.resolve().parent.name}"

    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
        return self.encoder.embed(texts, batch_size=batch_size, progress=progress)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.encoder.token_spans(text)
