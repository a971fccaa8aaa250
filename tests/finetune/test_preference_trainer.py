"""Preference trainer: pair layout by hand, splits, DPO/KTO at initialisation, batch × accumulation invariance,
reference modes that must agree, every loss learning a preference, and trl's DPOTrainer._compute_loss as oracle.

Handbook IV (direct preference optimization).

    python -m pytest -q tests/finetune/test_preference_trainer.py
"""

import json
import math
import types
from collections import defaultdict

import pytest
import torch

from genlab.data.chat import END, add_chat_tokens, render_chat
from genlab.errors import ConfigError
from genlab.finetune.lora import LoraConfig, add_adapter, mark_only_adapters_trainable
from genlab.finetune.preference_data import PreferenceData, held_out_split
from genlab.finetune.preference_trainer import LOSSES, PreferenceConfig, PreferenceTrainer
from genlab.models import ModelConfig, Transformer
from genlab.tokenizers import BPETokenizer

WORDS = "the quick brown fox jumps over the lazy dog; yes, no, maybe. what is one two three four five six?"


@pytest.fixture(scope="module")
def tok():
    tokenizer = BPETokenizer.train(WORDS * 3, 300)
    add_chat_tokens(tokenizer)
    return tokenizer


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                              max_seq_len=64))


def toy_pairs(n, offset=0):
    """Chosen "yes" beats a rambling "no maybe no" on every prompt: a preference a tiny model can learn."""
    numbers = "one two three four five six".split()
    return [{"prompt": [{"role": "user", "content": f"what is {numbers[i % 6]} {i + offset}?"}],
             "chosen": "yes", "rejected": "no maybe no" if i % 2 else "no"} for i in range(n)]


def test_pair_layout_by_hand(tok):
    pair = {"prompt": "what is one?", "chosen": "yes", "rejected": "no maybe"}
    data = PreferenceData([pair], tok, max_len=64)
    b = data.batch([0])
    prompt = render_chat([{"role": "user", "content": "what is one?"}], tok, add_generation_prompt=True)[0]
    chosen = prompt + tok.encode_ordinary("yes") + [tok.special_tokens[END]]
    rejected = prompt + tok.encode_ordinary("no maybe") + [tok.special_tokens[END]]
    T = max(len(chosen), len(rejected))
    pad = tok.special_tokens[END]
    assert b.tokens.tolist() == [chosen + [pad] * (T - len(chosen)), rejected + [pad] * (T - len(rejected))]
    assert b.completion_mask.tolist() == [[0] * len(prompt) + [1] * (len(chosen) - len(prompt)) + [0] * (T - len(chosen)),
                                          [0] * len(prompt) + [1] * (len(rejected) - len(prompt)) + [0] * (T - len(rejected))]
    assert b.attention_mask.sum(1).tolist() == [len(chosen), len(rejected)]
    assert b.n_pairs == 1


def test_completion_truncated_to_max_len_and_prompt_too_long(tok):
    long = {"prompt": "one", "chosen": "yes " * 40, "rejected": "no"}
    data = PreferenceData([long], tok, max_len=20)
    assert data.batch([0]).tokens.shape[1] == 20
    with pytest.raises(Exception, match="max_len"):
        PreferenceData([{"prompt": "one two three " * 10, "chosen": "y", "rejected": "n"}], tok, max_len=10)


def test_held_out_split_is_deterministic_disjoint_and_by_prompt():
    items = toy_pairs(200) + toy_pairs(20)  # the last 20 repeat prompts of the first 20
    train, held = held_out_split(items, 0.25, seed=3)
    train2, held2 = held_out_split(list(reversed(items)), 0.25, seed=3)
    key = lambda p: p["prompt"][0]["content"]  # noqa: E731
    assert sorted(map(key, held)) == sorted(map(key, held2)) and len(train) == len(train2)
    assert not {key(p) for p in train} & {key(p) for p in held}
    assert 0.15 < len(held) / len(items) < 0.35
    assert held_out_split(items, 0.25, seed=4)[1] != held
    with pytest.raises(ConfigError):
        held_out_split(items, 1.5)


def run(tok, pairs, **overrides):
    cfg = dict(steps=4, batch_size=8, lr=1e-2, warmup=0, grad_clip=None)
    cfg.update(overrides)
    model = tiny_model(tok)
    trainer = PreferenceTrainer(model, PreferenceConfig(**cfg))
    result = trainer.train(PreferenceData(pairs, tok, 64))
    return result, model


def test_dpo_first_step_is_ln2_with_half_accuracy(tok):
    result, _ = run(tok, toy_pairs(16), steps=1)
    row = result.loop.rows[0]
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert row["reward_accuracy"] == 0.5 and row["margin"] == 0.0


