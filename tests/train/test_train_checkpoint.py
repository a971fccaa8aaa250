"""Checkpoints: round trip (tied weights, optimizer, RNG), atomic layout, and clear errors on bad checkpoints.

Handbook III (checkpointing). Budget: < 5 s.

    python -m pytest -q tests/train/test_train_checkpoint.py
"""

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from genlab.errors import CheckpointError
from genlab.models import ModelConfig, Transformer
from genlab.train.checkpoint import (OPTIMIZER, STATE, WEIGHTS, checkpoint_path, latest_checkpoint, list_checkpoints,
                                     load_checkpoint, load_weights, prune_checkpoints, save_checkpoint)
from genlab.train.optim import build_optimizer

CFG = ModelConfig.gpt2_like(vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=16)


def _trained(seed: int = 0) -> tuple[Transformer, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Transformer(CFG)
    opt = build_optimizer(model, lr=1e-2)
    x = torch.randint(0, 64, (2, 16))
    for _ in range(2):
        model.loss(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _draws(gen: torch.Generator | None = None) -> tuple:
    """The next values of every RNG a checkpoint restores (consumes them)."""
    data = torch.randint(100, (5,), generator=gen).tolist() if gen is not None else None
    return torch.rand(3).tolist(), np.random.rand(), random.random(), data


@pytest.fixture
def saved(tmp_path):
    model, opt = _trained()
    gen = torch.Generator().manual_seed(5)
    torch.randint(100, (7,), generator=gen)  # a data sampler part-way through its stream
    path = save_checkpoint(tmp_path / "ckpt", model, opt, step=7, train_config={"lr": 1e-2},
                           data_generator=gen, extra={"elapsed_s": 1.5})
    return path, model, opt, _draws(gen)


def test_round_trip_weights_optimizer_and_state(saved):
    path, model, opt, _ = saved
    fresh, fresh_opt = _trained(seed=1)
    state = load_checkpoint(path, fresh, fresh_opt)
    assert state.step == 7 and state.train_config == {"lr": 1e-2} and state.extra == {"elapsed_s": 1.5}
    assert state.model_config == CFG.to_dict()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.head.weight is fresh.embed.weight  # still tied after loading
    for pa, pb in zip(opt.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(pa[k], pb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert fresh_opt.defaults["fused"] == opt.defaults["fused"]


def test_tied_weight_stored_once(saved):
    path, _, _, _ = saved
    with safe_open(str(path / WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
    assert "embed.weight" in keys and "head.weight" not in keys


def test_rng_states_restored(saved):
    path, model, _, next_draws = saved
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    gen = torch.Generator().manual_seed(99)
    load_checkpoint(path, model, data_generator=gen)
    assert _draws(gen) == next_draws  # torch, numpy, python and the data generator continue where they were saved


def test_atomic_layout_and_overwrite(saved, tmp_path):
    path, model, opt, _ = saved
    assert sorted(p.name for p in path.iterdir()) == sorted([WEIGHTS, OPTIMIZER, "rng.pt", STATE])
    save_checkpoint(path, model, opt, step=8)  # replaces the old directory in one rename
    assert json.loads((path / STATE).read_text())["step"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or old directories left


def test_run_dir_helpers(tmp_path):
    model, opt = _trained()
    for step in (5, 10, 15):
        save_checkpoint(checkpoint_path(tmp_path, step), model, opt, step)
    (tmp_path / "checkpoints" / ".step_0000020.tmp-x").mkdir()  # a crashed save: hidden, ignored
    (tmp_path / "checkpoints" / "step_0000025").mkdir()  # no state.json: incomplete, ignored
    assert latest_checkpoint(tmp_path).name == "step_0000015"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010", "step_0000015"]
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_truncated_weights(saved):
    path, model, _, _ = saved
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):  # the safetensors reader alone also says so
        load_weights(path / WEIGHTS, model)


def test_flipped_byte_is_caught_by_checksum(saved):
    path, model, _, _ = saved
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path, model)


@pytest.mark.parametrize("name, message", [(WEIGHTS, "missing model.safetensors"), (OPTIMIZER, "missing optimizer.pt"),
                                           (STATE, "state.json is missing")])
def test_missing_files(saved, name, message):
    path, model, opt, _ = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, model, opt)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope", Transformer(CFG))


def test_config_mismatch_names_the_field(saved):
    path, _, _, _ = saved
    with pytest.raises(CheckpointError, match=r"d_model=32 in checkpoint vs 64 in model"):
        load_checkpoint(path, Transformer(CFG.replace(d_model=64)))
    load_checkpoint(path, Transformer(CFG.replace(dropout=0.1)))  # runtime-only fields may differ


def test_shape_mismatch_without_config(saved):
    path, _, _, _ = saved
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="do not match the model"):
        load_weights(path / WEIGHTS, other)


def test_optimizer_state_is_not_unpickled_blindly(saved):
    path, model, opt, _ = saved
    torch.save({"state": {}, "param_groups": [], "evil": random.Random(0)}, path / OPTIMIZER)
    state = json.loads((path / STATE).read_text())
    del state["files"][OPTIMIZER]  # make the checksum agree so the loader reaches torch.load
    (path / STATE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="cannot read optimizer state"):
        load_checkpoint(path, model, opt)


def test_optimizer_of_other_model_is_rejected(saved):
    path, _, _, _ = saved
    model = Transformer(CFG)
    opt = torch.optim.AdamW(model.parameters())  # one group instead of two
    with pytest.raises(CheckpointError, match="does not match this optimizer"):
        load_checkpoint(path, model, opt)
