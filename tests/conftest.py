"""Shared test settings: deterministic seeds, few threads (the suite runs on 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess
import sys

import pytest
import torch


# Tests use tiny models: one thread is as fast on an idle machine and far faster on a busy one
# (spinning OpenMP threads slow tiny kernels 5-20x when the cores are shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One `genlab speedrun --quick` per test session, shared by the tests that need a trained chat model.

    Its SFT stage uses LoRA (merged afterwards), so the one option that switches the method is exercised too, and
    the optional stages after SFT (reward model, DPO, GRPO) run for a few steps each."""
    root = tmp_path_factory.mktemp("runs")
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", "speedrun", "--quick", "--runs-root", str(root),
                          "--name", "q", "--sft-method", "lora", "--align", "dpo", "--rl", "grpo"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return root / "q"
