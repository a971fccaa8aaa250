"""Hugging Face model directories (config.json + safetensors) <-> genlab `Transformer`.

Handbook II/III. Covers transformers' GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM and
MistralForCausalLM: their configs map onto `ModelConfig`, their weights onto genlab's (q/k/v and
gate/up are fused in genlab, split on export; GPT-2's Conv1D weights are transposed). A config that no
transformers architecture expresses (ALiBi, sinusoidal, ...) is saved with model_type "genlab".
config.json always carries the exact genlab config under the key "genlab".

    python -m pytest -q tests/models/test_hf_parity.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from genlab.atomic import atomic_open, write_json
from genlab.errors import CheckpointError
from genlab.models.config import ModelConfig
from genlab.models.transformer import Transformer

HF_FAMILIES = ("gpt2", "llama", "qwen2", "mistral")


# --- configs ---------------------------------------------------------------------------------------
def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a transformers config.json dict (or the exact genlab config when present)."""
    if "genlab" in hf:
        return ModelConfig.from_dict(hf["genlab"])
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        mlp = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}.get(act)
        if mlp is None:
            raise CheckpointError(f"GPT-2 activation_function {act!r} is not supported")
        return ModelConfig.gpt2_like(
            vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], d_model=hf["n_embd"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"], max_seq_len=hf["n_positions"], mlp=mlp,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True))
    if kind in ("llama", "qwen2", "mistral"):
        if hf.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"hidden_act {hf.get('hidden_act')!r} is not supported (silu only)")
        rope = hf.get("rope_parameters") or {}
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        attn_bias = hf.get("attention_bias", False)
        window = hf.get("sliding_window") if kind == "mistral" or hf.get("use_sliding_window") else None
        return ModelConfig.llama_like(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_model=hf["hidden_size"],
            head_dim=hf.get("head_dim"), d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=theta, rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=hf.get("tie_word_embeddings", False),
            qkv_bias=kind == "qwen2" or attn_bias, out_bias=attn_bias and kind != "qwen2",
            mlp_bias=hf.get("mlp_bias", False), sliding_window=window)
    raise CheckpointError(f"model_type {kind!r} is not supported (supported: {', '.join(HF_FAMILIES)}, genlab)")


def hf_family(config: ModelConfig) -> str:
    """The transformers architecture that expresses this config exactly, or "genlab"."""
    c = config
    if (c.position == "learned" and c.norm == "layernorm" and c.mlp in ("gelu_tanh", "gelu", "relu")
            and c.qkv_bias and c.out_bias and c.mlp_bias and c.n_kv_head == c.n_head
            and c.head_dim * c.n_head == c.d_model and c.rope_scaling is None and not c.sliding_window):
        return "gpt2"
    if c.position == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu":
        if c.sliding_window:
            return "mistral" if not (c.qkv_bias or c.out_bias or c.mlp_bias) else "genlab"
        if c.qkv_bias and not c.out_bias and not c.mlp_bias:
            return "qwen2"
        if c.qkv_bias == c.out_bias:
            return "llama"
    return "genlab"


