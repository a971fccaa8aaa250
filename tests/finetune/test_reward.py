"""Reward model: last-real-token scoring, Bradley-Terry loss vs hand values, training on a synthetic preference task.

Handbook IV (reward models). Ouyang et al. 2022; Bradley & Terry 1952.

    python -m pytest -q tests/finetune/test_reward.py
"""

import math

import pytest
import torch

from genlab.errors import GenlabError
from genlab.finetune.reward import RewardModel, bradley_terry_loss, last_token_index, pairwise_accuracy
from genlab.models import ModelConfig, Transformer

VOCAB, MARKER, PAD = 24, 3, 0


def tiny_backbone(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.llama_like(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=4, d_ff=64,
                                              max_seq_len=16))


def test_bradley_terry_hand_values():
    rc, rr = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = [-math.log(1 / (1 + math.exp(-d))) for d in (1.0, 0.0, -3.0)]
    assert bradley_terry_loss(rc, rr).item() == pytest.approx(sum(expected) / 3, abs=1e-6)
    m = torch.tensor([0.5, 0.0, 1.0])
    expected_m = [-math.log(1 / (1 + math.exp(-d))) for d in (0.5, 0.0, -4.0)]
    assert bradley_terry_loss(rc, rr, margin=m).item() == pytest.approx(sum(expected_m) / 3, abs=1e-6)
    centred = bradley_terry_loss(rc, rr, center_coef=0.01).item()
    assert centred == pytest.approx(sum(expected) / 3 + 0.01 * (1 + 0 + 1) / 3, abs=1e-6)
    assert pairwise_accuracy(rc, rr) == pytest.approx(1 / 3)  # tie counts as wrong


def test_last_token_index_and_padding_invariance():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]
    with pytest.raises(GenlabError):
        last_token_index(torch.tensor([[0, 0]]))
    rm = RewardModel(tiny_backbone()).eval()
    torch.nn.init.normal_(rm.score.weight)  # non-zero head so rewards differ
    x = torch.randint(1, VOCAB, (1, 5))
    padded = torch.cat([x, torch.full((1, 3), PAD)], dim=1)
    with torch.no_grad():
        alone = rm(x)
        with_pad = rm(padded, torch.tensor([[1] * 5 + [0] * 3]))
        rewards_at_pad = rm(padded)  # without the mask, the last pad would be scored: different
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=0)
    assert not torch.allclose(alone, rewards_at_pad, atol=1e-4)


def test_reward_is_zero_at_init_and_loss_is_ln2():
    rm = RewardModel(tiny_backbone())
    x = torch.randint(1, VOCAB, (4, 6))
    r = rm(x)
    assert torch.equal(r, torch.zeros(4))
    assert bradley_terry_loss(r, r).item() == pytest.approx(math.log(2))


def make_pairs(n, generator):
    """Prompt of 4 tokens, completion of 3-6 tokens; chosen completions contain MARKER, rejected never do."""
    chosen, rejected, cmask, rmask = [], [], [], []
    for _ in range(n):
        prompt = torch.randint(4, VOCAB, (4,), generator=generator)
        for contains, seqs, masks in ((True, chosen, cmask), (False, rejected, rmask)):
            length = int(torch.randint(3, 7, (1,), generator=generator))
            completion = torch.randint(4, VOCAB, (length,), generator=generator)
            if contains:
                completion[int(torch.randint(0, length, (1,), generator=generator))] = MARKER
            seq = torch.full((10,), PAD)
            seq[:4], seq[4:4 + length] = prompt, completion
            seqs.append(seq)
            masks.append((torch.arange(10) < 4 + length).long())
    return torch.stack(chosen), torch.stack(rejected), torch.stack(cmask), torch.stack(rmask)


def test_reward_model_learns_marker_preference():
    g = torch.Generator().manual_seed(0)
    train = make_pairs(512, g)
    held_out = make_pairs(256, g)
    rm = RewardModel(tiny_backbone())
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    batch_gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        idx = torch.randint(0, 512, (32,), generator=batch_gen)
        c, r, cm, rmk = (t[idx] for t in train)
        # chosen and rejected in one forward, as trainers do
        rewards = rm(torch.cat([c, r]), torch.cat([cm, rmk]))
        loss = bradley_terry_loss(*rewards.chunk(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rm.eval()
    with torch.no_grad():
        c, r, cm, rmk = held_out
        acc = pairwise_accuracy(rm(c, cm), rm(r, rmk))
    assert acc >= 0.9, f"held-out pairwise accuracy {acc:.3f}"
