"""The speedrun's optional stages after SFT: reward model, DPO family, GRPO, and retrieval-augmented answers.

Handbook IV (reward models, RLHF, DPO, RL with verifiable rewards) and V (RAG). Each stage starts from the
SFT model (copied; the SFT model itself is never changed), writes its own run subdirectory, and returns the
dict that lands in summary.json under the issue's keys: "reward_model", the preference loss's name (e.g.
"dpo"), "grpo", "rag"; the SFT row gains "verifiable_exact_match" (greedy), "verifiable_exact_match_sampled"
(align_stages.SAMPLED_PER_PROMPT samples at temperature 1) and "chosen_style_rate" to compare against.
Report rows: each trained stage is also scored on the report card's sets (a)-(e).

    genlab speedrun --quick --align dpo --rl grpo --retrieval
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from genlab.data.chat import save_tokenizer_dir
from genlab.data.world import World
from genlab.errors import ConfigError
from genlab.finetune.preference_trainer import LOSSES
from genlab.models.hf_io import load_pretrained, save_pretrained
from genlab.recipes.align_stages import (SAMPLED_PER_PROMPT, DPOStageConfig, GRPOStageConfig, RewardStageConfig,
                                         dpo_stage, grpo_stage, reward_model_stage, sft_alignment_metrics)
from genlab.recipes.rag_stage import RagStageConfig, rag_report_table, run_rag_stage
from genlab.recipes.rag_training import RagTuneConfig, rag_finetune
from genlab.recipes.report import markdown_table

ALIGN_LOSSES = LOSSES
RL_METHODS = ("grpo",)


@dataclass
class StageBudgets:
    """Steps and wall-clock caps of the optional stages (each stops at whichever comes first)."""

    reward_steps: int = 60
    align_steps: int = 50
    grpo_steps: int = 50
    seconds_per_stage: float | None = 150.0
    grpo_seconds: float | None = 900.0  # GRPO needs more: held-out exact match moved only after ~50 steps
    rag_limit: int | None = None  # private questions scored (None: all)
    rag_steps: int = 1600  # RAG fine-tune steps (no wall-clock cap: the bar needs them all)


def rag_sources_for(seq_len: int) -> int:
    """Sources per RAG prompt that fit the context with a 48-token answer: prompts of at most 196 / 331 / 462 tokens
    for 1 / 2 / 3 sources."""
    return 3 if seq_len >= 512 else 2 if seq_len >= 384 else 1


def check_stage_options(align: str | None, rl: str | None) -> None:
    if align is not None and align not in ALIGN_LOSSES:
        raise ConfigError(f"--align must be one of {', '.join(ALIGN_LOSSES)}, got {align!r}")
    if rl is not None and rl not in RL_METHODS:
        raise ConfigError(f"--rl must be one of {', '.join(RL_METHODS)}, got {rl!r}")


def run_optional_stages(model, tokenizer, world: World, run: Path, sft_dir: Path, *, align: str | None, rl: str | None,
                        retrieval: bool, budgets: StageBudgets, seed: int, stage: Callable[[str, str], None],
                        training: Callable[[str, int], ContextManager], timed: Callable[[str], ContextManager],
                        card_row: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run what was asked; returns (summary additions, report-card rows for the trained stages).

    `model` (in memory) is only read; trained stages (the RAG fine-tune too) start from the saved SFT model in
    `sft_dir` (merged and fully trainable, whatever the SFT method was). `stage`, `training` and `timed` are the
    speedrun's hooks and stopwatch; `card_row(model_dir)` scores a saved model on the report card's sets (a)-(e).
    """
    check_stage_options(align, rl)
    out: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    seconds = budgets.seconds_per_stage
    if align or rl:
        with timed("sft_alignment_metrics"):
            out["sft_extra"] = sft_alignment_metrics(model, tokenizer, world)
        stage("reward model", "Bradley-Terry on preference pairs, held-out pairwise accuracy")
        with timed("reward_model"), training("reward model", budgets.reward_steps) as callback:
            cfg = RewardStageConfig(steps=budgets.reward_steps, seed=seed, time_budget_s=seconds)
            out["reward_model"] = reward_model_stage(sft_dir, world, cfg, run / "reward", tokenizer=tokenizer,
                                                     callback=callback)
    if align:
        stage(align, "preference tuning from the SFT model against a frozen reference")
        with timed(align), training(align, budgets.align_steps) as callback:
            cfg = DPOStageConfig(loss=align, steps=budgets.align_steps, seed=seed, time_budget_s=seconds)
            out[align] = dpo_stage(sft_dir, world, cfg, run / align, tokenizer=tokenizer, callback=callback)
        rows[align] = card_row(run / align / "model")
    if rl:
        stage(rl, "group-normalised policy gradient on verifiable prompts from the SFT model")
        with timed(rl), training(rl, budgets.grpo_steps) as callback:
            cfg = GRPOStageConfig(steps=budgets.grpo_steps, seed=seed, time_budget_s=budgets.grpo_seconds)
            out[rl] = grpo_stage(sft_dir, world, cfg, run / rl, tokenizer=tokenizer, callback=callback)
        rows[rl] = card_row(run / rl / "model")
    if retrieval:
        stage("rag fine-tune", "sources-question-answer chats about made-up people, plus repeat chats")
        rag_model = load_pretrained(sft_dir)
        k = rag_sources_for(rag_model.config.max_seq_len)
        with timed("rag_finetune"), training("rag fine-tune", budgets.rag_steps) as callback:
            tuned = rag_finetune(rag_model, tokenizer, world, RagTuneConfig(steps=budgets.rag_steps, k=k, seed=seed),
                                 run / "rag" / "train", callback)
        save_pretrained(rag_model, run / "rag" / "model")
        save_tokenizer_dir(tokenizer, run / "rag" / "model", model_max_length=rag_model.config.max_seq_len)
        stage("retrieval", "hybrid BM25 + MiniLM over private documents, answers with and without sources")
        with timed("rag"):
            out["rag"] = run_rag_stage(rag_model, tokenizer, world, RagStageConfig(k=k, limit=budgets.rag_limit),
                                       run / "rag")
        out["rag"]["finetune"] = {key: tuned[key] for key in ("steps", "rows", "final_loss", "seconds")}
        rows["rag"] = card_row(run / "rag" / "model")
    return out, rows


