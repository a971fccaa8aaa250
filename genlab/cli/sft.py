"""`genlab finetune` (alias `genlab sft`): supervised fine-tuning of a model directory on conversations (loss on assistant tokens only).

Handbook IV (instruction fine-tuning). Conversations come from a JSONL file of {"messages": [...]} rows
(the format Hugging Face datasets and trl use) or, by default, from the synthetic world's SFT split.
Packed rows keep conversations apart (positions restart, no cross-attention). Resumable like pretraining.

    genlab finetune runs/x/base_model --method lora --steps 150 --run-dir runs/lora
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError


def read_conversations(path: Path) -> list[dict]:
    from genlab.data.world.export import read_jsonl

    rows = read_jsonl(path, ("messages",))
    for n, row in enumerate(rows, 1):
        if not isinstance(row["messages"], list):
            raise GenlabError(f"{path}: row {n}: 'messages' must be a list of {{role, content}} objects")
    return rows


def sft(
    model: Optional[Path] = typer.Argument(None, help="Model directory or run directory (default: latest run)."),
    data: Optional[Path] = typer.Option(None, help="Conversations JSONL (default: the synthetic world's SFT set)."),
    world_seed: int = typer.Option(0), world_scale: float = typer.Option(1.0),
    steps: int = typer.Option(150), batch_size: int = typer.Option(16), lr: float = typer.Option(1e-3),
    seq_len: Optional[int] = typer.Option(None, help="Row length (default: the model's max_seq_len)."),
    checkpoint_every: int = typer.Option(50), seed: int = typer.Option(0),
    method: str = typer.Option("full", help="full | lora | dora | qlora."),
    rank: int = typer.Option(16, "--rank", "-r", help="LoRA rank."),
    alpha: float = typer.Option(32.0, help="LoRA alpha (scaling alpha/r, or alpha/sqrt(r) with --rslora)."),
    rslora: bool = typer.Option(False, help="rsLoRA scaling."),
    run_dir: Path = typer.Option(Path("runs/sft"), help="Run directory; an existing one is resumed."),
) -> None:
    """Fine-tune on conversations (full, LoRA, DoRA or QLoRA); writes <run-dir>/model and/or <run-dir>/adapter."""
    from genlab.cli.generate import resolve_model_dir
    from genlab.cli.progress import TrainProgress
    from genlab.data.chat import END, add_chat_tokens, save_tokenizer_dir
    from genlab.data.world import WorldConfig, build_world, sft_conversations
    from genlab.finetune.methods import AdapterOptions, prepare, save
    from genlab.finetune.sft import SFTDataset, sft_train_config
    from genlab.models.hf_io import load_pretrained
    from genlab.tokenizers import BPETokenizer
    from genlab.train.trainer import train

    model_dir = resolve_model_dir(model)
    lm = load_pretrained(model_dir)
    tok = BPETokenizer.load(model_dir)
    add_chat_tokens(tok)
    if max(tok.special_tokens.values()) >= lm.config.vocab_size:
        raise GenlabError(f"{model_dir}: the tokenizer has chat tokens beyond the model's vocabulary "
                          f"({lm.config.vocab_size}); pretrain with the chat tokens registered")
    conversations = read_conversations(data) if data else sft_conversations(build_world(WorldConfig(world_seed, world_scale)))
    seq_len = seq_len or lm.config.max_seq_len
    dataset = SFTDataset(conversations, tok, seq_len, seed=seed, pad_id=tok.special_tokens[END])
    cfg = sft_train_config(steps, batch_size, seq_len, lr, seed, str(run_dir), checkpoint_every=checkpoint_every)
    trainable = prepare(lm, method, AdapterOptions(r=rank, alpha=alpha, rslora=rslora))
    console.print(f"method {method}: {trainable:,} trainable parameters of {lm.num_params():,}")
    console.print(f"{len(conversations)} conversations -> {len(dataset)} packed rows of {seq_len}; "
                  f"{dataset.n_target_tokens:,} trained tokens per epoch")
    with TrainProgress(steps, "sft", console) as bar:
        result = train(lm, dataset, cfg, callback=bar)
    lm.eval()
    written = save(lm, method, run_dir)
    for directory in written.values():
        save_tokenizer_dir(tok, directory, model_max_length=lm.config.max_seq_len)
    console.print(f"final loss {result.losses[-1] if result.losses else float('nan'):.4f} -> {', '.join(written.values())}")
