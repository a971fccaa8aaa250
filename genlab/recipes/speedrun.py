"""The main job: synthetic world + real text -> tokenizer -> pretraining -> SFT -> evals -> report card.

Handbook II-IV (the whole path from raw text to a chat model), V (evaluation, sampling). nanochat's
path on a 2-core CPU with no download: a synthetic world (genlab.data.world) supplies facts said in many
paraphrases plus conversations about them; the Python standard library supplies real English and code.
The report card measures what each stage does: bits per byte, and exact-match accuracy on held-out sets
(a) new phrasings, (b) knowledge extraction, (c) 2-digit addition, (d) "I don't know", (e) JSON format,
for the base model (few-shot prompt) and the SFT model (chat prompt). By default the tokenizer splits every
digit and learns the chat's own words (world_tasks.tokenizer_texts), SFT answers are worked
(genlab.data.world.worked: "I know that X lives in Y. Answer: Y", sums column by column as "47 + 38: 7+8=15,
4+3+1=8. Answer: 85", an unknown name named before "I don't know"), the extra arithmetic practice in the mix
is sums only, pretraining packs whole documents into its rows (8 x 256 tokens, segment masks), and SFT packs
conversations and replayed documents into 16 x 128-token rows. The default run (world seed 0, 600 + 500
steps) as measured last: (a) 93%, (b) 88%, (c) 86.5%, (d) 93%, (e) 95%. Packing was the step that mattered:
with random 256-token windows (the first document of a window cut off from its name) the run needed 750 +
600 steps for (a) 80.5%, (b) 64%, and took 762-1,051 s; packed, 700 + 600 steps gave (a) 94.5%, (b) 88%,
(c) 96%, and 600 + 450 steps (a) 92%, (b) 81%, (c) 84% in 676 s. The card is deterministic for a seed;
small changes move it a few points. Before that: steps written without spaces ("7 + 8 = 15" -> "7+8=15"),
practice without bare differences and products, chat words in the tokenizer, names kept out of the
tokenizer's texts (every name two tokens: (b) 31.5 -> 57.5%) and evaluation through the paged engine. With
bare answers, 1-3 digit number tokens and batch 16 it was (a) 16%, (b) 12.5%, (c) 1.5%. Each stage reports
through `SpeedrunHooks`, so the CLI can draw progress while this module never prints.

    genlab speedrun --quick
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch

from genlab.data.chat import BOS, CHAT_SPECIAL_TOKENS, END, render_chat, save_tokenizer_dir
from genlab.data.corpus import pieces, split_documents
from genlab.data.tokens import TokenDataset, write_tokens
from genlab.data.world import WorldConfig, build_world, sft_conversations
from genlab.errors import ConfigError
from genlab.evals.suite import EvalConfig, run_eval_suite, write_results
from genlab.finetune.methods import AdapterOptions, prepare
from genlab.finetune.methods import save as save_finetuned
from genlab.finetune.sft import SFTDataset, sft_train_config
from genlab.inference.generate import generate
from genlab.inference.sampling import SamplingParams
from genlab.models import ModelConfig, Transformer
from genlab.models.hf_io import load_pretrained, save_pretrained
from genlab.recipes.curve import AccuracyCurve
from genlab.recipes.speedrun_stages import StageBudgets, check_stage_options, run_optional_stages, stages_report
from genlab.recipes.plots import plot_curves, plot_grouped_bars, plot_loss_curves
from genlab.recipes.report import CARD_LABELS, speedrun_report
from genlab.atomic import write_json, write_text
from genlab.recipes.runs import new_run_dir, read_metrics
from genlab.recipes.world_tasks import (EVAL_TASKS, arithmetic_practice, eval_items, few_shot_pools, pretraining_mix,
                                        tokenizer_texts)
from genlab.tokenizers import GPT4_DIGITS_PATTERN, GPT4_PATTERN, BPETokenizer
from genlab.train.trainer import TrainConfig, train

SAMPLE_CHATS = ["Where does {name} live?", "What is 23 + 58?", "What is the favourite colour of {name}?",
                "Where does Zzyzx Quorble live?"]


@dataclass
class SpeedrunConfig:
    mode: str = "default"
    world_scale: float = 1.0
    real_text_bytes: int = 40_000  # standard library prose/code mixed into pretraining
    vocab_size: int = 2560  # learned from the documents and the chat's words; every name is two tokens
    digit_tokens: bool = True  # pre-tokenize every digit alone (GPT4_DIGITS_PATTERN): arithmetic digit by digit
    worked_answers: bool = True  # SFT answers recall the fact / add by place value first (data/world/worked.py)
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    seq_len: int = 256
    batch_size: int = 8  # at equal tokens and time, 8 x 900 steps beat 16 x 450 (a: 57.5 -> 83%, c: 2 -> 52.5%)
    steps: int = 600  # pretraining steps (~1.2M tokens: ~1.8 passes over the mix, ~3.5 over the world documents)
    packed_pretraining: bool = True  # whole documents packed into rows (segment masks) instead of random windows:
    # at 700 + 600 steps (a) 80.5 -> 94.5%, (b) 64 -> 88% (random windows at 750 + 600); so fewer steps suffice
    mix_conversations: bool = True  # put the SFT conversations (and arithmetic practice) in the pretraining mix
    arithmetic_practice: int = 4_000  # extra worked sums (2- and 3-digit) in the mix
    world_repeats: int = 2  # copies of the world documents in the mix
    lr: float = 3e-3
    warmup: int = 60
    eval_every: int = 100
    sft_steps: int = 500  # 450 -> 500 (600 pretraining steps): (c) 84 -> 86.5%, (e) 93.5 -> 95%
    sft_seq_len: int = 128  # SFT rows: conversations are <= 104 tokens, so half-length rows pack as well and
    # halve attention's cost (pretraining keeps seq_len: the base model's few-shot prompts need the positions)
    sft_batch_size: int = 16  # rows of sft_seq_len: the same tokens a step as pretraining
    sft_lr: float = 1e-3  # high enough to learn extraction; replay (sft_replay) keeps the facts it would erase
    sft_replay: int = 1  # copies of the pretraining documents packed into SFT (replay: SFT keeps the stored facts)
    sft_method: str = "full"  # full | lora | dora (adapters are merged into the saved model)
    lora_r: int = 16
    lora_alpha: float = 32.0
    eval_limit: int | None = 200  # items per eval set (None: all)
    align: str | None = None  # preference stage after SFT: dpo, ipo, kto, orpo, simpo, ... (adds a reward model)
    rl: str | None = None  # RL stage after SFT: grpo (adds a reward model)
    retrieval: bool = False  # RAG stage: a copy of the SFT model learns the sources-question-answer format;
    rag_steps: int = 1600  # its fine-tuning steps (~15 minutes); it is scored on private documents
    stage_steps: int = 50  # steps of the reward-model and preference stages (each also stops at stage_seconds)
    stage_seconds: float = 150.0
    rl_steps: int = 100  # GRPO steps of 8 prompts x 8 samples (it also stops at rl_seconds); held-out exact match
    # moved only after ~50 steps (+7 points at 100 from one SFT model, +0.5 and -1.1 from others; +1.1 from the
    # current default's SFT model, 0.909 -> 0.920, arithmetic 0.895 -> 0.930; sampled at T=1 0.711 -> 0.787. 200
    # steps, or lr 1e-4, did worse: greedy 0.898 and 0.877)
    rl_seconds: float = 900.0
    curve_every: int = 300  # probe the eval sets every this many pretraining steps and at its end, SFT twice as
    # often (0: no accuracy curve)
    curve_limit: int = 40  # items per eval set in each probe
    few_shot_k: int = 3
    seed: int = 0
    threads: int | None = None  # None: torch's default
    runs_root: str = "runs"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.sft_method not in ("full", "lora", "dora"):
            raise ConfigError(f"sft_method must be full, lora or dora, got {self.sft_method!r}")
        check_stage_options(self.align, self.rl)
        if self.world_repeats < 1:
            raise ConfigError(f"world_repeats must be >= 1, got {self.world_repeats}")
        if self.sft_replay < 0:
            raise ConfigError(f"sft_replay must be >= 0, got {self.sft_replay}")
        if not 2 <= self.sft_seq_len <= self.seq_len:
            raise ConfigError(f"sft_seq_len must be in [2, seq_len={self.seq_len}], got {self.sft_seq_len}")

    @classmethod
    def preset(cls, mode: str, **overrides: Any) -> "SpeedrunConfig":
        presets = {
            "default": {},
            "quick": dict(world_scale=0.25, real_text_bytes=50_000, vocab_size=768, d_model=64, n_layer=2, n_head=4,
                          seq_len=128, batch_size=8, steps=50, warmup=5, eval_every=25, sft_steps=20,
                          sft_batch_size=8, eval_limit=20, few_shot_k=2, arithmetic_practice=200, curve_every=25,
                          curve_limit=8, stage_steps=4, stage_seconds=30.0, rl_steps=4, rl_seconds=30.0, rag_steps=6,
                          world_repeats=1, sft_lr=1e-3,
                          threads=1),  # a tiny model runs no faster on 2 threads, and much slower on a busy machine
        }
        if mode not in presets:
            raise ConfigError(f"unknown speedrun mode {mode!r} (choose from {', '.join(presets)})")
        return cls(mode=mode, **{**presets[mode], **{k: v for k, v in overrides.items() if v is not None}})

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.llama_like(vocab_size=vocab_size, d_model=self.d_model, n_layer=self.n_layer,
                                      n_head=self.n_head, max_seq_len=self.seq_len, tie_embeddings=True)


StepCallback = Callable[[dict[str, Any]], Any]


class SpeedrunHooks:
    """What the speedrun tells its caller. The defaults do nothing (tests, library use)."""

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def training(self, description: str, total_steps: int) -> ContextManager[StepCallback | None]:
        return nullcontext(None)


@dataclass
class SpeedrunResult:
    run_dir: Path
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _chain(*callbacks: StepCallback | None) -> StepCallback:
    """One trainer callback calling several; training stops if any of them asks to."""
    active = [c for c in callbacks if c is not None]
    return lambda row: any([bool(c(row)) for c in active])


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def _evaluate(model, tokenizer, items, bpb_texts, cfg: SpeedrunConfig, mode: str, pools) -> dict[str, Any]:
    # Worked answers need room (a two-hop chain is ~40 tokens); a base model's few-shot reply is cut earlier.
    config = EvalConfig(mode=mode, max_tokens=64 if mode == "chat" else 40, few_shot_k=cfg.few_shot_k, seed=cfg.seed,
                        engine=True)
    return run_eval_suite(model, tokenizer, items, bpb_texts=bpb_texts, few_shot_pool=pools, config=config)


def _stage_row(results: dict[str, Any]) -> dict[str, Any]:
    row = {key: results["accuracy"][key] for key in EVAL_TASKS}
    row["bpb"] = results["bpb"]["bpb"]
    return row


def run_speedrun(cfg: SpeedrunConfig, hooks: SpeedrunHooks | None = None) -> SpeedrunResult:
    hooks = hooks or SpeedrunHooks()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    run = new_run_dir(cfg.runs_root, "speedrun", cfg.name)
    write_json(run / "config.json", {"speedrun": dataclasses.asdict(cfg)})

    with _timed(timings, "data"):
        world = build_world(WorldConfig(seed=cfg.seed, scale=cfg.world_scale, worked_answers=cfg.worked_answers))
        world_docs, real_docs = pretraining_mix(world, cfg.real_text_bytes, cfg.seed)
        hooks.stage("data", f"world: {len(world.people)} people, {len(world_docs)} documents; "
                            f"real text: {len(real_docs)} documents")
        # Held-out text for bits per byte: a tenth of the real text (in ~2 KB pieces), never trained on.
        real_pieces = pieces(real_docs, 2048)
        real_train, real_val = split_documents(real_pieces, 0.1, seed=cfg.seed) if real_pieces else ([], [])
        train_docs = world_docs + real_train
        conversations = sft_conversations(world)
        items = eval_items(world, cfg.eval_limit, cfg.seed)
        pools = few_shot_pools(conversations)
    corpus_bytes = sum(len(d.encode()) for d in train_docs)

    with _timed(timings, "tokenizer"):
        hooks.stage("tokenizer", f"byte-level BPE, vocab {cfg.vocab_size}, chat special tokens")
        tokenizer = BPETokenizer.train(tokenizer_texts(world, train_docs, conversations), cfg.vocab_size,
                                       special_tokens=CHAT_SPECIAL_TOKENS,
                                       pattern=GPT4_DIGITS_PATTERN if cfg.digit_tokens else GPT4_PATTERN)
    bos = tokenizer.special_tokens[BOS]

    with _timed(timings, "tokenize"):
        # World documents carry the facts: repeating them gives each fact more exposures per pass over the mix.
        doc_ids = tokenizer.encode_batch(world_docs + real_train)
        doc_tokens = sum(len(d) for d in doc_ids)  # for bytes per token: the documents once, no special tokens
        world_encoded = [[bos] + d for d in doc_ids[:len(world_docs)]]
        real_encoded = [[bos] + d for d in doc_ids[len(world_docs):]]
        encoded = world_encoded * cfg.world_repeats + real_encoded
        if cfg.mix_conversations:
            # Mixed training (Allen-Zhu & Li, Physics of LMs 3.1): QA about some people beside the biographies
            # of all teaches the model to extract knowledge, including for people it never saw questioned.
            mixed = conversations + arithmetic_practice(world, cfg.arithmetic_practice, cfg.seed)
            encoded += [render_chat(c["messages"], tokenizer)[0] for c in mixed]
        order = np.random.default_rng(cfg.seed).permutation(len(encoded))
        ids = np.fromiter((t for i in order for t in encoded[i]), dtype=np.int64)
        token_file = write_tokens(run / "data" / "tokens.bin", ids, vocab_size=tokenizer.vocab_size)
    if cfg.packed_pretraining:
        # Whole documents packed into rows (the packer SFT uses; segment masks, positions from 0): a fact
        # is never cut off from the name it belongs to, as a random window would cut the first document.
        shuffled = [encoded[i] for i in order]
        n_val = max(1, len(shuffled) // 50)  # the last 2% held out, as the stream's split below
        dataset = SFTDataset([], tokenizer, cfg.seq_len, seed=cfg.seed, pad_id=tokenizer.special_tokens[END],
                             documents=shuffled[:-n_val], val_documents=shuffled[-n_val:])
    else:
        dataset = TokenDataset(token_file, val_fraction=0.02)

    model = Transformer(cfg.model_config(tokenizer.vocab_size))
    pre_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                          warmup=cfg.warmup, eval_every=cfg.eval_every, eval_batches=4, seed=cfg.seed,
                          run_dir=str(run / "pretrain"), resume=False)
    curve_items = eval_items(world, cfg.curve_limit, cfg.seed + 1)
    curve = AccuracyCurve(model, tokenizer, curve_items, cfg.curve_every,
                          at=frozenset({cfg.steps} if cfg.curve_every else ()))
    with _timed(timings, "pretrain"):
        hooks.stage("pretrain", f"{model.num_params() / 1e6:.2f}M parameters, {cfg.steps} steps x "
                                f"{pre_cfg.tokens_per_step} tokens ({len(ids):,} tokens in the mix)")
        with hooks.training("pretrain", cfg.steps) as callback:
            pre = train(model, dataset, pre_cfg, callback=_chain(callback, curve))
    model.eval()
    save_pretrained(model, run / "base_model")
    save_tokenizer_dir(tokenizer, run / "base_model", model_max_length=cfg.seq_len)

    with _timed(timings, "eval_base"):
        hooks.stage("eval base", f"few-shot ({cfg.few_shot_k}-shot) exact match on {len(items)} sets")
        base_eval = _evaluate(model, tokenizer, items, real_val, cfg, "few_shot", pools)
        write_results(base_eval, run / "eval_base.json")

    trainable = prepare(model, cfg.sft_method, AdapterOptions(r=cfg.lora_r, alpha=cfg.lora_alpha))
    sft_data = SFTDataset(conversations, tokenizer, cfg.sft_seq_len, seed=cfg.seed, pad_id=tokenizer.special_tokens[END],
                          documents=(world_encoded + real_encoded) * cfg.sft_replay)
    sft_cfg = sft_train_config(cfg.sft_steps, cfg.sft_batch_size, cfg.sft_seq_len, cfg.sft_lr, cfg.seed,
                               str(run / "sft"), resume=False)
    # SFT continues the curve's clock, probed twice as often (its end point is the full SFT eval below).
    sft_every = cfg.curve_every // 2
    sft_curve = AccuracyCurve(model, tokenizer, curve_items, 0, phase="sft",
                              time_offset=timings["pretrain"] - curve.probe_seconds,
                              at=frozenset(range(sft_every, cfg.sft_steps, sft_every) if sft_every else ()),
                              engine=cfg.sft_method == "full")  # LoRA/DoRA layers are merged only after SFT
    with _timed(timings, "sft"):
        hooks.stage("sft", f"{cfg.sft_method}: {trainable:,} trainable parameters; {len(conversations)} conversations "
                           f"+ {(len(world_encoded) + len(real_encoded)) * cfg.sft_replay} replayed documents "
                           f"in {len(sft_data)} packed rows, {cfg.sft_steps} steps")
        with hooks.training("sft", cfg.sft_steps) as callback:
            sft = train(model, sft_data, sft_cfg, callback=_chain(callback, sft_curve))
    model.eval()
    for directory in save_finetuned(model, cfg.sft_method, run).values():  # model/ (merged) and adapter/
        save_tokenizer_dir(tokenizer, directory, model_max_length=cfg.seq_len)

    with _timed(timings, "eval_sft"):
        hooks.stage("eval sft", "chat-format exact match")
        sft_eval = _evaluate(model, tokenizer, items, real_val, cfg, "chat", pools)
        write_results(sft_eval, run / "eval_sft.json")

    samples = _sample_chats(model, tokenizer, world, cfg.seed)
    pre_metrics, sft_metrics = read_metrics(run / "pretrain" / "metrics.jsonl"), read_metrics(run / "sft" / "metrics.jsonl")
    plot_loss_curves(pre_metrics, run / "plots" / "loss.png", title="pretraining loss")
    plot_loss_curves(sft_metrics, run / "plots" / "sft_loss.png", title="SFT loss (assistant tokens)")
    stages = {"base": _stage_row(base_eval), "sft": _stage_row(sft_eval)}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        with _timed(timings, name):
            yield

    def card_row(model_dir: Path) -> dict[str, Any]:
        return _stage_row(_evaluate(load_pretrained(model_dir).eval(), tokenizer, items, real_val, cfg, "chat", pools))

    extra, extra_rows = run_optional_stages(
        model, tokenizer, world, run, run / "model", align=cfg.align, rl=cfg.rl, retrieval=cfg.retrieval,
        budgets=StageBudgets(reward_steps=cfg.stage_steps, align_steps=cfg.stage_steps, grpo_steps=cfg.rl_steps,
                             seconds_per_stage=cfg.stage_seconds, grpo_seconds=cfg.rl_seconds,
                             rag_limit=cfg.eval_limit, rag_steps=cfg.rag_steps),
        seed=cfg.seed, stage=hooks.stage, training=hooks.training, timed=timed, card_row=card_row)
    stages["sft"].update(extra.pop("sft_extra", {}))
    stages.update(extra_rows)
    train_seconds = timings["pretrain"] - curve.probe_seconds + timings["sft"] - sft_curve.probe_seconds
    curve.points += sft_curve.points
    curve.points.append({"phase": "sft", "step": sft.steps, **{k: sft_eval["accuracy"][k] for k in EVAL_TASKS},
                         "train_seconds": round(train_seconds, 1)})
    plot_curves({CARD_LABELS[k].replace("\n", " "): ([p["train_seconds"] for p in curve.points],
                                                     [p[k] for p in curve.points]) for k in EVAL_TASKS},
                run / "plots" / "accuracy_curve.png", xlabel="training seconds (pretraining, then SFT)",
                ylabel="exact match", title="accuracy vs training time")
    plot_grouped_bars({name: [row[k] for k in EVAL_TASKS] for name, row in stages.items()},
                      [CARD_LABELS[k] for k in EVAL_TASKS], run / "plots" / "report_card.png",
                      title="report card: exact match on held-out sets")
    wall = time.perf_counter() - start
    summary = {
        "mode": cfg.mode,
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "corpus": {"bytes": corpus_bytes, "world_documents": len(world_docs), "real_documents": len(real_train),
                   "people": len(world.people), "tokens": int(len(ids))},
        "tokenizer": {"vocab_size": tokenizer.vocab_size, "bytes_per_token": round(corpus_bytes / doc_tokens, 3),
                      "train_seconds": round(timings["tokenizer"], 2)},
        "model": {"parameters": model.num_params(), "non_embedding_parameters": model.num_params(True),
                  "flops_per_token": model.flops_per_token(cfg.seq_len)},
        "pretrain": {"steps": pre.steps, "tokens": pre.steps * pre_cfg.tokens_per_step,
                     "tokens_per_s": round(pre.tokens_per_s, 1), "final_train_loss": pre.losses[-1],
                     "final_val_loss": pre.final_val_loss, "options": pre.options},
        "sft": {"method": cfg.sft_method, "trainable_parameters": trainable, "steps": sft.steps, "conversations": len(conversations), "final_loss": sft.losses[-1],
                "tokens_per_s": round(sft.tokens_per_s, 1)},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "accuracy_curve": curve.points,
        **extra,
    }
    write_json(run / "summary.json", summary)
    write_json(run / "samples.json", samples)
    write_text(run / "report.md", speedrun_report(cfg, summary, samples, base_eval, sft_eval,
                                                         stages_report(summary)))
    return SpeedrunResult(run, summary, timings)


def _sample_chats(model, tokenizer, world, seed: int) -> list[dict[str, str]]:
    name = world.people[0].name
    end = tokenizer.special_tokens[END]
    samples = []
    for i, question in enumerate(SAMPLE_CHATS):
        messages = [{"role": "user", "content": question.format(name=name)}]
        ids, _ = render_chat(messages, tokenizer, add_generation_prompt=True)
        params = SamplingParams(temperature=0.0, max_tokens=64, seed=seed + i)
        out = generate(model, ids, params, tokenizer.token_bytes, eos_ids={end, tokenizer.special_tokens[BOS]})
        samples.append({"user": messages[0]["content"], "assistant": out.text})
    return samples
