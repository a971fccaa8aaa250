"""Alignment stages for the speedrun, after SFT: reward model, DPO (or its family), GRPO; and the SFT row's metrics.

Handbook IV (reward models and RLHF, direct preference optimization, RL with verifiable rewards). Each stage
starts from the SFT model (a directory, or a model + tokenizer in memory, which is copied and never modified),
trains for a few CPU minutes, writes its run directory (config.json, metrics.jsonl, plots/, result.json and,
unless disabled, model/ in the Hugging Face layout) and returns the dict the speedrun puts in summary.json.

Held-out data, never trained on (genlab.finetune.preference_data.held_out_split: by prompt text, seeded by the
world's seed, so every stage and the SFT row see the same split):
- preference pairs (genlab.data.world.preference_pairs): PAIR_HELD_OUT_FRACTION of them;
- verifiable prompts (genlab.data.world.verifiable_prompts: arithmetic, facts, two-hop facts):
  PROMPT_HELD_OUT_FRACTION of them.

Metrics (all on the held-out side):
- pairwise_accuracy: reward model ranks chosen above rejected (ties count as wrong).
- implicit_reward_accuracy: β·log π/π_ref of chosen > of rejected, ties counting one half (so the SFT model,
  equal to its reference, scores exactly 0.5: the "_before" value).
- chosen_style_rate: fraction of held-out preference prompts whose greedy reply (chat format, at most
  STYLE_MAX_TOKENS tokens) is in the chosen style: concise (at most CONCISE_WORDS words, or as many as the
  chosen reply when that is a longer worked answer, genlab.data.world.worked) AND correct (its final answer
  equal to the chosen one under genlab.data.world.normalize_answer; for "I don't know" prompts the chosen
  answer is "I don't know."). The rejected styles (wrong, rambling, rambling and wrong) all fail.
- verifiable_exact_match: greedy exact match (world normaliser) on held-out verifiable prompts.
- verifiable_exact_match_sampled: the same prompts, the mean exact match of SAMPLED_PER_PROMPT completions sampled
  at temperature 1 (pass@1 from k samples, DeepSeek-R1's protocol; genlab.finetune.rollouts.sampled_rewards): the
  success rate of the policy's own samples, the quantity GRPO raises, where greedy reads only the mode.
- kl_to_reference: KL(π‖π_SFT) in nats per completion, sampled at temperature 1 on held-out verifiable prompts
  (genlab.finetune.grpo.kl_to_reference: exact per-position KL summed over the completion).

    python -m pytest -q tests/recipes/test_align_stages.py
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from genlab.atomic import write_json
from genlab.data.chat import save_tokenizer_dir
from genlab.data.world import World, normalize_answer, preference_pairs, verifiable_prompts, verifiable_sums
from genlab.data.world.worked import final_answer
from genlab.evals.generative import exact_match
from genlab.finetune.grpo import GRPOConfig, GRPOTrainer, kl_to_reference
from genlab.finetune.preference_data import PreferenceData, held_out_split
from genlab.finetune.preference_trainer import PreferenceConfig, PreferenceTrainer
from genlab.finetune.reward import RewardModel
from genlab.finetune.reward_trainer import RewardConfig, save_reward_model, train_reward_model
from genlab.finetune.rollouts import FrozenReference, chat_task, sampled_rewards
from genlab.models.hf_io import load_pretrained, save_pretrained
from genlab.recipes.plots import plot_curves
from genlab.tokenizers import BPETokenizer

PAIR_HELD_OUT_FRACTION = 0.25
PROMPT_HELD_OUT_FRACTION = 0.5
CONCISE_WORDS = 8
STYLE_MAX_TOKENS = 48  # long enough for a whole ramble, so a rambling reply is seen as one
VERIFIABLE_MAX_TOKENS = 64  # room for a worked answer (steps, then "Answer: value")
SAMPLED_PER_PROMPT = 4  # samples a held-out verifiable prompt for the sampled exact match
WORKED_NEW_TOKENS = 48  # GRPO samples this long when the world's answers are worked
StepCallback = Callable[[dict[str, Any]], Any]


# --- data splits and metrics -----------------------------------------------------------------------------

def preference_split(world: World) -> tuple[list[Mapping], list[Mapping]]:
    """(train, held-out) preference pairs of the world."""
    return held_out_split(preference_pairs(world), PAIR_HELD_OUT_FRACTION, seed=world.config.seed)


def verifiable_split(world: World) -> tuple[list[Mapping], list[Mapping]]:
    """(train, held-out) verifiable prompts of the world."""
    return held_out_split(verifiable_prompts(world), PROMPT_HELD_OUT_FRACTION, seed=world.config.seed)


def chosen_style(reply: str, chosen: str) -> dict[str, bool]:
    """{"concise", "correct", "chosen_style"} for one greedy reply (see the module docstring)."""
    concise = len(reply.split()) <= max(CONCISE_WORDS, len(chosen.split()))
    correct = normalize_answer(final_answer(reply)) == normalize_answer(final_answer(chosen))
    return {"concise": concise, "correct": correct, "chosen_style": concise and correct}


def style_metrics(model: nn.Module, tokenizer, pairs: Sequence[Mapping]) -> dict[str, float]:
    """chosen_style_rate with its parts (concise_rate, correct_rate) over `pairs`' prompts, greedy."""
    items = [{"messages": p["prompt"], "answer": p["chosen"], "kind": p.get("kind", "")} for p in pairs]
    result = exact_match(model, tokenizer, items, max_tokens=STYLE_MAX_TOKENS, checkers={})
    flags = [chosen_style(s["output"], s["answer"]) for s in result["samples"]]
    n = len(flags)
    return {"chosen_style_rate": sum(f["chosen_style"] for f in flags) / n,
            "concise_rate": sum(f["concise"] for f in flags) / n, "correct_rate": sum(f["correct"] for f in flags) / n}


