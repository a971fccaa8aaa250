"""AdamW with decoupled weight decay, applied only to the matrices of Linear layers.

Handbook III (pretraining recipes). Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization":
the decay step p <- p - lr * wd * p is taken apart from the Adam update, so it does not pass through the
adaptive denominator. Following GPT-2/nanoGPT practice only the weight matrices of `nn.Linear` decay;
norms, biases and embeddings (token and position) do not. A tied LM head shares the token embedding's
tensor, so that tensor is counted once and, being an embedding, is not decayed.

    python -m pytest -q tests/train/test_train_optim.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from genlab.errors import ConfigError

OptimizerImpl = Literal["auto", "fused", "foreach", "for-loop"]


@dataclass
class DecaySplit:
    """Parameter names (first name of each distinct tensor) that decay and that do not."""

    decay: list[str]
    no_decay: list[str]


def decay_split(model: nn.Module) -> DecaySplit:
    """Sort trainable parameters: a tensor decays only if every module that owns it is a Linear using it as `weight`.

    Checking every owner (rather than the first one met) keeps a tied head/embedding out of the decay
    group whichever of the two modules was registered first.
    """
    first_name: dict[int, str] = {}
    linear_weight_only: dict[int, bool] = {}
    for module_name, module in model.named_modules():
        for local_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            key = id(p)
            full = f"{module_name}.{local_name}" if module_name else local_name
            first_name.setdefault(key, full)
            is_matrix = isinstance(module, nn.Linear) and local_name == "weight"
            linear_weight_only[key] = linear_weight_only.get(key, True) and is_matrix
    decay = [first_name[k] for k in first_name if linear_weight_only[k]]
    no_decay = [first_name[k] for k in first_name if not linear_weight_only[k]]
    return DecaySplit(decay, no_decay)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: Linear matrices with `weight_decay`, everything else with 0 (each tensor once)."""
    params = dict(model.named_parameters())  # named_parameters already drops the duplicate tied name
    split = decay_split(model)
    return [
        {"params": [params[n] for n in split.decay], "weight_decay": weight_decay},
        {"params": [params[n] for n in split.no_decay], "weight_decay": 0.0},
    ]


def _fused_supported(params: list[torch.Tensor]) -> bool:
    """Fused AdamW needs floating tensors on a device torch has a fused kernel for (CPU since torch 2.4)."""
    try:
        torch.optim.AdamW([torch.zeros(1, device=params[0].device, dtype=params[0].dtype)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return all(p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                    eps: float = 1e-8, impl: OptimizerImpl = "auto") -> torch.optim.AdamW:
    """torch.optim.AdamW over `param_groups(model, weight_decay)`.

    impl: "fused" (one kernel per step over all tensors; fastest on CPU), "foreach" (multi-tensor ops),
    "for-loop" (one tensor at a time), or "auto" = fused where supported, else foreach.
    """
    if lr <= 0 or weight_decay < 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"bad AdamW settings: lr={lr}, weight_decay={weight_decay}, betas={betas}, eps={eps}")
    groups = param_groups(model, weight_decay)
    every = [p for g in groups for p in g["params"]]
    if not every:
        raise ConfigError("the model has no trainable parameters")
    if impl == "auto":
        impl = "fused" if _fused_supported(every) else "foreach"
    if impl not in ("fused", "foreach", "for-loop"):
        raise ConfigError(f"optimizer impl must be auto, fused, foreach or for-loop, got {impl!r}")
    kinds = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kinds[impl])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (the schedule is a pure function of the step; see schedule.py)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    """Which AdamW implementation an optimizer uses: fused, foreach or for-loop."""
    d = optimizer.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"
