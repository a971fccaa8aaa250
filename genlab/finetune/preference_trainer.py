"""Preference trainer: DPO, conservative/robust/hinge DPO, IPO, KTO, ORPO and SimPO on chat preference pairs.

Handbook IV (direct preference optimization). Rafailov et al. 2023 (DPO), Mitchell 2023 (cDPO), Azar et al. 2023
(IPO), Ethayarajh et al. 2024 (KTO), Hong et al. 2024 (ORPO), Meng et al. 2024 (SimPO); the losses are the pure
functions of genlab.finetune.preference, applied to completion log-probs (genlab.finetune.logprobs).

The reference policy (DPO, IPO, KTO) is one of:
- "precomputed": its log-probs are computed once before training (from `ref_model`, or from the policy itself
  before its first step) and stored with the data; nothing stays in memory, no reference forward per step;
- "copy": a frozen deep copy (or the given `ref_model`) runs beside the policy every step (trl's default);
- "adapters": the policy with its LoRA adapters switched off (genlab.finetune.lora.adapters_disabled): a LoRA
  model's base is its own free reference (trl does the same with peft);
- "auto" (default): "adapters" for a model with LoRA layers, else "precomputed".
ORPO and SimPO need no reference. Full fine-tuning and LoRA/DoRA (genlab.finetune.methods.prepare) both work:
only parameters with requires_grad train.

Logged per step (metrics.jsonl, names as trl's without the slash): chosen_reward, rejected_reward, margin and
reward_accuracy, where the reward is DPO's implicit β·(log π − log π_ref) (SimPO: β·average log-prob, ORPO:
λ·average log-prob, as trl logs them). `reward_accuracy` here counts ties as one half, so a policy equal to its
reference scores exactly 50% (trl counts ties as wrong, i.e. 0% at initialisation).

    genlab dpo runs/speedrun/model --steps 60 --run-dir runs/dpo
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Literal

import torch
from torch import nn

from genlab.errors import ConfigError
from genlab.finetune import preference as P
from genlab.finetune.align_loop import LoopConfig, LoopResult, StepCallback, run_loop
from genlab.finetune.logprobs import SequenceLogprobs, sequence_logprobs
from genlab.finetune.lora import adapters_disabled, lora_layers
from genlab.finetune.preference_data import PairBatch, PreferenceData

Tensor = torch.Tensor
LOSSES: tuple[str, ...] = ("dpo", "robust", "hinge", "ipo", "kto", "orpo", "simpo")
REFERENCE_FREE = ("orpo", "simpo")
Reference = Literal["auto", "precomputed", "copy", "adapters"]


@dataclass
class PreferenceConfig(LoopConfig):
    loss: str = "dpo"  # one of LOSSES; conservative DPO is "dpo" with label_smoothing > 0
    beta: float = 0.1  # DPO/IPO/KTO temperature; SimPO's β (use ~2)
    label_smoothing: float = 0.0  # cDPO / robust DPO ε (SimPO accepts it too)
    gamma: float = 0.5  # SimPO target margin
    orpo_lambda: float = 0.1  # ORPO weight of the odds-ratio term
    ipo_length_normalised: bool = True  # IPO on per-token log-ratios, as trl (see preference.ipo)
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    sft_weight: float = 0.0  # α: adds α × mean token NLL of the chosen completion (trl's rpo_alpha; Pang et al. 2024)
    reference: Reference = "auto"
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown preference loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.reference not in Reference.__args__:
            raise ConfigError(f"reference must be one of {Reference.__args__}, got {self.reference!r}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be positive, got {self.beta}")

    @property
    def needs_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE


@dataclass
class PreferenceResult:
    loop: LoopResult
    before: dict[str, float] = field(default_factory=dict)  # held-out metrics of the untrained policy
    after: dict[str, float] = field(default_factory=dict)  # held-out metrics at the end
    reference: str = "none"


# --- one micro-batch -------------------------------------------------------------------------------------

def pair_stats(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Per-pair statistics; accuracy is 1 for a correct ranking, 0.5 for a tie, 0 otherwise."""
    accuracy = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return {"chosen_reward": chosen_rewards, "rejected_reward": rejected_rewards,
            "margin": chosen_rewards - rejected_rewards, "reward_accuracy": accuracy}


