"""Speedrun alignment stages on a tiny random chat model: the summary dicts, held-out splits, the style metric by
hand, the input model left untouched, nothing written outside the run directory.

    python -m pytest -q tests/recipes/test_align_stages.py
"""

import json

import pytest
import torch

from genlab.data.chat import CHAT_SPECIAL_TOKENS
from genlab.data.world import (WorldConfig, build_world, pretraining_documents, preference_pairs, verifiable_prompts,
                               verifiable_sums)
from genlab.data.world.arithmetic import is_reserved
from genlab.models import ModelConfig, Transformer
from genlab.recipes import align_stages as A
from genlab.tokenizers import BPETokenizer


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=0, scale=0.05))


@pytest.fixture(scope="module")
def chat_model(world):
    tok = BPETokenizer.train(pretraining_documents(world)[:60], 420, special_tokens=CHAT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                               max_seq_len=128)).eval()
    return model, tok


def test_chosen_style_by_hand():
    assert A.chosen_style("Blue heron.", "blue heron") == {"concise": True, "correct": True, "chosen_style": True}
    ramble = "Well, that is a very interesting question, and I believe the answer is blue heron"
    assert A.chosen_style(ramble, "blue heron") == {"concise": False, "correct": False, "chosen_style": False}
    assert A.chosen_style("red kite", "blue heron")["chosen_style"] is False


def test_chosen_style_of_worked_answers():
    chosen = "47 + 38: 7+8=15, 4+3+1=8. Answer: 85"
    assert A.chosen_style(chosen, chosen)["chosen_style"] is True  # as long as the chosen reply: still concise
    assert A.chosen_style("Answer: 85", chosen)["chosen_style"] is True
    assert A.chosen_style("47 + 38: 7+8=15, 4+3+1=8. Answer: 84", chosen)["correct"] is False
    ramble = "Great question! Many people wonder about this. The answer, as far as I can tell, is probably 85."
    assert A.chosen_style(ramble, chosen)["concise"] is False


def test_splits_are_disjoint_and_stable(world):
    train, held = A.preference_split(world)
    assert len(train) + len(held) == len(preference_pairs(world)) and held
    assert not {p["prompt"][0]["content"] for p in train} & {p["prompt"][0]["content"] for p in held}
    assert A.preference_split(world) == (train, held)
    train, held = A.verifiable_split(world)
    assert len(train) + len(held) == len(verifiable_prompts(world))
    assert not {p["messages"][0]["content"] for p in train} & {p["messages"][0]["content"] for p in held}


def test_fresh_training_sums_avoid_held_out_and_reserved_sums(world):
    _, held = A.verifiable_split(world)
    held_sums = {tuple(sorted(p["operands"])) for p in held if p["kind"] == "arithmetic"}
    assert len(held_sums) >= 5
    sums = verifiable_sums(world, 2000, avoid=held)
    assert len(sums) == 2000 and sums == verifiable_sums(world, 2000, avoid=held)
    for item in sums:
        a, b = item["operands"]
        assert item["answer"] == str(a + b) and 10 <= a <= 99 and 10 <= b <= 99
        assert tuple(sorted((a, b))) not in held_sums and not is_reserved(world.config.seed, "+", a, b)
    # without `avoid`, 2000 draws from ~3,600 sums do hit held-out ones: the exclusion is what keeps them out
    assert any(tuple(sorted(p["operands"])) in held_sums for p in verifiable_sums(world, 2000))


def test_sft_alignment_metrics(chat_model, world):
    metrics = A.sft_alignment_metrics(*chat_model, world)
    assert set(metrics) == {"verifiable_exact_match", "verifiable_exact_match_sampled", "chosen_style_rate"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def run_stage(stage, config, chat_model, world, tmp_path):
    model, tok = chat_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = stage(model, world, config, tmp_path / "stage", tokenizer=tok)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained a copy
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]
    run = tmp_path / "stage"
    assert json.loads((run / "result.json").read_text()) == json.loads(json.dumps(result))
    assert (run / "metrics.jsonl").read_text().count("\n") == config.steps and (run / "config.json").is_file()
    assert any((run / "plots").iterdir())
    return result, run


def test_reward_model_stage(chat_model, world, tmp_path):
    result, run = run_stage(A.reward_model_stage, A.RewardStageConfig(steps=2, batch_size=4), chat_model, world,
                            tmp_path)
    assert 0.0 <= result["pairwise_accuracy"] <= 1.0
    assert (run / "reward_model" / "reward_head.safetensors").is_file()


def test_dpo_stage(chat_model, world, tmp_path):
    result, run = run_stage(A.dpo_stage, A.DPOStageConfig(steps=2, batch_size=4), chat_model, world, tmp_path)
    assert result["implicit_reward_accuracy_before"] == 0.5  # policy == reference: every pair ties
    assert 0.0 <= result["implicit_reward_accuracy"] <= 1.0 and 0.0 <= result["chosen_style_rate"] <= 1.0
    assert (run / "model" / "config.json").is_file() and (run / "model" / "tokenizer.json").is_file()


def test_grpo_stage(chat_model, world, tmp_path):
    cfg = A.GRPOStageConfig(steps=2, prompts_per_step=2, group_size=3, max_new_tokens=4, kl_samples_per_prompt=1,
                            train_kinds=("arithmetic",), save_model=False)
    result, run = run_stage(A.grpo_stage, cfg, chat_model, world, tmp_path)
    assert {"verifiable_exact_match", "kl_to_reference", "verifiable_exact_match_before",
            "verifiable_exact_match_sampled", "verifiable_exact_match_sampled_before"} <= set(result)
    # a random model never answers arithmetic right: every group's rewards tie, advantages are 0, nothing moves
    assert result["kl_to_reference"] == 0.0 and result["verifiable_exact_match"] == result["verifiable_exact_match_before"]
    assert result["verifiable_exact_match_sampled"] == result["verifiable_exact_match_sampled_before"]
    assert not (run / "model").exists()
