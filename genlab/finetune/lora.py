"""LoRA, rsLoRA and DoRA adapters on a model's Linear layers, with several named adapters per base.

Handbook IV (parameter-efficient finetuning). Hu et al. 2021 (LoRA: W + (alpha/r) B A, B = 0 at init),
Kalajdzievski 2023 (rsLoRA: alpha/sqrt(r)), Liu et al. 2024 (DoRA: m * (W + s B A) / ||W + s B A||_row,
the norm detached from the graph as in the paper's section 4.3). Numerics follow peft, the oracle.

Fused layers. genlab fuses q|k|v into `attn.qkv` and gate|up into `mlp.up` (SwiGLU) where Hugging Face has
separate q_proj/k_proj/v_proj and gate_proj/up_proj. A LoRA on HF's q_proj and v_proj has its own A per
projection, which one (A, B) pair on the fused weight cannot express (a shared A, or a block-diagonal B
whose zeros would train). So an adapter on a layer is a set of *slices*: each slice is one (A, B[, m])
acting on a contiguous range of output rows, named after the projection ("q", "k", "v", "gate", "up"),
or "all" for a whole layer. `split_fused=True` (default) gives one slice per projection, exactly the
HF/peft structure; `split_fused=False` gives one slice per layer, as peft on GPT-2's fused c_attn.
The base weights keep genlab's fused layout and one matmul; only the small adapters are per projection.

    python -m pytest -q tests/finetune/test_lora.py
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, GenlabError
from genlab.quant.nf4 import NF4Linear

Init = Literal["lora", "gaussian", "random"]

# Shorthands for `LoraConfig.targets`; patterns match a layer name or its suffix after a dot.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("attn.qkv", "attn.out"),
    "mlp": ("mlp.up", "mlp.down"),
    "all-linear": ("attn.qkv", "attn.out", "mlp.up", "mlp.down"),  # as peft's, the output head is left out
}


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Sequence[str] = field(default_factory=lambda: ("attention",))  # presets or name patterns
    rslora: bool = False  # scaling alpha/sqrt(r) instead of alpha/r
    dora: bool = False
    split_fused: bool = True  # one (A, B) per projection of a fused layer (HF/peft layout)
    init: Init = "lora"  # "lora": A kaiming-uniform, B = 0; "gaussian": A ~ N(0, 1/r), B = 0; "random": both random

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if self.r <= 0:
            raise ConfigError(f"LoRA rank r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.init not in Init.__args__:
            raise ConfigError(f"LoRA init {self.init!r} is not one of {Init.__args__}")
        if not self.targets:
            raise ConfigError("LoRA targets are empty")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    def patterns(self) -> list[str]:
        return [p for t in self.targets for p in TARGET_PRESETS.get(t, (t,))]


def name_matches(name: str, pattern: str) -> bool:
    """peft's rule (equal, or a suffix after a dot), with shell wildcards: "qkv" matches "blocks.0.attn.qkv"."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


class LoraSlice(nn.Module):
    """One low-rank update scaling * B @ A on output rows [start, stop); DoRA adds a magnitude per row."""

    def __init__(self, in_features: int, rows: tuple[int, int], r: int, scaling: float, init: Init) -> None:
        super().__init__()
        self.start, self.stop = rows
        self.r, self.scaling = r, scaling
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.stop - self.start, r))
        self.register_parameter("magnitude", None)  # DoRA: set by init_dora
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / r)
        else:  # nn.Linear's default, as peft and the reference loralib
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init == "random":  # peft's init_lora_weights=False: a non-zero update from the start
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def init_dora(self, weight_rows: torch.Tensor) -> None:
        """m = ||W + s B A|| per output row, so the adapted layer starts equal to plain LoRA."""
        norm = (weight_rows.float() + self.delta_weight().float()).norm(dim=1)
        self.magnitude = nn.Parameter(norm.to(self.lora_A.dtype))

    def extra_repr(self) -> str:
        dora = self.magnitude is not None
        return f"rows=[{self.start}, {self.stop}), r={self.r}, scaling={self.scaling:g}, dora={dora}"


class LoraAdapter(nn.Module):
    """All slices of one named adapter on one layer, plus its dropout."""

    def __init__(self, config: LoraConfig, slices: dict[str, LoraSlice]) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.slices = nn.ModuleDict(sorted(slices.items(), key=lambda kv: kv[1].start))


def dense_weight(base: nn.Module) -> torch.Tensor:
    """The base layer's weight as a dense tensor (dequantized on the fly for quantized bases)."""
    return base.dequantize() if isinstance(base, NF4Linear) else base.weight


