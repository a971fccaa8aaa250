"""The evaluation suite: bits-per-byte, generative exact match and multiple choice in one JSON-able dict.

Handbook V (benchmarks). What `genlab eval` and the speedrun's report card call: one model, one
tokenizer, named task sets, one prompt mode ("chat" for SFT models, "few_shot" for base models),
results as plain numbers/lists/dicts so `json.dumps` writes them as they are.

    python -c "from genlab.evals.suite import EvalConfig; print(EvalConfig())"
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from genlab.atomic import write_json
from genlab.errors import ConfigError
from genlab.evals.generative import ChatPrompt, FewShotPrompt, exact_match
from genlab.evals.multiple_choice import multiple_choice
from genlab.evals.perplexity import score_texts


@dataclass
class EvalConfig:
    mode: Literal["chat", "few_shot"] = "chat"
    max_tokens: int = 32  # new tokens per generated answer
    few_shot_k: int = 3
    seed: int = 0  # picks the few-shot examples
    seq_len: int | None = None  # bpb window; None: the model's max_seq_len
    batch_size: int = 8  # rows per forward pass for bpb and multiple choice
    gen_batch_size: int = 32  # equal-length prompts decoded together (1: one at a time)
    engine: bool = False  # decode with the paged engine instead (any lengths together, shared prefixes cached)
    max_samples: int = 5  # generated samples kept per task in the results

    def __post_init__(self) -> None:
        if self.mode not in ("chat", "few_shot"):
            raise ConfigError(f"eval mode must be 'chat' or 'few_shot', got {self.mode!r}")
        for name in ("max_tokens", "batch_size", "gen_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")


def _prompt_for(task: str, tokenizer, config: EvalConfig, pool) -> ChatPrompt | FewShotPrompt:
    if config.mode == "chat":
        return ChatPrompt(tokenizer)
    if isinstance(pool, Mapping):
        if task not in pool:
            raise ConfigError(f"few_shot_pool has no pool for task {task!r} (it has {sorted(pool)})")
        pool = pool[task]
    return FewShotPrompt(tokenizer, pool, config.few_shot_k, config.seed)


def run_eval_suite(model, tokenizer, generative: Mapping[str, Sequence[Mapping]] | None = None, *,
                   bpb_texts: Sequence[str] | None = None,
                   choice_sets: Mapping[str, Sequence[Mapping]] | None = None,
                   few_shot_pool: Sequence[Mapping] | Mapping[str, Sequence[Mapping]] | None = None,
                   config: EvalConfig | None = None) -> dict[str, Any]:
    """Run every given task; returns {"mode", "config", "bpb"?, "tasks", "multiple_choice", "accuracy", "seconds"}.

    generative: task name -> exact-match items ({"messages", "answer", "kind"}).
    choice_sets: task name -> multiple-choice items ({"context", "choices", "gold"}).
    few_shot_pool: solved examples for mode "few_shot" (e.g. SFT conversations), one pool for all
    tasks or task name -> pool (shots of the task's own kind teach the answer format best).
    "accuracy" maps each generative task to its accuracy (the report card's numbers).
    """
    config = config or EvalConfig()
    if config.mode == "few_shot" and generative and not few_shot_pool:
        raise ConfigError("mode 'few_shot' needs a few_shot_pool of solved examples")
    start = time.perf_counter()
    results: dict[str, Any] = {"mode": config.mode, "config": dataclasses.asdict(config)}
    if bpb_texts:
        t = time.perf_counter()
        score = score_texts(model, tokenizer, bpb_texts, config.seq_len, config.batch_size)
        results["bpb"] = {**score.as_dict(), "seconds": time.perf_counter() - t}
    results["tasks"] = {}
    for name, items in (generative or {}).items():
        t = time.perf_counter()
        task = exact_match(model, tokenizer, items, _prompt_for(name, tokenizer, config, few_shot_pool),
                           config.max_tokens, max_samples=config.max_samples, batch_size=config.gen_batch_size,
                           engine=config.engine)
        results["tasks"][name] = {**task, "seconds": time.perf_counter() - t}
    results["multiple_choice"] = {}
    for name, items in (choice_sets or {}).items():
        t = time.perf_counter()
        mc = multiple_choice(model, tokenizer, items, batch_size=config.batch_size, keep_samples=False)
        results["multiple_choice"][name] = {**mc, "seconds": time.perf_counter() - t}
    results["accuracy"] = {name: task["accuracy"] for name, task in results["tasks"].items()}
    results["seconds"] = time.perf_counter() - start
    return results


def write_results(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write results as JSON atomically (temp file + os.replace); NaN/inf are refused, not written."""
    return write_json(path, results, ensure_ascii=False, allow_nan=False)