def preference_loss(cfg: PreferenceConfig, policy: SequenceLogprobs, ref: Tensor | None,
                    kl_reference_point: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair losses [b] and statistics for 2b rows (chosen first) of policy log-probs and reference sums [2b]."""
    pc, pr = policy.summed.chunk(2)
    ac, ar = policy.averaged.chunk(2)
    if cfg.loss in REFERENCE_FREE:
        if cfg.loss == "simpo":
            losses = P.simpo(ac, ar, cfg.beta, cfg.gamma, cfg.label_smoothing)
            return losses, pair_stats(cfg.beta * ac.detach(), cfg.beta * ar.detach())
        losses = P.orpo(ac, ar, cfg.orpo_lambda)
        stats = pair_stats(cfg.orpo_lambda * ac.detach(), cfg.orpo_lambda * ar.detach())
        stats["log_odds"] = P.orpo_log_odds(ac, ar).detach()
        return losses, stats
    assert ref is not None, "reference log-probs are missing"
    rc, rr = ref.chunk(2)
    if cfg.loss == "dpo":
        losses = P.dpo_sigmoid(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
    elif cfg.loss == "robust":
        losses = P.dpo_robust(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
    elif cfg.loss == "hinge":
        losses = P.dpo_hinge(pc, pr, rc, rr, cfg.beta)
    elif cfg.loss == "ipo":
        nc, nr = policy.n_tokens.chunk(2)
        lengths = (nc, nr) if cfg.ipo_length_normalised else (None, None)
        losses = P.ipo(pc, pr, rc, rr, cfg.beta, *lengths)
    else:  # kto: the pair's two completions are one desirable and one undesirable unpaired example
        z0 = kl_reference_point if kl_reference_point is not None else torch.zeros(())
        desirable = torch.cat([torch.ones_like(pc, dtype=torch.bool), torch.zeros_like(pr, dtype=torch.bool)])
        per_row = P.kto(policy.summed, ref, desirable, z0, cfg.beta, cfg.kto_desirable_weight,
                        cfg.kto_undesirable_weight)
        losses = torch.stack(per_row.chunk(2)).mean(0)  # mean over a pair's rows = mean over all 2b rows
    stats = pair_stats(P.implicit_rewards(pc, rc, cfg.beta), P.implicit_rewards(pr, rr, cfg.beta))
    if cfg.loss == "kto":
        stats["kl_reference_point"] = z0.detach().expand(pc.shape[0])
    return losses, stats


class PreferenceTrainer:
    """Trains `model` in place on `train_data` (PreferenceData) with the loss and reference of `cfg`."""

    def __init__(self, model: nn.Module, cfg: PreferenceConfig, ref_model: nn.Module | None = None) -> None:
        self.model, self.cfg = model, cfg
        self.device = next(model.parameters()).device
        self.reference = self._resolve_reference(ref_model)
        self.ref_model: nn.Module | None = None
        if self.reference == "copy":
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.requires_grad_(False).eval()
        self._precompute_source = ref_model
        self._trained = False  # a precomputed reference taken from the policy must predate training

    def _resolve_reference(self, ref_model: nn.Module | None) -> str:
        cfg = self.cfg
        if not cfg.needs_reference:
            return "none"
        has_lora = bool(lora_layers(self.model))
        if cfg.reference == "auto":
            return "adapters" if has_lora and ref_model is None else "precomputed"
        if cfg.reference == "adapters" and not has_lora:
            raise ConfigError("reference='adapters' needs a model with LoRA adapters (methods.prepare(..., 'lora'))")
        return cfg.reference

    def _ref_context(self) -> Callable[[], ContextManager]:
        if self.reference == "adapters":
            return lambda: adapters_disabled(self.model)
        return contextlib.nullcontext

    def _live_reference(self, tokens: Tensor, mask: Tensor) -> Tensor:
        with torch.no_grad():
            if self.reference == "adapters":
                with adapters_disabled(self.model):
                    return sequence_logprobs(self.model, tokens, mask).summed
            return sequence_logprobs(self.ref_model, tokens, mask).summed

    def prepare(self, data: PreferenceData, always: bool = False) -> None:
        """Precompute `data`'s reference log-probs when the reference is precomputed (or `always`: for eval).

        Call before the first step: the policy itself is the reference unless a `ref_model` was given."""
        if self.reference == "none" or (self.reference != "precomputed" and not always):
            return
        if data.ref_logps is not None and (self.cfg.loss != "kto" or data.ref_kl_logps is not None):
            return
        source = {"copy": self.ref_model}.get(self.reference, self._precompute_source) or self.model
        if source is self.model and self.reference == "precomputed" and self._trained:
            raise ConfigError("the reference log-probs come from the policy before training: pass every data set "
                              "(held-out too) to train(), or give a ref_model")
        data.precompute_reference(source, self.cfg.eval_batch_size, with_kl=self.cfg.loss == "kto",
                                  context=self._ref_context())

    def _reference_sums(self, batch: PairBatch, tokens: Tensor, mask: Tensor) -> Tensor | None:
        if self.reference == "none":
            return None
        if batch.ref_logps is not None:
            return batch.ref_logps.to(self.device)
        return self._live_reference(tokens, mask)

    def _kl_reference_point(self, batch: PairBatch) -> Tensor:
        tokens, mask = batch.kl_tokens.to(self.device), batch.kl_completion_mask.to(self.device)
        with torch.no_grad():  # z0 is detached (preference.kto_reference_point): no graph needed
            policy = sequence_logprobs(self.model, tokens, mask).summed
        ref = batch.ref_kl_logps.to(self.device) if batch.ref_kl_logps is not None else self._live_reference(tokens, mask)
        return P.kto_reference_point(policy, ref)

    def batch_loss(self, data: PreferenceData, indices: Tensor) -> tuple[Tensor, dict[str, Tensor], int]:
        """Mean loss over the pairs `indices`, their statistics, and the number of tokens processed."""
        batch = data.batch(indices, with_kl=self.cfg.loss == "kto")
        tokens, mask = batch.tokens.to(self.device), batch.completion_mask.to(self.device)
        policy = sequence_logprobs(self.model, tokens, mask)
        ref = self._reference_sums(batch, tokens, mask)
        z0 = self._kl_reference_point(batch) if self.cfg.loss == "kto" else None
        losses, stats = preference_loss(self.cfg, policy, ref, z0)
        if self.cfg.sft_weight and self.cfg.loss != "orpo":  # ORPO has its own NLL term
            chosen_nll = -policy.averaged.chunk(2)[0]
            losses = losses + self.cfg.sft_weight * chosen_nll
            stats["chosen_nll"] = chosen_nll.detach()
        stats["loss"] = losses.detach()
        return losses.mean(), stats, int(batch.attention_mask.sum())

    @torch.no_grad()
    def evaluate(self, data: PreferenceData) -> dict[str, float]:
        """Held-out loss, implicit-reward accuracy (ties count half), rewards and margin, averaged over pairs."""
        self.prepare(data, always=True)
        was_training = self.model.training
        self.model.eval()
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, len(data), self.cfg.eval_batch_size):
            idx = torch.arange(start, min(start + self.cfg.eval_batch_size, len(data)))
            _, stats, _ = self.batch_loss(data, idx)
            for k, v in stats.items():
                parts.setdefault(k, []).append(v.float().reshape(-1))
        self.model.train(was_training)
        out = {k: float(torch.cat(v).mean()) for k, v in parts.items()}
        out["implicit_reward_accuracy"] = out.pop("reward_accuracy")
        return out

    def train(self, train_data: PreferenceData, held_out: PreferenceData | None = None,
              run_dir: str | Path | None = None, callback: StepCallback | None = None,
              config: dict[str, Any] | None = None) -> PreferenceResult:
        """Train for cfg.steps (or until cfg.time_budget_s); evaluate `held_out` before and after."""
        self.prepare(train_data)
        before = self.evaluate(held_out) if held_out is not None else {}
        evaluate = (lambda: self.evaluate(held_out)) if held_out is not None else None
        config = {**(config or {}), "preference": self.cfg.to_dict(), "reference": self.reference,
                  "train_pairs": len(train_data), "held_out_pairs": len(held_out) if held_out is not None else 0}
        loop = run_loop(self.model, len(train_data), self.cfg, lambda idx: self.batch_loss(train_data, idx),
                        evaluate, run_dir, callback, config)
        self._trained = True
        self.model.eval()
        after = self.evaluate(held_out) if held_out is not None else {}
        return PreferenceResult(loop, before, after, self.reference)


def train_preference(model: nn.Module, train_data: PreferenceData, cfg: PreferenceConfig,
                     held_out: PreferenceData | None = None, ref_model: nn.Module | None = None,
                     run_dir: str | Path | None = None, callback: StepCallback | None = None) -> PreferenceResult:
    """One call: build a PreferenceTrainer and train (see the class and module docstrings)."""
    return PreferenceTrainer(model, cfg, ref_model).train(train_data, held_out, run_dir, callback)
