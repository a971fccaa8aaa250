"""The CLI: --help everywhere, and user errors exit non-zero with one clear line and no traceback."""

import subprocess
import sys

import pytest

COMMANDS = [[], ["tokenizer"], ["tokenizer", "train"], ["tokenizer", "encode"], ["pretrain"], ["generate"],
            ["sft"], ["finetune"], ["eval"], ["chat"], ["rag"],
            ["speedrun"], ["serve"], ["dpo"], ["kto"], ["orpo"], ["simpo"], ["reward"], ["ppo"], ["grpo"]]


def genlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "genlab.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(command):
    out = genlab(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["generate", "/no/such/model"], "model directory not found"),
    (["generate"], "no runs found"),
    (["tokenizer", "train", "/no/such/file.txt"], "input not found"),
    (["tokenizer", "encode", "/no/such/dir", "hi"], "tokenizer"),
])
def test_user_errors_are_clear(args, message, tmp_path):
    out = genlab(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_option_value_is_rejected(tmp_path):
    out = genlab("speedrun", "--steps", "many", cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr


def test_out_of_range_speedrun_option_names_the_problem(tmp_path):
    out = genlab("speedrun", "--sft-replay", "-1", "--runs-root", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert "sft_replay must be >= 0" in out.stderr and "Traceback" not in out.stderr
