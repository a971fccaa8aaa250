"""`genlab dpo|kto|orpo|simpo|reward|ppo|grpo`: preference tuning, reward models and RL on a chat model directory.

Handbook IV (reward models and RLHF, direct preference optimization, RL with verifiable rewards). Data: the
synthetic world's preference pairs / verifiable prompts (split into train and held-out as the speedrun's
alignment stages do, genlab.recipes.align_stages), or a JSONL file: {"prompt", "chosen", "rejected"} rows for the
preference commands and `reward`, {"messages", "answer"} rows for `ppo` and `grpo`. Each command writes
<run-dir>/config.json, metrics.jsonl, plots/*.png, result.json and the trained model in the Hugging Face layout
(model/, plus adapter/ for LoRA/DoRA; `reward` writes reward_model/).

    genlab dpo runs/speedrun/model --steps 50 --run-dir runs/dpo
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError

MODEL = typer.Argument(None, help="Model directory or run directory (default: the latest run's model).")
DATA_PAIRS = typer.Option(None, help='JSONL of {"prompt", "chosen", "rejected"} (default: the synthetic world\'s pairs).')
DATA_PROMPTS = typer.Option(None, help='JSONL of {"messages", "answer"} (default: the world\'s verifiable prompts).')
HELD_OUT = typer.Option(0.25, help="Fraction of the data held out for evaluation (split by prompt text).")
METHOD = typer.Option("full", help="full | lora | dora (LoRA's base is the reference; adapters merged into model/).")


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    from genlab.data.world.export import read_jsonl

    rows = read_jsonl(path, required)
    if len(rows) < 2:
        raise GenlabError(f"{path}: needs at least 2 rows (one to train on, one to hold out)")
    return rows


def _load(model: Optional[Path], method: str, rank: int = 16, alpha: float = 32.0):
    from genlab.cli.generate import resolve_model_dir
    from genlab.data.chat import chat_token_ids
    from genlab.finetune.methods import AdapterOptions, prepare
    from genlab.models.hf_io import load_pretrained
    from genlab.tokenizers import BPETokenizer

    model_dir = resolve_model_dir(model)
    lm = load_pretrained(model_dir)
    tok = BPETokenizer.load(model_dir)
    chat_token_ids(tok)  # a clear error for a tokenizer without the chat tokens
    if method == "qlora":
        raise GenlabError("alignment commands take full, lora or dora (QLoRA's 4-bit base cannot be merged)")
    trainable = prepare(lm, method, AdapterOptions(r=rank, alpha=alpha))
    console.print(f"{model_dir}: {lm.num_params():,} parameters, {trainable:,} trainable ({method})")
    return lm, tok


def _pairs(data: Optional[Path], world_seed: int, world_scale: float, held_out: float, seed: int):
    from genlab.finetune.preference_data import held_out_split

    if data is not None:
        return held_out_split(_read_jsonl(data, ("prompt", "chosen", "rejected")), held_out, seed)
    from genlab.data.world import WorldConfig, build_world, preference_pairs

    world = build_world(WorldConfig(world_seed, world_scale))
    return held_out_split(preference_pairs(world), held_out, world.config.seed)


def _prompts(data: Optional[Path], world_seed: int, world_scale: float, held_out: float, seed: int,
             fresh_sums: int = 0):
    """(train, held-out) prompts from --data or the world; the world's training side gains `fresh_sums` 2-digit sums."""
    from genlab.finetune.preference_data import held_out_split

    if data is not None:
        return held_out_split(_read_jsonl(data, ("messages", "answer")), held_out, seed)
    from genlab.data.world import WorldConfig, build_world, verifiable_prompts, verifiable_sums

    world = build_world(WorldConfig(world_seed, world_scale))
    train, held = held_out_split(verifiable_prompts(world), held_out, world.config.seed)
    return train + verifiable_sums(world, fresh_sums, avoid=held), held