def stages_report(summary: dict[str, Any]) -> str:
    """report.md sections for whichever optional stages ran ("" when none did)."""
    parts = []
    sft = summary["stages"].get("sft", {})
    align_keys = [k for k in ALIGN_LOSSES + RL_METHODS if k in summary]
    if "reward_model" in summary or align_keys:
        rows = [["SFT (reference)", "-", "-", _pct(sft.get("chosen_style_rate")), _pct(sft.get("verifiable_exact_match")),
                 _pct(sft.get("verifiable_exact_match_sampled")), "-"]]
        if "reward_model" in summary:
            rows.append(["reward model", _pct(summary["reward_model"]["pairwise_accuracy"]), "-", "-", "-", "-", "-"])
        for key in align_keys:
            r = summary[key]
            rows.append([key, "-",
                         f"{_pct(r.get('implicit_reward_accuracy_before'))} -> {_pct(r.get('implicit_reward_accuracy'))}"
                         if "implicit_reward_accuracy" in r else "-",
                         _pct(r.get("chosen_style_rate")), _pct(r.get("verifiable_exact_match")),
                         _pct(r.get("verifiable_exact_match_sampled")),
                         f"{r['kl_to_reference']:.3f}" if "kl_to_reference" in r else "-"])
        parts.append("## Alignment\n\nHeld-out preference pairs and verifiable prompts (never trained on). Bars: "
                     "reward model >= 85% pairwise; DPO implicit-reward accuracy >= 80%; GRPO >= +10 points "
                     "verifiable exact match over SFT. Verifiable exact match is read greedily and as the mean "
                     f"over {SAMPLED_PER_PROMPT} samples at temperature 1 (pass@1, the policy's own success rate)."
                     "\n\n" + markdown_table(
                         ["stage", "pairwise acc.", "implicit-reward acc.", "chosen-style rate",
                          "verifiable exact match (greedy)", "(samples, T=1)", "KL to SFT (nats/seq)"], rows))
    if "rag" in summary:
        parts.append(rag_report_table(summary["rag"]))
    return "\n\n".join(parts)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
