"""GRPO: group relative policy optimisation with verifiable rewards, and the KL of a policy to its reference.

Handbook IV (RLHF; RL with verifiable rewards), I (policy gradients). Shao et al. 2024 (DeepSeekMath, GRPO: §4.1,
Eq. 3), Schulman 2020 (the k3 KL estimator), Lambert et al. 2024 (Tülu 3, RL with verifiable rewards).

One step: draw `prompts_per_step` prompts of an RLTask, sample `group_size` completions of each from the current
policy (temperature `temperature`), score them (for chat items: exact match of the reply with the answer under
the world's normaliser, genlab.finetune.rollouts.chat_task), turn rewards into group-normalised advantages
(genlab.finetune.rl.group_advantages), and take `iterations` optimizer steps on the clipped surrogate plus β·k3
KL to the reference (genlab.finetune.rl.grpo_loss). With iterations = 1 the ratio is exactly 1 (the old
log-probs are the current ones, detached), as in trl's default.

The reference (needed only when kl_coef > 0) is a frozen copy of the starting policy or, for LoRA, the base with
the adapters switched off (rollouts.FrozenReference). `kl_to_reference` measures the sequence-level KL(π‖π_ref).

    genlab grpo runs/speedrun/model --steps 40 --run-dir runs/grpo
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import ConfigError, GenlabError
from genlab.finetune.align_loop import IndexStream, MetricsFile, StepCallback
from genlab.finetune.rl import check_grpo_loss_type, group_advantages, grpo_loss, kl_penalty, masked_mean
from genlab.finetune.rollouts import (FrozenReference, RLResult, RLTask, rollout_batch, sample_completions,
                                      token_logprobs_of)
from genlab.train.optim import build_optimizer, set_lr
from genlab.train.schedule import check_schedule, lr_at

Tensor = torch.Tensor


@dataclass
class GRPOConfig:
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8  # G samples per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    lr: float = 5e-5
    warmup: int = 0
    min_lr_ratio: float = 1.0  # constant lr by default: RL steps are few and each batch is new data
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    clip_eps: float = 0.2
    kl_coef: float = 0.04  # β of the k3 KL term (DeepSeekMath's 0.04); 0 = no reference needed
    iterations: int = 1  # μ: optimizer steps per batch of samples
    scale_rewards: bool = True  # divide by the group std (False: Dr. GRPO centring only)
    loss_type: str = "grpo"  # grpo (per-sequence token mean) | dr_grpo (token sum / max_new_tokens), rl.grpo_loss
    reference: str = "auto"  # auto | copy | adapters (rollouts.FrozenReference)
    eval_every: int = 0
    seed: int = 0
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_schedule(self)
        if self.group_size < 2:
            raise ConfigError(f"GRPO needs group_size >= 2, got {self.group_size}")
        if self.prompts_per_step < 1 or self.iterations < 1 or self.max_new_tokens < 1:
            raise ConfigError("prompts_per_step, iterations and max_new_tokens must be >= 1")
        check_grpo_loss_type(self.loss_type)
        if self.reference not in ("auto", "copy", "adapters"):
            raise ConfigError(f"reference must be auto, copy or adapters, got {self.reference!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GRPOTrainer:
    """Trains `model` in place on an RLTask with GRPO; see the module docstring."""

    def __init__(self, model: nn.Module, task: RLTask, cfg: GRPOConfig, ref_model: nn.Module | None = None) -> None:
        self.model, self.task, self.cfg = model, task, cfg
        self.reference = FrozenReference(model, cfg.reference, ref_model) if cfg.kl_coef > 0 else None
        self.optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.device = next(model.parameters()).device

    def step(self, indices: Sequence[int], lr: float) -> dict[str, Any]:
        """One GRPO step on the prompts `indices` (each sampled group_size times); returns its metrics."""
        cfg, G, task = self.cfg, self.cfg.group_size, self.task
        t0 = time.perf_counter()
        rows = [i for i in indices for _ in range(G)]
        prompts = [task.prompts[i] for i in rows]
        completions = sample_completions(self.model, prompts, cfg.max_new_tokens, cfg.temperature, task.end_ids,
                                         self.generator)
        rewards = task.score(rows, completions).float()
        advantages = group_advantages(rewards, G, scale=cfg.scale_rewards).to(self.device)
        batch = rollout_batch(prompts, completions, task.pad_id)
        mask = batch.mask.to(self.device)
        with torch.no_grad():
            old = token_logprobs_of(self.model, batch) if cfg.iterations > 1 else None
            ref = self.reference.token_logprobs(batch) if self.reference is not None else None
        set_lr(self.optimizer, lr)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for _ in range(cfg.iterations):
            logprobs = token_logprobs_of(self.model, batch)
            loss = grpo_loss(logprobs, logprobs.detach() if old is None else old, advantages, mask, ref,
                             cfg.clip_eps, cfg.kl_coef, cfg.loss_type, cfg.max_new_tokens)
            if not math.isfinite(float(loss.detach())):
                raise GenlabError(f"GRPO diverged: loss is {float(loss.detach())} (lower lr)")
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        grouped = rewards.view(-1, G)
        row = {"loss": float(loss.detach()), "lr": lr, "grad_norm": grad_norm, "reward": float(rewards.mean()),
               "groups_with_signal": float((grouped.std(dim=1) > 0).float().mean()),
               "completion_tokens": float(batch.mask.sum(1).mean()),
               "tok_per_s": float(batch.attention_mask.sum()) / max(time.perf_counter() - t0, 1e-9)}
        if ref is not None:
            row["kl"] = float(masked_mean(kl_penalty(logprobs.detach(), ref, "k3"), mask))
        return row

    def train(self, run_dir: str | Path | None = None, callback: StepCallback | None = None,
              evaluate: Callable[[], dict[str, float]] | None = None, config: dict[str, Any] | None = None) -> RLResult:
        """cfg.steps GRPO steps (or until cfg.time_budget_s); metrics.jsonl rows; `evaluate` every cfg.eval_every."""
        cfg = self.cfg
        stream = IndexStream(len(self.task.prompts), cfg.seed)
        metrics = MetricsFile(run_dir, {**(config or {}), "grpo": cfg.to_dict(), "prompts": len(self.task.prompts)})
        result, start = RLResult(), time.perf_counter()
        for step in range(cfg.steps):
            row = {"step": step + 1, **self.step(stream.take(cfg.prompts_per_step).tolist(), lr_at(step, cfg))}
            row["elapsed_s"] = time.perf_counter() - start
            out_of_time = cfg.time_budget_s is not None and row["elapsed_s"] >= cfg.time_budget_s
            if evaluate is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                row.update({f"val_{k}": v for k, v in evaluate().items()})
            result.rows.append(row)
            result.steps = step + 1
            metrics.append(row)
            stop = bool(callback({**row, "total_steps": cfg.steps})) if callback is not None else False
            if stop or out_of_time:
                result.stopped_early = step + 1 < cfg.steps
                break
        result.elapsed_s = time.perf_counter() - start
        self.model.eval()
        return result


@torch.no_grad()
def kl_to_reference(model: nn.Module, reference: FrozenReference, prompts: Sequence[list[int]], end_ids: set[int],
                    pad_id: int, samples_per_prompt: int = 4, max_new_tokens: int = 16, temperature: float = 1.0,
                    seed: int = 0) -> dict[str, float]:
    """KL(π‖π_ref) in nats on completions sampled from π (at `temperature`) for `prompts`.

    At each completion position the exact KL over the whole vocabulary, Σ_v π(v)(log π(v) − log π_ref(v)), is
    summed over the completion's positions: by the chain rule its mean over sampled completions is an unbiased,
    low-variance estimate of the sequence-level KL. Returns {"kl_per_sequence", "kl_per_token"}.
    """
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    generator = torch.Generator().manual_seed(seed)
    batch = rollout_batch(rows, sample_completions(model, rows, max_new_tokens, temperature, end_ids, generator),
                          pad_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_sequence, n_tokens = [], 0.0
    for start in range(0, len(rows), 64):
        part = slice(start, start + 64)
        tokens, mask = batch.tokens[part].to(device), batch.mask[part].to(device)
        logp = F.log_softmax(model(tokens)[:, :-1].float(), dim=-1)
        with reference.context():
            ref_logp = F.log_softmax(reference.model(tokens)[:, :-1].float(), dim=-1)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1) * mask
        per_sequence.append(kl.sum(1).cpu())
        n_tokens += float(mask.sum())
    model.train(was_training)
    total = torch.cat(per_sequence)
    return {"kl_per_sequence": float(total.mean()), "kl_per_token": float(total.sum()) / max(n_tokens, 1.0)}
