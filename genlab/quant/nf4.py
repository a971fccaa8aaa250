"""4-bit NormalFloat (NF4) weights with double-quantized block scales, the frozen base of QLoRA.

Handbook VI (quantization). Dettmers et al. 2023 (QLoRA): the 16 NF4 levels are quantiles of N(0, 1)
scaled to [-1, 1] with an exact zero; weights are quantized in blocks of 64 by their absolute maximum.
Double quantization (as bitsandbytes' `compress_statistics`): the fp32 block absmaxes have their mean
subtracted and are quantized to 8 bits with bitsandbytes' signed dynamic map in blocks of 256.
Two codes per byte, the first in the high nibble (bitsandbytes' order). `NF4Linear` dequantizes in
its forward pass and again in backward (nothing dense is kept for autograd), so a frozen base costs
about 0.26x the bytes of bf16.

    python -m pytest -q tests/quant/test_nf4.py
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError

# Published code book (QLoRA appendix E; bitsandbytes' get_4bit_type("nf4")), index = 4-bit code.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])

NF4_BLOCK = 64
DQ_BLOCK = 256


def normal_float_code(offset: float = 0.9677083, bits: int = 4) -> torch.Tensor:
    """The NF code book built as in the paper: 2^(k-1) positive and 2^(k-1)-1 negative N(0,1) quantiles
    between probabilities 1/2 and `offset` (averaging the last quantile of each half), plus zero, / max."""
    n = 2 ** (bits - 1)
    # float32 linspace as bitsandbytes' reference (the quantile function is evaluated in float64)
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, n + 1)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, n)[:-1].double())
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (values / values.max()).float()


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' 8-bit dynamic data type (Dettmers 2015): a decimal exponent and a shrinking linear
    fraction, 256 sorted values in [-1, 1] with dense resolution near zero."""
    values: list[float] = []
    non_sign_bits = total_bits - 1
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        bounds = torch.linspace(0.1, 1, items)
        means = ((bounds[:-1] + bounds[1:]) / 2.0) * 10 ** (-(max_exponent_bits - 1) + i)
        values += means.tolist() + ((-means).tolist() if signed else [])
    if extra > 0:
        bounds = torch.linspace(0.1, 1, extra + 1)
        means = ((bounds[:-1] + bounds[1:]) / 2.0) * 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        values += means.tolist() + ((-means).tolist() if signed else [])
    values += [0.0, 1.0]
    values += [0.0] * (2 ** total_bits - len(values))
    return torch.tensor(sorted(values), dtype=torch.float32)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest value of the sorted `code` for each element of x (midpoint thresholds)."""
    mids = (code[1:] + code[:-1]) / 2
    return torch.bucketize(x.contiguous(), mids.to(x.device)).to(torch.uint8)


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat x -> (uint8 codes, fp32 absmax per block); code values are multiples of the block's absmax."""
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % block
    blocks = F.pad(flat, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    return nearest_code(normed, code).view(-1)[: flat.numel()], absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block: int) -> torch.Tensor:
    n = codes.numel()
    values = code.to(absmax.device)[codes.long()]
    values = F.pad(values, (0, (-n) % block)).view(-1, block) * absmax[:, None]
    return values.view(-1)[:n]


@dataclass
class NF4Tensor:
    """A quantized tensor: packed 4-bit codes + (double-quantized) block scales."""

    packed: torch.Tensor  # uint8 [ceil(n/2)], two codes per byte
    absmax: torch.Tensor  # fp32 [n_blocks] (double_quant=False) or uint8 codes [n_blocks] (double_quant=True)
    dq_absmax: torch.Tensor | None  # fp32 [ceil(n_blocks/256)]: scale of each block of absmax codes
    dq_offset: torch.Tensor | None  # fp32 scalar: mean of the absmaxes, subtracted before quantizing them
    shape: tuple[int, ...]
    block_size: int = NF4_BLOCK

    def block_scales(self) -> torch.Tensor:
        if self.dq_absmax is None:
            return self.absmax
        code = _DYNAMIC.to(self.packed.device)
        return dequantize_blockwise(self.absmax, self.dq_absmax, code, DQ_BLOCK) + self.dq_offset

    def nbytes(self) -> int:
        tensors = [self.packed, self.absmax, self.dq_absmax, self.dq_offset]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


