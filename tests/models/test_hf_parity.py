"""Parity with transformers: tiny random-init GPT-2, Llama, Qwen2 and Mistral models, logits to 1e-4 (fp32).

Oracle: transformers (GUIDE.md section 4). Covers import, KV-cache decoding and export round trips.
"""

import json

import pytest
import torch
import transformers as tf

from genlab.errors import CheckpointError
from genlab.models import ModelConfig, Transformer
from genlab.models.hf_io import hf_family, load_pretrained, save_pretrained

TOL = 1e-4
VOCAB = 97


def tiny_hf(kind: str):
    common = dict(vocab_size=VOCAB)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common)
        return tf.GPT2LMHeadModel(cfg)
    llama_like = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, **common)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(rope_theta=500.0, **llama_like))
    if kind == "llama_tied":
        return tf.LlamaForCausalLM(tf.LlamaConfig(tie_word_embeddings=True, **{**llama_like, "num_key_value_heads": 1}))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**llama_like))
    if kind == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(sliding_window=8, **llama_like))
    raise ValueError(kind)


def randomize_(model: torch.nn.Module) -> None:
    """Random init leaves some biases/norms at 0/1; perturb everything so a mapping bug cannot hide."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


KINDS = ["gpt2", "llama", "llama_tied", "qwen2", "mistral"]


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = tiny_hf(request.param).eval()
    randomize_(hf)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    return request.param, hf, load_pretrained(d)


def test_import_logits_match(pair):
    kind, hf, ours = pair
    x = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        ref = hf(x).logits
        got = ours(x)
    assert torch.allclose(got, ref, atol=TOL), (kind, (got - ref).abs().max())


def test_kv_cache_matches_full_and_transformers_cache(pair):
    kind, hf, ours = pair
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        full = ours(x)
        cache = ours.new_cache(2, 32)
        steps = [ours(x[:, :11], cache=cache)] + [ours(x[:, t:t + 1], cache=cache) for t in range(11, 20)]
        inc = torch.cat(steps, dim=1)
        out = hf(x[:, :11], use_cache=True)
        hf_steps = [out.logits]
        past = out.past_key_values
        for t in range(11, 20):
            out = hf(x[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            hf_steps.append(out.logits)
        hf_inc = torch.cat(hf_steps, dim=1)
    assert torch.allclose(inc, full, atol=TOL), (kind, (inc - full).abs().max())
    assert torch.allclose(inc, hf_inc, atol=TOL), (kind, (inc - hf_inc).abs().max())


def test_export_round_trip_loads_in_transformers(pair, tmp_path):
    kind, hf, ours = pair
    save_pretrained(ours, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == hf.config.model_type
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, VOCAB, (1, 30))
    with torch.no_grad():
        assert torch.allclose(back(x).logits, ours(x), atol=TOL)
        assert torch.allclose(load_pretrained(tmp_path)(x), ours(x), atol=0)


@pytest.mark.parametrize("cfg", [
    ModelConfig.llama_like(vocab_size=VOCAB, d_model=64, n_head=4, n_kv_head=2, n_layer=2, tie_embeddings=True),
    ModelConfig.gpt2_like(vocab_size=VOCAB, d_model=64, n_head=4, n_layer=2, max_seq_len=64),
    ModelConfig.llama_like(vocab_size=VOCAB, d_model=64, n_head=4, n_layer=2, qkv_bias=True),
])
def test_genlab_models_export_to_transformers(cfg, tmp_path):
    ours = Transformer(cfg).eval()
    randomize_(ours)
    save_pretrained(ours, tmp_path)
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert torch.allclose(back(x).logits, ours(x), atol=TOL)


def test_non_hf_config_round_trips_in_genlab_format(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_head=4, n_layer=1, position="alibi")
    assert hf_family(cfg) == "genlab"
    ours = Transformer(cfg).eval()
    save_pretrained(ours, tmp_path)
    x = torch.randint(0, VOCAB, (1, 10))
    assert torch.equal(load_pretrained(tmp_path)(x), ours(x))


def test_bad_directories_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)
    ours = Transformer(ModelConfig(vocab_size=VOCAB, d_model=32, n_head=4, n_layer=1))
    save_pretrained(ours, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_pretrained(tmp_path)
    save_pretrained(ours, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["genlab"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_pretrained(tmp_path)


def test_export_refuses_a_model_with_adapters_attached(tmp_path):
    from genlab.finetune.lora import LoraConfig, add_adapter

    model = Transformer(ModelConfig.llama_like(vocab_size=VOCAB, d_model=32, n_head=4, n_layer=1))
    add_adapter(model, LoraConfig(r=2))
    with pytest.raises(CheckpointError, match="adapters"):
        save_pretrained(model, tmp_path)
