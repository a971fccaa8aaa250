"""GRPO and rollouts: batched sampling equals greedy decoding, a toy task GRPO must learn, the KL measure by hand,
verifiable rewards with the world's normaliser, LoRA's base as reference.

Handbook IV (RL with verifiable rewards). Shao et al. 2024.

    python -m pytest -q tests/finetune/test_grpo.py
"""

import pytest
import torch
import torch.nn.functional as F

from genlab.data.chat import END, add_chat_tokens
from genlab.errors import ConfigError
from genlab.evals.greedy import greedy_batched
from genlab.finetune.grpo import GRPOConfig, GRPOTrainer, kl_to_reference
from genlab.finetune.lora import LoraConfig, add_adapter, mark_only_adapters_trainable
from genlab.finetune.rollouts import (FrozenReference, RLTask, chat_task, rollout_batch, sample_completions,
                                      sampled_rewards, verifiable_reward)
from genlab.models import ModelConfig, Transformer
from genlab.tokenizers import BPETokenizer

VOCAB, STOP, PAD, TARGET = 16, 15, 0, 7


def tiny_policy(seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.llama_like(vocab_size=vocab, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                              max_seq_len=16))


def first_token_task():
    """Reward 1 when the first generated token is TARGET: at random initialisation about 1 in 16."""
    prompts = [[1, 2 + i % 5] for i in range(10)]
    return RLTask(prompts, lambda idx, comps: torch.tensor([float(bool(c) and c[0] == TARGET) for c in comps]),
                  {STOP}, PAD)


def test_greedy_sampling_equals_greedy_decoding_and_keeps_the_end_token():
    model = tiny_policy().eval()
    torch.nn.init.normal_(model.embed.weight, std=1.0)
    prompts = [[1, 2, 3], [4], [1, 2, 3], [5, 6], [7, 8, 9, 10]]
    completions = sample_completions(model, prompts, 6, temperature=0.0, end_ids={STOP})
    expected = greedy_batched(model, prompts, 6, lambda t: bytes([65 + t]), end_ids=[STOP])
    for completion, text in zip(completions, expected):
        body = completion[:-1] if completion and completion[-1] == STOP else completion
        assert bytes(65 + t for t in body).decode() == text
        assert STOP not in body
    assert completions[0] == completions[2]


def test_seeded_sampling_is_reproducible_and_rows_are_right_padded():
    model = tiny_policy()
    prompts = [[1, 2], [3], [1, 2]]
    a = sample_completions(model, prompts, 5, 1.0, {STOP}, torch.Generator().manual_seed(3))
    b = sample_completions(model, prompts, 5, 1.0, {STOP}, torch.Generator().manual_seed(3))
    assert a == b
    batch = rollout_batch(prompts, a, PAD)
    assert batch.mask.sum(1).tolist() == [len(c) for c in a]
    assert batch.completion_mask[1, 1:1 + len(a[1])].tolist() == [1] * len(a[1])


def test_grpo_raises_the_reward_of_a_toy_task(tmp_path):
    cfg = GRPOConfig(steps=20, prompts_per_step=5, group_size=8, max_new_tokens=2, lr=1e-2, kl_coef=0.02, seed=0)
    result = GRPOTrainer(tiny_policy(), first_token_task(), cfg).train(run_dir=tmp_path)
    rewards = [r["reward"] for r in result.rows]
    assert sum(rewards[:3]) / 3 < 0.2
    assert sum(rewards[-3:]) / 3 > 0.7, rewards
    assert result.rows[-1]["kl"] > 0 and (tmp_path / "metrics.jsonl").read_text().count("\n") == 20


def test_kl_to_reference_is_exact_for_one_token_completions():
    policy, reference = tiny_policy(seed=0), tiny_policy(seed=1)
    torch.nn.init.normal_(policy.embed.weight, std=1.0)
    prompts = [[1, 2], [3, 4, 5]]
    ref = FrozenReference(policy, "copy", reference)
    measured = kl_to_reference(policy, ref, prompts, {STOP}, PAD, samples_per_prompt=3, max_new_tokens=1)
    with torch.no_grad():  # one generated token: the sequence KL is the KL of the next-token distributions
        exact = [F.kl_div(F.log_softmax(reference(torch.tensor([p]))[0, -1], -1),
                          F.log_softmax(policy(torch.tensor([p]))[0, -1], -1), log_target=True, reduction="sum")
                 for p in prompts]
    assert measured["kl_per_sequence"] == pytest.approx(float(sum(exact) / 2), rel=1e-4)
    same = kl_to_reference(policy, FrozenReference(policy, "copy"), prompts, {STOP}, PAD, max_new_tokens=4)
    assert same["kl_per_sequence"] == pytest.approx(0.0, abs=1e-6)


def test_sampled_rewards_estimate_the_policys_success_probability():
    policy, task = tiny_policy(), first_token_task()
    torch.nn.init.normal_(policy.embed.weight, std=1.0)
    with torch.no_grad():  # reward 1 iff the first token is TARGET: its exact probability under the policy
        exact = torch.stack([torch.softmax(policy(torch.tensor([p]))[0, -1], -1)[TARGET] for p in task.prompts])
    rates = sampled_rewards(policy, task, samples_per_prompt=400, max_new_tokens=1, seed=1)
    assert rates.shape == (10,)
    mean = float(exact.mean())
    assert float(rates.mean()) == pytest.approx(mean, abs=4 * (mean * (1 - mean) / 4000) ** 0.5 + 1e-3)
    assert torch.equal(rates, sampled_rewards(policy, task, samples_per_prompt=400, max_new_tokens=1, seed=1))
    greedy = sample_completions(policy, task.prompts, 1, temperature=0.0, end_ids=task.end_ids)
    hits = torch.tensor([float(c[0] == TARGET) for c in greedy])  # temperature 0: every sample is the greedy one
    assert torch.equal(sampled_rewards(policy, task, samples_per_prompt=3, max_new_tokens=1, temperature=0.0), hits)
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        sampled_rewards(policy, task, samples_per_prompt=0)


def test_lora_policy_uses_its_base_as_reference():
    policy = tiny_policy()
    add_adapter(policy, LoraConfig(r=4, alpha=8, targets=("all-linear",)))
    mark_only_adapters_trainable(policy)
    cfg = GRPOConfig(steps=2, prompts_per_step=5, group_size=4, max_new_tokens=2, lr=1e-2, kl_coef=0.1)
    trainer = GRPOTrainer(policy, first_token_task(), cfg)
    assert trainer.reference.mode == "adapters" and trainer.reference.model is policy
    rows = trainer.train().rows
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # B = 0: the adapted policy equals its base
    assert rows[1]["kl"] > 0


def test_verifiable_reward_and_chat_task():
    assert verifiable_reward({"answer": "The Blue Heron"}, "blue heron.") == 1.0
    assert verifiable_reward({"answer": "131"}, "125") == 0.0
    tok = BPETokenizer.train("what is one plus two? three. answer", 280)
    add_chat_tokens(tok)
    end = tok.special_tokens[END]
    items = [{"messages": [{"role": "user", "content": "what is one plus two?"}], "answer": "three"}]
    task = chat_task(tok, items, missing_end_penalty=0.5)
    rewards = task.score([0, 0, 0], [tok.encode_ordinary("three") + [end], tok.encode_ordinary("Three."),
                                     tok.encode_ordinary("two") + [end]])
    assert rewards.tolist() == [1.0, 0.5, 0.0]
    assert task.end_ids == {end} and task.prompts[0][-1] == tok.special_tokens["<|assistant|>"]
