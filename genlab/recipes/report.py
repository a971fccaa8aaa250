"""report.md for speedrun runs: what ran, how big, how fast, how well, and samples.

    genlab speedrun --quick && cat runs/latest
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


CARD_COLUMNS = [("qa_new_phrasings", "(a) new phrasings"), ("knowledge_extraction", "(b) knowledge extraction"),
                ("addition_2digit", "(c) 2-digit addition"), ("idk", "(d) I don't know"), ("json_valid", "(e) valid JSON"),
                ("bpb", "bits/byte (held-out real text)")]
CARD_LABELS = {key: title.replace(") ", ")\n", 1) for key, title in CARD_COLUMNS}


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, float) else _fmt(value)


def _samples_of(results: dict[str, Any], limit: int = 2) -> list[str]:
    lines = []
    for name, task in results.get("tasks", {}).items():
        for sample in task.get("samples", [])[:limit]:
            lines.append(f"| {name} | {sample.get('question', '')!s} | {sample.get('output', '')!r} | "
                         f"{sample.get('answer', '')!s} | {sample.get('correct', '')} |")
    return lines


def speedrun_report(cfg: Any, summary: dict[str, Any], samples: list[dict[str, str]],
                    base_eval: dict[str, Any], sft_eval: dict[str, Any], extra_sections: str = "") -> str:
    corpus, tok, model, pre, sft = (summary[k] for k in ("corpus", "tokenizer", "model", "pretrain", "sft"))
    card = [[stage] + [(_pct(row.get(k)) if k != "bpb" else _fmt(row.get(k))) for k, _ in CARD_COLUMNS]
            for stage, row in summary["stages"].items()]
    parts = [
        f"# genlab speedrun ({summary['mode']})",
        f"Wall time **{summary['wall_seconds']:.0f} s** on this machine, no download. The base model is scored with a "
        f"{cfg.few_shot_k}-shot plain-text prompt, the SFT model with the chat format; exact match after normalisation "
        "of the final answer, the text after \"Answer:\" when the reply has one (JSON: parses with the required keys)."
        + (" SFT taught worked answers: recall the fact as a sentence, add by place value, then \"Answer: value\"."
           if getattr(cfg, "worked_answers", False) else "")
        + (" The tokenizer splits every digit." if getattr(cfg, "digit_tokens", False) else "")
        + (" Pretraining packs whole documents into its rows (each attends only within itself), so the base model"
           " has never seen several documents in one context: a few-shot prompt is new to it."
           if getattr(cfg, "packed_pretraining", False) else ""),
        "## Report card",
        markdown_table(["stage"] + [title for _, title in CARD_COLUMNS], card),
        "![report card](plots/report_card.png)",
        "## Accuracy versus training time",
        "Chat-format exact match on a small sample of each held-out set, probed during pretraining (the mix holds "
        "chat conversations, so the base model answers in the chat format) and during SFT; the last row is the full "
        "SFT evaluation. Probe time is excluded.",
        markdown_table(["phase", "step", "training s"] + [title for key, title in CARD_COLUMNS if key != "bpb"],
                       [[p["phase"], p["step"], p["train_seconds"]] + [_pct(p.get(k)) for k, _ in CARD_COLUMNS[:-1]]
                        for p in summary.get("accuracy_curve", [])]),
        "![accuracy curve](plots/accuracy_curve.png)",
        *([extra_sections] if extra_sections else []),
        "## Stages",
        markdown_table(["stage", "seconds"], [[k, v] for k, v in summary["timings_s"].items()]),
        "## Data and tokenizer",
        markdown_table(["what", "value"], [
            ["world people", corpus["people"]], ["world documents", corpus["world_documents"]],
            ["real-text documents", corpus["real_documents"]], ["pretraining bytes", corpus["bytes"]],
            ["pretraining tokens", corpus["tokens"]], ["vocab size", tok["vocab_size"]],
            ["bytes per token", tok["bytes_per_token"]], ["tokenizer train seconds", tok["train_seconds"]]]),
        "## Model and training",
        markdown_table(["what", "value"], [
            ["parameters", model["parameters"]], ["non-embedding parameters", model["non_embedding_parameters"]],
            ["training FLOPs per token (6N + 12LdT)", f"{model['flops_per_token'] / 1e6:.1f} M"],
            ["pretraining steps", pre["steps"]], ["pretraining tokens seen", pre["tokens"]],
            ["pretraining tokens/s", pre["tokens_per_s"]], ["final train loss", pre["final_train_loss"]],
            ["final val loss", pre["final_val_loss"]], ["SFT method", sft["method"]],
            ["SFT trainable parameters", sft["trainable_parameters"]], ["SFT steps", sft["steps"]],
            ["SFT conversations", sft["conversations"]], ["SFT final loss", sft["final_loss"]],
            ["options", ", ".join(f"{k}={v}" for k, v in pre["options"].items())]]),
        "![pretraining loss](plots/loss.png)\n\n![SFT loss](plots/sft_loss.png)",
        "## Sample conversations (SFT model, greedy)",
        markdown_table(["user", "assistant"], [[s["user"], s["assistant"]] for s in samples]),
        "## Eval samples",
        "SFT model:\n\n| task | question | prediction | answer | correct |\n|---|---|---|---|---|\n"
        + "\n".join(_samples_of(sft_eval)),
        "Base model (few-shot):\n\n| task | question | prediction | answer | correct |\n|---|---|---|---|---|\n"
        + "\n".join(_samples_of(base_eval)),
        "## Configuration",
        "```\n" + "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)) + "\n```",
    ]
    return "\n\n".join(parts) + "\n"
