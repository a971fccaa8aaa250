"""`genlab finetune --method ...` on the quick speedrun's base model: adapters only train, results load back."""

import json
import subprocess
import sys

import pytest
import torch

from genlab.models.hf_io import load_pretrained


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_finetune_methods_write_adapters(quick_run, tmp_path, method):
    run_dir = tmp_path / method
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", "finetune", str(quick_run / "base_model"),
                          "--method", method, "--steps", "3", "--batch-size", "4", "--world-scale", "0.25",
                          "--rank", "4", "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (run_dir / "adapter").is_dir() == (method != "full")
    if method != "full":
        config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "model").is_dir() == (method != "qlora")  # a 4-bit base is never merged
    if method != "qlora":
        merged, base = load_pretrained(run_dir / "model"), load_pretrained(quick_run / "base_model")
        x = torch.randint(0, base.config.vocab_size, (1, 12))
        with torch.no_grad():
            assert not torch.equal(merged(x), base(x))  # the trained update is in the saved model


def test_finetune_rejects_unknown_method(quick_run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", "finetune", str(quick_run / "base_model"),
                          "--method", "magic", "--run-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown fine-tuning method" in out.stderr
