"""DPO-family losses and completion log-probs: GUIDE §5 hand vectors, trl's formulas, a hand loop over tokens.

Handbook IV (direct preference optimization). Rafailov et al. 2023; Azar et al. 2023; Ethayarajh et al. 2024;
Hong et al. 2024; Meng et al. 2024.

    python -m pytest -q tests/finetune/test_preference.py
"""

import math
from types import SimpleNamespace

import pytest
import torch

from genlab.errors import ConfigError, GenlabError
from genlab.finetune.logprobs import sequence_logprobs
from genlab.finetune.preference import (dpo_hinge, dpo_logits, dpo_robust, dpo_sigmoid, implicit_rewards, ipo, kto,
                                        kto_reference_point, log1mexp, orpo, orpo_log_odds, reward_accuracy, simpo)
from genlab.models import ModelConfig, Transformer

t64 = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
# GUIDE §5 inputs (float64)
PC, PR = t64([-0.5, -10, -1]), t64([-0.1, -30, -21])
RC, RR = t64([-0.5, -10.1, -0.1]), t64([-0.1, -20.1, -0.1])


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(actual, t64(expected) if isinstance(expected, list) else actual.new_tensor(expected),
                               atol=tol, rtol=0)


# --- GUIDE §5 vectors ----------------------------------------------------------------------------------

def test_dpo_guide_vectors():
    close(dpo_logits(PC, PR, RC, RR), [0.0, 10.0, 20.0])
    close(dpo_sigmoid(PC, PR, RC, RR, beta=0.1), [0.693147, 0.313262, 0.126928])
    close(dpo_hinge(PC, PR, RC, RR, beta=0.1), [1.0, 0.0, 0.0])
    close(dpo_sigmoid(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1), [0.693147, 0.413262, 0.326928])
    close(dpo_robust(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1), [0.693147, 0.188262, -0.123072])


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_dpo_at_initialisation_is_ln2(beta):
    logps = torch.randn(5, dtype=torch.float64) * 10 - 20
    other = torch.randn(5, dtype=torch.float64) * 10 - 20
    for smoothing in (0.0, 0.2):
        close(dpo_sigmoid(logps, other, logps, other, beta, smoothing), [math.log(2)] * 5, 1e-12)
        close(dpo_robust(logps, other, logps, other, beta, smoothing), [math.log(2)] * 5, 1e-12)


def test_simpo_and_orpo_guide_vectors():
    close(simpo(t64([-1.0]), t64([-1.5]), beta=2.0, gamma=0.5), [0.474077])
    c, r = t64([-0.5]), t64([-1.0])
    close(orpo_log_odds(c, r), [0.974077])
    close(torch.nn.functional.logsigmoid(orpo_log_odds(c, r)), [-0.320300])
    nll = t64([1.234])
    close(orpo(c, r, lam=0.1, chosen_nll=nll), [1.234 + 0.032030])
    close(orpo(c, r, lam=0.1), [0.5 + 0.032030])  # default SFT term: mean token NLL of the chosen completion


def test_kto_at_initialisation_is_half():
    logps = torch.randn(6, dtype=torch.float64) - 5
    desirable = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    z0 = kto_reference_point(logps, logps)
    assert float(z0) == 0.0
    close(kto(logps, logps, desirable, z0, beta=0.1), [0.5] * 6, 1e-12)


def test_kto_hand_values_and_reference_point():
    # z0 = max(0, mean(KL logps diff)) = max(0, mean([1, 3])) = 2; negative means clamp to 0
    z0 = kto_reference_point(t64([-4.0, -2.0]), t64([-5.0, -5.0]))
    close(z0, 2.0)
    assert float(kto_reference_point(t64([-6.0]), t64([-5.0]))) == 0.0
    pol, ref = t64([-3.0, -3.0]), t64([-8.0, -8.0])  # r = 5 for both
    losses = kto(pol, ref, torch.tensor([True, False]), z0, beta=0.1, desirable_weight=1.0, undesirable_weight=1.33)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    close(losses, [1 - sig(0.1 * (5 - 2)), 1.33 * (1 - sig(0.1 * (2 - 5)))])
    # z0 carries no gradient
    p = torch.tensor([-4.0, -2.0], requires_grad=True)
    assert not kto_reference_point(p, torch.zeros(2)).requires_grad


def test_ipo_paper_and_length_normalised():
    # literal Eq. 17 on h = [0, 10, 20], 1/(2β) = 5
    close(ipo(PC, PR, RC, RR, beta=0.1), [25.0, 25.0, 225.0])
    lc, lr = t64([1, 2, 4]), t64([1, 5, 10])
    h = (PC - RC) / lc - (PR - RR) / lr
    close(ipo(PC, PR, RC, RR, beta=0.1, chosen_lengths=lc, rejected_lengths=lr), ((h - 5) ** 2).tolist(), 1e-12)
    with pytest.raises(ConfigError):
        ipo(PC, PR, RC, RR, chosen_lengths=lc)


def test_implicit_rewards_and_accuracy():
    rc, rr = implicit_rewards(PC, RC, 0.1), implicit_rewards(PR, RR, 0.1)
    close(rc, [0.0, 0.01, -0.09])
    close(rr, [0.0, -0.99, -2.09])
    assert reward_accuracy(rc, rr) == pytest.approx(2 / 3)  # the tie counts as wrong


def test_log1mexp_is_stable():
    x = t64([-1e-10, -0.1, -0.7, -5.0, -50.0])
    close(log1mexp(x), torch.log(-torch.expm1(x)).tolist(), 1e-12)
    assert torch.isfinite(log1mexp(torch.tensor([-1e-7, -100.0]))).all()


