"""Rerankers: MMR for diversity, late-interaction MaxSim (offline default) and a BERT cross-encoder.

Handbook V (reranking). Papers: Carbonell & Goldstein 1998, "The use of MMR, diversity-based
reranking"; Khattab & Zaharia 2020, "ColBERT" (late interaction); Nogueira & Cho 2019, "Passage
re-ranking with BERT" (cross-encoder).

* MMR picks, one at a time, argmax_d  λ·sim(q, d) − (1 − λ)·max_{s chosen} sim(d, s).
* LateInteractionReranker: score(q, d) = mean over query tokens i of max over document tokens j of
  cos(E_q[i], E_d[j]), with contextual token vectors from the same MiniLM encoder (specials dropped).
  Every query token meets every document token, so it sees more than one pooled vector — but the
  two texts are still encoded separately. This is the default, because no cross-encoder weights are
  shipped offline (no PyPI package in this environment carries, e.g., ms-marco-MiniLM).
* CrossEncoderReranker: the real architecture — "[CLS] query [SEP] passage [SEP]" with token types
  0/1 through a BERT, tanh pooler, linear head; score = logit 0. It loads any Hugging Face
  BertForSequenceClassification directory (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2 copied in by
  hand) and matches transformers' logits (tests/retrieval/test_rerank.py, tiny random model).

    python -m pytest -q tests/retrieval/test_rerank.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from genlab.errors import CheckpointError, ConfigError
from genlab.models.encoder import BertConfig, BertModel, Encoder

if TYPE_CHECKING:
    from genlab.retrieval.embedders import Embedder
    from genlab.retrieval.knowledge import Hit


def mmr_select(query_vec: np.ndarray, cand_vecs: np.ndarray, k: int, lambda_: float = 0.5) -> list[int]:
    """Indices of cand_vecs in MMR order (cosine similarity; vectors need not be normalised)."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ConfigError(f"MMR lambda must be in [0, 1], got {lambda_}")
    c = cand_vecs / np.maximum(np.linalg.norm(cand_vecs, axis=1, keepdims=True), 1e-12)
    q = query_vec / max(float(np.linalg.norm(query_vec)), 1e-12)
    relevance = c @ q
    pairwise = c @ c.T
    chosen: list[int] = []
    redundancy = np.full(len(c), -np.inf)  # max similarity to anything chosen so far
    for _ in range(min(k, len(c))):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        gain = lambda_ * relevance - (1.0 - lambda_) * penalty
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        redundancy = np.maximum(redundancy, pairwise[best])
    return chosen


class MMRReranker:
    def __init__(self, embedder: "Embedder", lambda_: float = 0.5):
        self.embedder, self.lambda_ = embedder, lambda_

    def rerank(self, query: str, hits: list["Hit"], k: int) -> list["Hit"]:
        if not hits:
            return []
        if all(h.vector is not None for h in hits):
            vecs = np.stack([h.vector for h in hits])
        else:
            vecs = self.embedder.embed([h.text for h in hits])
        q = self.embedder.embed([query])[0]
        order = mmr_select(q, vecs, k, self.lambda_)
        return [dataclasses.replace(hits[i], score=float(vecs[i] @ q)) for i in order]


class _ScoreReranker:
    """Shared rerank(): score every (query, hit) pair, sort descending, keep k."""

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def rerank(self, query: str, hits: list["Hit"], k: int) -> list["Hit"]:
        if not hits:
            return []
        scores = self.score(query, [h.text for h in hits])
        order = np.argsort(-scores, kind="stable")[:k]
        return [dataclasses.replace(hits[i], score=float(scores[i])) for i in order]


class LateInteractionReranker(_ScoreReranker):
    def __init__(self, encoder: Encoder, batch_size: int = 32):
        self.encoder, self.batch_size = encoder, batch_size

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        q = self.encoder.embed_tokens([query])[0][1:-1]  # drop [CLS] and [SEP]
        docs = self.encoder.embed_tokens(list(texts), self.batch_size)
        out = np.zeros(len(texts), np.float32)
        if len(q) == 0:
            return out
        for i, d in enumerate(docs):
            d = d[1:-1]
            out[i] = float((q @ d.T).max(axis=1).mean()) if len(d) else 0.0
        return out


class CrossEncoderReranker(_ScoreReranker):
    def __init__(self, encoder: Encoder, head: nn.Linear, batch_size: int = 16):
        self.encoder, self.head, self.batch_size = encoder, head.eval(), batch_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "CrossEncoderReranker":
        """Load a BertForSequenceClassification directory (config.json, model.safetensors, tokenizer.json)."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(model_dir)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (path / name).is_file():
                raise CheckpointError(f"{path} is not a cross-encoder directory: {name} is missing")
        raw = json.loads((path / "config.json").read_text())
        tensors = load_file(str(path / "model.safetensors"))
        if "classifier.weight" not in tensors:
            raise CheckpointError(f"{path} has no classifier head (classifier.weight); not a sequence classifier")
        model = BertModel(BertConfig.from_dict(raw))
        try:
            model.load_hf_state_dict({k: v for k, v in tensors.items() if not k.startswith("classifier.")})
        except KeyError as e:
            raise CheckpointError(f"{path / 'model.safetensors'} lacks tensor {e}") from e
        weight = tensors["classifier.weight"]
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict({"weight": weight, "bias": tensors["classifier.bias"]})
        max_len = int(raw.get("max_position_embeddings", 512))
        return cls(Encoder(model, Tokenizer.from_file(str(path / "tokenizer.json")), max_len), head)

    def logits(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Raw classifier logits (n, num_labels) for (query, text) pairs."""
        out = np.zeros((len(texts), self.head.out_features), np.float32)
        with torch.inference_mode():
            for chosen, hidden, _ in self.encoder.encode_pairs(queries, texts, self.batch_size):
                out[chosen] = self.head(self.encoder.model.pool(hidden)).numpy()
        return out

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return self.logits([query] * len(texts), texts)[:, 0]
