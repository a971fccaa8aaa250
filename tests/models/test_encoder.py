"""genlab's BERT encoder vs sentence-transformers on all-MiniLM-L6-v2 (cosine >= 0.99999 per text).

    python -m pytest -q tests/models/test_encoder.py
"""

import json

import numpy as np
import pytest
import torch

from genlab.errors import CheckpointError, TokenizerError
from genlab.models.encoder import BertConfig, Encoder, default_model_dir

VARIED = [
    "",
    "a",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café déjà vu — Ünïcödé, 東京タワー, Привет мир, 😀👍",
    "def fibonacci(n: int) -> int:\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "3.14159 2.71828 1e-12 0x1F 42%",
    "   leading and trailing whitespace   \n\t",
    "UPPER CASE and lower case and MiXeD CaSe",
    "A transformer encoder maps a sequence of tokens to contextual vectors. " * 40,  # > 256 tokens: truncated
    "antidisestablishmentarianism supercalifragilisticexpialidocious",
    "The mitochondria is the powerhouse of the cell.",
    "What is the capital of France? Paris is the capital of France.",
    "\n\n\n",
    "email@example.com https://example.org/path?q=1&r=2 #hashtag @mention",
]


@pytest.fixture(scope="module")
def encoder():
    return Encoder.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_model_dir()), device="cpu")


def test_parity_with_sentence_transformers(encoder, reference):
    ours = encoder.embed(VARIED, batch_size=5)
    theirs = reference.encode(VARIED, batch_size=5, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(VARIED), 384)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cos.min() >= 0.99999, dict(zip(VARIED, cos))
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batching_and_padding_do_not_change_embeddings(encoder):
    texts = VARIED[:6] + VARIED[10:11]  # short, empty, unicode, code and one truncated text in one padded batch
    one_by_one = np.concatenate([encoder.embed([t]) for t in texts])
    batched = encoder.embed(texts, batch_size=16)
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)


def test_semantics_rank_paraphrase_first(encoder):
    q, para, other = encoder.embed(["How do I open a file in Python?",
                                    "Use the built-in open() function to read a file.",
                                    "The Eiffel Tower is in Paris."])
    assert q @ para > q @ other + 0.2


def test_truncates_at_max_seq_length_but_token_spans_do_not(encoder):
    long = "token " * 400
    assert encoder.max_seq_length == 256
    assert len(encoder.tokenizer.encode(long).ids) == 256
    spans = encoder.token_spans(long)
    assert len(spans) == 400 and spans[1] == (6, 11)


def test_progress_callback_and_empty_input(encoder):
    seen = []
    out = encoder.embed(VARIED[:7], batch_size=3, progress=seen.append)
    assert seen == [3, 3, 1] and out.shape == (7, 384)
    assert encoder.embed([]).shape == (0, 384)
    with pytest.raises(TokenizerError):
        encoder.embed("not a list")


def test_matches_transformers_bert_with_token_types(tmp_path):
    """Tiny random BertModel from transformers: our forward (incl. token types, pairs) equals its hidden states."""
    from safetensors.torch import save_file
    from transformers import BertConfig as HFConfig, BertModel as HFBert

    torch.manual_seed(0)
    cfg = HFConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=64, attn_implementation="eager")
    hf = HFBert(cfg).eval()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "tokenizer.json").write_bytes((default_model_dir() / "tokenizer.json").read_bytes())
    ours = Encoder.from_pretrained(tmp_path)
    for _, hidden, mask in ours.encode_pairs(["a short query", "x"], ["a longer passage about things", "y z"]):
        enc = ours.tokenizer.encode_batch([("a short query", "a longer passage about things"), ("x", "y z")])
        longest = max(len(e.ids) for e in enc)
        ids = torch.tensor([e.ids + [0] * (longest - len(e.ids)) for e in enc])
        types = torch.tensor([e.type_ids + [0] * (longest - len(e.ids)) for e in enc])
        att = torch.tensor([[1] * len(e.ids) + [0] * (longest - len(e.ids)) for e in enc])
        assert types.sum() > 0
        with torch.no_grad():
            want = hf(input_ids=ids, attention_mask=att, token_type_ids=types).last_hidden_state
        m = att.bool()
        torch.testing.assert_close(hidden[m], want[m], atol=1e-5, rtol=1e-4)


def test_bad_directory_raises(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        Encoder.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="absolute"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
