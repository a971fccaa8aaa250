"""PPO for RLHF: the value head, a toy task PPO must learn (it could fail), and the KL penalty holding the policy back.

Handbook IV (RLHF), I (actor-critic). Schulman et al. 2017; Ouyang et al. 2022.

    python -m pytest -q tests/finetune/test_ppo.py
"""

import pytest
import torch

from genlab.finetune.ppo import PolicyWithValue, PPOConfig, PPOTrainer, reward_model_task
from genlab.finetune.reward import RewardModel
from genlab.finetune.rollouts import RLTask
from genlab.models import ModelConfig, Transformer

VOCAB, END, PAD, TARGET = 16, 15, 0, 7


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.llama_like(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                              max_seq_len=16))


def target_task():
    """Reward = fraction of the (up to 3) generated tokens that are TARGET; the end token counts as a miss."""
    prompts = [[1, 2 + i % 4] for i in range(8)]

    def score(indices, completions):
        return torch.tensor([sum(t == TARGET for t in c) / 3 for c in completions])

    return RLTask(prompts, score, {END}, PAD)


def test_value_head_starts_at_zero_and_keeps_the_logits():
    policy = tiny_policy()
    agent = PolicyWithValue(policy)
    x = torch.randint(0, VOCAB, (3, 6))
    logits, values = agent(x)
    assert values.shape == (3, 6) and torch.count_nonzero(values) == 0
    torch.testing.assert_close(logits, policy(x))


def ppo(kl_coef, steps=25):
    cfg = PPOConfig(steps=steps, prompts_per_step=16, max_new_tokens=3, lr=3e-3, ppo_epochs=4, minibatch_size=8,
                    kl_coef=kl_coef, seed=0)
    trainer = PPOTrainer(tiny_policy(), target_task(), cfg)
    return trainer, trainer.train()


def test_ppo_raises_the_reward_of_a_toy_task(tmp_path):
    trainer, result = ppo(kl_coef=0.01)
    scores = [r["score"] for r in result.rows]
    assert sum(scores[:3]) / 3 < 0.15  # ~1/16 per token at random initialisation
    assert sum(scores[-3:]) / 3 > 0.6, scores
    assert result.rows[-1]["kl"] > 0.1  # the policy moved away from its reference to get there
    assert {"policy_loss", "value_loss", "clip_fraction", "grad_norm"} <= set(result.rows[0])


def test_a_strong_kl_penalty_keeps_the_policy_near_its_reference():
    _, free = ppo(kl_coef=0.0, steps=12)
    _, held = ppo(kl_coef=2.0, steps=12)
    assert held.rows[-1]["kl"] < 0.5 * free.rows[-1]["kl"], (held.rows[-1]["kl"], free.rows[-1]["kl"])


def test_reward_model_task_scores_the_last_real_token():
    rm = RewardModel(tiny_policy(seed=1))
    torch.nn.init.normal_(rm.score.weight)
    task = reward_model_task(rm, [[1, 2], [1, 2, 3]], end_id=END, pad_id=PAD, missing_end_penalty=1.0)
    completions = [[4, END], [5]]
    scores = task.score([0, 1], completions)
    with torch.no_grad():
        direct = [float(rm(torch.tensor([[1, 2, 4, END]]))), float(rm(torch.tensor([[1, 2, 3, 5]])))]
    assert scores.tolist() == pytest.approx([direct[0], direct[1] - 1.0], abs=1e-5)
