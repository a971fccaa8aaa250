"""Reward-model training: BT at initialisation, margins, learning a held-out preference, save/load round trip.

Handbook IV (reward models). Ouyang et al. 2022; Touvron et al. 2023 (margin).

    python -m pytest -q tests/finetune/test_reward_trainer.py
"""

import math

import pytest
import torch
import torch.nn.functional as F

from genlab.data.chat import add_chat_tokens
from genlab.errors import CheckpointError, GenlabError
from genlab.finetune.preference_data import PreferenceData
from genlab.finetune.reward import RewardModel
from genlab.finetune.reward_trainer import (RewardConfig, evaluate_reward_model, load_reward_model, save_reward_model,
                                            train_reward_model)
from genlab.models import ModelConfig, Transformer
from genlab.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def tok():
    tokenizer = BPETokenizer.train("what is one two three four five? yes no maybe, the answer is " * 3, 290)
    add_chat_tokens(tokenizer)
    return tokenizer


def reward_model(tok, seed=0):
    torch.manual_seed(seed)
    return RewardModel(Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, d_model=32, n_layer=1,
                                                          n_head=2, d_ff=64, max_seq_len=64)))


def pairs(n, offset=0, margin=None):
    numbers = "one two three four five".split()
    out = [{"prompt": f"what is {numbers[i % 5]} {i + offset}?", "chosen": "yes",
            "rejected": "maybe, the answer is no" if i % 2 else "no"} for i in range(n)]
    if margin is not None:
        for p in out:
            p["margin"] = margin
    return out


def test_first_step_is_ln2_and_a_margin_shifts_it(tok):
    data = PreferenceData(pairs(8), tok, 64)
    result = train_reward_model(reward_model(tok), data, RewardConfig(steps=1, batch_size=8, warmup=0))
    assert result.loop.rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    with_margin = PreferenceData(pairs(8, margin=1.5), tok, 64)
    result = train_reward_model(reward_model(tok), with_margin, RewardConfig(steps=1, batch_size=8, warmup=0))
    assert result.loop.rows[0]["loss"] == pytest.approx(-F.logsigmoid(torch.tensor(-1.5)).item(), abs=1e-6)
    constant = train_reward_model(reward_model(tok), data, RewardConfig(steps=1, batch_size=8, warmup=0, margin=1.5))
    assert constant.loop.rows[0]["loss"] == pytest.approx(result.loop.rows[0]["loss"], abs=1e-6)
    with pytest.raises(GenlabError, match="margin"):
        PreferenceData(pairs(2, margin=1.0) + pairs(2), tok, 64)


def test_reward_model_learns_a_held_out_preference_and_round_trips(tok, tmp_path):
    model = reward_model(tok)
    held = PreferenceData(pairs(16, offset=100), tok, 64)
    cfg = RewardConfig(steps=30, batch_size=8, lr=3e-3, warmup=2, eval_every=10)
    result = train_reward_model(model, PreferenceData(pairs(32), tok, 64), cfg, held, run_dir=tmp_path)
    assert result.after["pairwise_accuracy"] >= 0.9, result.after
    assert result.loop.rows[-1]["loss"] < 0.3
    assert "val_pairwise_accuracy" in result.loop.rows[9]
    save_reward_model(model, tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    batch = held.batch(range(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.tokens, batch.attention_mask), model(batch.tokens, batch.attention_mask))
    assert evaluate_reward_model(loaded, held)["pairwise_accuracy"] == result.after["pairwise_accuracy"]


def test_loading_a_plain_model_directory_is_a_clear_error(tok, tmp_path):
    from genlab.models.hf_io import save_pretrained

    save_pretrained(reward_model(tok).backbone, tmp_path)
    with pytest.raises(CheckpointError, match="reward_head"):
        load_reward_model(tmp_path)