class LoraLinear(nn.Module):
    """A frozen base Linear (or `NF4Linear`) plus named adapters; `active` ones add their updates."""

    def __init__(self, base: nn.Module, parts: list[tuple[str, int, int]], tied: bool = False) -> None:
        super().__init__()
        self.base = base
        self.parts = parts  # the projections of a fused layer: (name, start, stop); [("all", 0, out)] if unfused
        self.tied = tied  # base weight shared with another module (tied head): merging would change both
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.enabled = True
        self.merged: list[str] = []
        self._merge_norms: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def add(self, name: str, config: LoraConfig, rows: dict[str, tuple[int, int]]) -> None:
        """Adapter `name` with one slice per entry of rows: {slice name: (start, stop)}."""
        if name in self.adapters:
            raise ConfigError(f"adapter {name!r} already exists on this layer")
        if self.merged:
            raise GenlabError("unmerge adapters before adding another one")
        w = dense_weight(self.base)
        slices = {}
        for part, (a, b) in rows.items():
            s = LoraSlice(self.in_features, (a, b), config.r, config.scaling, config.init).to(w.device)
            if w.dtype != torch.float32 and not isinstance(self.base, NF4Linear):
                s.to(w.dtype)  # a bf16 base trains bf16 adapters; quantized bases keep fp32 adapters (QLoRA)
            if config.dora:
                s.init_dora(w[a:b])
            slices[part] = s
        self.adapters[name] = LoraAdapter(config, slices)

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled and self.merged:
            self.unmerge()  # as peft: a disabled adapter must not stay inside the weights
        y = self.base(x)
        if not self.enabled or self.merged:
            return y
        for name in self.active:
            y = y + self._adapter_output(self.adapters[name], x, y)
        return y

    def _adapter_output(self, adapter: LoraAdapter, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The update to add to y, over all output rows (zero where the adapter has no slice)."""
        xa = x.to(next(iter(adapter.slices.values())).lora_A.dtype)
        bias = getattr(self.base, "bias", None)
        weight = None  # dense base weight, only DoRA needs it (dequantized once per call for NF4 bases)
        pieces, row = [], 0
        for s in adapter.slices.values():
            if s.start > row:
                pieces.append(y.new_zeros(*y.shape[:-1], s.start - row))
            xd = adapter.dropout(xa)  # a mask per slice, as peft has one dropout per HF projection
            lora = F.linear(F.linear(xd, s.lora_A), s.lora_B)
            if s.magnitude is None:
                out = s.scaling * lora
            else:  # DoRA, as peft: (m/||W + sBA|| - 1) * W x + m/||W + sBA|| * s B A x
                weight = dense_weight(self.base) if weight is None else weight
                w = weight[s.start:s.stop].to(xd.dtype)
                norm = (w + s.scaling * (s.lora_B @ s.lora_A).detach()).norm(dim=1).detach()
                scale = s.magnitude / norm
                if isinstance(adapter.dropout, nn.Identity) or not self.training:
                    base_out = y[..., s.start:s.stop].to(xd.dtype)
                    if bias is not None:
                        base_out = base_out - bias[s.start:s.stop].to(xd.dtype)
                else:  # the base path sees the same dropped-out input as the adapter
                    base_out = F.linear(xd, w)
                out = (scale - 1) * base_out + scale * s.scaling * lora
            pieces.append(out.to(y.dtype))
            row = s.stop
        if row < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - row))
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    # --- merging -----------------------------------------------------------------------------------
    def _check_mergeable(self) -> torch.Tensor:
        if isinstance(self.base, NF4Linear):
            raise GenlabError("cannot merge adapters into a quantized (NF4) base; dequantize it first")
        if self.tied:
            raise GenlabError("cannot merge into a layer whose weight is tied to another (e.g. the tied head)")
        return self.base.weight

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapters into the base weight (in order); `unmerge` takes them out again."""
        if self.merged:
            raise GenlabError(f"adapters {self.merged} are already merged; unmerge first")
        weight = self._check_mergeable()
        original = weight.detach().clone()  # DoRA's norm is taken on the unmerged weight, as in forward
        for name in self.active:
            for part, s in self.adapters[name].slices.items():
                rows = weight[s.start:s.stop]
                delta = s.delta_weight().to(weight.dtype)
                if s.magnitude is None:
                    rows += delta
                else:
                    norm = (original[s.start:s.stop] + delta).norm(dim=1)
                    self._merge_norms[(name, part)] = norm
                    rows.copy_((s.magnitude / norm)[:, None] * (rows + delta))
        self.merged = list(self.active)

    @torch.no_grad()
    def unmerge(self) -> None:
        weight = self._check_mergeable()
        for name in reversed(self.merged):
            for part, s in self.adapters[name].slices.items():
                rows = weight[s.start:s.stop]
                delta = s.delta_weight().to(weight.dtype)
                if s.magnitude is None:
                    rows -= delta
                else:
                    norm = self._merge_norms.pop((name, part))
                    rows.copy_(rows / (s.magnitude / norm)[:, None] - delta)
        self.merged = []


# --- model-level API -------------------------------------------------------------------------------
def fused_parts(model: nn.Module, name: str, linear: nn.Module) -> list[tuple[str, int, int]]:
    """The projections fused in a genlab layer: q|k|v in attn.qkv, gate|up in a SwiGLU mlp.up."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "n_kv_head"):
        if name.endswith("attn.qkv"):
            q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
            return [("q", 0, q), ("k", q, q + kv), ("v", q + kv, q + 2 * kv)]
        if name.endswith("mlp.up") and config.mlp == "swiglu":
            return [("gate", 0, config.d_ff), ("up", config.d_ff, 2 * config.d_ff)]
    return [("all", 0, linear.out_features)]


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, NF4Linear))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def select_targets(model: nn.Module, config: LoraConfig) -> dict[str, dict[str, tuple[int, int]]]:
    """layer name -> {slice name: (start, stop)} for every layer/projection the config's patterns match."""
    chosen: dict[str, dict[str, tuple[int, int]]] = {}
    wrapped: list[str] = []
    for name, m in model.named_modules():  # parents come before their children
        if any(name.startswith(w + ".") for w in wrapped):
            continue  # the base layer inside a LoraLinear
        if isinstance(m, LoraLinear):
            wrapped.append(name)
        base = m.base if isinstance(m, LoraLinear) else m
        if not _is_linear(base):
            continue
        parts = fused_parts(model, name, base)
        layer_hit = any(name_matches(name, p) for p in config.patterns())
        if not config.split_fused:
            if layer_hit:
                chosen[name] = {"all": (0, base.out_features)}
            continue
        rows = {p: (a, b) for p, a, b in parts
                if layer_hit or (p != "all" and any(name_matches(f"{name}.{p}", pat) for pat in config.patterns()))}
        if rows:
            chosen[name] = rows
    return chosen


def add_adapter(model: nn.Module, config: LoraConfig, name: str = "default", activate: bool = True) -> list[str]:
    """Wrap the matching Linear layers (once) and add adapter `name` to each; returns the layer names.

    With `activate`, `name` becomes the only active adapter (`set_adapter` combines several)."""
    if not name.isidentifier():
        raise ConfigError(f"adapter name {name!r} must be an identifier")
    targets = select_targets(model, config)
    if not targets:
        raise ConfigError(f"LoRA targets {list(config.targets)} match no Linear layer of the model")
    shared = _shared_weights(model)
    for layer_name, rows in targets.items():
        module = model.get_submodule(layer_name)
        if not isinstance(module, LoraLinear):
            tied = id(getattr(module, "weight", None)) in shared
            module = LoraLinear(module, fused_parts(model, layer_name, module), tied=tied)
            _set_submodule(model, layer_name, module)
        module.add(name, config, rows)
    if activate:
        set_adapter(model, name)
    return list(targets)


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make `names` the active adapters (their updates add up, in this order) on every wrapped layer."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = set(names) - set(adapter_names(model))
    if unknown:
        raise ConfigError(f"unknown adapters {sorted(unknown)}; the model has {adapter_names(model)}")
    for layer in lora_layers(model).values():
        if layer.merged:
            raise GenlabError("unmerge adapters before switching")
        layer.active = [n for n in names if n in layer.adapters]


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in lora_layers(model).values():
        layer.enabled = enabled


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model alone inside the block (e.g. the reference policy for DPO)."""
    layers = lora_layers(model).values()
    before = [layer.enabled for layer in layers]
    set_adapters_enabled(model, False)
    try:
        yield
    finally:
        for layer, was in zip(layers, before):
            layer.enabled = was


def delete_adapter(model: nn.Module, name: str) -> None:
    if name not in adapter_names(model):
        raise ConfigError(f"unknown adapter {name!r}")
    for layer_name, layer in lora_layers(model).items():
        if name in layer.merged:
            raise GenlabError(f"adapter {name!r} is merged into {layer_name}; unmerge first")
        if name in layer.adapters:
            del layer.adapters[name]
            layer.active = [n for n in layer.active if n != name]


def merge_adapters(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.unmerge()


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every `LoraLinear` by its base layer, first merging the active adapters if `merge`."""
    for name, layer in lora_layers(model).items():
        if merge and not layer.merged and layer.enabled and layer.active:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base)
    return model


def mark_only_adapters_trainable(model: nn.Module, names: Sequence[str] | None = None) -> int:
    """requires_grad only on adapter parameters (of `names`, default the active ones); returns their count."""
    for p in model.parameters():
        p.requires_grad_(False)
    count = 0
    for layer in lora_layers(model).values():
        for name in (names if names is not None else layer.active):
            if name in layer.adapters:
                for p in layer.adapters[name].parameters():
                    p.requires_grad_(True)
                    count += p.numel()
    return count


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Tensors of one adapter: "<layer>.<slice>.lora_A" / ".lora_B" / ".magnitude"."""
    out = {}
    for layer_name, layer in lora_layers(model).items():
        if name in layer.adapters:
            for part, s in layer.adapters[name].slices.items():
                out[f"{layer_name}.{part}.lora_A"] = s.lora_A.detach()
                out[f"{layer_name}.{part}.lora_B"] = s.lora_B.detach()
                if s.magnitude is not None:
                    out[f"{layer_name}.{part}.magnitude"] = s.magnitude.detach()
    return out