def _finish(run_dir: Path, lm, tok, method: str, rows: list[dict], curves: tuple[str, ...], result: dict[str, Any],
            title: str) -> None:
    from genlab.atomic import write_json
    from genlab.data.chat import save_tokenizer_dir
    from genlab.finetune.methods import save
    from genlab.recipes.plots import plot_curves

    for key in curves:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            plot_curves({key: tuple(zip(*points))}, run_dir / "plots" / f"{key}.png", title=f"{title}: {key}", ylabel=key)
    if lm is not None:
        lm.eval()
        for directory in save(lm, method, run_dir).values():
            save_tokenizer_dir(tok, directory, model_max_length=lm.config.max_seq_len)
    write_json(run_dir / "result.json", result)
    console.print(" ".join(f"{k} [bold]{v:.4f}[/]" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    console.print(f"[bold green]done[/] -> {run_dir}")


def _preference(loss: str, model, data, world_seed, world_scale, held_out, steps, batch_size, grad_accum, lr, seed,
                method, rank, run_dir: Path, time_budget, **options) -> None:
    from genlab.cli.progress import TrainProgress
    from genlab.finetune.preference_data import PreferenceData
    from genlab.finetune.preference_trainer import PreferenceConfig, PreferenceTrainer

    lm, tok = _load(model, method, rank)
    cfg = PreferenceConfig(loss=loss, steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, seed=seed,
                           warmup=max(1, steps // 10), time_budget_s=time_budget, **options)
    train_pairs, held_pairs = _pairs(data, world_seed, world_scale, held_out, seed)
    train, held = PreferenceData(train_pairs, tok, lm.config.max_seq_len), PreferenceData(held_pairs, tok, lm.config.max_seq_len)
    console.print(f"{loss}: {len(train)} training pairs, {len(held)} held out")
    trainer = PreferenceTrainer(lm, cfg)
    with TrainProgress(steps, loss, console) as bar:
        out = trainer.train(train, held, run_dir, bar, {"command": loss})
    result = {"implicit_reward_accuracy": out.after["implicit_reward_accuracy"],
              "implicit_reward_accuracy_before": out.before["implicit_reward_accuracy"],
              "held_out_loss": out.after["loss"], "margin": out.after["margin"], "reference": out.reference,
              "steps": out.loop.steps}
    _finish(run_dir, lm, tok, method, out.loop.rows, ("loss", "reward_accuracy", "margin"), result, loss)


def dpo(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PAIRS, world_seed: int = typer.Option(0),
        world_scale: float = typer.Option(1.0), held_out: float = HELD_OUT, steps: int = typer.Option(50),
        batch_size: int = typer.Option(16), grad_accum: int = typer.Option(1), lr: float = typer.Option(3e-5),
        beta: float = typer.Option(0.1, help="DPO β."),
        loss: str = typer.Option("dpo", help="dpo (sigmoid) | robust | hinge | ipo."),
        label_smoothing: float = typer.Option(0.0, help="ε: conservative DPO (dpo) or robust DPO (robust)."),
        sft_weight: float = typer.Option(0.0, help="α × NLL of the chosen reply added to the loss (trl's rpo_alpha)."),
        reference: str = typer.Option("auto", help="auto | precomputed | copy | adapters."),
        seed: int = typer.Option(0), method: str = METHOD, rank: int = typer.Option(16, "--rank", "-r"),
        time_budget: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
        run_dir: Path = typer.Option(Path("runs/dpo"))) -> None:
    """Direct preference optimisation (and cDPO, robust DPO, hinge, IPO) against the starting model as reference."""
    if loss not in ("dpo", "robust", "hinge", "ipo"):
        raise GenlabError(f"genlab dpo --loss takes dpo, robust, hinge or ipo, got {loss!r} (see also kto, orpo, simpo)")
    _preference(loss, model, data, world_seed, world_scale, held_out, steps, batch_size, grad_accum, lr, seed, method,
                rank, run_dir, time_budget, beta=beta, label_smoothing=label_smoothing, sft_weight=sft_weight,
                reference=reference)


def kto(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PAIRS, world_seed: int = typer.Option(0),
        world_scale: float = typer.Option(1.0), held_out: float = HELD_OUT, steps: int = typer.Option(50),
        batch_size: int = typer.Option(16), grad_accum: int = typer.Option(1), lr: float = typer.Option(3e-5),
        beta: float = typer.Option(0.1), desirable_weight: float = typer.Option(1.0),
        undesirable_weight: float = typer.Option(1.0), seed: int = typer.Option(0), method: str = METHOD,
        rank: int = typer.Option(16, "--rank", "-r"), time_budget: Optional[float] = typer.Option(None),
        run_dir: Path = typer.Option(Path("runs/kto"))) -> None:
    """KTO on the pairs split into desirable (chosen) and undesirable (rejected) examples."""
    _preference("kto", model, data, world_seed, world_scale, held_out, steps, batch_size, grad_accum, lr, seed, method,
                rank, run_dir, time_budget, beta=beta, kto_desirable_weight=desirable_weight,
                kto_undesirable_weight=undesirable_weight)


def orpo(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PAIRS, world_seed: int = typer.Option(0),
         world_scale: float = typer.Option(1.0), held_out: float = HELD_OUT, steps: int = typer.Option(50),
         batch_size: int = typer.Option(16), grad_accum: int = typer.Option(1), lr: float = typer.Option(3e-5),
         lam: float = typer.Option(0.1, "--lambda", help="Weight of the odds-ratio term."),
         seed: int = typer.Option(0), method: str = METHOD, rank: int = typer.Option(16, "--rank", "-r"),
         time_budget: Optional[float] = typer.Option(None), run_dir: Path = typer.Option(Path("runs/orpo"))) -> None:
    """ORPO: NLL on the chosen reply plus λ × odds-ratio preference term; no reference model."""
    _preference("orpo", model, data, world_seed, world_scale, held_out, steps, batch_size, grad_accum, lr, seed, method,
                rank, run_dir, time_budget, orpo_lambda=lam)


def simpo(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PAIRS, world_seed: int = typer.Option(0),
          world_scale: float = typer.Option(1.0), held_out: float = HELD_OUT, steps: int = typer.Option(50),
          batch_size: int = typer.Option(16), grad_accum: int = typer.Option(1), lr: float = typer.Option(3e-5),
          beta: float = typer.Option(2.0), gamma: float = typer.Option(0.5, help="Target reward margin."),
          seed: int = typer.Option(0), method: str = METHOD, rank: int = typer.Option(16, "--rank", "-r"),
          time_budget: Optional[float] = typer.Option(None), run_dir: Path = typer.Option(Path("runs/simpo"))) -> None:
    """SimPO: length-normalised implicit reward with a target margin; no reference model."""
    _preference("simpo", model, data, world_seed, world_scale, held_out, steps, batch_size, grad_accum, lr, seed,
                method, rank, run_dir, time_budget, beta=beta, gamma=gamma)


def reward(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PAIRS, world_seed: int = typer.Option(0),
           world_scale: float = typer.Option(1.0), held_out: float = HELD_OUT, steps: int = typer.Option(60),
           batch_size: int = typer.Option(16), grad_accum: int = typer.Option(1), lr: float = typer.Option(3e-4),
           margin: Optional[float] = typer.Option(None, help="Constant Bradley-Terry margin."),
           seed: int = typer.Option(0), time_budget: Optional[float] = typer.Option(None),
           run_dir: Path = typer.Option(Path("runs/reward"))) -> None:
    """Train a reward model (scalar head, Bradley-Terry loss); writes <run-dir>/reward_model for `genlab ppo`."""
    from genlab.cli.progress import TrainProgress
    from genlab.data.chat import save_tokenizer_dir
    from genlab.finetune.preference_data import PreferenceData
    from genlab.finetune.reward import RewardModel
    from genlab.finetune.reward_trainer import RewardConfig, save_reward_model, train_reward_model

    lm, tok = _load(model, "full")
    train_pairs, held_pairs = _pairs(data, world_seed, world_scale, held_out, seed)
    train, held = PreferenceData(train_pairs, tok, lm.config.max_seq_len), PreferenceData(held_pairs, tok, lm.config.max_seq_len)
    cfg = RewardConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, margin=margin, seed=seed,
                       warmup=max(1, steps // 10), time_budget_s=time_budget)
    rm = RewardModel(lm)
    with TrainProgress(steps, "reward", console) as bar:
        out = train_reward_model(rm, train, cfg, held, run_dir, bar, {"command": "reward"})
    save_reward_model(rm, run_dir / "reward_model")
    save_tokenizer_dir(tok, run_dir / "reward_model", model_max_length=lm.config.max_seq_len)
    result = {"pairwise_accuracy": out.after["pairwise_accuracy"], "held_out_loss": out.after["loss"],
              "held_out_pairs": len(held), "steps": out.loop.steps}
    _finish(run_dir, None, tok, "full", out.loop.rows, ("loss", "accuracy"), result, "reward model")


def _rl_eval(lm, tok, held_items, suffix: str = "") -> dict[str, float]:
    """Held-out verifiable exact match, greedy and sampled (keys end with `suffix`)."""
    from genlab.recipes.align_stages import verifiable_metrics

    metrics = verifiable_metrics(lm, tok, held_items)
    return {key + suffix: metrics[key] for key in ("verifiable_exact_match", "verifiable_exact_match_sampled")}


def ppo(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PROMPTS,
        reward_model: Optional[Path] = typer.Option(None, help="A `genlab reward` output (default: exact-match reward)."),
        world_seed: int = typer.Option(0), world_scale: float = typer.Option(1.0),
        held_out: float = typer.Option(0.5, help="Fraction of the prompts held out for evaluation."),
        steps: int = typer.Option(30), prompts_per_step: int = typer.Option(16), lr: float = typer.Option(3e-5),
        kl_coef: float = typer.Option(0.05), ppo_epochs: int = typer.Option(4), minibatch_size: int = typer.Option(8),
        max_new_tokens: int = typer.Option(48, help="Room for a worked answer."), temperature: float = typer.Option(1.0),
        seed: int = typer.Option(0), method: str = METHOD, rank: int = typer.Option(16, "--rank", "-r"),
        time_budget: Optional[float] = typer.Option(None), run_dir: Path = typer.Option(Path("runs/ppo"))) -> None:
    """PPO (policy + value head, per-token KL to the reference, GAE, clipped losses) on chat prompts."""
    from genlab.cli.progress import TrainProgress
    from genlab.data.chat import END
    from genlab.finetune.ppo import PPOConfig, PPOTrainer, reward_model_task
    from genlab.finetune.reward_trainer import load_reward_model
    from genlab.finetune.rollouts import chat_task

    lm, tok = _load(model, method, rank)
    train_items, held_items = _prompts(data, world_seed, world_scale, held_out, seed)
    task = chat_task(tok, train_items)
    if reward_model is not None:
        task = reward_model_task(load_reward_model(reward_model), task.prompts, tok.special_tokens[END],
                                 tok.special_tokens[END])
    cfg = PPOConfig(steps=steps, prompts_per_step=prompts_per_step, lr=lr, kl_coef=kl_coef, ppo_epochs=ppo_epochs,
                    minibatch_size=minibatch_size, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    time_budget_s=time_budget)
    before = _rl_eval(lm, tok, held_items, "_before")
    with TrainProgress(steps, "ppo", console) as bar:
        out = PPOTrainer(lm, task, cfg).train(run_dir, bar, {"command": "ppo", "reward_model": str(reward_model)})
    result = {**_rl_eval(lm, tok, held_items), **before, "final_score": out.rows[-1]["score"], "kl": out.rows[-1]["kl"],
              "steps": out.steps}
    _finish(run_dir, lm, tok, method, out.rows, ("score", "kl", "value_loss"), result, "PPO")


def grpo(model: Optional[Path] = MODEL, data: Optional[Path] = DATA_PROMPTS, world_seed: int = typer.Option(0),
         world_scale: float = typer.Option(1.0),
         held_out: float = typer.Option(0.5, help="Fraction of the prompts held out for evaluation."),
         steps: int = typer.Option(50), prompts_per_step: int = typer.Option(8), group_size: int = typer.Option(8),
         lr: float = typer.Option(5e-5), kl_coef: float = typer.Option(0.04), max_new_tokens: int = typer.Option(48, help="Room for a worked answer."),
         temperature: float = typer.Option(1.0), seed: int = typer.Option(0), method: str = METHOD,
         rank: int = typer.Option(16, "--rank", "-r"), time_budget: Optional[float] = typer.Option(None),
         fresh_sums: int = typer.Option(3000, help="Extra 2-digit sums to train on (world prompts only; never a "
                                        "held-out sum): on the world's ~100 training sums alone GRPO gained less."),
         loss_type: str = typer.Option("grpo", help="grpo (token mean per sequence) or dr_grpo (token sum / "
                                       "max_new_tokens)."),
         run_dir: Path = typer.Option(Path("runs/grpo"))) -> None:
    """GRPO with verifiable (exact-match) rewards: group-normalised advantages, clipped objective, k3 KL."""
    from genlab.cli.progress import TrainProgress
    from genlab.finetune.grpo import GRPOConfig, GRPOTrainer, kl_to_reference
    from genlab.finetune.rollouts import FrozenReference, chat_task

    lm, tok = _load(model, method, rank)
    train_items, held_items = _prompts(data, world_seed, world_scale, held_out, seed, fresh_sums)
    cfg = GRPOConfig(steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, lr=lr, kl_coef=kl_coef,
                     max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, time_budget_s=time_budget,
                     loss_type=loss_type)
    before = _rl_eval(lm, tok, held_items, "_before")
    reference = FrozenReference(lm)  # a copy, or the LoRA base
    trainer = GRPOTrainer(lm, chat_task(tok, train_items), cfg, ref_model=None if reference.mode == "adapters" else reference.model)
    with TrainProgress(steps, "grpo", console) as bar:
        out = trainer.train(run_dir, bar, config={"command": "grpo"})
    held = chat_task(tok, held_items)
    kl = kl_to_reference(lm, reference, held.prompts, held.end_ids, held.pad_id, max_new_tokens=max_new_tokens, seed=seed)
    result = {**_rl_eval(lm, tok, held_items), **before, "kl_to_reference": kl["kl_per_sequence"],
              "steps": out.steps}
    _finish(run_dir, lm, tok, method, out.rows, ("reward", "kl", "loss"), result, "GRPO")
