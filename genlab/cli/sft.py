"""`genlab sft`: supervised fine-tuning of a model directory on conversations (loss on assistant tokens only).

Handbook IV (instruction fine-tuning). Conversations come from a JSONL file of {"messages": [...]} rows
(the format Hugging Face datasets and trl use) or, by default, from the synthetic world's SFT split.
Packed rows keep conversations apart (positions restart, no cross-attention). Resumable like pretraining.

    genlab sft runs/x/base_model --steps 150 --run-dir runs/sft
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError


def read_conversations(path: Path) -> list[dict]:
    if not path.is_file():
        raise GenlabError(f"conversation file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenlabError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise GenlabError(f"{path}:{n}: expected an object with a 'messages' list")
        rows.append(row)
    return rows


def sft(
    model: Optional[Path] = typer.Argument(None, help="Model directory or run directory (default: latest run)."),
    data: Optional[Path] = typer.Option(None, help="Conversations JSONL (default: the synthetic world's SFT set)."),
    world_seed: int = typer.Option(0), world_scale: float = typer.Option(1.0),
    steps: int = typer.Option(150), batch_size: int = typer.Option(16), lr: float = typer.Option(1e-3),
    seq_len: Optional[int] = typer.Option(None, help="Row length (default: the model's max_seq_len)."),
    checkpoint_every: int = typer.Option(50), seed: int = typer.Option(0),
    run_dir: Path = typer.Option(Path("runs/sft"), help="Run directory; an existing one is resumed."),
) -> None:
    """Fine-tune on conversations; writes <run-dir>/model in the Hugging Face layout."""
    from genlab.cli.generate import resolve_model_dir
    from genlab.cli.progress import TrainProgress
    from genlab.data.chat import END, add_chat_tokens, save_tokenizer_dir
    from genlab.data.world import WorldConfig, build_world, sft_conversations
    from genlab.finetune.sft import SFTDataset
    from genlab.models.hf_io import load_pretrained, save_pretrained
    from genlab.tokenizers import BPETokenizer
    from genlab.train.trainer import TrainConfig, train

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
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=max(1, steps // 20),
                      min_lr_ratio=0.0, weight_decay=0.0, eval_every=0, checkpoint_every=checkpoint_every,
                      seed=seed, run_dir=str(run_dir))
    console.print(f"{len(conversations)} conversations -> {len(dataset)} packed rows of {seq_len}; "
                  f"{dataset.n_target_tokens:,} trained tokens per epoch")
    with TrainProgress(steps, "sft", console) as bar:
        result = train(lm, dataset, cfg, callback=bar)
    lm.eval()
    save_pretrained(lm, run_dir / "model")
    save_tokenizer_dir(tok, run_dir / "model", model_max_length=lm.config.max_seq_len)
    console.print(f"final loss {result.losses[-1] if result.losses else float('nan'):.4f} -> {run_dir / 'model'}")