_DYNAMIC = dynamic_map()


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    codes = F.pad(codes.view(-1), (0, codes.numel() % 2))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([packed >> 4, packed & 0x0F], dim=-1).view(-1)[:n]


def quantize_nf4(w: torch.Tensor, block_size: int = NF4_BLOCK, double_quant: bool = True) -> NF4Tensor:
    if block_size <= 0:
        raise ConfigError(f"NF4 block size must be positive, got {block_size}")
    codes, absmax = quantize_blockwise(w.detach(), NF4_CODE.to(w.device), block_size)
    dq_absmax = dq_offset = None
    if double_quant:
        dq_offset = absmax.mean()
        absmax, dq_absmax = quantize_blockwise(absmax - dq_offset, _DYNAMIC.to(w.device), DQ_BLOCK)
    return NF4Tensor(pack_nibbles(codes), absmax, dq_absmax, dq_offset, tuple(w.shape), block_size)


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n = 1
    for d in q.shape:
        n *= d
    codes = unpack_nibbles(q.packed, n)
    values = dequantize_blockwise(codes, q.block_scales(), NF4_CODE.to(q.packed.device), q.block_size)
    return values.view(q.shape).to(dtype)


class _NF4Matmul(torch.autograd.Function):
    """y = x W^T with W dequantized in forward and again in backward: no dense W is saved for autograd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "NF4Linear") -> torch.Tensor:
        ctx.layer = layer
        return x @ layer.dequantize().to(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize().to(grad.dtype), None


class NF4Linear(nn.Module):
    """A frozen Linear stored as NF4; computes in `compute_dtype` (or the input's dtype)."""

    def __init__(self, in_features: int, out_features: int, q: NF4Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.shape, self.block_size = q.shape, q.block_size
        self.double_quant = q.dq_absmax is not None
        self.register_buffer("packed", q.packed)
        self.register_buffer("absmax", q.absmax)
        self.register_buffer("dq_absmax", q.dq_absmax)
        self.register_buffer("dq_offset", q.dq_offset)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = NF4_BLOCK, double_quant: bool = True) -> "NF4Linear":
        q = quantize_nf4(linear.weight, block_size, double_quant)
        return cls(linear.in_features, linear.out_features, q, linear.bias)

    def quantized(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax, self.dq_absmax, self.dq_offset, self.shape, self.block_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self.quantized(), dtype)

    def nbytes(self) -> int:
        """Bytes of the frozen weight (codes and scales; the bias is counted apart)."""
        return self.quantized().nbytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _NF4Matmul.apply(x, self)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def to_linear(self, dtype: torch.dtype = torch.float32) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.packed.device)
        with torch.no_grad():
            linear.weight.copy_(self.dequantize())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.to(dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, block={self.block_size}, "
                f"double_quant={self.double_quant}")


def quantize_model_nf4(model: nn.Module, targets: tuple[str, ...] = ("blocks.*",), block_size: int = NF4_BLOCK,
                       double_quant: bool = True) -> list[str]:
    """Replace the nn.Linear layers whose names match `targets` (fnmatch) by NF4Linear; returns their names.

    The default leaves the output head (and the embedding, which is not a Linear) in full precision,
    as bitsandbytes does; a tied head shares the embedding, so it is never quantized.
    """
    counts: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    shared = {k for k, n in counts.items() if n > 1}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(fnmatch.fnmatchcase(n, t) for t in targets) and id(m.weight) not in shared]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, NF4Linear.from_linear(getattr(owner, child), block_size, double_quant))
    return names
