"""Preference-optimisation losses (the DPO family) as pure functions of sequence log-probabilities.

Handbook IV (direct preference optimization). Rafailov et al. 2023 (DPO), Mitchell 2023 (conservative DPO),
Chowdhury et al. 2024 (robust DPO), Azar et al. 2023 (IPO), Ethayarajh et al. 2024 (KTO), Hong et al. 2024
(ORPO), Meng et al. 2024 (SimPO). Formulas cross-checked against trl 1.16 (`DPOTrainer._compute_loss`,
`KTOTrainer._compute_loss`, `ORPOTrainer.odds_ratio_loss`, `CPOTrainer.cpo_loss`).

Every function takes one value per example (tensors of shape [B]) and returns *per-example* losses [B];
the caller reduces (usually `.mean()`). Log-probabilities are sums over completion tokens unless a
function says "average" (see genlab.finetune.logprobs.sequence_logprobs).

    python -m pytest -q tests/finetune/test_preference.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genlab.errors import ConfigError

Tensor = torch.Tensor


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ConfigError(f"beta must be positive, got {beta}")


def dpo_logits(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)): the DPO margin before β."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_sigmoid(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023, Eq. 7): −log σ(β h), h = dpo_logits(...).

    With label smoothing ε (conservative DPO, Mitchell 2023; trl's `label_smoothing`) the preference label is
    assumed flipped with probability ε: −(1−ε) log σ(β h) − ε log σ(−β h). At initialisation (π = π_ref)
    the loss is ln 2 for every ε.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def dpo_robust(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float = 0.1, label_smoothing: float = 0.1) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, Eq. 11; trl loss_type="robust"), an unbiased loss under label noise ε:

        [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)

    It can be negative (unlike conservative DPO) and equals ln 2 at h = 0.
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5) for robust DPO, got {label_smoothing}")
    z = beta * dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def dpo_hinge(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
              beta: float = 0.1) -> Tensor:
    """Hinge DPO (SLiC, Zhao et al. 2023; trl loss_type="hinge"): max(0, 1 − β h)."""
    _check_beta(beta)
    return torch.relu(1 - beta * dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected))


def ipo(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
        beta: float = 0.1, chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None) -> Tensor:
    """IPO (Azar et al. 2023, Eq. 17 with τ = β): (h − 1/(2β))².

    Definition chosen where references disagree: the paper writes h on sequence log-probabilities; trl (after
    consulting the authors) divides each log-ratio by its completion length, so that β is comparable across
    lengths. Here: with `chosen_lengths`/`rejected_lengths` given (completion token counts, [B]) each log-ratio
    is divided by its length, as in trl; without them h is used as passed (the paper's literal Eq. 17).
    """
    _check_beta(beta)
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ConfigError("ipo needs both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        chosen_ratio = chosen_ratio / chosen_lengths.clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_lengths.clamp(min=1)
    return (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z₀ (Ethayarajh et al. 2024, §4.1; trl `kl`): a batch estimate of KL(π‖π_ref).

    z₀ = max(0, mean_j[log π(y'_j|x_j) − log π_ref(y'_j|x_j)]), where y'_j are *mismatched* completions (the
    completion of another example paired with prompt x_j). It is detached: no gradient flows through z₀.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, reference_point: Tensor | float = 0.0,
        beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """KTO (Ethayarajh et al. 2024, Eq. 7; trl loss_type="kto") on unpaired examples.

    r = log π(y|x) − log π_ref(y|x), z₀ = `reference_point` (see kto_reference_point), and per example
        desirable:   λ_D (1 − σ(β (r − z₀)))
        undesirable: λ_U (1 − σ(β (z₀ − r)))
    This is the paper's λ_y − v(x, y) with the constant λ_y kept inside, as trl does. At initialisation
    (π = π_ref, z₀ = 0) every example's loss is 0.5 (times its weight).
    """
    _check_beta(beta)
    desirable = desirable.to(torch.bool)
    r = policy_logps - ref_logps
    z0 = torch.as_tensor(reference_point, dtype=r.dtype, device=r.device)
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, good, bad)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, computed stably (Mächler 2012): log(−expm1(x)) near 0, log1p(−eˣ) far from it."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor) -> Tensor:
    """log[odds(y_w) / odds(y_l)], odds(y) = P(y)/(1 − P(y)), P = exp(average token log-prob) (ORPO Eq. 4)."""
    return (chosen_avg_logps - rejected_avg_logps) - (log1mexp(chosen_avg_logps) - log1mexp(rejected_avg_logps))


def orpo(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, lam: float = 0.1,
         chosen_nll: Tensor | None = None) -> Tensor:
    """ORPO (Hong et al. 2024, Eqs. 6-7; trl `odds_ratio_loss` with beta = λ): L_SFT − λ · log σ(log odds ratio).

    Log-probs are *averages* over completion tokens (the paper's length-normalised P). `chosen_nll` is the
    SFT term; default −chosen_avg_logps, i.e. the mean token NLL of the chosen completion. No reference model.
    """
    if lam < 0:
        raise ConfigError(f"ORPO lambda must be non-negative, got {lam}")
    nll = -chosen_avg_logps if chosen_nll is None else chosen_nll
    return nll - lam * F.logsigmoid(orpo_log_odds(chosen_avg_logps, rejected_avg_logps))


def simpo(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float = 2.0, gamma: float = 0.5,
          label_smoothing: float = 0.0) -> Tensor:
    """SimPO (Meng et al. 2024, Eq. 6; trl CPOTrainer loss_type="simpo"): −log σ(β (ā_w − ā_l) − γ).

    ā are *average* completion log-probs (the length-normalised implicit reward β·ā), γ the target margin.
    No reference model. Label smoothing ε as in conservative DPO (trl's option; the paper uses ε = 0).
    """
    _check_beta(beta)
    z = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float = 0.1) -> Tensor:
    """DPO's implicit reward β (log π(y|x) − log π_ref(y|x)) (Rafailov et al. 2023, §5), detached, per example."""
    return (beta * (policy_logps - ref_logps)).detach()


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> float:
    """Fraction of pairs whose chosen reward is strictly greater than the rejected one (ties count as wrong)."""
    if chosen_rewards.numel() == 0:
        raise ConfigError("reward_accuracy needs at least one pair")
    return float((chosen_rewards > rejected_rewards).float().mean())