def verifiable_metrics(model: nn.Module, tokenizer, items: Sequence[Mapping], seed: int = 0) -> dict[str, Any]:
    """On `items`: {"verifiable_exact_match", "by_kind"}, greedy exact match overall and by item kind, and
    {"verifiable_exact_match_sampled", "by_kind_sampled"}, the mean exact match of SAMPLED_PER_PROMPT samples at
    temperature 1."""
    result = exact_match(model, tokenizer, items, max_tokens=VERIFIABLE_MAX_TOKENS, checkers={})
    rates = sampled_rewards(model, chat_task(tokenizer, items), SAMPLED_PER_PROMPT, VERIFIABLE_MAX_TOKENS, 1.0, seed)
    kinds = sorted({item["kind"] for item in items})
    by_kind = {kind: float(rates[[i for i, item in enumerate(items) if item["kind"] == kind]].mean()) for kind in kinds}
    return {"verifiable_exact_match": result["accuracy"], "by_kind": result["by_detail"],
            "verifiable_exact_match_sampled": float(rates.mean()), "by_kind_sampled": by_kind}


def sft_alignment_metrics(model: nn.Module, tokenizer, world: World) -> dict[str, float]:
    """The SFT row's comparison values on the held-out splits: {"verifiable_exact_match",
    "verifiable_exact_match_sampled", "chosen_style_rate"}."""
    _, held_pairs = preference_split(world)
    _, held_prompts = verifiable_split(world)
    verifiable = verifiable_metrics(model, tokenizer, held_prompts)
    return {"verifiable_exact_match": verifiable["verifiable_exact_match"],
            "verifiable_exact_match_sampled": verifiable["verifiable_exact_match_sampled"],
            "chosen_style_rate": style_metrics(model, tokenizer, held_pairs)["chosen_style_rate"]}


# --- shared plumbing ---------------------------------------------------------------------------------------

def load_source(source, tokenizer=None) -> tuple[nn.Module, Any]:
    """A private copy of the model to train, and its tokenizer (from the directory when not given)."""
    if isinstance(source, (str, Path)):
        return load_pretrained(source), tokenizer if tokenizer is not None else BPETokenizer.load(source)
    if tokenizer is None:
        raise TypeError("a model object needs its tokenizer")
    return copy.deepcopy(source), tokenizer


def _pair_data(source, tokenizer, world: World):
    """A private model copy, its tokenizer, the tokenized train/held-out preference pairs and the held-out rows."""
    model, tokenizer = load_source(source, tokenizer)
    train_pairs, held_pairs = preference_split(world)
    max_len = model.config.max_seq_len
    train, held = PreferenceData(train_pairs, tokenizer, max_len), PreferenceData(held_pairs, tokenizer, max_len)
    return model, tokenizer, train, held, held_pairs


