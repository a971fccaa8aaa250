"""Reward-model training: Bradley-Terry on preference pairs, held-out pairwise accuracy, save and load.

Handbook IV (reward models and RLHF). Ouyang et al. 2022 (InstructGPT RM: a transformer with a scalar head, the
pairwise BT loss), Touvron et al. 2023 (Llama 2: a margin in the loss), Eisenstein et al. 2023 (reward centring).
The model is genlab.finetune.reward.RewardModel over a chat model's backbone; a pair's two sequences are the
chat-rendered prompt + completion + `<|end|>` (genlab.finetune.preference_data), scored at their last real token.

A saved reward model is a Hugging Face model directory for the backbone (config.json, model.safetensors) plus
`reward_head.safetensors` (weight [1, d_model], bias [1]) with the scalar head.

    genlab reward runs/speedrun/model --steps 60 --run-dir runs/reward
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from genlab.errors import CheckpointError
from genlab.finetune.align_loop import LoopConfig, LoopResult, StepCallback, run_loop
from genlab.finetune.preference_data import PreferenceData
from genlab.finetune.reward import RewardModel, bradley_terry_loss
from genlab.models.hf_io import load_pretrained, save_file_atomic, save_pretrained

Tensor = torch.Tensor
HEAD_FILE = "reward_head.safetensors"


@dataclass
class RewardConfig(LoopConfig):
    lr: float = 1e-4
    margin: float | None = None  # a constant BT margin m: −log σ(r_w − r_l − m); pairs with a "margin" field use theirs
    center_coef: float = 0.0  # c · mean((r_w + r_l)²) keeps rewards centred (trl's center_rewards_coefficient)
    eval_batch_size: int = 32


@dataclass
class RewardResult:
    loop: LoopResult
    after: dict[str, float] = field(default_factory=dict)  # held-out metrics at the end


def pair_margins(data: PreferenceData, indices: Tensor, default: float | None) -> Tensor | None:
    """Per-pair margins for `indices`: the data's "margin" fields, else the constant `default` (None: no margin)."""
    if data.margins is not None:
        return data.margins[indices]
    return None if default is None else torch.full((len(indices),), float(default))


def reward_batch(model: RewardModel, data: PreferenceData, indices: Tensor,
                 cfg: RewardConfig) -> tuple[Tensor, dict[str, Tensor], int]:
    """BT loss over the pairs `indices` (mean), per-pair statistics, tokens processed."""
    batch = data.batch(indices)
    device = next(model.parameters()).device
    rewards = model(batch.tokens.to(device), batch.attention_mask.to(device))
    chosen, rejected = rewards.chunk(2)
    margin = pair_margins(data, indices, cfg.margin)
    loss = bradley_terry_loss(chosen, rejected, None if margin is None else margin.to(device), cfg.center_coef)
    stats = {"chosen_reward": chosen.detach(), "rejected_reward": rejected.detach(),
             "margin": (chosen - rejected).detach(), "accuracy": (chosen > rejected).float().detach()}
    return loss, stats, int(batch.attention_mask.sum())


@torch.no_grad()
def evaluate_reward_model(model: RewardModel, data: PreferenceData, cfg: RewardConfig | None = None) -> dict[str, float]:
    """Held-out {"pairwise_accuracy" (ties count as wrong), "loss", "margin", "chosen_reward", "rejected_reward"}."""
    cfg = cfg or RewardConfig()
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    losses = []
    for start in range(0, len(data), cfg.eval_batch_size):
        idx = torch.arange(start, min(start + cfg.eval_batch_size, len(data)))
        loss, stats, _ = reward_batch(model, data, idx, cfg)
        losses.append(float(loss) * len(idx))
        for k, v in stats.items():
            parts.setdefault(k, []).append(v.cpu())
    model.train(was_training)
    out = {k: float(torch.cat(v).mean()) for k, v in parts.items()}
    out["pairwise_accuracy"] = out.pop("accuracy")
    out["loss"] = sum(losses) / len(data)
    return out


def train_reward_model(model: RewardModel, train_data: PreferenceData, cfg: RewardConfig,
                       held_out: PreferenceData | None = None, run_dir: str | Path | None = None,
                       callback: StepCallback | None = None, config: dict[str, Any] | None = None) -> RewardResult:
    """Train `model` in place with the BT loss; evaluate `held_out` every cfg.eval_every steps and at the end."""
    evaluate = (lambda: evaluate_reward_model(model, held_out, cfg)) if held_out is not None else None
    config = {**(config or {}), "reward": cfg.to_dict(), "train_pairs": len(train_data),
              "held_out_pairs": len(held_out) if held_out is not None else 0}
    loop = run_loop(model, len(train_data), cfg, lambda idx: reward_batch(model, train_data, idx, cfg), evaluate,
                    run_dir, callback, config)
    model.eval()
    return RewardResult(loop, evaluate_reward_model(model, held_out, cfg) if held_out is not None else {})


def save_reward_model(model: RewardModel, directory: str | Path) -> Path:
    """The backbone in the Hugging Face layout plus reward_head.safetensors (written atomically)."""
    directory = Path(directory)
    save_pretrained(model.backbone, directory, extra_config={"genlab_reward_head": HEAD_FILE})
    head = {"weight": model.score.weight.detach().contiguous().cpu(), "bias": model.score.bias.detach().contiguous().cpu()}
    save_file_atomic(head, directory / HEAD_FILE)
    return directory


def load_reward_model(directory: str | Path) -> RewardModel:
    """A RewardModel written by save_reward_model; CheckpointError when the head file is missing."""
    directory = Path(directory)
    head_path = directory / HEAD_FILE
    if not head_path.is_file():
        raise CheckpointError(f"{directory}: no {HEAD_FILE} (is this a reward model written by `genlab reward`?)")
    model = RewardModel(load_pretrained(directory))
    head = load_file(str(head_path))
    with torch.no_grad():
        if head["weight"].shape != model.score.weight.shape:
            raise CheckpointError(f"{head_path}: head shape {tuple(head['weight'].shape)} does not fit the backbone")
        model.score.weight.copy_(head["weight"])
        model.score.bias.copy_(head["bias"])
    return model.eval()

