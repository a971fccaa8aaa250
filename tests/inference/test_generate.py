"""Streaming generation with a KV cache vs recomputing the full sequence each step (no cache).

    python -m pytest -q tests/inference/test_generate.py
"""

import pytest
import torch

from genlab.errors import ConfigError
from genlab.inference.generate import generate, generate_stream
from genlab.inference.sampling import SamplingParams, logprobs_of, sample_next
from genlab.inference.stops import find_first_stop
from genlab.models.config import ModelConfig
from genlab.models.transformer import Transformer

# A byte-level vocabulary with characters split across tokens (é, 🙂) and a never-valid byte.
VOCAB = [bytes([c]) for c in b"abcdefghij klmnop\n.,"] + [
    "é".encode()[:1], "é".encode()[1:], "🙂".encode()[:2], "🙂".encode()[2:], "€".encode(), b"\xff", b"the", b"END",
]
VOCAB += [b"<%d>" % i for i in range(len(VOCAB), 40)]


def token_bytes(i: int) -> bytes:
    return VOCAB[i]


def make_model(kind: str = "llama", max_seq_len: int = 48) -> Transformer:
    torch.manual_seed(0)
    preset = ModelConfig.llama_like if kind == "llama" else ModelConfig.gpt2_like
    config = preset(vocab_size=len(VOCAB), n_layer=2, n_head=4, d_model=32, max_seq_len=max_seq_len, init_std=0.3)
    if kind == "llama":
        config = config.replace(n_kv_head=2)
    return Transformer(config).double().eval()


def reference_tokens(model, prompt, params, n, eos=()):
    """The obvious loop: the whole sequence through the model at every step, no cache."""
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    seq, out, logits_seen = list(prompt), [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq]))[0, -1]
            token = int(sample_next(logits, params, generator, torch.tensor(seq)))
            if token in eos:
                break
            out.append(token)
            logits_seen.append(logits)
            seq.append(token)
    return out, logits_seen


PROMPT = [0, 1, 2, 10, 3]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_greedy_stream_equals_no_cache_argmax(kind):
    model = make_model(kind)
    params = SamplingParams(temperature=0, max_tokens=20)
    events = list(generate_stream(model, PROMPT, params, token_bytes))
    ids = [e.token_id for e in events if e.token_id is not None]
    ref, _ = reference_tokens(model, PROMPT, params, 20)
    assert ids == ref and len(set(ids)) > 2  # a non-degenerate sequence
    assert events[-1].finish_reason == "length" and events[-1].token_id is None
    assert all(e.finish_reason is None for e in events[:-1])
    text = "".join(e.text for e in events)
    assert text == b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=16),
    SamplingParams(temperature=1.2, top_k=8, min_p=0.05, repetition_penalty=1.3, seed=4, max_tokens=16),
    SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=16),
], ids=["top_p", "top_k+min_p+penalty", "greedy+penalty"])
def test_seeded_sampling_equals_no_cache_reference(params):
    model = make_model()
    result = generate(model, PROMPT, params, token_bytes)
    assert result.token_ids == reference_tokens(model, PROMPT, params, 16)[0]
    again = generate(model, PROMPT, params, token_bytes)
    assert again.token_ids == result.token_ids and again.text == result.text


def test_different_seeds_differ():
    model = make_model()
    a = generate(model, PROMPT, SamplingParams(seed=1, max_tokens=16), token_bytes)
    b = generate(model, PROMPT, SamplingParams(seed=2, max_tokens=16), token_bytes)
    assert a.token_ids != b.token_ids


def test_eos_and_stop_token_ids_end_with_stop_and_are_not_reported():
    model = make_model()
    greedy = SamplingParams(temperature=0, max_tokens=20)
    ids = generate(model, PROMPT, greedy, token_bytes).token_ids
    k = next(i for i, t in enumerate(ids) if i >= 3 and t not in ids[:i])  # first time this id appears
    for result in (generate(model, PROMPT, greedy, token_bytes, eos_ids={ids[k]}),
                   generate(model, PROMPT, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[ids[k]]),
                            token_bytes)):
        assert result.token_ids == ids[:k] and result.finish_reason == "stop"