def test_bad_hyperparameters_raise():
    with pytest.raises(ConfigError):
        dpo_sigmoid(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ConfigError):
        dpo_robust(PC, PR, RC, RR, label_smoothing=0.5)


# --- trl's formulas, called on tensors ------------------------------------------------------------------

def _trl_cpo(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5):
    trainer = pytest.importorskip("trl.experimental.cpo").CPOTrainer
    ns = SimpleNamespace(alpha=0.0, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
                         simpo_gamma=simpo_gamma, accelerator=SimpleNamespace(device=torch.device("cpu")))
    return lambda chosen, rejected: trainer.cpo_loss(ns, chosen, rejected)[0]


def test_dpo_family_matches_trl_formulas():
    """trl's CPO loss is DPO's with the reference folded in: feed it the log-ratios π − π_ref."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-torch.rand(16, generator=g, dtype=torch.float64) * 30 for _ in range(4))
    for eps in (0.0, 0.1, 0.3):
        trl_sig = _trl_cpo("sigmoid", 0.1, eps)(pc - rc, pr - rr)
        torch.testing.assert_close(dpo_sigmoid(pc, pr, rc, rr, 0.1, eps), trl_sig, atol=1e-12, rtol=0)
    torch.testing.assert_close(dpo_hinge(pc, pr, rc, rr, 0.3), _trl_cpo("hinge", 0.3)(pc - rc, pr - rr))
    torch.testing.assert_close(ipo(pc, pr, rc, rr, 0.2), _trl_cpo("ipo", 0.2)(pc - rc, pr - rr))
    # SimPO: trl's CPO "simpo" on average log-probs
    ac, ar = pc / 7, pr / 9
    torch.testing.assert_close(simpo(ac, ar, beta=2.0, gamma=0.5), _trl_cpo("simpo", 2.0, 0.0, 0.5)(ac, ar))
    torch.testing.assert_close(simpo(ac, ar, 2.5, 1.0, label_smoothing=0.1),
                               _trl_cpo("simpo", 2.5, 0.1, 1.0)(ac, ar))


def test_orpo_matches_trl_odds_ratio_loss():
    trainer = pytest.importorskip("trl.experimental.orpo").ORPOTrainer
    ns = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=torch.device("cpu")))
    c = -torch.rand(12, generator=torch.Generator().manual_seed(1)) * 3 - 1e-3
    r = -torch.rand(12, generator=torch.Generator().manual_seed(2)) * 3 - 1e-3
    or_term, _, _, _, mean_log_odds = trainer.odds_ratio_loss(ns, c, r)
    # trl returns +λ·log σ(log odds) and subtracts it from the NLL; genlab returns the whole per-example loss
    torch.testing.assert_close(orpo(c, r, lam=0.1, chosen_nll=torch.zeros(12)), -or_term, atol=1e-6, rtol=0)
    torch.testing.assert_close(orpo_log_odds(c, r).mean(), mean_log_odds, atol=1e-6, rtol=0)


def test_losses_give_gradients_that_prefer_chosen():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    ref = torch.tensor([-5.0])
    for loss in (dpo_sigmoid(pc, pr, ref, ref), dpo_robust(pc, pr, ref, ref), ipo(pc, pr, ref, ref),
                 simpo(pc / 3, pr / 3), orpo(pc / 3, pr / 3)):
        pc.grad = pr.grad = None
        loss.sum().backward()
        assert pc.grad.item() < 0 < pr.grad.item()  # descent raises chosen, lowers rejected


# --- completion log-probs ---------------------------------------------------------------------------------

def test_sequence_logprobs_equal_hand_loop_with_prompt_masked():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=40, d_model=32, n_layer=1, n_head=4, max_seq_len=16)).eval()
    tokens = torch.randint(0, 40, (3, 9))
    prompt_lens, total_lens = [2, 4, 1], [9, 7, 5]  # rows 2 and 3 are right-padded
    mask = torch.zeros(3, 9, dtype=torch.long)
    for b, (p, n) in enumerate(zip(prompt_lens, total_lens)):
        mask[b, p:n] = 1
    with torch.no_grad():
        out = sequence_logprobs(model, tokens, mask)
        for b, (p, n) in enumerate(zip(prompt_lens, total_lens)):
            logits = model(tokens[b:b + 1, :n])[0]  # the unpadded sequence alone
            hand = sum(torch.log_softmax(logits[t - 1].double(), -1)[tokens[b, t]].item() for t in range(p, n))
            assert out.summed[b].item() == pytest.approx(hand, abs=1e-4)
            assert out.n_tokens[b].item() == n - p
            assert out.averaged[b].item() == pytest.approx(hand / (n - p), abs=1e-5)
    with pytest.raises(GenlabError):
        sequence_logprobs(model, tokens, torch.ones_like(tokens))  # position 0 cannot be scored


def test_dpo_at_init_from_a_real_model_is_ln2():
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=40, d_model=32, n_layer=1, n_head=4, max_seq_len=16)).eval()
    chosen, rejected = torch.randint(0, 40, (4, 8)), torch.randint(0, 40, (4, 8))
    mask = torch.zeros(4, 8, dtype=torch.long)
    mask[:, 3:] = 1
    with torch.no_grad():
        c, r = sequence_logprobs(model, chosen, mask).summed, sequence_logprobs(model, rejected, mask).summed
    torch.testing.assert_close(dpo_sigmoid(c, r, c.clone(), r.clone()).mean(), torch.tensor(math.log(2)))
