"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

Handbook III (pretraining recipes). The GPT-3 recipe (Brown et al. 2020, App. B: linear warmup, cosine
decay to 10% of the peak) as used by Chinchilla (Hoffmann et al. 2022), whose cosine cycle spans exactly
the training run. A pure function of the step, so "scheduler state" is just the step number and a
resumed run picks up the same learning rates.

For update index `step` (0 for the first optimizer step) with peak `lr`, `warmup` W, `steps` S and
floor `lr_min = min_lr_ratio * lr`:

    step <  W          lr * (step + 1) / W             (the first update already moves; step W-1 is at peak)
    W <= step <= S     lr_min + (lr - lr_min) * (1 + cos(pi * (step - W) / (S - W))) / 2
    step >  S          lr_min

    python -c "from genlab.train.schedule import Schedule, lr_at; print([round(lr_at(s, Schedule(1.0, 2, 10)), 3) for s in range(12)])"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from genlab.errors import ConfigError


class ScheduleLike(Protocol):
    """Anything with the four schedule fields; `TrainConfig` has them under the same names."""

    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float


@dataclass(frozen=True)
class Schedule:
    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_schedule(self)


def check_schedule(cfg: ScheduleLike) -> None:
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if cfg.steps <= 0:
        raise ConfigError(f"steps must be positive, got {cfg.steps}")
    if not 0 <= cfg.warmup <= cfg.steps:
        raise ConfigError(f"warmup must be in [0, steps={cfg.steps}], got {cfg.warmup}")
    if not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")


def lr_at(step: int, cfg: ScheduleLike) -> float:
    """Learning rate for update index `step` (0-based). See the module docstring for the formula."""
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    lr_min = cfg.min_lr_ratio * cfg.lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if step >= cfg.steps:  # also covers steps == warmup, where the decay phase is empty
        return lr_min
    progress = (step - cfg.warmup) / (cfg.steps - cfg.warmup)
    return lr_min + (cfg.lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
