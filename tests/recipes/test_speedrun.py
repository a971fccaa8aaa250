"""`genlab speedrun --quick` leaves a complete run directory: report.md, a loss-curve PNG, summary.json, a model."""

import json
import torch

from genlab.data.world import WorldConfig, build_world, sft_conversations
from genlab.models.hf_io import load_pretrained
from genlab.tokenizers import BPETokenizer


def test_run_directory_is_complete(quick_run):
    for name in ["report.md", "summary.json", "config.json", "plots/loss.png", "plots/sft_loss.png",
                 "plots/report_card.png", "plots/accuracy_curve.png", "pretrain/metrics.jsonl", "sft/metrics.jsonl", "eval_base.json",
                 "eval_sft.json", "base_model/model.safetensors", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json", "model/tokenizer_config.json"]:
        assert (quick_run / name).is_file(), name
    assert (quick_run / "plots/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (quick_run.parent / "latest").read_text().strip() == "q"


def test_summary_and_report(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert summary["mode"] == "quick"
    assert summary["wall_seconds"] > 0
    keys = {"qa_new_phrasings", "knowledge_extraction", "addition_2digit", "idk", "json_valid", "bpb"}
    for stage in ("base", "sft"):
        row = summary["stages"][stage]
        assert keys <= set(row)
        assert all(0.0 <= row[k] <= 1.0 for k in keys - {"bpb"})
        assert 0 < row["bpb"] < 8
    # Pretraining must have learned something: well below the uniform loss ln(768) = 6.64 nats/token.
    assert summary["pretrain"]["final_val_loss"] < 6.0
    report = (quick_run / "report.md").read_text()
    assert summary["sft"]["method"] == "lora"
    assert 0 < summary["sft"]["trainable_parameters"] < 0.5 * summary["model"]["parameters"]  # r=16 on a 0.16M model
    assert (quick_run / "adapter" / "adapter_config.json").is_file()
    curve = summary["accuracy_curve"]  # quick: 50 steps probed every 25, 20 SFT steps at 12, then the SFT endpoint
    assert [(p["phase"], p["step"]) for p in curve] == [("pretrain", 25), ("pretrain", 50), ("sft", 12), ("sft", 20)]
    times = [p["train_seconds"] for p in curve]
    assert times == sorted(times) and times[0] > 0
    assert all(0.0 <= p[k] <= 1.0 for p in curve for k in keys - {"bpb"})
    assert curve[-1]["idk"] == summary["stages"]["sft"]["idk"]
    for needle in ["Accuracy versus training time", "| SFT method | lora |", "Report card", "knowledge extraction", "parameters", "tokens/s", "plots/loss.png",
                   "bytes per token", "Sample conversations"]:
        assert needle in report


def test_alignment_stages_report_their_keys(quick_run):
    summary = json.loads((quick_run / "summary.json").read_text())
    assert 0.0 <= summary["reward_model"]["pairwise_accuracy"] <= 1.0
    assert summary["dpo"]["implicit_reward_accuracy_before"] == 0.5  # the policy equals its reference at the start
    assert {"implicit_reward_accuracy", "chosen_style_rate"} <= set(summary["dpo"])
    assert {"verifiable_exact_match", "verifiable_exact_match_sampled", "kl_to_reference"} <= set(summary["grpo"])
    assert summary["grpo"]["kl_to_reference"] >= 0.0
    sft = summary["stages"]["sft"]
    assert {"verifiable_exact_match", "verifiable_exact_match_sampled", "chosen_style_rate"} <= set(sft)
    assert sft["verifiable_exact_match_sampled"] == summary["grpo"]["verifiable_exact_match_sampled_before"]
    assert {"dpo", "grpo"} <= set(summary["stages"])  # report-card rows for the trained stages
    for name in ["reward/result.json", "dpo/model/model.safetensors", "grpo/model/model.safetensors"]:
        assert (quick_run / name).is_file(), name
    assert "## Alignment" in (quick_run / "report.md").read_text()


def test_saved_model_reloads_and_matches_saved_tokenizer(quick_run):
    model = load_pretrained(quick_run / "model")
    tok = BPETokenizer.load(quick_run / "model")
    ids = tok.encode("def main():", allowed_special="all")
    with torch.no_grad():
        logits = model(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), tok.vocab_size)


def test_retrieval_stage_adds_rag_keys_and_report_section(tmp_path):
    from genlab.recipes.speedrun import SpeedrunConfig, run_speedrun

    # quick, but with room in the context for a RAG prompt; the stage's own accuracy is tested in test_rag_stage.py.
    # Pretraining on random windows of the token stream here, so that path keeps running too.
    cfg = SpeedrunConfig.preset("quick", seq_len=256, retrieval=True, runs_root=str(tmp_path), name="r", steps=10,
                                sft_steps=4, curve_every=0, packed_pretraining=False)
    result = run_speedrun(cfg)
    rag = result.summary["rag"]
    assert rag["hit_at_5"] >= 0.95  # hybrid retrieval finds the private documents whatever the generator
    for key in ("accuracy_with_retrieval", "accuracy_without_retrieval"):
        assert 0.0 <= rag[key] <= 1.0
    world_convs = len(sft_conversations(build_world(WorldConfig(seed=cfg.seed, scale=cfg.world_scale))))
    assert result.summary["sft"]["conversations"] == world_convs  # SFT is the same with or without the stage
    assert rag["finetune"]["steps"] == cfg.rag_steps and (result.run_dir / "rag" / "model" / "model.safetensors").exists()
    assert set(result.summary["stages"]["rag"]) >= {"qa_new_phrasings", "json_valid"}  # its report-card row
    assert "Retrieval-augmented answers on private documents" in (result.run_dir / "report.md").read_text()
