"""Positional encodings: learned (GPT-2), sinusoidal (Vaswani et al. 2017), RoPE (Su et al. 2021), ALiBi (Press et al. 2021).

Handbook III (positional encodings). RoPE uses the "rotate half" layout of GPT-NeoX/Llama in Hugging Face,
so weights load without permutation.

    python -m pytest -q tests/models/test_transformer.py -k position
"""

from __future__ import annotations

import math

import torch

from genlab.errors import ConfigError


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """[max_len, dim] table: sin on even, cos on odd channels, wavelengths 2*pi .. 10000*2*pi."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies theta^(-2i/d) and the position divisor from the scaling dict (linear only for now)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if not scaling:
        return inv_freq, 1.0
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq, float(scaling["factor"])
    raise ConfigError(f"rope_scaling type {kind!r} is not supported (supported: linear)")


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, divisor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [..., T, head_dim] for integer positions [..., T] (duplicated halves, HF layout)."""
    angles = (positions.to(torch.float32)[..., None] / divisor) * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by cos/sin [B or 1, T, D]: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class RopeTable:
    """cos and sin (the latter with its first half negated) for positions 0..length-1, computed once.

    Indexing it once per forward and sharing the rows by every layer replaces per-layer
    cos/sin/cat work; `rotate` then needs no rotate_half concatenation:
    rotate_half(x) * sin == swap_halves(x) * signed_sin, exactly (a sign flip rounds nothing).
    """

    def __init__(self, inv_freq: torch.Tensor, divisor: float, length: int, dtype: torch.dtype) -> None:
        cos, sin = rope_cos_sin(torch.arange(length, device=inv_freq.device), inv_freq, divisor)
        half = cos.shape[-1] // 2
        self.length, self.dtype, self.device = length, dtype, inv_freq.device
        self.cos = cos.to(dtype)
        self.signed_sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1).to(dtype)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [B, T, D] for positions [B, T]; all must be < length."""
        return self.cos[positions], self.signed_sin[positions]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """RoPE for x [B, T, H, D] with rows from RopeTable.lookup [B, T, D] (same values as apply_rope)."""
    swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)  # the two halves swapped (one copy)
    return x * cos[:, :, None] + swapped * signed_sin[:, :, None]


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head slopes 2^(-8i/n); for n not a power of two, interleave the next power's slopes (Press et al.)."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_two(closest)
    if closest < n_head:
        slopes += power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)