def config_to_hf(config: ModelConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    c, family = config, hf_family(config)
    out: dict[str, Any] = {"model_type": family, "vocab_size": c.vocab_size, "dtype": "float32",
                           "tie_word_embeddings": c.tie_embeddings}
    if family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[c.mlp]
        out.update(architectures=["GPT2LMHeadModel"], n_embd=c.d_model, n_layer=c.n_layer, n_head=c.n_head,
                   n_inner=c.d_ff, n_positions=c.max_seq_len, n_ctx=c.max_seq_len, activation_function=act,
                   layer_norm_epsilon=c.norm_eps, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)
    elif family in ("llama", "qwen2", "mistral"):
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[family]
        rope = {"rope_type": "default", "rope_theta": c.rope_theta}
        if c.rope_scaling:
            rope = {**c.rope_scaling, "rope_theta": c.rope_theta}
            rope.setdefault("rope_type", rope.get("type"))
        out.update(architectures=[arch], hidden_size=c.d_model, intermediate_size=c.d_ff,
                   num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                   head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                   hidden_act="silu", rope_theta=c.rope_theta, rope_parameters=rope,
                   rope_scaling=c.rope_scaling, attention_dropout=c.dropout)
        if family == "llama":
            out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
        if family == "mistral":
            out.update(sliding_window=c.sliding_window)
        if family == "qwen2":
            out.update(use_sliding_window=False, sliding_window=None)
    out["genlab"] = c.to_dict()
    out.update(extra or {})
    return out


# --- weights ---------------------------------------------------------------------------------------
def _layer_names(family: str, i: int) -> dict[str, str]:
    if family == "gpt2":
        p = f"transformer.h.{i}."
        return {"attn_norm": p + "ln_1", "mlp_norm": p + "ln_2", "qkv": p + "attn.c_attn", "out": p + "attn.c_proj",
                "up": p + "mlp.c_fc", "down": p + "mlp.c_proj"}
    p = f"model.layers.{i}."
    return {"attn_norm": p + "input_layernorm", "mlp_norm": p + "post_attention_layernorm",
            "q": p + "self_attn.q_proj", "k": p + "self_attn.k_proj", "v": p + "self_attn.v_proj",
            "out": p + "self_attn.o_proj", "gate": p + "mlp.gate_proj", "up": p + "mlp.up_proj",
            "down": p + "mlp.down_proj"}


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """genlab weights renamed (and split/transposed) into the transformers layout of `hf_family`."""
    c, family = model.config, hf_family(model.config)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # the plain model's keys, without allocating its weights
        expected = set(Transformer(c).state_dict())
    if set(sd) != expected:
        extra = sorted(set(sd) - expected)[:3]
        raise CheckpointError(f"the model has weights a plain Transformer does not ({extra}...): merge or remove "
                              "adapters first (genlab.finetune.lora.unload), or save them with peft_io")
    if family == "genlab":
        return {k: v.contiguous() for k, v in sd.items() if not (c.tie_embeddings and k == "head.weight")}
    out: dict[str, torch.Tensor] = {}
    q_dim, kv_dim = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        g, h = f"blocks.{i}.", _layer_names(family, i)
        for part in ("attn_norm", "mlp_norm"):
            for suffix in ("weight", "bias"):
                if g + f"{part}.{suffix}" in sd:
                    out[f"{h[part]}.{suffix}"] = sd[g + f"{part}.{suffix}"]
        for suffix in ("weight", "bias"):
            qkv, o = sd.get(g + f"attn.qkv.{suffix}"), sd.get(g + f"attn.out.{suffix}")
            up, down = sd.get(g + f"mlp.up.{suffix}"), sd.get(g + f"mlp.down.{suffix}")
            if family == "gpt2":  # Conv1D stores [in, out]
                tr = (lambda t: t.t()) if suffix == "weight" else (lambda t: t)
                for name, t in (("qkv", qkv), ("out", o), ("up", up), ("down", down)):
                    if t is not None:
                        out[f"{h[name]}.{suffix}"] = tr(t)
                continue
            if qkv is not None:
                for name, t in zip("qkv", qkv.split([q_dim, kv_dim, kv_dim])):
                    out[f"{h[name]}.{suffix}"] = t
            if o is not None:
                out[f"{h['out']}.{suffix}"] = o
            if up is not None:
                out[f"{h['gate']}.{suffix}"], out[f"{h['up']}.{suffix}"] = up.chunk(2)
            if down is not None:
                out[f"{h['down']}.{suffix}"] = down
    if family == "gpt2":
        out["transformer.wte.weight"] = sd["embed.weight"]
        out["transformer.wpe.weight"] = sd["pos_embed.weight"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
    else:
        out["model.embed_tokens.weight"] = sd["embed.weight"]
        out["model.norm.weight"] = sd["norm.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def from_hf_state_dict(hf_sd: dict[str, torch.Tensor], config: ModelConfig, family: str) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf_state_dict`: a genlab state dict from transformers' weights."""
    if family == "genlab":
        return dict(hf_sd)
    c = config
    sd: dict[str, torch.Tensor] = {}
    get = hf_sd.get
    for i in range(c.n_layer):
        g, h = f"blocks.{i}.", _layer_names(family, i)
        for part in ("attn_norm", "mlp_norm"):
            for suffix in ("weight", "bias"):
                if f"{h[part]}.{suffix}" in hf_sd:
                    sd[g + f"{part}.{suffix}"] = hf_sd[f"{h[part]}.{suffix}"]
        for suffix in ("weight", "bias"):
            if family == "gpt2":
                tr = (lambda t: t.t()) if suffix == "weight" else (lambda t: t)
                for name, ours in (("qkv", "attn.qkv"), ("out", "attn.out"), ("up", "mlp.up"), ("down", "mlp.down")):
                    if f"{h[name]}.{suffix}" in hf_sd:
                        sd[g + f"{ours}.{suffix}"] = tr(hf_sd[f"{h[name]}.{suffix}"])
                continue
            q, k, v = (get(f"{h[n]}.{suffix}") for n in "qkv")
            if q is not None:
                sd[g + f"attn.qkv.{suffix}"] = torch.cat([q, k, v])
            for name, ours in (("out", "attn.out"), ("down", "mlp.down")):
                if f"{h[name]}.{suffix}" in hf_sd:
                    sd[g + f"{ours}.{suffix}"] = hf_sd[f"{h[name]}.{suffix}"]
            if f"{h['gate']}.{suffix}" in hf_sd:
                sd[g + f"mlp.up.{suffix}"] = torch.cat([hf_sd[f"{h['gate']}.{suffix}"], hf_sd[f"{h['up']}.{suffix}"]])
    if family == "gpt2":
        sd["embed.weight"], sd["pos_embed.weight"] = hf_sd["transformer.wte.weight"], hf_sd["transformer.wpe.weight"]
        sd["norm.weight"], sd["norm.bias"] = hf_sd["transformer.ln_f.weight"], hf_sd["transformer.ln_f.bias"]
    else:
        sd["embed.weight"], sd["norm.weight"] = hf_sd["model.embed_tokens.weight"], hf_sd["model.norm.weight"]
    sd["head.weight"] = hf_sd.get("lm_head.weight", sd["embed.weight"])
    return {k: v.contiguous() for k, v in sd.items()}


# --- directories -----------------------------------------------------------------------------------
def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_open(path, "wb") as f:
        f.write(save_safetensors(tensors, metadata=metadata))


def save_pretrained(model: Transformer, directory: str | Path, extra_config: dict[str, Any] | None = None,
                    generation_config: dict[str, Any] | None = None) -> Path:
    """Write config.json + model.safetensors (+ generation_config.json) in the Hugging Face layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file_atomic(to_hf_state_dict(model), directory / "model.safetensors", metadata={"format": "pt"})
    write_json(directory / "config.json", config_to_hf(model.config, extra_config))
    if generation_config is not None:
        write_json(directory / "generation_config.json", generation_config)
    return directory


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (is this a model directory?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for f in files for k, v in load_file(str(directory / f)).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{directory}: cannot read weights ({e})") from None
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{directory}: no model.safetensors")


def load_pretrained(directory: str | Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """A genlab Transformer from a Hugging Face (or genlab) model directory; clear errors on mismatch."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    hf = read_hf_config(directory)
    config = config_from_hf(hf)
    family = hf.get("model_type") if hf.get("model_type") in HF_FAMILIES else "genlab"
    state = from_hf_state_dict(_load_weights(directory), config, family)
    model = Transformer(config)
    if config.tie_embeddings:
        state.pop("head.weight", None)
    expected = {k for k in model.state_dict() if not (config.tie_embeddings and k == "head.weight")}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not match config.json "
                              f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    own = model.state_dict()
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{directory}: {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model.to(dtype).eval()
