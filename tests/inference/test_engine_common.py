"""Shared helpers for the engine tests (tiny float64 models, a toy byte vocabulary), plus input errors.

    python -m pytest -q tests/inference/test_engine_common.py
"""

import pytest
import torch

from genlab.errors import ConfigError
from genlab.inference.engine import EngineConfig, LLMEngine, RequestOutput
from genlab.inference.generate import generate
from genlab.inference.sampling import SamplingParams
from genlab.models.config import ModelConfig
from genlab.models.transformer import Transformer

# Byte-level toy vocabulary: letters, split multi-byte characters (é, 🙂), a never-valid byte; id 63 is <|end|>.
VOCAB = [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz .,\n"] + [
    "é".encode()[:1], "é".encode()[1:], "🙂".encode()[:2], "🙂".encode()[2:], b"\xff", b"the", b"END",
]
VOCAB += [b"<%d>" % i for i in range(len(VOCAB), 63)] + [b"<|end|>"]
END = 63


class ToyTokenizer:
    special_tokens = {"<|end|>": END}
    vocab_size = len(VOCAB)

    def token_bytes(self, i: int) -> bytes:
        return VOCAB[i]


def make_model(kind: str = "llama", max_seq_len: int = 96, dtype=torch.float64, **overrides) -> Transformer:
    torch.manual_seed(0)
    preset = ModelConfig.llama_like if kind == "llama" else ModelConfig.gpt2_like
    config = preset(vocab_size=len(VOCAB), n_layer=2, n_head=4, d_model=32, max_seq_len=max_seq_len, init_std=0.3)
    if kind == "llama":
        config = config.replace(n_kv_head=2)
    config = config.replace(**overrides)
    return Transformer(config).to(dtype).eval()


def random_prompts(lengths, seed: int = 0, high: int = END) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, high, (n,), generator=g).tolist() for n in lengths]


def reference(model, prompt, params):
    """genlab.inference.generate: the single-sequence contiguous-cache loop the engine must match."""
    return generate(model, prompt, params, ToyTokenizer().token_bytes, eos_ids=[END])


def run_to_end(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list[RequestOutput]]:
    """Step until idle; outputs grouped by request id."""
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return outs
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    raise AssertionError("engine did not finish")


def joined(outs: list[RequestOutput]) -> tuple[list[int], str, str]:
    assert outs[-1].finished and all(not o.finished for o in outs[:-1])
    return [t for o in outs for t in o.token_ids], "".join(o.text for o in outs), outs[-1].finish_reason


# --- input errors ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    return LLMEngine(make_model(max_seq_len=32), ToyTokenizer(), EngineConfig(block_size=4, num_blocks=16))


@pytest.mark.parametrize("prompt, match", [
    ([], "empty"), (list(range(32)), "max_seq_len"), (list(range(40)), "max_seq_len"), ([1, 64], "vocabulary"),
])
def test_bad_prompts_raise_config_error(engine, prompt, match):
    with pytest.raises(ConfigError, match=match):
        engine.add_request("x", prompt, SamplingParams(max_tokens=4))
    assert not engine.has_unfinished()


def test_duplicate_request_id_raises(engine):
    engine.add_request("dup", [1, 2, 3], SamplingParams(temperature=0, max_tokens=2))
    with pytest.raises(ConfigError, match="already in use"):
        engine.add_request("dup", [4, 5], SamplingParams(max_tokens=2))
    run_to_end(engine)
    engine.add_request("dup", [4, 5], SamplingParams(max_tokens=2))  # a finished id may be reused
    run_to_end(engine)


def test_request_larger_than_the_pool_raises():
    small = LLMEngine(make_model(max_seq_len=64), ToyTokenizer(), EngineConfig(block_size=4, num_blocks=3))
    with pytest.raises(ConfigError, match="KV blocks"):
        small.add_request("big", [1] * 10, SamplingParams(max_tokens=8))


def test_bad_engine_config_and_unsupported_models_raise():
    with pytest.raises(ConfigError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(ConfigError, match="num_blocks"):
        EngineConfig(num_blocks=0)
    with pytest.raises(ConfigError, match="ALiBi"):
        LLMEngine(make_model(position="alibi"), ToyTokenizer())
    with pytest.raises(ConfigError, match="prompt_logprobs"):
        LLMEngine(make_model(), ToyTokenizer()).add_request("a", [1], SamplingParams(), prompt_logprobs=-1)


def test_generate_needs_an_idle_engine(engine):
    engine.add_request("busy", [1, 2], SamplingParams(max_tokens=2))
    with pytest.raises(ConfigError, match="idle"):
        engine.generate([[1, 2]], SamplingParams(max_tokens=2))
    run_to_end(engine)


def test_from_pretrained_reads_a_model_directory(tmp_path):
    from genlab.data.chat import CHAT_SPECIAL_TOKENS, END as END_TOKEN
    from genlab.models.hf_io import save_pretrained
    from genlab.tokenizers import BPETokenizer

    tok = BPETokenizer.train("the cat sat on the mat. " * 20, vocab_size=280, special_tokens=CHAT_SPECIAL_TOKENS)
    model = Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=32))
    save_pretrained(model, tmp_path)
    tok.save(tmp_path)
    engine = LLMEngine.from_pretrained(tmp_path, EngineConfig(block_size=8))
    assert engine.stop_token_ids == [tok.special_tokens[END_TOKEN]]
    prompt = tok.encode("the cat")
    params = SamplingParams(temperature=0, max_tokens=6)
    got = engine.generate([prompt], params)[0]
    ref = generate(engine.model, prompt, params, tok.token_bytes, eos_ids=engine.stop_token_ids)
    assert (got.token_ids, got.text) == (ref.token_ids, ref.text)
