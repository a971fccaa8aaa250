"""RL for language models: GRPO group advantages and the PPO pieces (GAE, clipped losses, KL penalties).

Handbook IV (RLHF), I (reinforcement learning). Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE),
Ziegler et al. 2019 / Ouyang et al. 2022 (per-token KL penalty to the reference), Schulman 2020 "Approximating
KL divergence" (k1/k2/k3 estimators), Shao et al. 2024 (GRPO). Cross-checked against trl's PPO/GRPO trainers.

Tensors are [B, T] over completion tokens with a float/bool `mask` (1 = real completion token) unless noted.

    python -m pytest -q tests/finetune/test_rl.py
"""

from __future__ import annotations

from typing import Literal

import torch

from genlab.errors import ConfigError

Tensor = torch.Tensor
KLKind = Literal["k1", "k2", "k3"]


def masked_mean(x: Tensor, mask: Tensor | None, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask == 1 (all of x when mask is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor | None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over masked positions (unbiased variance, as trl); shift_mean=False keeps the mean."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = x.numel() if mask is None else float(mask.sum())
    if n > 1:
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


# --- GRPO ----------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int | None = None, eps: float = 1e-4,
                     scale: bool = True) -> Tensor:
    """GRPO outcome advantages (Shao et al. 2024, §4.1.2): Â_i = (r_i − mean(r_group)) / (std(r_group) + eps).

    rewards: [n_groups, G], or flat [n_groups · G] with `group_size` (consecutive samples share a prompt).
    std is the unbiased (n−1) standard deviation, as trl; scale=False keeps only the centring (Dr. GRPO,
    Liu et al. 2025). Returns the same shape as `rewards`. A group whose rewards are all equal gets zeros.
    """
    flat = rewards.dim() == 1
    if flat:
        if not group_size or rewards.numel() % group_size:
            raise ConfigError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
        grouped = rewards.view(-1, group_size)
    else:
        grouped = rewards
    if grouped.shape[1] < 2:
        raise ConfigError("GRPO needs at least 2 samples per group")
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centred.reshape(rewards.shape)


# --- KL to the reference -------------------------------------------------------------------------


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π (Schulman 2020), with d = log π − log π_ref:

    k1 = d (unbiased, high variance, can be negative); k2 = d²/2 (biased, ≥ 0);
    k3 = exp(−d) − 1 + d (unbiased, ≥ 0; GRPO's Eq. 4 and trl's "low_var_kl").
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ConfigError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def kl_shaped_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                      kl_coef: float = 0.05, kind: KLKind = "k1") -> Tensor:
    """RLHF per-token rewards (Ziegler et al. 2019; Ouyang et al. 2022): −β·KL_t on every completion token,
    plus the sequence score [B] on the last real token. Masked positions get 0."""
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * kl_penalty(logprobs, ref_logprobs, kind) * mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values
    if bool((last < 0).any()):
        raise ConfigError("a completion has no tokens in its mask")
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(rewards.dtype)
    return rewards


# --- PPO -----------------------------------------------------------------------------------------


def gae(rewards: Tensor, values: Tensor, mask: Tensor | None = None, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16): (advantages, returns), each [B, T].

    δ_t = r_t + γ V_{t+1} − V_t, Â_t = Σ_l (γλ)^l δ_{t+l}; returns = Â + V (the value targets).
    The episode ends at the last masked-in token: V after it is 0 (no bootstrap), and masked positions get 0.
    Assumes right padding (the mask is a prefix of ones), as completions are.
    """
    if rewards.shape != values.shape:
        raise ConfigError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} differ")
    m = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):  # O(T) loop over positions, vectorised over the batch
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * m


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor | None = None,
                    clip_eps: float = 0.2) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise: (loss, clip_fraction).

    ratio ρ = exp(log π − log π_old); per token max(−Â ρ, −Â clip(ρ, 1−ε, 1+ε)); masked mean over tokens.
    advantages may be [B, T] or [B] (one per sequence, as GRPO), broadcast over tokens.
    """
    if advantages.dim() == 1 and logprobs.dim() == 2:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).detach()
    return masked_mean(per_token, mask), clip_fraction


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor | None = None,
                   clip_eps: float = 0.2) -> Tensor:
    """Clipped value loss (as in OpenAI baselines / trl PPO): ½ · masked mean of
    max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(per_token, mask)


GRPO_LOSS_TYPES = ("grpo", "dr_grpo")


def check_grpo_loss_type(loss_type: str) -> None:
    if loss_type not in GRPO_LOSS_TYPES:
        raise ConfigError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
              ref_logprobs: Tensor | None = None, clip_eps: float = 0.2, kl_coef: float = 0.0,
              loss_type: str = "grpo", max_tokens: int | None = None) -> Tensor:
    """GRPO objective (Shao et al. 2024, Eq. 3) as a loss: clipped surrogate with one advantage per sequence
    plus β·k3 KL to the reference.

    loss_type "grpo" averages over each sequence's tokens, then over sequences (the paper). "dr_grpo" (Liu et al.
    2025, trl's loss_type="dr_grpo") sums over tokens and divides by rows × `max_tokens` (the generation budget;
    default: the tensors' width), a constant: a token shared by a group's samples then gets weights that sum to
    zero over the group, whereas 1/|o| weights a short sample's tokens more than a long one's.
    """
    check_grpo_loss_type(loss_type)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    if kl_coef:
        if ref_logprobs is None:
            raise ConfigError("grpo_loss with kl_coef > 0 needs ref_logprobs")
        per_token = per_token + kl_coef * kl_penalty(logprobs, ref_logprobs, "k3")
    if loss_type == "dr_grpo":
        return (per_token * mask.to(per_token.dtype)).sum() / (per_token.shape[0] * (max_tokens or per_token.shape[1]))
    return masked_mean(per_token, mask, dim=1).mean()
