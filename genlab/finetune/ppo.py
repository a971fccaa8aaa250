"""PPO for RLHF: a policy with a value head, rollouts, per-token KL penalty, GAE, clipped policy and value losses.

Handbook IV (reward models and RLHF), I (policy gradients, actor-critic). Schulman et al. 2017 (PPO), Schulman
et al. 2016 (GAE), Ziegler et al. 2019 and Ouyang et al. 2022 (InstructGPT: the per-token KL penalty to the SFT
reference, the reward model's score at the last token); Huang et al. 2024 ("The N+ implementation details of
RLHF with PPO", trl's PPOTrainer) for the details: values from the same forward as the policy, whitened
advantages, clipped value loss.

One iteration: sample one completion per prompt (`prompts_per_step` prompts), score them (a verifiable
function or a RewardModel, see `reward_model_task`), build per-token rewards −β·KL_t plus the score at the
last token (rl.kl_shaped_rewards), run GAE with the value head's estimates (rl.gae), whiten the advantages,
then `ppo_epochs` passes over shuffled minibatches of the rollout with the clipped surrogate
(rl.ppo_policy_loss) plus vf_coef × the clipped value loss (rl.ppo_value_loss).

    genlab ppo runs/speedrun/model --steps 30 --run-dir runs/ppo
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from genlab.errors import ConfigError, GenlabError
from genlab.finetune.align_loop import IndexStream, MetricsFile, StepCallback
from genlab.finetune.logprobs import logprobs_from_logits
from genlab.finetune.reward import FinalHidden, RewardModel, zero_scalar_head
from genlab.finetune.rl import gae, kl_penalty, kl_shaped_rewards, masked_whiten, ppo_policy_loss, ppo_value_loss
from genlab.finetune.rollouts import FrozenReference, RLResult, RLTask, RolloutBatch, rollout_batch, sample_completions
from genlab.train.optim import build_optimizer, set_lr
from genlab.train.schedule import check_schedule, lr_at

Tensor = torch.Tensor


class PolicyWithValue(nn.Module):
    """A causal LM plus a scalar value head V(s_t) on its final-norm hidden states.

    The hidden states are captured by a forward hook on `policy.norm` (the Transformer stays unmodified and
    samples as usual). The head starts at zero: every value is 0 until the critic learns.
    """

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = zero_scalar_head(policy.config.d_model)
        self._final_hidden = FinalHidden(policy)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [B, T, V], values [B, T]) in one forward pass."""
        logits, hidden = self._final_hidden.run(self.policy, tokens)
        return logits, self.value_head(hidden).squeeze(-1).float()


@dataclass
class PPOConfig:
    steps: int = 30  # PPO iterations: one rollout batch and its updates each
    prompts_per_step: int = 16  # rollout batch (one completion per prompt)
    max_new_tokens: int = 16
    temperature: float = 1.0
    lr: float = 3e-5
    warmup: int = 0
    min_lr_ratio: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    ppo_epochs: int = 4  # passes over each rollout batch
    minibatch_size: int = 8  # rollouts per optimizer step
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    kl_coef: float = 0.05  # β of the per-token KL penalty in the reward
    kl_kind: str = "k1"  # estimator in the reward (rl.kl_penalty)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    reference: str = "auto"  # auto | copy | adapters (rollouts.FrozenReference)
    seed: int = 0
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        check_schedule(self)
        if self.prompts_per_step < 1 or self.minibatch_size < 1 or self.ppo_epochs < 1:
            raise ConfigError("prompts_per_step, minibatch_size and ppo_epochs must be >= 1")
        if self.kl_kind not in ("k1", "k2", "k3"):
            raise ConfigError(f"kl_kind must be k1, k2 or k3, got {self.kl_kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reward_model_task(reward_model: RewardModel, prompts: list[list[int]], end_id: int, pad_id: int,
                      missing_end_penalty: float = 0.0) -> RLTask:
    """An RLTask scored by a RewardModel on prompt + completion (the score of its last real token)."""

    @torch.no_grad()
    def score(indices: Sequence[int], completions: Sequence[list[int]]) -> Tensor:
        batch = rollout_batch([prompts[i] for i in indices], completions, pad_id)
        device = next(reward_model.parameters()).device
        was_training = reward_model.training
        reward_model.eval()
        scores = reward_model(batch.tokens.to(device), batch.attention_mask.to(device)).float().cpu()
        reward_model.train(was_training)
        missing = torch.tensor([float(not c or c[-1] != end_id) for c in completions])
        return scores - missing_end_penalty * missing

    return RLTask(prompts, score, {end_id}, pad_id)


