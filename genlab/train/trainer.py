"""The pretraining loop: AdamW + warmup/cosine, gradient accumulation and clipping, eval, metrics, checkpoints, resume.

Handbook III (pretraining recipes). Loshchilov & Hutter 2019 (AdamW); Brown et al. 2020 and Hoffmann et al.
2022 (warmup + cosine). One optimizer step consumes `batch_size` sequences of `seq_len` tokens, split into
`grad_accum` micro-batches whose losses are scaled by 1/grad_accum, so the gradient equals the one of the
whole batch and the batch a step sees does not depend on grad_accum (only memory does).

With a `run_dir` the loop writes `train_config.json` (model + train config), appends one JSON line per step to
`metrics.jsonl`, writes checkpoints under `checkpoints/`, and on start resumes from the newest checkpoint there: weights, optimizer, RNG states and
the data sampler's generator are restored, so 10 + resume + 10 steps equal 20 straight steps bit for bit.
The loop never prints; a callback receives each step's metrics (see `genlab.cli.progress` for a bar).

    python -m pytest -q tests/train/test_trainer.py
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from genlab.atomic import write_json, write_text
from genlab.errors import ConfigError, GenlabError
from genlab.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from genlab.train.optim import OptimizerImpl, build_optimizer, optimizer_impl, set_lr
from genlab.train.schedule import check_schedule, lr_at


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in the whole run (the cosine spans exactly these)
    batch_size: int = 16  # sequences per optimizer step
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per step; batch_size must be divisible by it
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr (GPT-3, Chinchilla: 0.1)
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global grad norm; None or 0 = no clipping (the norm is still logged)
    eval_every: int = 100  # 0 = evaluate only at the end
    eval_batches: int = 8  # validation micro-batches (batch_size // grad_accum sequences each) per evaluation
    checkpoint_every: int = 0  # 0 = checkpoint only at the end (needs run_dir)
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = keep all
    seed: int = 0
    bf16: bool = False  # torch.autocast(bfloat16) around forward + loss; weights and optimizer stay fp32
    compile: bool = False  # torch.compile the loss function (forward + cross entropy)
    optimizer_impl: OptimizerImpl = "auto"
    run_dir: str | None = None
    resume: bool = True  # continue from the newest checkpoint in run_dir when there is one

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_schedule(self)
        for name in ("batch_size", "seq_len", "grad_accum", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 or None, got {self.grad_clip}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise ConfigError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)


class TokenBatches(Protocol):
    """What the loop needs from a dataset (`genlab.data.tokens.TokenDataset` provides it)."""

    def batch(self, split: str, batch_size: int, seq_len: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def val_batches(self, batch_size: int, seq_len: int,
                    max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


# A callback gets each step's metrics row (the dict written to metrics.jsonl plus "total_steps").
# Returning True stops the run after that step (a checkpoint is written first when run_dir is set).
StepCallback = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class TrainResult:
    steps: int  # optimizer steps completed in total (including those before a resume)
    losses: list[float]  # train loss of every step this call ran
    val_losses: dict[int, float] = field(default_factory=dict)  # step -> val loss, this call
    tokens_per_s: float = 0.0  # mean over this call's steps after the first (which pays compile/warmup)
    elapsed_s: float = 0.0  # wall time of the whole run, across resumes
    resumed_from: int | None = None
    last_checkpoint: Path | None = None
    stopped_early: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # what was on: optimizer impl, compile, bf16

    @property
    def final_val_loss(self) -> float | None:
        return self.val_losses[max(self.val_losses)] if self.val_losses else None


def evaluate(model: nn.Module, dataset: TokenBatches, batch_size: int, seq_len: int, max_batches: int,
             bf16: bool = False) -> float:
    """Mean loss over the first `max_batches` validation batches (token-weighted), in eval mode without grad."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad(), _autocast(bf16, device.type):
        for batch in dataset.val_batches(batch_size, seq_len, max_batches):
            x, y, extra = unpack_batch(batch, device)
            n = int((y != -100).sum())  # loss is a mean over trained targets: weight by their count
            total += float(model.loss(x, y, **extra)) * n
            count += n
    model.train(was_training)
    if count == 0:
        raise GenlabError("the validation split yielded no batches")
    return total / count