def test_stop_string_truncates_text_and_is_not_emitted():
    model = make_model()
    full = generate(model, PROMPT, SamplingParams(temperature=0, max_tokens=24), token_bytes)
    assert len(full.text) > 8
    stop = full.text[5:7]
    result = generate(model, PROMPT, SamplingParams(temperature=0, max_tokens=24, stop=[stop]), token_bytes)
    assert result.finish_reason == "stop"
    assert result.text == full.text[:find_first_stop(full.text, [stop])]
    assert stop not in result.text
    assert result.token_ids == full.token_ids[:len(result.token_ids)] and len(result.token_ids) < 24


def test_max_tokens_clipped_to_context_window():
    model = make_model(max_seq_len=12)
    result = generate(model, list(range(9)), SamplingParams(temperature=0, max_tokens=10), token_bytes)
    assert len(result.token_ids) == 3 and result.finish_reason == "length"
    with pytest.raises(ConfigError, match="max_seq_len"):
        generate(model, list(range(12)), SamplingParams(max_tokens=1), token_bytes)
    with pytest.raises(ConfigError, match="empty"):
        generate(model, [], SamplingParams(), token_bytes)
    with pytest.raises(ConfigError, match="vocabulary"):
        generate(model, [0, len(VOCAB)], SamplingParams(), token_bytes)


def test_logprobs_are_the_models_distribution():
    model = make_model()
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=8, logprobs=3)
    result = generate(model, PROMPT, params, token_bytes)
    ref_ids, ref_logits = reference_tokens(model, PROMPT, params, 8)
    assert result.token_ids == ref_ids and len(result.logprobs) == 8
    for lp, logits, token in zip(result.logprobs, ref_logits, ref_ids):
        expected = logprobs_of(logits, token, 3)
        assert lp.token_id == token and abs(lp.logprob - expected.logprob) < 1e-9
        assert [i for i, _ in lp.top] == [i for i, _ in expected.top]


class ScriptedModel:
    """Follows the model interface and always predicts the next token of a fixed script; it also
    checks that generation feeds it exactly the script (so each step sends only the new token)."""

    class Cache:
        def __init__(self, max_len: int) -> None:
            self.length, self.max_len = 0, max_len

    def __init__(self, sequence: list[int], vocab_size: int = len(VOCAB), max_seq_len: int = 64) -> None:
        self.sequence = sequence
        self.config = ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, n_layer=1, d_model=8, n_head=1)

    def new_cache(self, batch_size: int, max_len: int) -> "ScriptedModel.Cache":
        return self.Cache(max_len)

    def __call__(self, idx: torch.Tensor, cache: "ScriptedModel.Cache") -> torch.Tensor:
        start, T = cache.length, idx.shape[1]
        assert idx[0].tolist() == self.sequence[start:start + T] and start + T <= cache.max_len
        cache.length += T
        logits = torch.zeros(1, T, self.config.vocab_size)
        for t in range(T):
            logits[0, t, self.sequence[start + t + 1]] = 10.0
        return logits


E_LEAD, E_CONT, SMILE_A, SMILE_B, BAD = 20, 21, 22, 23, 25
A, B, C, EOS = 0, 1, 2, 39


def test_stream_pieces_hold_split_characters():
    script = [A, E_LEAD, E_CONT, SMILE_A, SMILE_B, B, BAD, E_LEAD, C, E_LEAD]
    model = ScriptedModel([A, B, *script, EOS])
    params = SamplingParams(temperature=0, max_tokens=20)
    events = list(generate_stream(model, [A, B], params, token_bytes, eos_ids={EOS}))
    assert [e.token_id for e in events] == [*script, None]
    assert [e.text for e in events] == ["a", "", "é", "", "🙂", "b", "\ufffd", "", "\ufffdc", "", "\ufffd"]
    assert events[-1].finish_reason == "stop"


def test_stop_string_across_split_character():
    script = [A, E_LEAD, E_CONT, SMILE_A, SMILE_B, B, C]
    model = ScriptedModel([A, *script])
    params = SamplingParams(temperature=0, max_tokens=20, stop=["🙂b"])
    events = list(generate_stream(model, [A], params, token_bytes))
    assert [e.text for e in events] == ["a", "", "é", "", "", "", ""]
    assert [e.token_id for e in events] == [A, E_LEAD, E_CONT, SMILE_A, SMILE_B, B, None]
    assert events[-1].finish_reason == "stop"
