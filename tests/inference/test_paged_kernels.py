"""The numba paged decode-attention kernel (genlab.inference.paged_kernels) against dense attention.

    python -m pytest -q tests/inference/test_paged_kernels.py
"""

import math

import numpy as np
import pytest
import torch

from genlab.inference.paged_kernels import decode_attention, shifted_exp


def _case(dtype, n_head=4, n_kv=2, block_size=4, num_blocks=48, lens=(1, 4, 5, 17, 31), seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 8
    k = torch.randn(n_kv, num_blocks, block_size, D, generator=g, dtype=dtype)
    v = torch.randn(n_kv, num_blocks, block_size, D, generator=g, dtype=dtype)
    q = torch.randn(len(lens), n_head, D, generator=g, dtype=dtype)
    width = -(-max(lens) // block_size)
    scattered = torch.randperm(num_blocks, generator=g).tolist()
    tables = np.array([scattered[i * width:(i + 1) * width] for i in range(len(lens))], dtype=np.int64)
    return q, k, v, tables, np.array(lens, dtype=np.int64)


def _dense(q, k, v, tables, lens, window):
    """Each sequence's keys read out of the store in order, then softmax(q k^T / sqrt(d)) v in float64."""
    n_kv, _, bs, D = k.shape
    rows = []
    for s, n in enumerate(lens.tolist()):
        slots = [(tables[s, t // bs], t % bs) for t in range(n)]
        ks = torch.stack([k[:, b, o] for b, o in slots], dim=1).repeat_interleave(q.shape[1] // n_kv, dim=0)
        vs = torch.stack([v[:, b, o] for b, o in slots], dim=1).repeat_interleave(q.shape[1] // n_kv, dim=0)
        scores = (q[s][:, None].double() @ ks.double().transpose(1, 2))[:, 0] / math.sqrt(D)  # [H, n]
        if window:
            scores = scores.masked_fill(torch.arange(n) < n - window, float("-inf"))
        rows.append(scores.softmax(-1)[:, None] @ vs.double())
    return torch.stack(rows)[:, :, 0]


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_kernel_equals_dense_attention_through_scattered_tables(dtype, tol, window):
    q, k, v, tables, lens = _case(dtype)
    out = torch.empty_like(q)
    decode_attention(q.numpy(), k.numpy(), v.numpy(), tables, lens, 1 / math.sqrt(q.shape[-1]), window, out.numpy())
    torch.testing.assert_close(out.double(), _dense(q, k, v, tables, lens, window), atol=tol, rtol=0)


def test_kernel_result_does_not_depend_on_the_batch():
    """Each sequence is computed on its own: alone or among others, bit for bit the same."""
    q, k, v, tables, lens = _case(torch.float32, n_kv=4)
    scale = 1 / math.sqrt(q.shape[-1])
    batch = torch.empty_like(q)
    decode_attention(q.numpy(), k.numpy(), v.numpy(), tables, lens, scale, 0, batch.numpy())
    for s in range(len(lens)):
        alone = torch.empty_like(q[s:s + 1])
        decode_attention(q[s:s + 1].numpy(), k.numpy(), v.numpy(), tables[s:s + 1], lens[s:s + 1], scale, 0,
                         alone.numpy())
        assert torch.equal(alone[0], batch[s])


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 4e-7), (np.float64, 5e-15)])
def test_shifted_exp_matches_exp_and_sums_the_slice_only(dtype, rtol):
    """The vectorised exp (range reduction + Taylor polynomial + 2^k from bits) against float64 np.exp,
    over the whole range softmax meets; outside [first, n) nothing changes; below -87 it clamps."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-90, 0, 5000), [0.0, -0.5 * math.log(2), 0.5 * math.log(2) - 1, -87.0, -200.0]])
    x = (x + 3.0).astype(dtype)  # top = 3: the shift is part of what is computed
    y = x.copy()
    total = shifted_exp(y, 7, len(x) - 3, dtype(3.0))
    np.testing.assert_array_equal(y[:7], x[:7])
    np.testing.assert_array_equal(y[-3:], x[-3:])
    exact = np.exp(np.maximum((x[7:-3] - dtype(3.0)).astype(np.float64), -87.0))  # the shift rounds in dtype
    np.testing.assert_allclose(y[7:-3], exact, rtol=rtol, atol=0)
    assert total == pytest.approx(exact.sum(), rel=rtol)
    assert y[7:-3].dtype == dtype and (y[7:-3] > 0).all()
