"""AdamW parameter groups and parity: torch.optim.AdamW with hand-listed groups, and the paper's update rule.

Handbook III; Loshchilov & Hutter 2019. Budget: < 3 s.

    python -m pytest -q tests/train/test_train_optim.py
"""

import math

import pytest
import torch
from torch import nn

from genlab.errors import ConfigError
from genlab.models import ModelConfig, Transformer
from genlab.train.optim import build_optimizer, decay_split, optimizer_impl, param_groups, set_lr

TINY = dict(vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=16)


def _matrices(n_layer: int) -> set[str]:
    return {f"blocks.{i}.{m}.weight" for i in range(n_layer) for m in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}


def test_groups_llama_untied():
    model = Transformer(ModelConfig.llama_like(**TINY))
    split = decay_split(model)
    assert set(split.decay) == _matrices(2) | {"head.weight"}
    assert set(split.no_decay) == {"embed.weight", "norm.weight"} | {
        f"blocks.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "mlp_norm")}


def test_groups_gpt2_tied_with_biases_and_positions():
    model = Transformer(ModelConfig.gpt2_like(**TINY))
    split = decay_split(model)
    assert set(split.decay) == _matrices(2)  # the tied head is the embedding: not decayed
    assert "embed.weight" in split.no_decay and "pos_embed.weight" in split.no_decay
    assert "head.weight" not in split.no_decay + split.decay  # counted once, under its first name
    assert all(n.endswith(".bias") or "norm" in n or "embed" in n for n in split.no_decay)
    groups = param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


class HeadFirst(nn.Module):
    """Tied weights where the Linear is registered before the Embedding."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 10, bias=False)
        self.embed = nn.Embedding(10, 4)
        self.head.weight = self.embed.weight
        self.proj = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_tied_weight_never_decays_whichever_module_comes_first():
    split = decay_split(HeadFirst())
    assert split.decay == ["proj.weight"]
    assert sorted(split.no_decay) == ["head.weight", "proj.bias"]  # frozen parameters are left out


def _fill_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop"])
def test_parity_with_torch_adamw_on_same_groups(impl):
    torch.manual_seed(0)
    ours = Transformer(ModelConfig.gpt2_like(**TINY))
    ref = Transformer(ModelConfig.gpt2_like(**TINY))
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(ours, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, impl=impl)
    assert optimizer_impl(opt) == impl
    named = dict(ref.named_parameters())
    split = decay_split(ref)  # the expected membership, listed by name
    ref_opt = torch.optim.AdamW([{"params": [named[n] for n in split.decay], "weight_decay": 0.1},
                                 {"params": [named[n] for n in split.no_decay], "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step in range(4):
        for m in (ours, ref):
            _fill_grads(m, step)
        opt.step()
        ref_opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


def test_matches_the_decoupled_update_rule_from_the_paper():
    """Algorithm 2 of Loshchilov & Hutter with schedule multiplier 1: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    lr, wd, (b1, b2), eps = 0.05, 0.2, (0.9, 0.99), 1e-8
    opt = build_optimizer(model, lr, wd, (b1, b2), eps, impl="for-loop")
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in ref.items()}
    v = {n: torch.zeros_like(p) for n, p in ref.items()}
    for t in range(1, 6):
        _fill_grads(model, t)
        for n, p in model.named_parameters():
            g = p.grad.double()
            decay = wd if n == "0.weight" else 0.0
            ref[n] = ref[n] * (1 - lr * decay)
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            m_hat, v_hat = m[n] / (1 - b1 ** t), v[n] / (1 - b2 ** t)
            ref[n] = ref[n] - lr * m_hat / (v_hat.sqrt() + eps)
        opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.double(), ref[n], rtol=1e-5, atol=1e-6, msg=n)


def test_zero_gradient_shows_decay_only_on_matrices():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5))
    for n in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[n], before[n]), n


def test_set_lr_and_bad_settings():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1e-3)
    set_lr(opt, 0.5)
    assert all(math.isclose(g["lr"], 0.5) for g in opt.param_groups)
    with pytest.raises(ConfigError):
        build_optimizer(model, lr=0.0)
    with pytest.raises(ConfigError):
        build_optimizer(model, lr=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ConfigError):
        build_optimizer(model, lr=1e-3, impl="sgd")
