"""Causal self-attention with MHA/MQA/GQA, a KV cache, and two interchangeable kernels.

Handbook II (attention), VI (KV caching). Vaswani et al. 2017; Shazeer 2019 (MQA); Ainslie et al. 2023 (GQA).
`reference_attention` is the slow, obvious softmax(QK^T/sqrt(d) + bias) V; the fast path is
`torch.nn.functional.scaled_dot_product_attention`. Tests hold them equal. A cache object with
`provides_attention = True` (the engine's paged cache) takes over "store k/v and attend" instead.

    python -m pytest -q tests/models/test_transformer.py -k attention
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlab.models.config import ModelConfig
from genlab.models.positions import alibi_slopes, rotate


class KVCache:
    """Preallocated keys/values [n_layer, B, n_kv_head, max_len, head_dim]; `length` tokens are filled."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, D] after the filled part; return all keys/values so far (views)."""
        end = self.length + k.shape[2]
        assert end <= self.max_len, f"KV cache overflow: {end} > {self.max_len}"
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens


def attention_mask(positions_q: torch.Tensor, positions_k: torch.Tensor, window: int | None = None,
                   segments_q: torch.Tensor | None = None, segments_k: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [B, 1, Tq, Tk] mask, True where query may attend key: causal, optional window and segments.

    Positions are absolute token positions per batch row ([B, T]); segments (packed documents) stop
    attention across document boundaries.
    """
    diff = positions_q[:, :, None] - positions_k[:, None, :]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    if segments_q is not None:
        allowed &= segments_q[:, :, None] == segments_k[:, None, :]
    return allowed[:, None]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias, masked) v in float32; k, v already expanded to q's heads."""
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        # One fused projection for q, k, v: one matmul instead of three (as GPT-2's c_attn).
        self.qkv = nn.Linear(config.d_model, q_dim + 2 * kv_dim, bias=config.qkv_bias)
        self.out = nn.Linear(q_dim, config.d_model, bias=config.out_bias)
        if config.position == "alibi":
            self.register_buffer("alibi", alibi_slopes(self.n_head), persistent=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None,
                positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        heads = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)  # [B, T, heads, D]
        qk, v = heads.split([self.n_head + self.n_kv_head, self.n_kv_head], dim=2)
        if rope is not None:  # q and k rotated together: one set of ops per layer, not two
            qk = rotate(qk, *rope)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if getattr(cache, "provides_attention", False):
            # A paged cache (genlab.inference.paged_attention) stores k/v and attends itself.
            y = cache.attend(self.layer_idx, q, k, v)
            return self.out(y.transpose(1, 2).reshape(B, T, q_dim))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        bias = None
        if self.config.position == "alibi":
            key_pos = torch.arange(k.shape[2], device=x.device)
            # -slope * distance; masked positions are removed by the mask anyway.
            bias = -self.alibi[:, None, None] * (positions[:, None, :, None] - key_pos).abs().float()
        dropout = self.config.dropout if self.training else 0.0
        if self.config.attn_impl == "reference":
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            if mask is None:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - T)
            y = reference_attention(q, k, v, mask, bias)
            y = F.dropout(y, dropout, self.training)
        else:
            attn_mask = mask
            if bias is not None:
                full = mask if mask is not None else torch.ones(T, k.shape[2], dtype=torch.bool).tril(k.shape[2] - T)
                attn_mask = bias.masked_fill(~full, float("-inf")).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                               is_causal=attn_mask is None and T > 1,
                                               enable_gqa=self.n_kv_head != self.n_head)
        return self.out(y.transpose(1, 2).reshape(B, T, q_dim))
