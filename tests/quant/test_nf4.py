"""NF4 code book, double quantization, packing, round-trip bounds and NF4Linear.

Handbook VI. Dettmers et al. 2023 (QLoRA); bitsandbytes' dynamic 8-bit map for the double quantization.

    python -m pytest -q tests/quant/test_nf4.py
"""

import pytest
import torch
import torch.nn.functional as F

from genlab.quant.nf4 import (DQ_BLOCK, NF4_CODE, NF4Linear, dequantize_blockwise, dequantize_nf4, dynamic_map,
                              normal_float_code, pack_nibbles, quantize_blockwise, quantize_nf4, unpack_nibbles)



# QLoRA paper, appendix E (NormalFloat 4-bit data type), in code order
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0]
MAX_HALF_GAP = max(b - a for a, b in zip(PUBLISHED_NF4, PUBLISHED_NF4[1:])) / 2  # 0.152


def test_code_book_is_the_published_one():
    torch.testing.assert_close(NF4_CODE.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_code_book_construction_from_normal_quantiles():
    built = normal_float_code()
    torch.testing.assert_close(built.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (built == 0).sum() == 1 and (built > 0).sum() == 8  # asymmetric: an exact zero, 8 positive levels


def test_dynamic_map_pinned_values():
    code = dynamic_map()
    assert code.numel() == 256 and torch.all(code[1:] >= code[:-1])
    assert code.max() == 1.0 and code[0].item() == pytest.approx(-0.99296875)  # 1 - 0.9/128
    assert code[code > 0].min().item() == pytest.approx(5.5e-7)  # 10^-6 * (0.1 + 1) / 2
    assert (code == 0).sum() == 1 and len(code.unique()) == 256


def test_packing_two_codes_per_byte_high_nibble_first():
    codes = torch.tensor([1, 2, 3, 15, 0], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [0x12, 0x3F, 0x00]
    assert torch.equal(unpack_nibbles(packed, 5), codes)


def test_values_on_the_grid_round_trip_exactly():
    w = NF4_CODE[torch.randint(0, 16, (4, 64))]
    w[:, 0] = 1.0  # absmax of each block is 1
    q = quantize_nf4(w, double_quant=False)
    assert torch.equal(dequantize_nf4(q), w)


def test_each_value_goes_to_the_nearest_level():
    w = torch.randn(8, 128)
    q = quantize_nf4(w, double_quant=False)
    absmax = w.view(-1, 64).abs().amax(1, keepdim=True)
    brute = (w.view(-1, 64, 1) / absmax[..., None] - NF4_CODE).abs().argmin(-1)
    assert torch.equal(unpack_nibbles(q.packed, w.numel()).long(), brute.view(-1))
    err = (dequantize_nf4(q) - w).view(-1, 64).abs()
    assert torch.all(err <= MAX_HALF_GAP * absmax + 1e-7)


def test_double_quantization_of_block_scales():
    w = torch.randn(512, 256) * 0.02
    plain, dq = quantize_nf4(w, double_quant=False), quantize_nf4(w)
    assert dq.absmax.dtype == torch.uint8 and dq.dq_absmax.numel() == -(-dq.absmax.numel() // DQ_BLOCK)
    scales = dq.block_scales()
    centred = (plain.absmax - plain.absmax.mean()).view(-1, DQ_BLOCK).abs().amax(1)
    # 8-bit dynamic map: largest gap 0.9/64 near |x| = 1, so error <= 0.9/128 of each 256-block's absmax
    err = (scales - plain.absmax).view(-1, DQ_BLOCK).abs().amax(1)
    assert torch.all(err <= 0.9 / 128 * centred + 1e-9)
    assert (scales - plain.absmax).abs().max() / plain.absmax.mean() < 0.01
    rel = lambda q: ((dequantize_nf4(q) - w).norm() / w.norm()).item()  # noqa: E731
    assert rel(plain) < 0.1 and rel(dq) < 0.1  # 0.092 for Gaussian weights and abs(rel(dq) - rel(plain)) < 0.002


def test_blockwise_handles_ragged_tails_and_zero_blocks():
    x = torch.cat([torch.zeros(64), torch.randn(37)])
    codes, absmax = quantize_blockwise(x, NF4_CODE, 64)
    assert codes.numel() == 101 and absmax[0] == 0
    y = dequantize_blockwise(codes, absmax, NF4_CODE, 64)
    assert torch.equal(y[:64], torch.zeros(64)) and (y[64:] - x[64:]).abs().max() <= MAX_HALF_GAP * absmax[1]
    w = torch.randn(3, 35)  # 105 values: an odd count and a partial block
    assert (dequantize_nf4(quantize_nf4(w)) - w).abs().max() < 0.2 * w.abs().max()


def test_memory_is_under_three_tenths_of_bf16():
    linear = torch.nn.Linear(256, 512, bias=False)
    q = NF4Linear.from_linear(linear)
    bf16_bytes = linear.weight.numel() * 2
    assert q.nbytes() <= 0.3 * bf16_bytes
    assert q.nbytes() == 256 * 512 // 2 + 256 * 512 // 64 + 4 * 8 + 4  # codes, scale codes, dq scales, offset


def test_nf4_linear_forward_and_backward_use_the_dequantized_weight():
    linear = torch.nn.Linear(64, 96)
    q = NF4Linear.from_linear(linear)
    w = q.dequantize()
    x = torch.randn(2, 5, 64, requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, F.linear(x, w, linear.bias.detach()))
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ w)
    assert not any(b.requires_grad for b in q.buffers())
    assert (w - linear.weight).abs().max() < 0.2 * linear.weight.abs().max()
    torch.testing.assert_close(q.to_linear().weight, w)
    bf = q(x.detach().bfloat16())
    assert bf.dtype == torch.bfloat16


def test_state_dict_round_trip():
    q = NF4Linear.from_linear(torch.nn.Linear(64, 64))
    other = NF4Linear.from_linear(torch.nn.Linear(64, 64))
    other.load_state_dict(q.state_dict())
    assert torch.equal(other.dequantize(), q.dequantize())
