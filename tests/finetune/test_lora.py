"""LoRA / rsLoRA / DoRA layers on genlab's Transformer: targets, fused slices, adapters, merging, training.

Handbook IV. Hu et al. 2021; Kalajdzievski 2023; Liu et al. 2024. Parity with peft is in test_peft_parity.py.

    python -m pytest -q tests/finetune/test_lora.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.errors import ConfigError, GenlabError
from genlab.finetune.lora import (LoraConfig, LoraLinear, adapter_names, adapter_state_dict, adapters_disabled,
                                  add_adapter, delete_adapter, lora_layers, mark_only_adapters_trainable,
                                  merge_adapters, set_adapter, unload, unmerge_adapters)
from genlab.models import ModelConfig, Transformer



def tiny(**kw) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=48, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48,
                                 max_seq_len=16, **kw)
    return Transformer(cfg).eval()


def tokens(b=2, t=7, v=48):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(1))


def perturb_magnitudes(model, name="default"):
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for s in (layer.adapters[name].slices.values() if name in layer.adapters else ()):
                if s.magnitude is not None:
                    s.magnitude.mul_(1 + 0.5 * torch.rand_like(s.magnitude))


def test_scaling_matches_handbook_vectors():
    assert LoraConfig(r=16, alpha=32).scaling == 2.0
    assert LoraConfig(r=16, alpha=32, rslora=True).scaling == 8.0


def test_config_errors():
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig(r=0)
    with pytest.raises(ConfigError, match="dropout"):
        LoraConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="match no Linear"):
        add_adapter(tiny(), LoraConfig(targets=("nonexistent",)))


def test_init_b_zero_leaves_model_unchanged_and_a_is_kaiming():
    model, idx = tiny(), tokens()
    before = model(idx)
    add_adapter(model, LoraConfig(r=4, alpha=8, targets=("all-linear",)))
    assert torch.equal(model(idx), before)
    s = model.blocks[0].attn.qkv.adapters["default"].slices["q"]
    assert torch.count_nonzero(s.lora_B) == 0
    bound = 1 / math.sqrt(32)  # kaiming_uniform(a=sqrt(5)) on [r, in] = nn.Linear's default
    assert s.lora_A.abs().max() <= bound and s.lora_A.abs().max() > 0.8 * bound


def test_targets_by_pattern_and_slice():
    model = tiny()
    layers = add_adapter(model, LoraConfig(targets=("attention",)))
    assert layers == ["blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.1.attn.qkv", "blocks.1.attn.out"]
    assert list(model.blocks[0].attn.qkv.adapters["default"].slices) == ["q", "k", "v"]
    model = tiny()
    add_adapter(model, LoraConfig(targets=("attn.qkv.q", "attn.qkv.v", "blocks.1.mlp.up.gate", "head")))
    assert list(model.blocks[0].attn.qkv.adapters["default"].slices) == ["q", "v"]
    assert list(lora_layers(model)) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.mlp.up", "head"]
    assert list(model.blocks[1].mlp.up.adapters["default"].slices) == ["gate"]
    model = tiny()
    add_adapter(model, LoraConfig(targets=("blocks.0.*",), split_fused=False))
    assert list(model.blocks[0].attn.qkv.adapters["default"].slices) == ["all"]
    assert len(lora_layers(model)) == 4


def test_fused_slices_equal_separate_projection_loras():
    """Slices q and v (k untouched) on fused qkv = separate LoRAs on HF-style q_proj and v_proj."""
    model = tiny()
    add_adapter(model, LoraConfig(r=3, alpha=6, targets=("attn.qkv.q", "attn.qkv.v"), init="random"))
    layer: LoraLinear = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, 32)
    W = layer.base.weight
    q, kv = 32, 16
    slices = layer.adapters["default"].slices
    expect_q = x @ W[:q].T + 2.0 * (x @ slices["q"].lora_A.T @ slices["q"].lora_B.T)
    expect_k = x @ W[q:q + kv].T
    expect_v = x @ W[q + kv:].T + 2.0 * (x @ slices["v"].lora_A.T @ slices["v"].lora_B.T)
    torch.testing.assert_close(layer(x), torch.cat([expect_q, expect_k, expect_v], -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dora", [False, True])
def test_merge_then_unmerge_restores_base(dora):
    model, idx = tiny(), tokens()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    add_adapter(model, LoraConfig(r=4, alpha=8, targets=("all-linear", "head"), dora=dora, init="random"), "a")
    add_adapter(model, LoraConfig(r=2, alpha=3, targets=("attention",), dora=dora, init="random", rslora=True), "b")
    perturb_magnitudes(model, "a")
    perturb_magnitudes(model, "b")
    set_adapter(model, ["a", "b"])
    unmerged = model(idx)
    merge_adapters(model)
    torch.testing.assert_close(model(idx), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(GenlabError, match="already merged"):
        merge_adapters(model)
    unmerge_adapters(model)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, base_state[f"{name}.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(idx), unmerged, rtol=1e-5, atol=1e-5)


def test_several_adapters_switch_disable_delete():
    model, idx = tiny(), tokens()
    base = model(idx)
    add_adapter(model, LoraConfig(r=2, targets=("attn.qkv",), init="random"), "a")
    add_adapter(model, LoraConfig(r=2, targets=("mlp.down",), init="random"), "b", activate=False)
    assert adapter_names(model) == ["a", "b"]
    out_a = model(idx)
    set_adapter(model, "b")
    out_b = model(idx)
    set_adapter(model, ["a", "b"])
    out_ab = model(idx)
    assert (out_a - base).abs().max() > 1e-2 and (out_b - base).abs().max() > 1e-2
    assert (out_ab - out_a).abs().max() > 1e-2 and (out_ab - out_b).abs().max() > 1e-2
    with adapters_disabled(model):
        torch.testing.assert_close(model(idx), base)
    torch.testing.assert_close(model(idx), out_ab)
    # "a" alone acts on the attention only, "b" on the MLP only: their sum composes layer-wise
    set_adapter(model, "a")
    torch.testing.assert_close(model(idx), out_a)
    delete_adapter(model, "a")
    assert adapter_names(model) == ["b"]
    with pytest.raises(ConfigError, match="unknown adapters"):
        set_adapter(model, "a")


def test_disabling_a_merged_adapter_unmerges_it():
    model, idx = tiny(), tokens()
    base = model(idx)
    add_adapter(model, LoraConfig(r=2, targets=("attention",), init="random"))
    merge_adapters(model)
    with adapters_disabled(model):
        torch.testing.assert_close(model(idx), base, rtol=1e-5, atol=1e-5)


def test_dora_magnitude_is_row_norm_of_adapted_weight():
    model = tiny()
    add_adapter(model, LoraConfig(r=4, alpha=8, targets=("attn.out",), dora=True, init="random"))
    layer = model.blocks[0].attn.out
    s = layer.adapters["default"].slices["all"]
    W = layer.base.weight + 2.0 * s.lora_B @ s.lora_A
    torch.testing.assert_close(s.magnitude, W.norm(dim=1))
    # at init m = ||W + sBA||, so DoRA's output equals plain LoRA's
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), x @ W.T, rtol=1e-5, atol=1e-6)


def test_only_adapters_train_and_loss_falls():
    model, idx = tiny(), tokens(4, 12)
    targets = torch.roll(idx, -1, dims=1)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    # the head is adapted too: with a frozen N(0, 0.02) head after a norm, logits cannot move far
    add_adapter(model, LoraConfig(r=4, alpha=8, targets=("all-linear", "head"), dora=True))
    n = mark_only_adapters_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert n == sum(p.numel() for p in trainable) == sum(t.numel() for t in adapter_state_dict(model).values())
    assert n < 0.25 * sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    first = model.loss(idx, targets).item()
    for _ in range(40):
        loss = model.loss(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first  # ln(48) = 3.87 at start; memorising one batch (reaches 2.05)
    assert len(opt.state) == len(trainable)
    unload(model, merge=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_dropout_only_in_training():
    model, idx = tiny(), tokens()
    add_adapter(model, LoraConfig(r=4, targets=("attention",), dropout=0.5, init="random"))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert (model(idx) - model(idx)).abs().max() > 1e-4


def test_merge_into_tied_head_is_refused_and_unload_merges():
    model, idx = tiny(tie_embeddings=True), tokens()
    add_adapter(model, LoraConfig(targets=("head",), init="random"))
    assert model.head.tied
    with pytest.raises(GenlabError, match="tied"):
        merge_adapters(model)
    model = tiny()
    add_adapter(model, LoraConfig(targets=("all-linear",), init="random"))
    expected = model(idx)
    unload(model)
    assert not lora_layers(model) and isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)
    torch.testing.assert_close(model(idx), expected, rtol=1e-5, atol=1e-5)


def test_bf16_base_gets_bf16_adapters():
    model = tiny().to(torch.bfloat16)
    add_adapter(model, LoraConfig(targets=("attention",)))
    s = model.blocks[0].attn.qkv.adapters["default"].slices["q"]
    assert s.lora_A.dtype == torch.bfloat16
    out = model(tokens())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    F.cross_entropy(out.flatten(0, 1).float(), tokens().flatten()).backward()
    assert s.lora_B.grad is not None