class PPOTrainer:
    """Trains `model` (the policy, in place) with PPO on an RLTask; a value head is added for the critic."""

    def __init__(self, model: nn.Module, task: RLTask, cfg: PPOConfig, ref_model: nn.Module | None = None) -> None:
        self.model, self.task, self.cfg = model, task, cfg
        self.reference = FrozenReference(model, cfg.reference, ref_model)
        self.agent = PolicyWithValue(model)
        self.optimizer = build_optimizer(self.agent, cfg.lr, cfg.weight_decay, cfg.betas)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.shuffle = torch.Generator().manual_seed(cfg.seed + 1)
        self.device = next(model.parameters()).device

    def _forward(self, batch: RolloutBatch, rows: Tensor | slice) -> tuple[Tensor, Tensor]:
        """Per-token (log-probs, values), each [n, T-1]: token t's log-prob and the value of the state before it."""
        tokens = batch.tokens[rows].to(self.device)
        logits, values = self.agent(tokens)
        logprobs = logprobs_from_logits(logits, tokens, batch.completion_mask[rows].to(self.device)).per_token
        return logprobs, values[:, :-1]

    def step(self, indices: Sequence[int], lr: float) -> dict[str, Any]:
        cfg, task = self.cfg, self.task
        t0 = time.perf_counter()
        prompts = [task.prompts[i] for i in indices]
        completions = sample_completions(self.model, prompts, cfg.max_new_tokens, cfg.temperature, task.end_ids,
                                         self.generator)
        scores = task.score(indices, completions).float().to(self.device)
        batch = rollout_batch(prompts, completions, task.pad_id)
        mask = batch.mask.to(self.device)
        if not bool((mask.sum(1) > 0).all()):
            raise GenlabError("a prompt leaves no room for a completion: shorten prompts or raise max_seq_len")
        self.agent.eval()
        with torch.no_grad():
            old_logprobs, old_values = self._forward(batch, slice(None))
            ref_logprobs = self.reference.token_logprobs(batch)
            rewards = kl_shaped_rewards(scores, old_logprobs, ref_logprobs, mask, cfg.kl_coef, cfg.kl_kind)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages and float(mask.sum()) > 1:
                advantages = masked_whiten(advantages, mask) * mask
        self.agent.train()
        set_lr(self.optimizer, lr)
        params = [p for p in self.agent.parameters() if p.requires_grad]
        n, stats = len(prompts), {"policy_loss": [], "value_loss": [], "clip_fraction": [], "grad_norm": []}
        for _ in range(cfg.ppo_epochs):
            for rows in torch.randperm(n, generator=self.shuffle).split(cfg.minibatch_size):
                logprobs, values = self._forward(batch, rows)
                m = mask[rows]
                policy_loss, clip_fraction = ppo_policy_loss(logprobs, old_logprobs[rows], advantages[rows], m,
                                                             cfg.clip_eps)
                value_loss = ppo_value_loss(values, old_values[rows], returns[rows], m, cfg.value_clip_eps)
                loss = policy_loss + cfg.vf_coef * value_loss
                if not math.isfinite(float(loss.detach())):
                    raise GenlabError(f"PPO diverged: loss is {float(loss.detach())} (lower lr)")
                loss.backward()
                stats["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                stats["policy_loss"].append(float(policy_loss.detach()))
                stats["value_loss"].append(float(value_loss.detach()))
                stats["clip_fraction"].append(float(clip_fraction))
        kl = (kl_penalty(old_logprobs, ref_logprobs, "k1") * mask).sum(1)  # per sequence: Σ_t log π/π_ref
        mean = {k: sum(v) / len(v) for k, v in stats.items()}
        row = {"loss": mean["policy_loss"] + cfg.vf_coef * mean["value_loss"], "lr": lr,
               "score": float(scores.mean()), "kl": float(kl.mean()),
               "completion_tokens": float(mask.sum(1).mean()),
               "tok_per_s": float(batch.attention_mask.sum()) / max(time.perf_counter() - t0, 1e-9)}
        row.update(mean)
        return row

    def train(self, run_dir: str | Path | None = None, callback: StepCallback | None = None,
              config: dict[str, Any] | None = None) -> RLResult:
        """cfg.steps PPO iterations (or until cfg.time_budget_s), one metrics.jsonl row each."""
        cfg = self.cfg
        stream = IndexStream(len(self.task.prompts), cfg.seed)
        metrics = MetricsFile(run_dir, {**(config or {}), "ppo": cfg.to_dict(), "prompts": len(self.task.prompts)})
        result, start = RLResult(), time.perf_counter()
        for step in range(cfg.steps):
            row = {"step": step + 1, **self.step(stream.take(cfg.prompts_per_step).tolist(), lr_at(step, cfg))}
            row["elapsed_s"] = time.perf_counter() - start
            result.rows.append(row)
            result.steps = step + 1
            metrics.append(row)
            stop = bool(callback({**row, "total_steps": cfg.steps})) if callback is not None else False
            if stop or (cfg.time_budget_s is not None and row["elapsed_s"] >= cfg.time_budget_s):
                result.stopped_early = step + 1 < cfg.steps
                break
        result.elapsed_s = time.perf_counter() - start
        self.model.eval()
        return result
