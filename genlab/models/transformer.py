"""One decoder-only transformer for the GPT-2 and Llama families (Qwen2 and Mistral by config).

Handbook II (decoder-only transformers), III (positions). Radford et al. 2019; Touvron et al. 2023.
Pre-norm blocks: x + attn(norm(x)), then x + mlp(norm(x)); final norm; linear head (optionally tied).
Every switch lives in `ModelConfig`; `genlab.models.hf_io` maps Hugging Face checkpoints onto it.

    python -c "from genlab.models import Transformer, ModelConfig; m = Transformer(ModelConfig()); print(m.num_params())"
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import GenlabError
from genlab.models.attention import Attention, KVCache, attention_mask
from genlab.models.config import ModelConfig
from genlab.models.positions import RopeTable, rope_inv_freq, sinusoidal_table


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate x) * up x), with gate and up fused; or a 2-layer GELU/ReLU MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        width = 2 * config.d_ff if config.mlp == "swiglu" else config.d_ff
        self.up = nn.Linear(config.d_model, width, bias=config.mlp_bias)
        self.down = nn.Linear(config.d_ff, config.d_model, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h)
        return self.down(h)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rope, mask, positions, cache):
        if self.training and self.dropout.p > 0:
            x = x + self.dropout(self.attn(self.attn_norm(x), rope, mask, positions, cache))
            return x + self.dropout(self.mlp(self.mlp_norm(x)))
        # Inference: no dropout module calls (each is Python overhead in a per-token loop).
        x = x + self.attn(self.attn_norm(x), rope, mask, positions, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        elif config.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.max_seq_len, config.d_model), persistent=False)
        elif config.position == "rope":
            inv_freq, self.rope_divisor = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
            self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self._rope_table: RopeTable | None = None  # built on first use (dtype/device of the weights)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layer)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if "norm" in name and name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    # --- forward ---------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        c = self.config
        p = self.embed.weight
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len or c.max_seq_len, c.head_dim, p.dtype, p.device)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T].

        cache: continue after `cache.length` tokens and append this chunk's keys/values. A cache with
            `provides_attention = True` (genlab.inference.paged_attention) does the attention itself and
            needs explicit positions; it may hold many sequences flattened into one row.
        positions: absolute positions [B, T] (default: cache offset + 0..T-1), e.g. restarting per packed document.
        segments: document ids [B, T] for packed sequences; tokens attend only within their segment.
        logit_rows: indices into T; only those positions get logits ([B, len(logit_rows), V]).
        """
        x = self.hidden_states(idx, cache, positions, segments)
        if logit_rows is not None:
            x = x[:, logit_rows]
        return self.head(self.norm(x))

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                      segments: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output [B, T, d_model] (before the final norm); arguments as in `forward`."""
        B, T = idx.shape
        paged = getattr(cache, "provides_attention", False)
        if paged and positions is None:
            raise GenlabError("a cache that provides attention needs explicit positions")
        offset = cache.length if cache is not None and not paged else 0
        if positions is None:
            positions = torch.arange(offset, offset + T, device=idx.device).expand(B, T)
        if self.config.position in ("learned", "sinusoidal") and int(positions.max()) >= self.config.max_seq_len:
            raise GenlabError(f"position {int(positions.max())} exceeds max_seq_len={self.config.max_seq_len}")
        x = self.embed(idx)
        if self.config.position == "learned":
            x = x + self.pos_embed(positions)
        elif self.config.position == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        x = self.dropout(x)
        rope = None
        if self.config.position == "rope":
            # A paged step knows its largest position already (no tensor reduction + sync per forward).
            top = getattr(cache, "max_position", None) if paged else None
            rope = self.rope_table((int(positions.max()) if top is None else top) + 1, x.dtype).lookup(positions)
        mask = None  # None: plain causal attention, handled inside SDPA
        if not paged and ((offset and T > 1) or segments is not None or self.config.sliding_window):
            assert segments is None or cache is None, "packed segments are for training, not cached decoding"
            query_order = torch.arange(offset, offset + T, device=idx.device).expand(B, T)
            key_order = torch.arange(offset + T, device=idx.device).expand(B, offset + T)
            mask = attention_mask(query_order, key_order, self.config.sliding_window, segments, segments)
        for block in self.blocks:
            x = block(x, rope, mask, positions, cache)
        if cache is not None and not paged:
            cache.advance(T)
        return x

    def rope_table(self, length: int, dtype: torch.dtype) -> RopeTable:
        """The cos/sin table (shared by all layers), rebuilt if too short or on another dtype/device."""
        table = self._rope_table
        if table is None or table.length < length or table.dtype != dtype or table.device != self.rope_inv_freq.device:
            length = max(length, self.config.max_seq_len)
            table = self._rope_table = RopeTable(self.rope_inv_freq, self.rope_divisor, length, dtype)
        return table

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, **kwargs) -> torch.Tensor:
        """Mean next-token cross entropy; targets == -100 are ignored (loss masks, padding).

        Only positions with a target go through the final norm and the head: in SFT a third of the
        positions (prompts, padding) are ignored, and the head is the widest matmul (tested equal to
        the cross entropy of `forward`'s logits with ignore_index).
        """
        x, targets = self.hidden_states(idx, **kwargs).flatten(0, 1), targets.flatten()
        trained = targets != -100
        if not bool(trained.all()):
            x, targets = x[trained], targets[trained]
        return F.cross_entropy(self.head(self.norm(x)).float(), targets)

    # --- accounting ------------------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
            if self.config.position == "learned":
                n -= self.pos_embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6N (non-embedding matmuls incl. head) + 12 L d T (attention scores), PaLM App. B."""
        c = self.config
        seq_len = seq_len or c.max_seq_len
        n = self.num_params(exclude_embeddings=True) + (self.head.weight.numel() if c.tie_embeddings else 0)
        return 6.0 * n + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len
