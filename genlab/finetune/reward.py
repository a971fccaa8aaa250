"""Reward model: genlab Transformer backbone + scalar head on the last real token; Bradley-Terry loss.

Handbook IV (reward models and RLHF). Ouyang et al. 2022 (InstructGPT RM), Bradley & Terry 1952,
Touvron et al. 2023 (Llama 2: margin term). Formulas cross-checked against trl's RewardTrainer.

    python -m pytest -q tests/finetune/test_reward.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import GenlabError

Tensor = torch.Tensor


def last_token_index(attention_mask: Tensor) -> Tensor:
    """[B]: index of the last position with attention_mask == 1 (works for right or left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    if not bool(attention_mask.any(dim=1).all()):
        raise GenlabError("a sequence in the batch has no real tokens (attention_mask all zero)")
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values


class FinalHidden:
    """Runs a Transformer and hands back its final-norm hidden states too, via a forward hook on `model.norm`.

    The model stays unmodified (and samples as usual): the hook records only inside `run`, and `run` drops
    its reference afterwards so activations are not kept alive. Reward models and value heads sit on it.
    """

    def __init__(self, model: nn.Module) -> None:
        self._hidden: Tensor | None = None
        self._active = False
        model.norm.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        if self._active:
            self._hidden = output

    def run(self, model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(the model's output, final-norm hidden states [B, T, d_model]) for token ids [B, T]."""
        self._active = True
        try:
            output = model(tokens)
        finally:
            self._active = False
        hidden, self._hidden = self._hidden, None
        assert hidden is not None, "model.norm did not run"
        return output, hidden


def zero_scalar_head(d_model: int) -> nn.Linear:
    """A d_model -> 1 linear head starting at exactly zero (every score is 0 at initialisation)."""
    head = nn.Linear(d_model, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class RewardModel(nn.Module):
    """r(x, y) = w · h_last + b, h_last = the backbone's final-norm hidden state at the last real token.

    The hidden state is captured by a forward hook on `backbone.norm` so the Transformer stays unmodified
    (its LM head still runs; for tiny models that costs little). The head starts at zero so every reward is 0
    at initialisation and the BT loss is ln 2.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.score = zero_scalar_head(backbone.config.d_model)
        self._final_hidden = FinalHidden(backbone)

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Rewards [B] for token ids [B, T]; attention_mask [B, T] marks real tokens (default: all)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        _, hidden = self._final_hidden.run(self.backbone, tokens)
        last = last_token_index(attention_mask)
        h_last = hidden[torch.arange(tokens.shape[0], device=tokens.device), last]
        return self.score(h_last).squeeze(-1).float()


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None,
                       center_coef: float = 0.0) -> Tensor:
    """Mean −log σ(r_w − r_l − m) (Bradley-Terry; margin m as in Llama 2; trl RewardTrainer).

    center_coef adds c · mean((r_w + r_l)²) (Eisenstein et al. 2023; trl `center_rewards_coefficient`) to keep
    rewards centred at zero; the BT likelihood alone is invariant to a shared offset.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Fraction of held-out pairs ranked correctly (chosen reward strictly greater; ties count as wrong)."""
    if chosen_rewards.numel() == 0:
        raise GenlabError("pairwise_accuracy needs at least one pair")
    return float((chosen_rewards > rejected_rewards).float().mean())
