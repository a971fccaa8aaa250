"""Decode attention that reads the paged KV store in place (no gather copy), and the decode step's other small kernels, compiled with numba.

Handbook VI (PagedAttention). Kwon et al. 2023 (vLLM): the paged attention kernel walks each
sequence's block table and reads keys/values where they live, instead of first copying them into a
contiguous batch. That is what this kernel does for decode steps (one query per sequence):

    for each sequence s, query head h (kv head h // group):
        scores[t] = <q[s, h], K[block(t), slot(t)]> * scale      for the sequence's keys t
        out[s, h] = sum_t softmax(scores)[t] * V[block(t), slot(t)]

Why a kernel: decode attention is memory-bound. The torch path (paged_attention.PagedStep) gathers
every sequence's blocks, padded to the longest, into a workspace and runs SDPA over it: it reads the
keys/values twice and writes them once, padding included. Here each key/value row is read once per
query head in its group, and only up to the sequence's own length; each sequence is computed on its
own, so its result does not depend on the batch. Blocks are scattered, and the CPU's prefetcher does
not follow a jump from one block to another: so while reading row j of a block the kernel asks for
row j of the sequence's next block (`prefetch`, LLVM's prefetch hint; values unchanged). On the
2-core dev machine that cut a d256 decode layer for 64 sequences of 50-184 keys from 2.9-3.3 ms to
1.9-2.4 ms (the keys and values outnumber the caches). numba is already the project's JIT for hot loops
(genlab.retrieval.indexes.hnsw_kernels); without numba the engine keeps the torch path
(`AVAILABLE` is False). Kernels are cached on disk, so only the first run pays the compile.

Arrays (numpy views of torch tensors, float32 or float64): q [S, H, D] contiguous; k_store, v_store
[Hkv, num_blocks, block_size, D] (one layer of PagedKVCache); tables [S, max_blocks] int64 (padded);
lens [S] int64 (keys per sequence, the new one included); window <= 0 for none; out [S, H, D].

The fused decode step (fused_decode.py) also uses `rope_store_decode` (RoPE on q and k, store k and v
in their slots, then `decode_attention`: one call per layer instead of a dozen torch ops),
`rms_norm` and `silu_mul`. At one sequence per step each torch op costs more in dispatch than in
arithmetic, which is why these are kernels too.

    python -m pytest -q tests/inference/test_paged_kernels.py
"""

from __future__ import annotations

import math

import numpy as np

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic
    AVAILABLE = True
except ImportError:  # pragma: no cover - the serve and test extras install numba
    AVAILABLE = False

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)

_JIT = dict(cache=True, fastmath=True, nogil=True)
LOG2_E = 1.4426950408889634
LN2_HI = 0.693359375  # ln 2 = LN2_HI + LN2_LO; LN2_HI has 9 significant bits, so k * LN2_HI is exact for |k| < 2^15
LN2_LO = math.log(2.0) - LN2_HI
CACHE_LINE_FLOATS = 16  # one 64-byte cache line of float32 (float64 rows get every other line: still a head start)

if AVAILABLE:
    @intrinsic
    def prefetch(typingctx, array, i0, i1, i2, i3):
        """Hint the CPU to load the cache line holding array[i0, i1, i2, i3] (llvm.prefetch: read, keep in
        all levels, data); it changes no value. Used to fetch the next KV block while reading this one."""
        def codegen(context, builder, signature, args):
            view = context.make_array(signature.args[0])(context, builder, args[0])
            offset = builder.mul(args[1], builder.extract_value(view.strides, 0))
            for axis in range(1, 4):
                offset = builder.add(offset, builder.mul(args[axis + 1], builder.extract_value(view.strides, axis)))
            byte_ptr = ir.IntType(8).as_pointer()
            address = builder.gep(builder.bitcast(view.data, byte_ptr), [offset])
            i32 = ir.IntType(32)
            hint = builder.module.declare_intrinsic("llvm.prefetch", [byte_ptr],
                                                    ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]))
            builder.call(hint, [address, i32(0), i32(3), i32(1)])
            return context.get_dummy_value()
        return types.void(array, types.intp, types.intp, types.intp, types.intp), codegen

    @intrinsic
    def pow2(typingctx, k):
        """2.0 ** k for an integral float k in the normal exponent range, built from its bit pattern (exact;
        the same type as k). Unlike a library call it vectorises, which is what `shifted_exp` needs."""
        if k not in (types.float32, types.float64):
            return None

        def codegen(context, builder, signature, args):
            single = signature.args[0] == types.float32
            int_type = ir.IntType(32 if single else 64)
            exponent = builder.add(builder.fptosi(args[0], int_type), int_type(127 if single else 1023))
            bits = builder.shl(exponent, int_type(23 if single else 52))
            return builder.bitcast(bits, context.get_value_type(signature.return_type))
        return k(k), codegen


