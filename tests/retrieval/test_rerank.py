"""Rerankers: MMR on a hand case, cross-encoder parity with transformers, late interaction with MiniLM.

    python -m pytest -q tests/retrieval/test_rerank.py
"""

import json

import numpy as np
import pytest
import torch

from genlab.errors import CheckpointError, ConfigError
from genlab.models.encoder import default_model_dir
from genlab.retrieval.knowledge import Hit
from genlab.retrieval.rerank import CrossEncoderReranker, MMRReranker, mmr_select


def hit(i: int, text: str, vector=None) -> Hit:
    return Hit(i, i, f"s{i}", text, 0.0, 0, len(text), {}, {}, None if vector is None else np.asarray(vector, np.float32))


def test_mmr_hand_case():
    q = np.array([1.0, 0.0])
    cands = np.array([[1.0, 0.0], [0.99, 0.141], [0.6, -0.8]])  # two near-duplicates and a different one
    assert mmr_select(q, cands, 3, lambda_=1.0) == [0, 1, 2]  # pure relevance
    # After picking 0 with lambda 0.3: candidate 1 scores .3*.99 - .7*.99 = -.396, candidate 2 .3*.6 - .7*.6 = -.24.
    assert mmr_select(q, cands, 2, lambda_=0.3) == [0, 2]
    with pytest.raises(ConfigError):
        mmr_select(q, cands, 2, lambda_=1.5)


def test_mmr_reranker_uses_stored_vectors():
    class NoEmbed:  # only the query is embedded when hits carry vectors
        def embed(self, texts, batch_size=32, progress=None):
            assert texts == ["q"]
            return np.array([[1.0, 0.0]], np.float32)

    hits = [hit(0, "a", [1, 0]), hit(1, "b", [0.99, 0.141]), hit(2, "c", [0.6, -0.8])]
    out = MMRReranker(NoEmbed(), lambda_=0.3).rerank("q", hits, 2)
    assert [h.chunk_id for h in out] == [0, 2] and out[1].score == pytest.approx(0.6)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, num_labels=1, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    path = tmp_path_factory.mktemp("cross")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (path / "tokenizer.json").write_bytes((default_model_dir() / "tokenizer.json").read_bytes())
    return path, model


def test_cross_encoder_matches_transformers_logits(tiny_cross_encoder):
    from transformers import BertTokenizerFast

    path, model = tiny_cross_encoder
    ours = CrossEncoderReranker.from_pretrained(path)
    query = "what is the capital of france"
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "x", "A much longer passage " * 20]
    tok = BertTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    batch = tok([query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(ours.score(query, docs), want, atol=1e-5)
    ranked = ours.rerank(query, [hit(i, d) for i, d in enumerate(docs)], 2)
    assert [h.chunk_id for h in ranked] == list(np.argsort(-want)[:2])


def test_cross_encoder_needs_a_classifier_head(tmp_path):
    with pytest.raises(CheckpointError):
        CrossEncoderReranker.from_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes((default_model_dir() / name).read_bytes())
    with pytest.raises(CheckpointError, match="classifier"):
        CrossEncoderReranker.from_pretrained(tmp_path)


def test_late_interaction_prefers_the_answering_passage():
    from genlab.models.encoder import Encoder
    from genlab.retrieval.rerank import LateInteractionReranker

    rr = LateInteractionReranker(Encoder.from_pretrained())
    docs = ["The Eiffel Tower is a landmark in Paris.", "Use the open() builtin to read a file in Python.",
            "Photosynthesis turns light into chemical energy."]
    scores = rr.score("how do I read a file in python", docs)
    assert int(np.argmax(scores)) == 1 and scores.max() <= 1.0 + 1e-6
    assert [h.chunk_id for h in rr.rerank("plants and sunlight", [hit(i, d) for i, d in enumerate(docs)], 1)] == [2]