def _finish(run_dir: Path, model: nn.Module | None, tokenizer, rows: list[dict], curves: dict[str, str],
            result: dict[str, Any], title: str) -> dict[str, Any]:
    """Plots, result.json and (when `model` is given) model/ with its tokenizer; returns `result`."""
    for name, key in curves.items():
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            plot_curves({key: tuple(zip(*points))}, run_dir / "plots" / f"{name}.png", title=f"{title}: {key}",
                        ylabel=key)
    if model is not None:
        save_pretrained(model, run_dir / "model")
        save_tokenizer_dir(tokenizer, run_dir / "model", model_max_length=model.config.max_seq_len)
    write_json(run_dir / "result.json", result)
    return result


def _round(d: Mapping[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


# --- reward model --------------------------------------------------------------------------------------------

@dataclass
class RewardStageConfig:
    steps: int = 60
    batch_size: int = 16
    lr: float = 3e-4  # d2 (2.2M): 1e-4 -> 86%, 3e-4 -> 90%, 1e-3 -> 83% held-out pairwise accuracy
    margin: float | None = None
    seed: int = 0
    time_budget_s: float | None = 150.0
    save_model: bool = True  # run_dir/reward_model: backbone (HF layout) + reward_head.safetensors


def reward_model_stage(source, world: World, config: RewardStageConfig | None = None, run_dir: str | Path = "reward",
                       tokenizer=None, callback: StepCallback | None = None) -> dict[str, Any]:
    """Train a reward model from the SFT model on the training pairs; {"pairwise_accuracy", ...} on held-out pairs."""
    cfg, run_dir, start = config or RewardStageConfig(), Path(run_dir), time.perf_counter()
    model, tokenizer, train, held, held_pairs = _pair_data(source, tokenizer, world)
    max_len = model.config.max_seq_len
    reward_model = RewardModel(model)
    rcfg = RewardConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, margin=cfg.margin,
                        warmup=max(1, cfg.steps // 10), seed=cfg.seed, time_budget_s=cfg.time_budget_s)
    out = train_reward_model(reward_model, train, rcfg, held, run_dir, callback, {"stage": asdict(cfg)})
    result = {"pairwise_accuracy": out.after["pairwise_accuracy"], "held_out_pairs": len(held),
              "steps": out.loop.steps, "seconds": round(time.perf_counter() - start, 1)}
    if cfg.save_model:
        save_reward_model(reward_model, run_dir / "reward_model")
        save_tokenizer_dir(tokenizer, run_dir / "reward_model", model_max_length=max_len)
    return _finish(run_dir, None, tokenizer, out.loop.rows, {"loss": "loss", "accuracy": "accuracy"},
                   _round(result), "reward model")


# --- DPO family ----------------------------------------------------------------------------------------------

@dataclass
class DPOStageConfig:
    loss: str = "dpo"  # any of genlab.finetune.preference_trainer.LOSSES
    steps: int = 50
    batch_size: int = 16
    lr: float = 3e-5
    beta: float | None = None  # None: 2.0 for SimPO (its paper's range), 0.1 for the others
    label_smoothing: float = 0.0
    sft_weight: float = 1.0  # NLL on the chosen reply beside the preference loss (trl's rpo_alpha): keeps facts
    seed: int = 0
    time_budget_s: float | None = 150.0
    save_model: bool = True


def dpo_stage(source, world: World, config: DPOStageConfig | None = None, run_dir: str | Path = "dpo",
              tokenizer=None, callback: StepCallback | None = None) -> dict[str, Any]:
    """Preference-tune the SFT model on the training pairs; held-out implicit-reward accuracy and chosen style."""
    cfg, run_dir, start = config or DPOStageConfig(), Path(run_dir), time.perf_counter()
    model, tokenizer, train, held, held_pairs = _pair_data(source, tokenizer, world)
    style_before = style_metrics(model, tokenizer, held_pairs)
    beta = cfg.beta if cfg.beta is not None else (2.0 if cfg.loss == "simpo" else 0.1)
    pcfg = PreferenceConfig(loss=cfg.loss, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, beta=beta,
                            label_smoothing=cfg.label_smoothing, sft_weight=cfg.sft_weight,
                            warmup=max(1, cfg.steps // 10), seed=cfg.seed, time_budget_s=cfg.time_budget_s)
    out = PreferenceTrainer(model, pcfg).train(train, held, run_dir, callback, {"stage": asdict(cfg)})
    style_after = style_metrics(model, tokenizer, held_pairs)
    result = {"implicit_reward_accuracy": out.after["implicit_reward_accuracy"],
              "implicit_reward_accuracy_before": out.before["implicit_reward_accuracy"],
              "chosen_style_rate": style_after["chosen_style_rate"],
              "chosen_style_rate_before": style_before["chosen_style_rate"],
              "correct_rate": style_after["correct_rate"], "concise_rate": style_after["concise_rate"],
              "margin": out.after["margin"], "method": cfg.loss, "held_out_pairs": len(held), "steps": out.loop.steps,
              "seconds": round(time.perf_counter() - start, 1)}
    return _finish(run_dir, model if cfg.save_model else None, tokenizer, out.loop.rows,
                   {"loss": "loss", "reward_accuracy": "reward_accuracy", "margin": "margin"}, _round(result), cfg.loss)


# --- GRPO ----------------------------------------------------------------------------------------------------

@dataclass
class GRPOStageConfig:
    steps: int = 50
    prompts_per_step: int = 8
    group_size: int = 8
    lr: float = 5e-5
    kl_coef: float = 0.04
    temperature: float = 1.0
    max_new_tokens: int = 16  # raised to WORKED_NEW_TOKENS in a world with worked answers
    # Fresh 2-digit sums added to the training prompts (never a held-out sum). From one SFT model, 100 steps
    # at lr 5e-5: held-out exact match 0.69 -> 0.76 with them, 0.72 on the ~100 training sums alone
    # (which, at lr 1e-4 for 200 steps, fell to 0.55).
    arithmetic_pool: int = 3000
    train_kinds: tuple[str, ...] | None = None  # e.g. ("arithmetic",): train on those kinds only (eval: all)
    kl_samples_per_prompt: int = 4
    seed: int = 0
    time_budget_s: float | None = 150.0
    save_model: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # further GRPOConfig fields


def grpo_stage(source, world: World, config: GRPOStageConfig | None = None, run_dir: str | Path = "grpo",
               tokenizer=None, callback: StepCallback | None = None) -> dict[str, Any]:
    """GRPO with verifiable rewards from the SFT model; held-out exact match before/after and KL to the SFT model."""
    cfg, run_dir, start = config or GRPOStageConfig(), Path(run_dir), time.perf_counter()
    model, tokenizer = load_source(source, tokenizer)
    train_items, held_items = verifiable_split(world)
    train_items += verifiable_sums(world, cfg.arithmetic_pool, avoid=held_items)
    if cfg.train_kinds:
        train_items = [item for item in train_items if item["kind"] in cfg.train_kinds]
    before = verifiable_metrics(model, tokenizer, held_items)
    reference = FrozenReference(model, "copy")
    gcfg = GRPOConfig(steps=cfg.steps, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size, lr=cfg.lr,
                      kl_coef=cfg.kl_coef, temperature=cfg.temperature,
                      max_new_tokens=max(cfg.max_new_tokens, WORKED_NEW_TOKENS if world.config.worked_answers else 0),
                      seed=cfg.seed, time_budget_s=cfg.time_budget_s, **cfg.extra)
    task = chat_task(tokenizer, train_items)
    out = GRPOTrainer(model, task, gcfg, ref_model=reference.model).train(run_dir, callback,
                                                                          config={"stage": asdict(cfg)})
    after = verifiable_metrics(model, tokenizer, held_items)
    held_task = chat_task(tokenizer, held_items)
    kl = kl_to_reference(model, reference, held_task.prompts, held_task.end_ids, held_task.pad_id,
                         cfg.kl_samples_per_prompt, gcfg.max_new_tokens, cfg.temperature, cfg.seed)
    result = {"verifiable_exact_match": after["verifiable_exact_match"],
              "verifiable_exact_match_before": before["verifiable_exact_match"],
              "verifiable_exact_match_sampled": after["verifiable_exact_match_sampled"],
              "verifiable_exact_match_sampled_before": before["verifiable_exact_match_sampled"],
              "kl_to_reference": kl["kl_per_sequence"], "kl_per_token": kl["kl_per_token"],
              "by_kind": after["by_kind"], "by_kind_before": before["by_kind"],
              "by_kind_sampled": after["by_kind_sampled"], "by_kind_sampled_before": before["by_kind_sampled"],
              "held_out_prompts": len(held_items), "train_prompts": len(train_items), "steps": out.steps,
              "seconds": round(time.perf_counter() - start, 1)}
    return _finish(run_dir, model if cfg.save_model else None, tokenizer, out.rows,
                   {"reward": "reward", "kl": "kl"}, _round(result), "GRPO")
