"""QLoRA: an NF4-quantized frozen base with LoRA/DoRA adapters trained in float32.

Handbook IV, VI. Dettmers et al. 2023 (QLoRA).

    python -m pytest -q tests/finetune/test_qlora.py
"""

import copy

import pytest
import torch

from genlab.errors import GenlabError
from genlab.finetune.lora import LoraConfig, add_adapter, mark_only_adapters_trainable, merge_adapters
from genlab.models import ModelConfig, Transformer
from genlab.quant.nf4 import NF4Linear, quantize_model_nf4



def tiny() -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=48, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128, max_seq_len=16)
    return Transformer(cfg).eval()


def test_quantized_blocks_take_under_three_tenths_of_bf16():
    model = tiny()
    names = quantize_model_nf4(model)
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")]
    layers = [model.get_submodule(n) for n in names]
    nf4_bytes = sum(layer.nbytes() for layer in layers)
    bf16_bytes = sum(2 * layer.in_features * layer.out_features for layer in layers)
    assert nf4_bytes <= 0.3 * bf16_bytes
    assert isinstance(model.head, torch.nn.Linear)  # the head stays in full precision


@pytest.mark.parametrize("dora", [False, True])
def test_qlora_equals_lora_on_the_dequantized_base_and_trains(dora):
    model = tiny()
    quantize_model_nf4(model)
    reference = copy.deepcopy(model)  # the same model with dense, dequantized weights
    for name, m in list(reference.named_modules()):
        if isinstance(m, NF4Linear):
            parent, _, child = name.rpartition(".")
            setattr(reference.get_submodule(parent), child, m.to_linear())
    config = LoraConfig(r=4, alpha=8, targets=("all-linear", "head"), init="random", dora=dora)
    torch.manual_seed(5)
    add_adapter(model, config)
    torch.manual_seed(5)
    add_adapter(reference, config)
    idx = torch.randint(0, 48, (4, 12), generator=torch.Generator().manual_seed(2))
    targets = torch.roll(idx, -1, dims=1)
    torch.testing.assert_close(model(idx), reference(idx), rtol=1e-5, atol=1e-5)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "adapters" not in k}
    s = model.blocks[0].attn.qkv.adapters["default"].slices["q"]
    assert s.lora_A.dtype == torch.float32
    trainable = mark_only_adapters_trainable(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    first = model.loss(idx, targets).item()
    for _ in range(25):
        loss = model.loss(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
    assert trainable == sum(p.numel() for group in opt.param_groups for p in group["params"])
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    with pytest.raises(GenlabError, match="quantized"):
        merge_adapters(model)
