"""GRPO advantages (GUIDE §5), GAE against a slow explicit loop, PPO clipped losses and KL estimators by hand.

Handbook IV (RLHF), I (reinforcement learning). Schulman et al. 2016, 2017; Shao et al. 2024.

    python -m pytest -q tests/finetune/test_rl.py
"""

import math

import pytest
import torch

from genlab.errors import ConfigError
from genlab.finetune.rl import (gae, group_advantages, grpo_loss, kl_penalty, kl_shaped_rewards, masked_mean,
                                masked_whiten, ppo_policy_loss, ppo_value_loss)


def test_grpo_guide_vector():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64), eps=1e-4)
    torch.testing.assert_close(adv, torch.tensor([[0.865875, -0.865875, -0.865875, 0.865875]], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    flat = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0]), group_size=4)
    assert flat.shape == (8,)
    torch.testing.assert_close(flat[4:], torch.zeros(4))  # all-equal group: no signal
    torch.testing.assert_close(group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale=False),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5]]))
    with pytest.raises(ConfigError):
        group_advantages(torch.ones(6), group_size=4)


def slow_gae(rewards, values, lengths, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} written out per sequence, V = 0 after the last real token."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = lengths[b]
        v = [values[b, t].item() for t in range(n)] + [0.0]
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_slow_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 7, generator=g, dtype=torch.float64)
    lengths = [7, 5, 1, 3]
    mask = torch.stack([(torch.arange(7) < n).double() for n in lengths])
    adv, returns = gae(rewards, values, mask, gamma, lam)
    expected = slow_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(returns, (expected + values) * mask, atol=1e-12, rtol=0)
    assert torch.all(adv[mask == 0] == 0)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.5, 0.7]])
    adv, returns = gae(rewards, values, None, 1.0, 1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.3]]))


def test_ppo_policy_loss_clipping_by_hand():
    # ratios e^{0.5}≈1.65 (A>0: clipped at 1.2), e^{-0.5}≈0.61 (A>0: unclipped, lower), e^{0.5} with A<0 (unclipped)
    new = torch.tensor([[0.5, -0.5, 0.5, 0.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clip_frac = ppo_policy_loss(new, old, adv, mask, clip_eps=0.2)
    expected = (-1.2 - math.exp(-0.5) + math.exp(0.5)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert clip_frac.item() == pytest.approx(1 / 3)
    # no gradient through the clipped token
    new.requires_grad_(True)
    ppo_policy_loss(new, old, adv, mask, 0.2)[0].backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0 and new.grad[0, 3] == 0


def test_ppo_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # token 0: unclipped (1-0)^2=1, clipped (0.2-0)^2=0.04 -> 1; token 1: (0-2)^2=4 both
    assert ppo_value_loss(values, old, returns, None, 0.2).item() == pytest.approx(0.5 * (1 + 4) / 2)
    values = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[1.0, 0.0]])
    # token 0: unclipped 0.25, clipped (0.2-1)^2 = 0.64 -> 0.64 (pessimistic)
    assert ppo_value_loss(values, old, returns, None, 0.2).item() == pytest.approx(0.5 * 0.64 / 2)


def test_kl_estimators():
    g = torch.Generator().manual_seed(0)
    # samples from p = N-ish categorical: check unbiasedness of k1/k3 against the exact KL
    p = torch.softmax(torch.randn(6, generator=g), -1)
    q = torch.softmax(torch.randn(6, generator=g), -1)
    exact = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, lq = p.log()[samples], q.log()[samples]
    for kind in ("k1", "k3"):
        assert kl_penalty(lp, lq, kind).mean().item() == pytest.approx(exact.item(), abs=0.01)
    assert (kl_penalty(lp, lq, "k3") >= 0).all() and (kl_penalty(lp, lq, "k2") >= 0).all()
    d = torch.tensor([0.3])
    assert kl_penalty(d, torch.zeros(1), "k3").item() == pytest.approx(math.exp(-0.3) - 1 + 0.3)
    assert kl_penalty(d, torch.zeros(1), "k2").item() == pytest.approx(0.045)
    with pytest.raises(ConfigError):
        kl_penalty(d, d, "k4")


def test_kl_shaped_rewards_put_score_on_last_token():
    lp, ref = torch.tensor([[-1.0, -2.0, -1.0]]), torch.tensor([[-1.5, -2.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    r = kl_shaped_rewards(torch.tensor([2.0]), lp, ref, mask, kl_coef=0.1, kind="k1")
    torch.testing.assert_close(r, torch.tensor([[-0.05, 2.0, 0.0]]))


def test_grpo_loss_on_policy_equals_minus_mean_advantage():
    # on-policy (new == old) the clipped term is −Â per token; with kl_coef and π = π_ref the KL term is 0
    lp = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).float()
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss = grpo_loss(lp, lp.detach(), adv, mask, ref_logprobs=lp.detach(), kl_coef=0.04)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    with pytest.raises(ConfigError):
        grpo_loss(lp, lp, adv, mask, kl_coef=0.1)


def test_dr_grpo_loss_divides_by_a_constant():
    lp = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]).float()
    adv = torch.tensor([1.0, -2.0, 0.5])
    # on-policy: -(5 * 1 + 2 * -2 + 3 * 0.5) / (3 rows * 5 tokens)
    assert grpo_loss(lp, lp, adv, mask, loss_type="dr_grpo").item() == pytest.approx(-2.5 / 15)
    assert grpo_loss(lp, lp, adv, mask, loss_type="dr_grpo", max_tokens=10).item() == pytest.approx(-2.5 / 30)
    with pytest.raises(ConfigError, match="loss_type"):
        grpo_loss(lp, lp, adv, mask, loss_type="bnpo")


def test_dr_grpo_gives_a_shared_prefix_no_net_gradient():
    # two samples of one group share their first two tokens; one is right (A = +1) and short, one wrong and long
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).float()
    adv = torch.tensor([1.0, -1.0])
    for loss_type, shared_grad in (("dr_grpo", 0.0), ("grpo", -1 / (2 * 3) + 1 / (2 * 4))):
        lp = torch.full((2, 4), -1.0, requires_grad=True)
        grpo_loss(lp, lp.detach(), adv, mask, loss_type=loss_type).backward()
        assert (lp.grad[0, :2] + lp.grad[1, :2]).tolist() == pytest.approx([shared_grad] * 2)


def test_masked_helpers():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, mask).item() == 2.5
    w = masked_whiten(x, mask)
    sel = w[mask.bool()]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-4)


def test_group_advantages_match_trl_formula():
    """trl GRPOTrainer (scale_rewards="group"): (r − group mean) / (trl.trainer.utils.nanstd(group) + 1e-4)."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    rewards = torch.rand(24, generator=torch.Generator().manual_seed(3))
    groups = rewards.view(-1, 6)
    mean = groups.mean(dim=1).repeat_interleave(6)
    std = nanstd(groups, dim=1).repeat_interleave(6)
    torch.testing.assert_close(group_advantages(rewards, group_size=6), (rewards - mean) / (std + 1e-4))
