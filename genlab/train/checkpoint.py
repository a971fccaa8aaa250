"""Training checkpoints: a directory per step, written atomically, that resumes a run exactly.

Handbook III (pretraining recipes: checkpointing and restarts). A checkpoint directory holds

    model.safetensors   weights; a tied tensor is stored once, its other names kept as aliases in the metadata
    optimizer.pt        optimizer.state_dict() via torch.save, loaded with weights_only=True (no arbitrary unpickling)
    rng.pt              torch CPU (and CUDA) RNG state and the data sampler's torch.Generator state
    state.json          step, model and train configs, numpy and python RNG states, extra counters,
                        and the size and SHA-256 of every file above (so truncation or corruption is named)

It is built in a hidden temp directory next to its final place and renamed into place, so a reader never
sees a half-written checkpoint. The schedule is a pure function of the step, so its state is the step.

    python -m pytest -q tests/train/test_train_checkpoint.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from genlab.errors import CheckpointError

FORMAT = "genlab-checkpoint"
VERSION = 1
WEIGHTS, OPTIMIZER, RNG, STATE = "model.safetensors", "optimizer.pt", "rng.pt", "state.json"
# Model-config fields that do not change the weights' meaning: a checkpoint loads whatever they are.
RUNTIME_ONLY_FIELDS = {"dropout", "attn_impl", "init_std"}
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class CheckpointState:
    """What `load_checkpoint` returns besides filling the model/optimizer in place."""

    path: Path
    step: int
    model_config: dict[str, Any] | None
    train_config: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)


# --- weights ----------------------------------------------------------------------------------------
def save_weights(path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """state_dict -> safetensors; tensors sharing storage (tied head) are written once, with an alias map."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = t.detach().contiguous().cpu()
    meta = {"format": "pt", "genlab_aliases": json.dumps(aliases), **(metadata or {})}
    save_file(kept, str(path), metadata=meta)
    return Path(path)


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Fill `model` from a safetensors file written by `save_weights`; CheckpointError on missing/extra/misshapen tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("genlab_aliases", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e} (truncated or corrupt file?)") from None
    for name, target in aliases.items():
        if target in tensors:
            tensors[name] = tensors[target]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [f"{k}: {tuple(tensors[k].shape)} in file vs {tuple(v.shape)} in model"
                 for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or misshapen:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"shape mismatch {misshapen[:5]}" if misshapen else ""]
        raise CheckpointError(f"weights in {path} do not match the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(tensors, strict=True)


# --- RNG -------------------------------------------------------------------------------------------
def _python_numpy_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}


def _restore_python_numpy_rng(state: dict[str, Any]) -> None:
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --- files -----------------------------------------------------------------------------------------
def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry list) to disk; some platforms cannot fsync directories: skip there."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temp dir beside `final`; on success rename it to `final` (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():  # rename cannot replace a non-empty directory: move the old one aside first
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    *, train_config: dict[str, Any] | None = None, data_generator: torch.Generator | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint directory at `path` atomically and return it."""
    path = Path(path)
    config = getattr(model, "config", None)
    model_config = config.to_dict() if hasattr(config, "to_dict") else None
    with _atomic_directory(path) as tmp:
        save_weights(tmp / WEIGHTS, model, {"step": str(step)})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if data_generator is not None:
            rng["data"] = data_generator.get_state()
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / RNG)
        state = {"format": FORMAT, "version": VERSION, "step": int(step), "model_config": model_config,
                 "train_config": train_config, "extra": extra or {}, "rng": _python_numpy_rng(),
                 "files": {name: _digest(tmp / name) for name in (WEIGHTS, OPTIMIZER, RNG) if (tmp / name).exists()}}
        (tmp / STATE).write_text(json.dumps(state, indent=1, default=str))
    return path


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if not (path / STATE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: {STATE} is missing")
    try:
        state = json.loads((path / STATE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / STATE} is corrupt: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE} is not a genlab checkpoint state file")
    for name, want in state.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        got = _digest(f)
        if got["bytes"] != want["bytes"]:
            raise CheckpointError(f"{f} has {got['bytes']} bytes, expected {want['bytes']} (truncated or overwritten)")
        if got["sha256"] != want["sha256"]:
            raise CheckpointError(f"{f} is corrupt: SHA-256 differs from the one recorded at save time")
    return state


def _check_model_config(path: Path, saved: dict[str, Any] | None, model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if saved is None or not hasattr(config, "to_dict"):
        return
    current = config.to_dict()
    diffs = [f"{k}={saved.get(k)!r} in checkpoint vs {current.get(k)!r} in model"
             for k in sorted(set(saved) | set(current)) if k not in RUNTIME_ONLY_FIELDS and saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was saved for a different model config: " + "; ".join(diffs))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    data_generator: torch.Generator | None = None, restore_rng: bool = True) -> CheckpointState:
    """Restore weights (and optimizer, RNG states, data generator when given) from a checkpoint directory.

    Raises CheckpointError naming the problem: missing directory or file, truncated/corrupt file, or a
    model whose config or parameter shapes differ from the checkpoint's.
    """
    path = Path(path)
    state = _read_state(path)
    _check_model_config(path, state.get("model_config"), model)
    load_weights(path / WEIGHTS, model)
    if optimizer is not None:
        if not (path / OPTIMIZER).is_file():
            raise CheckpointError(f"checkpoint {path} has no optimizer state ({OPTIMIZER})")
        try:
            saved = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types; all mean the same to the user
            raise CheckpointError(f"cannot read optimizer state {path / OPTIMIZER}: {e}") from None
        impl = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state in {path} does not match this optimizer: {e}") from None
        for group, keep in zip(optimizer.param_groups, impl):  # keep this run's kernel choice, not the saved one
            group.update(keep)
    if restore_rng or data_generator is not None:
        try:
            rng = torch.load(path / RNG, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read RNG state {path / RNG}: {e}") from None
        if restore_rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            _restore_python_numpy_rng(state["rng"])
        if data_generator is not None:
            if "data" not in rng:
                raise CheckpointError(f"checkpoint {path} has no data-generator state to resume from")
            data_generator.set_state(rng["data"])
    return CheckpointState(path, int(state["step"]), state.get("model_config"), state.get("train_config"),
                           state.get("extra", {}))


# --- run directories -------------------------------------------------------------------------------
def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under run_dir/checkpoints, oldest first (temp dirs are hidden and skipped)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