@njit(**_JIT)
def shifted_exp(x, first, n, top):
    """x[t] <- exp(x[t] - top) for t in [first, n), x[t] <= top; returns their sum.

    numba's math.exp is a scalar library call (no SVML here), and it was ~1/6 of decode attention's
    time. This is the textbook vectorisable form: exp(v) = 2^k exp(r), k = round(v / ln 2),
    r = v - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in two, Cody & Waite, so k ln2_hi is exact), exp(r)
    by its Taylor polynomial to degree 12 (truncation < 2e-16 relative: float64-exact, so float32 too),
    2^k from its bit pattern (`pow2`). Arguments below -87 are clamped there: exp(-87) ~ 1.6e-38 next
    to the largest term, 1. Measured against the math.exp loop in one process, interleaved, on the 2-core dev
    machine: decode attention for 64 sequences of 24-184 keys, 4 heads of 64, 1.22 -> 1.04 ms (best of 30).
    """
    f = x.dtype.type
    y = x[first:n]  # a loop from 0 over a view: no negative-index wraparound check, so LLVM vectorises it
    total = f(0)
    for t in range(y.shape[0]):
        v = max(y[t] - top, f(-87.0))
        k = np.floor(v * f(LOG2_E) + f(0.5))
        r = (v - k * f(LN2_HI)) - k * f(LN2_LO)
        p = f(1 / 479001600)  # Horner over 1/12!, 1/11!, ..., 1/0!
        p = p * r + f(1 / 39916800)
        p = p * r + f(1 / 3628800)
        p = p * r + f(1 / 362880)
        p = p * r + f(1 / 40320)
        p = p * r + f(1 / 5040)
        p = p * r + f(1 / 720)
        p = p * r + f(1 / 120)
        p = p * r + f(1 / 24)
        p = p * r + f(1 / 6)
        p = p * r + f(0.5)
        p = p * r + f(1.0)
        p = p * r + f(1.0)
        e = p * pow2(k)
        y[t] = e
        total += e
    return total


@njit(**_JIT)
def decode_attention(q, k_store, v_store, tables, lens, scale, window, out):
    S, H, D = q.shape
    n_kv, bs = k_store.shape[0], k_store.shape[2]
    group = H // n_kv
    max_len = 0
    for s in range(S):
        max_len = max(max_len, lens[s])
    scores = np.empty(max_len, dtype=q.dtype)
    acc = np.empty(D, dtype=q.dtype)
    zero = scores.dtype.type(0)  # accumulate in the cache's precision (float32 stays float32: vectorised)
    for s in range(S):
        n = lens[s]
        first = 0 if window <= 0 else max(0, n - window)
        last_block = (n - 1) // bs
        for h in range(H):
            kv = h // group
            top = -np.inf
            for t in range(first, n):
                b, slot = t // bs, t % bs
                block = tables[s, b]
                if b < last_block:  # blocks are scattered: the hardware prefetcher cannot guess the next one
                    for d in range(0, D, CACHE_LINE_FLOATS):
                        prefetch(k_store, kv, tables[s, b + 1], slot, d)
                dot = zero
                for d in range(D):
                    dot += q[s, h, d] * k_store[kv, block, slot, d]
                dot *= scale
                scores[t] = dot
                top = max(top, dot)
            total = shifted_exp(scores, first, n, top)
            acc[:] = 0.0
            for t in range(first, n):
                b, slot = t // bs, t % bs
                block = tables[s, b]
                if b < last_block:
                    for d in range(0, D, CACHE_LINE_FLOATS):
                        prefetch(v_store, kv, tables[s, b + 1], slot, d)
                w = scores[t]
                for d in range(D):
                    acc[d] += w * v_store[kv, block, slot, d]
            for d in range(D):
                out[s, h, d] = acc[d] / total


@njit(**_JIT)
def rope_store_decode(qkv, cos, signed_sin, positions, slot_block, slot_offset, k_store, v_store,
                      tables, lens, scale, window, n_head, out):
    """One decode token per sequence: rotate q and k (RopeTable layout), store k and v, attend.

    qkv [S, (H + 2 Hkv) * D] is the fused projection (q heads, k heads, v heads); cos and signed_sin
    [positions, D] are RopeTable rows: out[d] = x[d] cos[d] + x[d +- D/2] signed_sin[d].
    """
    S = qkv.shape[0]
    n_kv, D = k_store.shape[0], k_store.shape[3]
    half = D // 2
    q = np.empty((S, n_head, D), dtype=qkv.dtype)
    for s in range(S):
        p, block, slot = positions[s], slot_block[s], slot_offset[s]
        for h in range(n_head + n_kv):
            base = h * D
            for d in range(D):
                partner = d + half if d < half else d - half
                r = qkv[s, base + d] * cos[p, d] + qkv[s, base + partner] * signed_sin[p, d]
                if h < n_head:
                    q[s, h, d] = r
                else:
                    k_store[h - n_head, block, slot, d] = r
        for h in range(n_kv):
            base = (n_head + n_kv + h) * D
            for d in range(D):
                v_store[h, block, slot, d] = qkv[s, base + d]
    decode_attention(q, k_store, v_store, tables, lens, scale, window, out)


@njit(**_JIT)
def rms_norm(x, weight, eps, out):
    """out = x / sqrt(mean(x^2) + eps) * weight, row by row; x, out [N, d]."""
    N, d = x.shape
    for i in range(N):
        total = 0.0  # float64 accumulator
        for j in range(d):
            total += x[i, j] * x[i, j]
        inv = x.dtype.type(1.0 / math.sqrt(total / d + eps))
        for j in range(d):
            out[i, j] = x[i, j] * inv * weight[j]


@njit(**_JIT)
def silu_mul(gate_up, out):
    """SwiGLU's middle: out = silu(gate) * up for gate_up [N, 2F] = [gate | up]; out [N, F]."""
    N, F = out.shape
    one = gate_up.dtype.type(1.0)
    for i in range(N):
        for j in range(F):
            g = gate_up[i, j]
            out[i, j] = g / (one + math.exp(-g)) * gate_up[i, F + j]
