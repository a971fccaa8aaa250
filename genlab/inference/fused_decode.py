"""Fused decode step: the Llama-family forward for one token per sequence, a few calls per layer.

Handbook VI (efficient inference). A decode step multiplies a handful of rows by every weight: on
CPU its matmuls are memory-bound and everything between them is tiny. Run through the model's own
modules that "everything between" is ~25 torch ops per layer (norm, split, RoPE, stores, views,
SiLU, residual adds), each costing microseconds of dispatch for nanoseconds of arithmetic; at one
sequence per step that overhead was larger than the matmuls themselves. This path computes the same
function with, per layer:

    rms_norm (kernel) -> qkv = h @ Wqkv^T (+ b)
    -> rope_store_decode (kernel: RoPE on q and k, k/v into their paged slots, paged attention)
    -> x += attn @ Wo^T (one in-place addmm) -> rms_norm (kernel) -> gate_up = h @ Wup^T
    -> silu_mul (kernel) -> x += act @ Wdown^T (addmm)

then the final norm and the head. Measured on the 2-core dev machine, one thread, the d_model 256 6-layer
benchmark model: single-stream decode 4.9 -> 2.6 ms per token (transformers: 6-7 ms); 64 sequences: the
offline engine 2.1x -> 2.4-2.6x transformers' batched generate, now bound by the matmuls (60-80 GFLOP/s of a
~82 GFLOP/s single core) and decode attention (the KV reads, near memory bandwidth). The kernels are paged_kernels.py's (numba). Same idea as the fused
decode kernels of vLLM and llama.cpp, at the granularity a CPU needs. `Transformer.forward` with a
`PagedStep` stays the slow-and-obvious reference: tests hold the two equal (fp32 and fp64; GQA,
sliding window, QKV bias, scattered block tables) and the engine's greedy outputs identical.

Supported: RoPE + RMSNorm + SwiGLU models without output/MLP biases (Llama, Mistral, Qwen2), on CPU in
float32/float64, numba installed, attn_impl "sdpa". `FusedDecoder.unsupported` names the reason
otherwise, and the engine keeps the module path. Weights are held as views: in-place updates
(load_state_dict, training steps) are seen; replacing a parameter's `.data` is not.

    python -m pytest -q tests/inference/test_fused_decode.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genlab.inference import paged_kernels as K
from genlab.inference.paged_attention import PagedKVCache, PagedStep


SCALAR_ROWS = 4  # up to this many rows the silu_mul kernel beats two torch ops (dispatch vs scalar exp)


class FusedDecoder:
    """Logits [S, V] for one new token per sequence of an all-decode `PagedStep`."""

    @staticmethod
    def unsupported(model, cache: PagedKVCache) -> str | None:
        """Why this path cannot run `model` over `cache` (None when it can)."""
        c = model.config
        needs = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "attn_impl": "sdpa"}
        for name, value in needs.items():
            if getattr(c, name) != value:
                return f"{name}={getattr(c, name)!r} (the fused decode step needs {value!r})"
        if c.out_bias or c.mlp_bias:
            return "output or MLP biases"
        if not cache.decode_kernel:
            return "no decode kernel (numba missing, or not a float32/float64 CPU cache)"
        if model.embed.weight.dtype != cache.k.dtype:
            return f"weights are {model.embed.weight.dtype}, the cache {cache.k.dtype}"
        return None

    def __init__(self, model, cache: PagedKVCache) -> None:
        reason = self.unsupported(model, cache)
        if reason is not None:
            raise ValueError(f"fused decode is not available: {reason}")
        c = model.config
        self.model, self.cache = model, cache
        self.n_head, self.head_dim, self.d_ff, self.eps = c.n_head, c.head_dim, c.d_ff, c.norm_eps
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self.window = c.sliding_window or 0
        with torch.no_grad():
            # (attn norm, Wqkv^T, qkv bias, Wo^T, mlp norm, Wup^T, Wdown^T, k store, v store) per layer;
            # W^T of a column-major weight (the engine's layout, weight_layout.py) is contiguous.
            self.layers = [
                (b.attn_norm.weight.detach().numpy(), b.attn.qkv.weight.detach().t(),
                 None if b.attn.qkv.bias is None else b.attn.qkv.bias.detach(), b.attn.out.weight.detach().t(),
                 b.mlp_norm.weight.detach().numpy(), b.mlp.up.weight.detach().t(), b.mlp.down.weight.detach().t(),
                 cache.k[i].numpy(), cache.v[i].numpy())
                for i, b in enumerate(model.blocks)]
            self.final_norm = model.norm.weight.detach().numpy()
            self.embed = model.embed.weight.detach()
            self.head = model.head.weight.detach().t()

    @torch.inference_mode()
    def __call__(self, token_ids: list[int], step: PagedStep) -> torch.Tensor:
        assert step.all_decode and step.num_tokens == len(token_ids), "fused decode takes all-decode steps only"
        S, H, D = len(token_ids), self.n_head, self.head_dim
        table = self.model.rope_table(step.max_position + 1, self.embed.dtype)
        cos, sin = table.cos.numpy(), table.signed_sin.numpy()
        positions, slot_block, slot_offset = step.meta
        x = self.embed[torch.tensor(token_ids)]  # [S, d], a fresh tensor updated in place below
        h = torch.empty_like(x)
        attn = torch.empty(S, H * D, dtype=x.dtype)
        act = torch.empty(S, self.d_ff, dtype=x.dtype)
        xn, hn, attn_n, act_n = x.numpy(), h.numpy(), attn.numpy().reshape(S, H, D), act.numpy()
        for attn_norm, w_qkv, b_qkv, w_out, mlp_norm, w_up, w_down, k_store, v_store in self.layers:
            K.rms_norm(xn, attn_norm, self.eps, hn)
            qkv = torch.mm(h, w_qkv) if b_qkv is None else torch.addmm(b_qkv, h, w_qkv)
            K.rope_store_decode(qkv.numpy(), cos, sin, positions, slot_block, slot_offset, k_store, v_store,
                                step.kernel_tables, step.kernel_lens, self.scale, self.window, H, attn_n)
            x.addmm_(attn, w_out)
            K.rms_norm(xn, mlp_norm, self.eps, hn)
            gate_up = torch.mm(h, w_up)
            if S <= SCALAR_ROWS:
                K.silu_mul(gate_up.numpy(), act_n)
            else:  # torch's SiLU is vectorised (numba's exp is scalar without SVML)
                torch.mul(F.silu(gate_up[:, :self.d_ff]), gate_up[:, self.d_ff:], out=act)
            x.addmm_(act, w_down)
        K.rms_norm(xn, self.final_norm, self.eps, hn)
        return torch.mm(h, self.head)
