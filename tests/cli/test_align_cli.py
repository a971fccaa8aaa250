"""`genlab dpo|kto|orpo|simpo|reward|ppo|grpo` on a tiny random chat model: run directories, LoRA, user errors.

    python -m pytest -q tests/cli/test_align_cli.py
"""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from genlab.cli.main import app
from genlab.data.chat import CHAT_SPECIAL_TOKENS, save_tokenizer_dir
from genlab.data.world import WorldConfig, build_world, pretraining_documents
from genlab.models import ModelConfig, Transformer
from genlab.models.hf_io import load_pretrained, save_pretrained
from genlab.tokenizers import BPETokenizer

COMMANDS = ["dpo", "kto", "orpo", "simpo", "reward", "ppo", "grpo"]
WORLD = ["--world-scale", "0.05"]
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random-init chat model whose tokenizer knows the world's words (so prompts stay short)."""
    directory = tmp_path_factory.mktemp("tiny") / "model"
    docs = pretraining_documents(build_world(WorldConfig(scale=0.05)))[:60]
    tok = BPETokenizer.train(docs, 420, special_tokens=CHAT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
                                               max_seq_len=128))
    save_pretrained(model, directory)
    save_tokenizer_dir(tok, directory, model_max_length=128)
    return directory


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("command", ["dpo", "kto", "orpo", "simpo"])
def test_preference_commands_write_a_run(model_dir, tmp_path, command):
    run = tmp_path / command
    invoke(command, model_dir, *WORLD, "--steps", 2, "--batch-size", 4, "--run-dir", run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward_accuracy" in rows[0]
    result = json.loads((run / "result.json").read_text())
    assert 0.0 <= result["implicit_reward_accuracy"] <= 1.0
    assert (run / "config.json").is_file() and (run / "plots" / "loss.png").is_file()
    trained, start = load_pretrained(run / "model"), load_pretrained(model_dir)
    assert not torch.equal(trained.embed.weight, start.embed.weight)
    assert (run / "model" / "tokenizer.json").is_file()


def test_dpo_with_lora_uses_the_base_as_reference(model_dir, tmp_path):
    run = tmp_path / "lora"
    invoke("dpo", model_dir, *WORLD, "--steps", 2, "--batch-size", 4, "--method", "lora", "-r", 4, "--run-dir", run)
    assert json.loads((run / "result.json").read_text())["reference"] == "adapters"
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "model" / "config.json").is_file()


def test_reward_then_ppo_with_the_reward_model(model_dir, tmp_path):
    invoke("reward", model_dir, *WORLD, "--steps", 2, "--batch-size", 4, "--run-dir", tmp_path / "rm")
    assert (tmp_path / "rm" / "reward_model" / "reward_head.safetensors").is_file()
    assert "pairwise_accuracy" in json.loads((tmp_path / "rm" / "result.json").read_text())
    invoke("ppo", model_dir, *WORLD, "--steps", 2, "--prompts-per-step", 4, "--minibatch-size", 2,
           "--max-new-tokens", 4, "--reward-model", tmp_path / "rm" / "reward_model", "--run-dir", tmp_path / "ppo")
    rows = (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and "value_loss" in json.loads(rows[0])
    assert (tmp_path / "ppo" / "model" / "config.json").is_file()


def test_grpo_reports_exact_match_and_kl(model_dir, tmp_path):
    run = tmp_path / "grpo"
    invoke("grpo", model_dir, *WORLD, "--steps", 2, "--prompts-per-step", 2, "--group-size", 3,
           "--max-new-tokens", 4, "--fresh-sums", 50, "--loss-type", "dr_grpo", "--run-dir", run)
    result = json.loads((run / "result.json").read_text())
    assert {"verifiable_exact_match", "verifiable_exact_match_before", "verifiable_exact_match_sampled",
            "verifiable_exact_match_sampled_before", "kl_to_reference"} <= set(result)
    assert result["kl_to_reference"] >= 0.0


@pytest.mark.parametrize("args, message", [
    (["dpo", "--data", "/no/such/pairs.jsonl"], "JSONL file not found"),
    (["dpo", "--loss", "kto"], "--loss takes"),
    (["grpo", "--loss-type", "bnpo"], "loss_type must be one of grpo, dr_grpo"),
])
def test_user_errors_are_one_line(model_dir, tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", args[0], str(model_dir), *args[1:],
                          "--run-dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