def test_kto_first_step_is_half_and_sft_weight_adds_chosen_nll(tok):
    result, _ = run(tok, toy_pairs(16), steps=1, loss="kto")
    assert result.loop.rows[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    assert result.loop.rows[0]["kl_reference_point"] == 0.0
    result, _ = run(tok, toy_pairs(16), steps=1, sft_weight=0.5)
    row = result.loop.rows[0]
    assert row["loss"] == pytest.approx(math.log(2) + 0.5 * row["chosen_nll"], abs=1e-5)


def test_batch_times_accumulation_gives_the_same_dpo_trajectory(tok):
    """trl's invariant: 8 x 1 == 4 x 2 == 2 x 4 (same pairs per step, mean loss over the whole batch)."""
    pairs = toy_pairs(24)
    runs = {}
    for batch, accum in ((8, 1), (8, 2), (8, 4)):
        result, model = run(tok, pairs, steps=5, batch_size=batch, grad_accum=accum, lr=3e-3)
        runs[accum] = (result.loop.losses, model.state_dict())
    base_losses, base_state = runs[1]
    assert base_losses[-1] < base_losses[0] - 0.01  # the trajectory moves, so agreement means something
    for accum in (2, 4):
        losses, state = runs[accum]
        assert max(abs(a - b) for a, b in zip(losses, base_losses)) < 1e-5, (accum, losses, base_losses)
        assert all(torch.allclose(state[k], base_state[k], atol=1e-5) for k in base_state)


def test_reference_modes_agree(tok):
    pairs = toy_pairs(16)
    precomputed, _ = run(tok, pairs, steps=4, reference="precomputed")
    live_copy, _ = run(tok, pairs, steps=4, reference="copy")
    assert max(abs(a - b) for a, b in zip(precomputed.loop.losses, live_copy.loop.losses)) < 1e-5
    losses = {}
    for mode in ("adapters", "precomputed"):  # LoRA: the base with adapters off is the reference (B = 0 at start)
        model = tiny_model(tok)
        add_adapter(model, LoraConfig(r=4, alpha=8, targets=("all-linear",)))
        mark_only_adapters_trainable(model)
        trainer = PreferenceTrainer(model, PreferenceConfig(steps=4, batch_size=8, lr=1e-2, warmup=0, reference=mode))
        assert trainer.reference == mode
        losses[mode] = trainer.train(PreferenceData(pairs, tok, 64)).loop.losses
    assert losses["adapters"][-1] < losses["adapters"][0]
    assert max(abs(a - b) for a, b in zip(losses["adapters"], losses["precomputed"])) < 1e-5


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_learns_the_preference_on_held_out_prompts(tok, loss, tmp_path):
    extra = {"simpo": dict(beta=2.0), "robust": dict(label_smoothing=0.1), "ipo": dict(beta=0.5)}.get(loss, {})
    model = tiny_model(tok)
    cfg = PreferenceConfig(loss=loss, steps=25, batch_size=8, lr=3e-3, warmup=2, eval_every=10, **extra)
    trainer = PreferenceTrainer(model, cfg)
    result = trainer.train(PreferenceData(toy_pairs(32), tok, 64), PreferenceData(toy_pairs(16, offset=100), tok, 64),
                           run_dir=tmp_path)
    assert result.after["implicit_reward_accuracy"] >= 0.9, (loss, result.after)
    if loss not in ("orpo", "simpo"):  # reference-based: the untrained policy ties its reference everywhere
        assert result.before["implicit_reward_accuracy"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 25 and {"chosen_reward", "rejected_reward", "margin", "reward_accuracy"} <= set(rows[0])
    assert "val_implicit_reward_accuracy" in rows[9] and "val_loss" in rows[-1]
    assert json.loads((tmp_path / "config.json").read_text())["preference"]["loss"] == loss


def test_time_budget_and_late_precompute(tok):
    model = tiny_model(tok)
    trainer = PreferenceTrainer(model, PreferenceConfig(steps=50, batch_size=4, warmup=0, time_budget_s=0.0))
    result = trainer.train(PreferenceData(toy_pairs(8), tok, 64))
    assert result.loop.steps == 1 and result.loop.stopped_early
    with pytest.raises(ConfigError, match="before training"):
        trainer.evaluate(PreferenceData(toy_pairs(4), tok, 64))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_batch_loss_matches_trl_dpo_compute_loss(tok, loss_type, tmp_path):
    """trl 1.16's DPOTrainer._compute_loss, called on the same batch with a transformers model loaded from the
    genlab weights (its fused LM head computes the log-probs): same loss, rewards and margins."""
    transformers = pytest.importorskip("transformers")
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    from trl.trainer.utils import add_fused_lm_head

    from genlab.models.hf_io import save_pretrained

    model = tiny_model(tok, seed=1)
    torch.nn.init.normal_(model.embed.weight, std=0.5)  # sharper distributions than the 0.02 init
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    add_fused_lm_head(hf, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    loss = {"sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo"}[loss_type]
    cfg = PreferenceConfig(loss=loss, beta=0.3, reference="precomputed")
    data = PreferenceData(toy_pairs(6), tok, 64)
    ref = tiny_model(tok, seed=2)  # a reference that differs from the policy
    data.precompute_reference(ref)
    model.eval()
    ours, stats, _ = PreferenceTrainer(model, cfg, ref_model=ref).batch_loss(data, torch.arange(6))
    b = data.batch(range(6))
    fake = types.SimpleNamespace(
        model=hf, accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=0.3, label_smoothing=0.0, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": b.tokens, "attention_mask": b.attention_mask, "completion_mask": b.completion_mask,
              "ref_chosen_logps": b.ref_logps[:6], "ref_rejected_logps": b.ref_logps[6:]}
    with torch.no_grad():
        theirs = trl_dpo.DPOTrainer._compute_loss(fake, hf, inputs, return_outputs=False)
    assert float(ours.detach()) == pytest.approx(float(theirs), abs=1e-5)
    metrics = fake._metrics["eval"]
    assert float(stats["chosen_reward"].mean()) == pytest.approx(metrics["rewards/chosen"][0], abs=1e-5)
    assert float(stats["margin"].mean()) == pytest.approx(metrics["rewards/margins"][0], abs=1e-5)
