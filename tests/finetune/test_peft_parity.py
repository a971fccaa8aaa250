"""genlab LoRA / rsLoRA / DoRA against peft on the transformers model of the same weights, both directions.

Handbook IV. Oracle: peft (LoraConfig, get_peft_model, PeftModel.from_pretrained, merge_and_unload) on the
model `hf_io.save_pretrained` exports. Adapters are random (B != 0, DoRA magnitudes perturbed) so that a
wrong key, slice, scaling or norm shows in the logits.

    python -m pytest -q tests/finetune/test_peft_parity.py
"""

import json

import pytest
import torch

pytest.importorskip("peft")
from peft import LoraConfig as PeftLoraConfig  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from genlab.errors import CheckpointError, ConfigError  # noqa: E402
from genlab.finetune.lora import (LoraConfig, add_adapter, lora_layers, merge_adapters,  # noqa: E402
                                  unload)
from genlab.finetune.peft_io import load_peft_adapter, save_peft_adapter  # noqa: E402
from genlab.models import ModelConfig, Transformer  # noqa: E402
from genlab.models.hf_io import load_pretrained, save_pretrained, to_hf_state_dict  # noqa: E402



METHODS = {"lora": {}, "rslora": {"rslora": True}, "dora": {"dora": True}}
VOCAB = 64


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.llama_like(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48,
                                 max_seq_len=32)
    return save_pretrained(Transformer(cfg), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.gpt2_like(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, max_seq_len=32)
    return save_pretrained(Transformer(cfg), tmp_path_factory.mktemp("gpt2"))


def hf_model(directory):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def ids():
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))


def perturb(params):
    with torch.no_grad():
        for p in params:
            p.mul_(1 + 0.5 * torch.rand_like(p))


@pytest.mark.parametrize("method", list(METHODS))
def test_genlab_adapter_loads_in_peft(method, llama_dir, tmp_path):
    model = load_pretrained(llama_dir)
    add_adapter(model, LoraConfig(r=4, alpha=6, targets=("all-linear", "head"), init="random", **METHODS[method]))
    perturb(s.magnitude for layer in lora_layers(model).values() for s in layer.adapters["default"].slices.values()
            if s.magnitude is not None)
    save_peft_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(hf_model(llama_dir), tmp_path / "adapter", is_trainable=True).eval()
    x = ids()
    ours, theirs = model(x), peft_model(x).logits
    assert (ours - hf_model(llama_dir)(x).logits).abs().max() > 1e-2  # the adapter does change the logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # same gradients, through DoRA's detached norm too
    ours.square().mean().backward()
    theirs.square().mean().backward()
    q = model.blocks[1].attn.qkv.adapters["default"].slices["q"]
    pq = peft_model.base_model.model.model.layers[1].self_attn.q_proj
    torch.testing.assert_close(q.lora_A.grad, pq.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(q.lora_B.grad, pq.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-7)
    if method == "dora":
        torch.testing.assert_close(q.magnitude.grad, pq.lora_magnitude_vector["default"].weight.grad,
                                   rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_adapter_loads_in_genlab_and_merges_alike(method, llama_dir, tmp_path):
    torch.manual_seed(1)
    opts = METHODS[method]
    config = PeftLoraConfig(r=3, lora_alpha=5, init_lora_weights=False, use_rslora=opts.get("rslora", False),
                            use_dora=opts.get("dora", False),
                            target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])  # no k, up
    peft_model = get_peft_model(hf_model(llama_dir), config).eval()
    perturb(p for n, p in peft_model.named_parameters() if "lora_magnitude_vector" in n)
    peft_model.save_pretrained(tmp_path / "adapter")
    model = load_pretrained(llama_dir)
    load_peft_adapter(model, tmp_path / "adapter")
    assert list(model.blocks[0].attn.qkv.adapters["default"].slices) == ["q", "v"]
    assert list(model.blocks[0].mlp.up.adapters["default"].slices) == ["gate"]
    x = ids()
    expected = peft_model(x).logits
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # merged weights agree with peft's merge_and_unload, and still give the adapted logits
    merge_adapters(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    merged_hf = peft_model.merge_and_unload().state_dict()
    ours = to_hf_state_dict(unload(model))
    for key, value in ours.items():
        torch.testing.assert_close(value, merged_hf[key], rtol=1e-5, atol=1e-6, msg=key)


def test_dropout_in_training_matches_peft(llama_dir, tmp_path):
    """Same seed, same masks: genlab draws one mask per projection, in the order HF calls them."""
    model = load_pretrained(llama_dir)
    add_adapter(model, LoraConfig(r=4, alpha=8, dropout=0.3, targets=("all-linear",), init="random", dora=True))
    save_peft_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(hf_model(llama_dir), tmp_path / "adapter", is_trainable=True)
    model.train(), peft_model.train()
    x = ids()
    torch.manual_seed(7)
    ours = model(x)
    torch.manual_seed(7)
    theirs = peft_model(x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    model.eval()
    assert (model(x) - ours).abs().max() > 1e-3  # dropout did act


@pytest.mark.parametrize("dora", [False, True])
def test_gpt2_fused_c_attn_both_directions(dora, gpt2_dir, tmp_path):
    model = load_pretrained(gpt2_dir)
    add_adapter(model, LoraConfig(r=4, alpha=8, targets=("attn.qkv", "mlp.up"), split_fused=False, init="random",
                                  dora=dora))
    save_peft_adapter(model, tmp_path / "ours")
    x = ids()
    peft_model = PeftModel.from_pretrained(hf_model(gpt2_dir), tmp_path / "ours").eval()
    torch.testing.assert_close(model(x), peft_model(x).logits, rtol=1e-5, atol=1e-5)
    config = PeftLoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["c_attn", "c_proj"],
                            fan_in_fan_out=True, use_dora=dora)
    peft_model = get_peft_model(hf_model(gpt2_dir), config).eval()
    peft_model.save_pretrained(tmp_path / "theirs")
    model = load_pretrained(gpt2_dir)
    load_peft_adapter(model, tmp_path / "theirs")
    layers = {f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.out", "mlp.down")}
    assert set(lora_layers(model)) == layers
    torch.testing.assert_close(model(x), peft_model(x).logits, rtol=1e-5, atol=1e-5)


def test_unrepresentable_adapters_are_refused(llama_dir, tmp_path):
    model = load_pretrained(llama_dir)
    add_adapter(model, LoraConfig(targets=("attn.qkv",), split_fused=False))
    with pytest.raises(ConfigError, match="no peft equivalent"):
        save_peft_adapter(model, tmp_path / "a")
    with pytest.raises(ConfigError, match="no adapter named"):
        save_peft_adapter(model, tmp_path / "a", name="other")
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_peft_adapter(model, tmp_path / "missing")
    model = load_pretrained(llama_dir)
    add_adapter(model, LoraConfig(targets=("attention",)))
    save_peft_adapter(model, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "adapter_config.json").read_text())
    (tmp_path / "c" / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"q_proj": 2}}))
    with pytest.raises(ConfigError, match="rank_pattern"):
        load_peft_adapter(load_pretrained(llama_dir), tmp_path / "c")
    alibi = Transformer(ModelConfig(vocab_size=VOCAB, d_model=32, n_layer=1, position="alibi"))
    add_adapter(alibi, LoraConfig(targets=("attention",)))
    with pytest.raises(ConfigError, match="hf_family"):
        save_peft_adapter(alibi, tmp_path / "b")
