"""The optimisation loop shared by the pairwise trainers (DPO family, reward model): sample, accumulate, step, log.

Handbook IV (reward models and RLHF, direct preference optimization). AdamW with warmup + cosine
(genlab.train.schedule), gradient accumulation and clipping as in genlab.train.trainer; the difference is what a
batch is (indices into a dataset of pairs, not token windows) and what is logged (the trainer's own statistics).

One step draws `batch_size` example indices (a fresh seeded permutation per epoch), splits them into
`grad_accum` equal micro-batches, and back-propagates each micro-batch's *mean* loss scaled by its share of the
batch, so the step's gradient is the gradient of the whole batch's mean loss whatever `grad_accum` is (the
invariant tests/finetune/test_preference_trainer.py checks). With a `run_dir` it writes `config.json` and one
JSON line per step to `metrics.jsonl`; a `callback` gets each row (plus "total_steps") and may stop the run.

    python -m pytest -q tests/finetune/test_preference_trainer.py -k accumulation
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from genlab.atomic import write_json
from genlab.errors import ConfigError, GenlabError
from genlab.train.optim import build_optimizer, set_lr
from genlab.train.schedule import check_schedule, lr_at

Tensor = torch.Tensor
# micro_step(indices) -> (mean loss over those examples, per-example statistics [n] to average, tokens processed)
MicroStep = Callable[[Tensor], tuple[Tensor, dict[str, Tensor], int]]
StepCallback = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class LoopConfig:
    steps: int = 100  # optimizer steps (the cosine spans exactly these)
    batch_size: int = 16  # examples (pairs, prompts) per optimizer step
    grad_accum: int = 1  # micro-batches per step; batch_size must be divisible by it
    lr: float = 1e-4
    warmup: int = 5
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # fine-tuning from a trained model: no decay toward zero by default
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_every: int = 0  # 0: evaluate only at the end (when an evaluation is given)
    seed: int = 0
    time_budget_s: float | None = None  # stop after the step that passes this wall time (None: run all steps)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_schedule(self)
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ConfigError(f"batch_size and grad_accum must be positive, got {self.batch_size}, {self.grad_accum}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LoopResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step, as written to metrics.jsonl
    steps: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False  # the callback or the time budget ended the run before cfg.steps

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]


class IndexStream:
    """Example indices in seeded random order, epoch after epoch (a new permutation each epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        if n <= 0:
            raise ConfigError("the training set is empty")
        self.n, self.generator = n, torch.Generator().manual_seed(seed)
        self._order, self._pos = torch.randperm(n, generator=self.generator), 0

    def take(self, k: int) -> Tensor:
        out = []
        while k > 0:
            if self._pos == self.n:
                self._order, self._pos = torch.randperm(self.n, generator=self.generator), 0
            chunk = self._order[self._pos:self._pos + k]
            self._pos += len(chunk)
            k -= len(chunk)
            out.append(chunk)
        return torch.cat(out)


class MetricsFile:
    """run_dir/metrics.jsonl, started fresh; one line per append (a crash loses at most the last line)."""

    def __init__(self, run_dir: str | Path | None, config: dict[str, Any] | None = None) -> None:
        self.path = None
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            if config is not None:
                write_json(run_dir / "config.json", config, default=str)
            self.path = run_dir / "metrics.jsonl"
            self.path.write_text("")

    def append(self, row: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def run_loop(model: nn.Module, n_examples: int, cfg: LoopConfig, micro_step: MicroStep,
             evaluate: Callable[[], dict[str, float]] | None = None, run_dir: str | Path | None = None,
             callback: StepCallback | None = None, config: dict[str, Any] | None = None) -> LoopResult:
    """Optimise the trainable parameters of `model` for cfg.steps steps; see the module docstring.

    `evaluate()` (no grad, its own data) runs every cfg.eval_every steps and at the end; its values are logged
    with a "val_" prefix. `config` is written to run_dir/config.json.
    """
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    params = [p for p in model.parameters() if p.requires_grad]
    stream = IndexStream(n_examples, cfg.seed)
    metrics = MetricsFile(run_dir, config)
    micro = cfg.batch_size // cfg.grad_accum
    clip = cfg.grad_clip if cfg.grad_clip else math.inf
    result = LoopResult()
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        indices = stream.take(cfg.batch_size)
        stats: dict[str, list[Tensor]] = {}
        loss_sum, tokens = 0.0, 0
        for part in indices.split(micro):
            loss, part_stats, part_tokens = micro_step(part)
            (loss * (len(part) / cfg.batch_size)).backward()  # the batch mean, however it is split
            loss_sum += float(loss.detach()) * len(part) / cfg.batch_size
            tokens += part_tokens
            for k, v in part_stats.items():
                stats.setdefault(k, []).append(v.detach().float().reshape(-1))
        if not math.isfinite(loss_sum):
            raise GenlabError(f"training diverged: loss is {loss_sum} at step {step + 1} (lower lr or beta)")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        elapsed = time.perf_counter() - start
        row: dict[str, Any] = {"step": done, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                               "tok_per_s": tokens / max(time.perf_counter() - t0, 1e-9), "elapsed_s": elapsed}
        row.update({k: float(torch.cat(v).mean()) for k, v in stats.items()})
        out_of_time = cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s
        if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps
                                     or out_of_time):
            row.update({f"val_{k}": v for k, v in evaluate().items()})
            model.train()
        result.rows.append(row)
        result.steps = done
        metrics.append(row)
        stop = bool(callback({**row, "total_steps": cfg.steps})) if callback is not None else False
        if stop or out_of_time:
            result.stopped_early = done < cfg.steps
            break
    result.elapsed_s = time.perf_counter() - start
    return result
