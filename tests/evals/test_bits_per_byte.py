"""Bits per byte: the uniform model's closed form, rolling windows, batching == one sequence at a time.

    python -m pytest -q tests/evals/test_bits_per_byte.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.errors import GenlabError
from genlab.evals.perplexity import bits_per_byte, rolling_windows, score_texts
from eval_helpers import FixedDistributionModel, tiny_transformer

TEXTS = ["Ana lives in Brightwater.", "naïve café 🙂 日本語", "", "x" * 300 + " the end"]


def test_rolling_windows_predict_every_token_once():
    windows = rolling_windows([1, 2, 3, 4, 5], bos_id=0, seq_len=2)
    assert windows == [([0, 1], [1, 2]), ([2, 3], [3, 4]), ([4], [5])]
    assert rolling_windows([7], 0, 4) == [([0], [7])]


@pytest.mark.parametrize("fixture", ["bytes_tok", "bpe_tok"])
def test_uniform_model_gives_log2_vocab_times_tokens_per_byte(request, fixture):
    tok = request.getfixturevalue(fixture)
    vocab = tok.vocab_size
    model = FixedDistributionModel(torch.zeros(vocab))  # uniform logits over V
    tokens = sum(len(tok.encode_ordinary(t)) for t in TEXTS)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    expected = math.log2(vocab) * tokens / n_bytes
    got = bits_per_byte(model, tok, TEXTS, seq_len=16, batch_size=3)  # long text spans many windows
    assert got == pytest.approx(expected, rel=1e-6)
    if fixture == "bytes_tok":
        assert got == pytest.approx(math.log2(vocab), rel=1e-6)  # one token per byte


def test_batched_windows_equal_one_forward_per_text(bpe_tok):
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=512)
    texts = [t for t in TEXTS if t]
    bos = bpe_tok.special_tokens["<|bos|>"]
    nll = 0.0
    with torch.no_grad():
        for text in texts:
            seq = torch.tensor([[bos, *bpe_tok.encode_ordinary(text)]])
            logits = model(seq[:, :-1])
            nll += F.cross_entropy(logits[0].double(), seq[0, 1:], reduction="sum").item()
    score = score_texts(model, bpe_tok, texts, seq_len=512, batch_size=2)
    assert score.nll_nats == pytest.approx(nll, rel=1e-5)
    assert score.n_bytes == sum(len(t.encode()) for t in texts)
    assert bits_per_byte(model, bpe_tok, texts, seq_len=512, batch_size=1) == pytest.approx(score.bits_per_byte,
                                                                                         rel=1e-6)
    # Shorter windows lose context, so the score changes (the windowing is real).
    assert abs(bits_per_byte(model, bpe_tok, texts, seq_len=8) - score.bits_per_byte) > 1e-6


def test_no_text_is_an_error(bpe_tok):
    with pytest.raises(GenlabError, match="non-empty"):
        bits_per_byte(FixedDistributionModel(torch.zeros(bpe_tok.vocab_size)), bpe_tok, ["", ""], seq_len=8)


def test_restores_training_mode(bpe_tok):
    model = tiny_transformer(bpe_tok.vocab_size).train()
    bits_per_byte(model, bpe_tok, ["hello"], seq_len=16)
    assert model.training
