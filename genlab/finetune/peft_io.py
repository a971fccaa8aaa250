"""LoRA/DoRA adapters in peft's on-disk format, for genlab models exported in the Hugging Face layout.

Handbook IV (parameter-efficient finetuning). Format: `adapter_config.json` + `adapter_model.safetensors`
with keys `base_model.model.<HF module>.lora_A.weight`, `.lora_B.weight` and, for DoRA,
`.lora_magnitude_vector`, where <HF module> is the module of the `hf_io.save_pretrained` export
(`model.layers.N.self_attn.q_proj`, `...mlp.gate_proj`, `lm_head`; GPT-2: `transformer.h.N.attn.c_attn`).
genlab's per-projection slices (see `genlab.finetune.lora`) map one to one onto these modules, so no
tensor is split or concatenated: a slice "q" on `blocks.N.attn.qkv` *is* peft's q_proj adapter.

    python -m pytest -q tests/finetune/test_peft_parity.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from genlab.errors import CheckpointError, ConfigError
from genlab.finetune.lora import LoraConfig, add_adapter, lora_layers
from genlab.atomic import write_json
from genlab.models.hf_io import hf_family, save_file_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?:(?P<ab>lora_[AB])(?:\.\w+)?\.weight"
                  r"|lora_magnitude_vector(?:\.\w+)?(?:\.weight)?)$")


def hf_module_names(model: nn.Module) -> dict[tuple[str, str], str]:
    """(genlab layer, slice) -> Hugging Face module name, for the family `save_pretrained` writes."""
    c = model.config
    family = hf_family(c)
    if family == "genlab":
        raise ConfigError("this model config has no transformers architecture (hf_family is 'genlab'); "
                          "peft adapters need a GPT-2/Llama/Qwen2/Mistral-shaped model")
    names: dict[tuple[str, str], str] = {("head", "all"): "lm_head"}
    for i in range(c.n_layer):
        g = f"blocks.{i}."
        if family == "gpt2":
            h = f"transformer.h.{i}."
            names.update({(g + "attn.qkv", "all"): h + "attn.c_attn", (g + "attn.out", "all"): h + "attn.c_proj",
                          (g + "mlp.up", "all"): h + "mlp.c_fc", (g + "mlp.down", "all"): h + "mlp.c_proj"})
            continue
        h = f"model.layers.{i}."
        names.update({(g + "attn.qkv", p): h + f"self_attn.{p}_proj" for p in "qkv"})
        names.update({(g + "attn.out", "all"): h + "self_attn.o_proj", (g + "mlp.down", "all"): h + "mlp.down_proj",
                      (g + "mlp.up", "gate"): h + "mlp.gate_proj", (g + "mlp.up", "up"): h + "mlp.up_proj"})
    return names


def save_peft_adapter(model: nn.Module, directory: str | Path, name: str = "default",
                      base_model_name_or_path: str | None = None) -> Path:
    """Write adapter `name` as a peft LoRA/DoRA adapter that `PeftModel.from_pretrained` loads."""
    directory = Path(directory)
    names = hf_module_names(model)
    tensors: dict[str, torch.Tensor] = {}
    config: LoraConfig | None = None
    for layer_name, layer in lora_layers(model).items():
        if name not in layer.adapters:
            continue
        adapter = layer.adapters[name]
        config = config or adapter.config
        if (adapter.config.r, adapter.config.scaling, adapter.config.dora) != (config.r, config.scaling, config.dora):
            raise ConfigError(f"adapter {name!r} has different r/alpha/DoRA on {layer_name}; "
                              "peft's single config cannot say so")
        for part, s in adapter.slices.items():
            hf = names.get((layer_name, part))
            if hf is None:
                raise ConfigError(f"slice {part!r} of {layer_name} has no peft equivalent for this model family "
                                  f"(use split_fused={hf_family(model.config) != 'gpt2'})")
            tensors[f"{PREFIX}{hf}.lora_A.weight"] = s.lora_A.detach().float().contiguous()
            tensors[f"{PREFIX}{hf}.lora_B.weight"] = s.lora_B.detach().float().contiguous()
            if s.magnitude is not None:
                tensors[f"{PREFIX}{hf}.lora_magnitude_vector"] = s.magnitude.detach().float().contiguous()
    if config is None:
        raise ConfigError(f"the model has no adapter named {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    targets = sorted({k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors})
    peft_config: dict[str, Any] = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout, "use_rslora": config.rslora,
        "use_dora": config.dora, "target_modules": targets, "bias": "none", "lora_bias": False,
        "fan_in_fan_out": hf_family(model.config) == "gpt2", "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
    }
    save_file_atomic(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    write_json(directory / ADAPTER_CONFIG, peft_config)
    return directory


def _read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not (directory / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{directory}: no {ADAPTER_CONFIG} (is this a peft adapter directory?)")
    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    try:
        if (directory / ADAPTER_WEIGHTS).is_file():
            return config, load_file(str(directory / ADAPTER_WEIGHTS))
        if (directory / "adapter_model.bin").is_file():
            return config, torch.load(directory / "adapter_model.bin", map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{directory}: cannot read adapter weights ({e})") from None
    raise CheckpointError(f"{directory}: no {ADAPTER_WEIGHTS}")


def _check_supported(config: dict[str, Any], directory: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{directory}: peft_type {config.get('peft_type')!r} is not LORA")
    unsupported = {"rank_pattern": config.get("rank_pattern") or {}, "alpha_pattern": config.get("alpha_pattern") or {},
                   "lora_bias": config.get("lora_bias", False), "modules_to_save": config.get("modules_to_save"),
                   "layer_replication": config.get("layer_replication")}
    used = [k for k, v in unsupported.items() if v]
    if config.get("bias", "none") != "none":
        used.append(f"bias={config['bias']!r}")
    if used:
        raise ConfigError(f"{directory}: peft adapter uses features genlab does not load: {used}")


def load_peft_adapter(model: nn.Module, directory: str | Path, name: str = "default",
                      activate: bool = True) -> list[str]:
    """Add the peft LoRA/DoRA adapter in `directory` to a genlab model as adapter `name`; returns its layers."""
    directory = Path(directory)
    config, tensors = _read_adapter(directory)
    _check_supported(config, directory)
    to_genlab = {hf: key for key, hf in hf_module_names(model).items()}
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.endswith(".base_layer.weight"):
            continue  # peft also saves a targeted tied layer's base weight; the base comes from the model
        m = _KEY.match(key)
        if m is None:
            raise CheckpointError(f"{directory}: unexpected tensor {key!r} in a LoRA adapter")
        target = to_genlab.get(m["module"])
        if target is None:
            raise CheckpointError(f"{directory}: adapter targets {m['module']!r}, which this model does not have")
        grouped.setdefault(target, {})[m["ab"] or "magnitude"] = t
    if not grouped:
        raise CheckpointError(f"{directory}: the adapter holds no LoRA weights")
    family = hf_family(model.config)
    lora_config = LoraConfig(
        r=int(config["r"]), alpha=float(config.get("lora_alpha", config["r"])),
        dropout=float(config.get("lora_dropout", 0.0)),
        targets=tuple(layer if part == "all" else f"{layer}.{part}" for layer, part in sorted(grouped)),
        rslora=bool(config.get("use_rslora", False)), dora=bool(config.get("use_dora", False)),
        split_fused=family != "gpt2")
    layers = add_adapter(model, lora_config, name, activate=activate)
    wrapped = lora_layers(model)
    with torch.no_grad():
        for (layer, part), found in grouped.items():
            s = wrapped[layer].adapters[name].slices[part]
            expected = {"lora_A": s.lora_A, "lora_B": s.lora_B}
            if lora_config.dora:
                expected["magnitude"] = s.magnitude
            if set(found) != set(expected):
                raise CheckpointError(f"{directory}: {layer}.{part} has tensors {sorted(found)}, "
                                      f"expected {sorted(expected)}")
            for kind, param in expected.items():
                t = found[kind]
                if t.shape != param.shape:
                    raise CheckpointError(f"{directory}: {kind} for {layer}.{part} has shape {tuple(t.shape)}, "
                                          f"expected {tuple(param.shape)}")
                param.copy_(t)
    return layers
