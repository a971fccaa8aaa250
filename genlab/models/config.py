"""Model configuration: one dataclass that spans the GPT-2 and Llama families.

Handbook II (decoder-only transformers), III (positional encodings). Radford et al. 2019 (GPT-2),
Touvron et al. 2023 (Llama), Ainslie et al. 2023 (GQA), Su et al. 2021 (RoPE), Press et al. 2021 (ALiBi).

    python -c "from genlab.models.config import ModelConfig; print(ModelConfig.llama_like(d_model=128))"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from genlab.errors import ConfigError

Position = Literal["learned", "sinusoidal", "rope", "alibi", "none"]
Mlp = Literal["swiglu", "gelu", "gelu_tanh", "relu"]
Norm = Literal["rmsnorm", "layernorm"]
AttnImpl = Literal["sdpa", "reference"]


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: same as n_head (MHA); 1: MQA; otherwise GQA
    d_model: int = 256
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # None: 4*d (gelu/relu) or ~8/3*d rounded to 32 (swiglu)
    max_seq_len: int = 256
    position: Position = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF-style dict; only {"type": "linear", "factor": f} here
    mlp: Mlp = "swiglu"
    norm: Norm = "rmsnorm"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # GPT-2 and Qwen2 have it
    out_bias: bool = False  # bias of the attention output projection (GPT-2)
    mlp_bias: bool = False  # biases of both MLP projections (GPT-2)
    dropout: float = 0.0
    init_std: float = 0.02
    attn_impl: AttnImpl = "sdpa"
    sliding_window: int | None = None  # Mistral-style local attention; None = full causal

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp != "swiglu" else 32 * ((8 * self.d_model // 3 + 31) // 32)
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        choices = {"position": Position, "mlp": Mlp, "norm": Norm, "attn_impl": AttnImpl}
        for name, lit in choices.items():
            if getattr(self, name) not in lit.__args__:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {lit.__args__}")

    # --- presets -------------------------------------------------------------------------------
    @classmethod
    def gpt2_like(cls, **overrides: Any) -> "ModelConfig":
        base = dict(position="learned", mlp="gelu_tanh", norm="layernorm", tie_embeddings=True,
                    qkv_bias=True, out_bias=True, mlp_bias=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama_like(cls, **overrides: Any) -> "ModelConfig":
        base = dict(position="rope", mlp="swiglu", norm="rmsnorm", tie_embeddings=False)
        return cls(**{**base, **overrides})

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
