"""The training loop: accumulation equals the large batch, exact resume, learning, metrics, bf16, config errors.

Handbook III (pretraining recipes). Budget: < 30 s on 2 busy cores (compile test marked slow).

    python -m pytest -q tests/train/test_trainer.py
"""

import json
import math
import random

import numpy as np
import pytest
import torch

from genlab.data.tokens import TokenDataset, write_tokens
from genlab.errors import ConfigError
from genlab.models import ModelConfig, Transformer
from genlab.train.checkpoint import list_checkpoints
from genlab.train.schedule import lr_at
from genlab.train.trainer import TrainConfig, train

MODEL = ModelConfig.llama_like(vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=32)


@pytest.fixture(scope="module")
def random_tokens(tmp_path_factory):
    ids = np.random.default_rng(0).integers(0, 64, size=20_000)
    return TokenDataset(write_tokens(tmp_path_factory.mktemp("data") / "rand.bin", ids, vocab_size=64))


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(MODEL.replace(**overrides))


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, seq_len=16, lr=3e-3, warmup=2, eval_every=0, eval_batches=2)
    return TrainConfig(**{**base, **kw})


def test_grad_accumulation_equals_the_large_batch(random_tokens):
    big, small = _model(), _model()
    r_big = train(big, random_tokens, _cfg(grad_accum=1))
    r_small = train(small, random_tokens, _cfg(grad_accum=2))  # 2 micro-batches of 4 = the same 8 sequences
    assert r_small.options["grad_accum"] == 2
    np.testing.assert_allclose(r_small.losses, r_big.losses, rtol=0, atol=1e-6)
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    r_quarter = train(_model(), random_tokens, _cfg(grad_accum=4, steps=2))
    np.testing.assert_allclose(r_quarter.losses, r_big.losses[:2], rtol=0, atol=1e-6)


def test_accumulation_without_scaling_would_fail(random_tokens):
    """Control: the equality above is not vacuous; a different batch order gives different losses."""
    a = train(_model(), random_tokens, _cfg(steps=3))
    b = train(_model(), random_tokens, _cfg(steps=3, seed=1))
    assert abs(a.losses[-1] - b.losses[-1]) > 1e-4


def _scramble_process_state() -> None:
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)


def test_resume_continues_exactly(random_tokens, tmp_path):
    # dropout > 0 makes the loss depend on the torch RNG, so restoring it is tested too
    straight = train(_model(dropout=0.1), random_tokens, _cfg(steps=20, warmup=4, run_dir=str(tmp_path / "a"),
                                                                 checkpoint_every=10))
    cfg = _cfg(steps=20, warmup=4, run_dir=str(tmp_path / "b"), checkpoint_every=10)
    first = train(_model(dropout=0.1), random_tokens, cfg, callback=lambda m: m["step"] == 10)
    assert first.stopped_early and first.steps == 10 and first.last_checkpoint.name == "step_0000010"
    _scramble_process_state()
    other_init = _model(seed=99, dropout=0.1)  # resume must overwrite every weight
    second = train(other_init, random_tokens, cfg)
    assert second.resumed_from == 10 and second.steps == 20
    assert first.losses + second.losses == straight.losses  # bitwise
    assert second.val_losses == {20: straight.val_losses[20]}
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert second.elapsed_s >= first.elapsed_s


def test_resume_drops_metrics_written_after_the_checkpoint(random_tokens, tmp_path):
    cfg = _cfg(steps=6, run_dir=str(tmp_path), checkpoint_every=2)
    train(_model(), random_tokens, cfg, callback=lambda m: m["step"] == 3)  # stops at 3: checkpoint at 3
    (list_checkpoints(tmp_path)[-1]).rename(tmp_path / "checkpoints" / "moved")  # as if it crashed after step 2's
    result = train(_model(), random_tokens, cfg)
    assert result.resumed_from == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert len(list_checkpoints(tmp_path)) == 2  # keep_checkpoints


def test_fresh_start_refuses_a_run_dir_with_checkpoints(random_tokens, tmp_path):
    train(_model(), random_tokens, _cfg(steps=2, run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(_model(), random_tokens, _cfg(steps=2, run_dir=str(tmp_path), resume=False))
    assert train(_model(), random_tokens, _cfg(steps=2, run_dir=str(tmp_path))).losses == []  # already done


def test_learns_a_repetitive_sequence(tmp_path):
    pattern = np.random.default_rng(1).permutation(64)[:23]  # a cycle of 23 distinct tokens
    ds = TokenDataset(write_tokens(tmp_path / "rep.bin", np.tile(pattern, 400), vocab_size=64), val_fraction=0.1)
    result = train(_model(), ds, _cfg(steps=60, warmup=5, lr=1e-2, seq_len=32, batch_size=8, eval_every=30))
    assert result.losses[0] > 3.5  # ~ln 64 at init
    # unigram entropy is ln 23 = 3.14; 20 steps reach ~0.75, 60 steps ~0.01: below 0.05 it learned the cycle
    assert result.final_val_loss < 0.05, result.val_losses


def test_metrics_jsonl_rows(random_tokens, tmp_path):
    seen = []
    cfg = _cfg(steps=4, eval_every=2, run_dir=str(tmp_path))
    train(_model(), random_tokens, cfg, callback=seen.append)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"step", "loss", "lr", "tok_per_s", "grad_norm", "elapsed_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["tok_per_s"] > 0
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg))
    assert ["val_loss" in r for r in rows] == [False, True, False, True]
    assert seen[0]["total_steps"] == 4 and len(seen) == 4
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["train"]["steps"] == 4


def test_gradient_clipping_is_applied(random_tokens):
    """Adam's first step moves each weight by ~lr * g / (|g| + eps): clipping the global norm to 1e-9 pushes
    every |g| far below eps = 1e-8, so the weights barely move; unclipped they move by ~lr."""
    def largest_move(grad_clip):
        model = _model()
        before = [p.detach().clone() for p in model.parameters()]
        rows = []
        train(model, random_tokens, _cfg(steps=1, warmup=0, lr=1e-2, weight_decay=0.0, grad_clip=grad_clip),
              callback=rows.append)
        moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
        return moved, rows[0]["grad_norm"]

    moved_clipped, norm = largest_move(1e-9)
    moved_free, norm_free = largest_move(None)
    assert norm == norm_free > 1e-3  # the logged norm is the one before clipping
    assert moved_clipped < 1e-4 < 5e-3 < moved_free


def test_bf16_autocast_runs_and_differs_from_fp32(random_tokens):
    fp32 = train(_model(), random_tokens, _cfg(steps=3))
    bf16 = train(_model(), random_tokens, _cfg(steps=3, bf16=True))
    assert bf16.options["bf16_autocast"] and all(math.isfinite(v) for v in bf16.losses)
    assert bf16.losses != fp32.losses  # autocast really changed the arithmetic
    np.testing.assert_allclose(bf16.losses, fp32.losses, atol=0.05)
    assert next(_model().parameters()).dtype == torch.float32


@pytest.mark.slow
def test_compile_matches_eager(random_tokens):
    eager = train(_model(), random_tokens, _cfg(steps=3))
    compiled = train(_model(), random_tokens, _cfg(steps=3, compile=True))
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)


@pytest.mark.parametrize("kw", [dict(batch_size=6, grad_accum=4), dict(warmup=10, steps=5), dict(seq_len=0),
                                dict(grad_clip=-1.0), dict(eval_every=-1)])
def test_bad_configs(kw):
    with pytest.raises(ConfigError):
        _cfg(**kw)


def test_config_round_trip():
    cfg = _cfg(betas=[0.8, 0.9])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"stepz": 3})
