"""Fine-tuning methods by name: full, LoRA, DoRA, QLoRA — prepare a model, then save what was learned.

Handbook IV (LoRA, DoRA), VI (quantization). Hu et al. 2021; Liu et al. 2024; Dettmers et al. 2023.
`prepare` freezes the base and attaches adapters (QLoRA first quantizes the transformer blocks to NF4);
`save` writes a peft adapter (adapter_model.safetensors + adapter_config.json) and, where the base is
not quantized, the merged model in the Hugging Face layout.

    genlab finetune --method lora --steps 150
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from genlab.errors import ConfigError
from genlab.finetune.lora import LoraConfig, add_adapter, mark_only_adapters_trainable, unload
from genlab.finetune.peft_io import save_peft_adapter
from genlab.models.hf_io import save_pretrained
from genlab.quant.nf4 import quantize_model_nf4

Method = Literal["full", "lora", "dora", "qlora"]
METHODS: tuple[str, ...] = ("full", "lora", "dora", "qlora")


@dataclass
class AdapterOptions:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("all-linear",)
    rslora: bool = False


def prepare(model: nn.Module, method: str, options: AdapterOptions | None = None) -> int:
    """Make `model` ready for `method` (in place); returns the number of trainable parameters."""
    if method not in METHODS:
        raise ConfigError(f"unknown fine-tuning method {method!r}; choose from {', '.join(METHODS)}")
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return sum(p.numel() for p in model.parameters())
    o = options or AdapterOptions()
    if method == "qlora":
        quantize_model_nf4(model)
    add_adapter(model, LoraConfig(r=o.r, alpha=o.alpha, dropout=o.dropout, targets=o.targets, rslora=o.rslora,
                                  dora=method == "dora"))
    return mark_only_adapters_trainable(model)


def save(model: nn.Module, method: str, directory: str | Path) -> dict[str, str]:
    """Write the result: `model/` (merged, HF layout) unless QLoRA, plus `adapter/` (peft format) for adapters."""
    directory = Path(directory)
    written = {}
    if method != "full":
        written["adapter"] = str(save_peft_adapter(model, directory / "adapter"))
        if method == "qlora":
            return written  # merging into a 4-bit base would round the update away: keep base + adapter
        unload(model, merge=True)
    written["model"] = str(save_pretrained(model, directory / "model"))
    return written