def unpack_batch(batch: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(x, y) token windows, or (x, y, model kwargs) for packed SFT rows (positions, segments), on `device`."""
    extra = batch[2] if len(batch) == 3 else {}
    return batch[0].to(device), batch[1].to(device), {k: v.to(device) for k, v in extra.items()}


def _autocast(bf16: bool, device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:  # one short line per write: a crash loses at most the last line
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """Drop rows after step `keep_through` (written past the checkpoint before a crash), atomically."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= keep_through]
    if len(kept) != len(rows):
        write_text(path, "".join(line + "\n" for line in kept))


def _open_run(run_dir: Path, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
              generator: torch.Generator) -> tuple[int, float]:
    """Prepare run_dir; resume from its newest checkpoint if any. Returns (start step, elapsed seconds so far)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start, elapsed = 0, 0.0
    latest = latest_checkpoint(run_dir)
    if latest is not None and not cfg.resume:
        raise ConfigError(f"{run_dir} already holds checkpoints ({latest.name}); resume=True continues that run, "
                          "or pick a fresh run_dir")
    if latest is not None:
        state = load_checkpoint(latest, model, optimizer, data_generator=generator)
        start, elapsed = state.step, float(state.extra.get("elapsed_s", 0.0))
    _truncate_metrics(run_dir / "metrics.jsonl", start)  # rows past the resume point (all, on a fresh start) are stale
    config = getattr(model, "config", None)
    write_json(run_dir / "train_config.json", default=str, obj={
        "model": config.to_dict() if hasattr(config, "to_dict") else None, "train": cfg.to_dict()})
    return start, elapsed


def train(model: nn.Module, dataset: TokenBatches, cfg: TrainConfig,
          callback: StepCallback | None = None) -> TrainResult:
    """Train `model` (in place) on `dataset` for `cfg.steps` optimizer steps; see the module docstring."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.optimizer_impl)
    generator = torch.Generator().manual_seed(cfg.seed)
    _seed_everything(cfg.seed)  # dropout masks; a resume overwrites these states from the checkpoint
    start, elapsed_before = _open_run(run_dir, cfg, model, optimizer, generator) if run_dir else (0, 0.0)
    metrics_path = run_dir / "metrics.jsonl" if run_dir else None
    device = next(model.parameters()).device

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = model.loss
    if cfg.compile:
        loss_fn = torch.compile(model.loss)
    options = {"optimizer": optimizer_impl(optimizer), "compile": cfg.compile, "bf16_autocast": cfg.bf16,
               "grad_accum": cfg.grad_accum, "threads": torch.get_num_threads()}
    result = TrainResult(steps=start, losses=[], resumed_from=start or None, options=options)
    micro = cfg.batch_size // cfg.grad_accum
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip else math.inf
    run_start = time.perf_counter()
    timed_tokens, timed_seconds = 0, 0.0
    model.train()

    def save(step: int) -> None:
        path = checkpoint_path(run_dir, step)
        save_checkpoint(path, model, optimizer, step, train_config=cfg.to_dict(), data_generator=generator,
                        extra={"elapsed_s": elapsed_before + time.perf_counter() - run_start})
        prune_checkpoints(run_dir, cfg.keep_checkpoints)
        result.last_checkpoint = path

    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        x, y, extra = unpack_batch(dataset.batch("train", cfg.batch_size, cfg.seq_len, generator), device)
        extra_parts = {k: v.split(micro) for k, v in extra.items()}
        loss_sum = 0.0
        for i, (xs, ys) in enumerate(zip(x.split(micro), y.split(micro))):
            with _autocast(cfg.bf16, device.type):
                loss = loss_fn(xs, ys, **{k: parts[i] for k, parts in extra_parts.items()})
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
        loss_value = loss_sum / cfg.grad_accum
        if not math.isfinite(loss_value):
            raise GenlabError(f"training diverged: loss is {loss_value} at step {step + 1} (lower lr or raise warmup)")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step > start:  # the first step of a call pays one-off costs (compile, allocator warmup)
            timed_tokens += cfg.tokens_per_step
            timed_seconds += dt
        done = step + 1
        row: dict[str, Any] = {"step": done, "loss": loss_value, "lr": lr, "tok_per_s": cfg.tokens_per_step / dt,
                               "grad_norm": grad_norm, "elapsed_s": elapsed_before + time.perf_counter() - run_start}
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            row["val_loss"] = evaluate(model, dataset, micro, cfg.seq_len, cfg.eval_batches, cfg.bf16)
            result.val_losses[done] = row["val_loss"]
        result.losses.append(loss_value)
        result.steps = done
        if metrics_path is not None:
            _append_jsonl(metrics_path, row)
        stop = bool(callback({**row, "total_steps": cfg.steps})) if callback is not None else False
        if run_dir is not None and (done == cfg.steps or stop or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
            save(done)
        if stop:
            result.stopped_early = done < cfg.steps
            break

    result.elapsed_s = elapsed_before + time.perf_counter() - run_start
    result.tokens_per_s = timed_tokens / timed_seconds if timed_seconds else 0.0
    return result
