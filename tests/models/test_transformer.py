"""The transformer's fast paths equal its slow ones: SDPA == reference attention, cached == full, packed == separate."""

import pytest
import torch

from genlab.errors import ConfigError, GenlabError
from genlab.models import ModelConfig, Transformer
from genlab.models.positions import alibi_slopes, sinusoidal_table

VARIANTS = {
    "llama_gqa": ModelConfig.llama_like(n_kv_head=2),
    "mqa_relu_sinusoidal": ModelConfig(position="sinusoidal", mlp="relu", n_kv_head=1, norm="layernorm"),
    "gpt2": ModelConfig.gpt2_like(),
    "alibi_gelu": ModelConfig(position="alibi", mlp="gelu"),
    "nopos_window": ModelConfig(position="none", sliding_window=5),
    "rope_linear_scaling": ModelConfig(rope_scaling={"type": "linear", "factor": 4.0}),
}


def small(cfg: ModelConfig, **kw) -> ModelConfig:
    return cfg.replace(vocab_size=61, d_model=32, n_head=4, n_layer=2, max_seq_len=48, d_ff=None, head_dim=None, **kw)


@pytest.mark.parametrize("name", VARIANTS)
def test_sdpa_equals_reference_attention(name):
    cfg = small(VARIANTS[name])
    fast = Transformer(cfg).eval()
    slow = Transformer(cfg.replace(attn_impl="reference")).eval()
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(0, 61, (3, 17))
    assert torch.allclose(fast(x), slow(x), atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_equals_full_sequence(name):
    model = Transformer(small(VARIANTS[name])).eval()
    x = torch.randint(0, 61, (2, 21))
    full = model(x)
    cache = model.new_cache(2)
    chunks = [model(x[:, a:b], cache=cache) for a, b in [(0, 7), (7, 8), (8, 15), (15, 21)]]
    assert cache.length == 21
    assert torch.allclose(torch.cat(chunks, 1), full, atol=1e-5)


def test_packed_segments_equal_separate_sequences():
    model = Transformer(small(VARIANTS["llama_gqa"])).eval()
    a, b = torch.randint(0, 61, (1, 9)), torch.randint(0, 61, (1, 6))
    packed = torch.cat([a, b], 1)
    segments = torch.tensor([[0] * 9 + [1] * 6])
    positions = torch.tensor([list(range(9)) + list(range(6))])
    out = model(packed, positions=positions, segments=segments)
    assert torch.allclose(out[:, :9], model(a), atol=1e-5)
    assert torch.allclose(out[:, 9:], model(b), atol=1e-5)
    # Without segment ids the second document would see the first: the test can fail.
    leaky = model(packed, positions=positions)
    assert not torch.allclose(leaky[:, 9:], model(b), atol=1e-3)


def test_loss_ignores_masked_targets():
    model = Transformer(small(VARIANTS["gpt2"]))
    x = torch.randint(0, 61, (2, 10))
    y = torch.randint(0, 61, (2, 10))
    y_masked = y.clone()
    y_masked[:, :5] = -100
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 61), y[:, 5:].reshape(-1))
    assert torch.allclose(model.loss(x, y_masked), expected, atol=1e-6)


def test_loss_on_trained_positions_only_equals_full_logits_loss():
    # The loss sends only positions with a target through the head; its value and every gradient must
    # equal the plain cross entropy of all logits with ignore_index (scattered holes, a fully ignored row).
    torch.manual_seed(0)
    model = Transformer(small(VARIANTS["llama_gqa"], tie_embeddings=True))
    x, y = torch.randint(0, 61, (3, 12)), torch.randint(0, 61, (3, 12))
    y[torch.rand(3, 12) < 0.4] = -100
    y[1] = -100
    fast = model.loss(x, y)
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    full = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    assert torch.allclose(fast, full, atol=1e-6)
    for a, b in zip(fast_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_parameter_count_and_flops():
    cfg = ModelConfig.llama_like(vocab_size=100, d_model=64, n_head=4, n_layer=3, d_ff=160, max_seq_len=32)
    model = Transformer(cfg)
    per_layer = 64 * 3 * 64 + 64 * 64 + 64 * 2 * 160 + 160 * 64 + 2 * 64
    expected = 100 * 64 * 2 + 3 * per_layer + 64
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - 100 * 64
    assert model.flops_per_token(32) == 6 * (expected - 100 * 64) + 12 * 3 * 64 * 32


def test_positional_tables():
    table = sinusoidal_table(10, 8)
    assert torch.allclose(table[3, 0], torch.sin(torch.tensor(3.0)))
    assert torch.allclose(table[3, 1], torch.cos(torch.tensor(3.0)))
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert len(alibi_slopes(6)) == 6


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ConfigError, match="position"):
        ModelConfig(position="spiral")
    with pytest.raises(ConfigError, match="unknown model config keys"):
        ModelConfig.from_dict({"d_model": 8, "colour": "red"})
    model = Transformer(small(VARIANTS["gpt2"]))
    with pytest.raises(GenlabError, match="max_seq_len"):
        model(torch.zeros(1, 49, dtype=torch.long))
