"""`genlab pretrain`: pretrain a transformer on a token file or on text files, into a run directory.

Handbook III (pretraining recipes).

    genlab pretrain --steps 200 --d-model 128 --n-layer 4 --run-dir runs/pre
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError


def pretrain(
    inputs: List[Path] = typer.Argument(None, help="Text files/folders (default: the standard library corpus)."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.json or its folder (default: train one)."),
    vocab_size: int = typer.Option(4096, help="Vocabulary size when training a tokenizer."),
    max_bytes: int = typer.Option(2_000_000, help="Corpus bytes when no inputs are given."),
    d_model: int = typer.Option(256), n_layer: int = typer.Option(6), n_head: int = typer.Option(8),
    seq_len: int = typer.Option(256), batch_size: int = typer.Option(16), steps: int = typer.Option(500),
    lr: float = typer.Option(3e-3), warmup: int = typer.Option(50), weight_decay: float = typer.Option(0.1),
    grad_accum: int = typer.Option(1), eval_every: int = typer.Option(100),
    checkpoint_every: int = typer.Option(100, help="Steps between checkpoints (0 = only at the end)."),
    bf16: bool = typer.Option(False, help="bf16 autocast on CPU."),
    compile: bool = typer.Option(False, help="torch.compile the forward + loss."),
    seed: int = typer.Option(0),
    run_dir: Path = typer.Option(Path("runs/pretrain"), help="Run directory; an existing one is resumed."),
) -> None:
    """Pretrain a Llama-style model; resumes from the newest checkpoint in --run-dir."""
    import numpy as np

    from genlab.cli.progress import TrainProgress
    from genlab.cli.tokenizer import read_inputs
    from genlab.data.chat import BOS, CHAT_SPECIAL_TOKENS, add_chat_tokens, save_tokenizer_dir
    from genlab.data.corpus import stdlib_corpus
    from genlab.data.tokens import TokenDataset, write_tokens
    from genlab.models import ModelConfig, Transformer
    from genlab.models.hf_io import save_pretrained
    from genlab.tokenizers import BPETokenizer
    from genlab.train.trainer import TrainConfig, train

    texts = read_inputs(inputs) if inputs else [stdlib_corpus(max_bytes)]
    if tokenizer is not None:
        tok = BPETokenizer.load(tokenizer)
        add_chat_tokens(tok)
    else:
        with console.status(f"training tokenizer (vocab {vocab_size})"):
            tok = BPETokenizer.train(texts, vocab_size, special_tokens=CHAT_SPECIAL_TOKENS)
    bos = tok.special_tokens[BOS]
    token_file = run_dir / "data" / "tokens.bin"
    if not token_file.is_file():
        with console.status("tokenizing"):
            ids = [t for doc in tok.encode_batch(texts) for t in [bos] + doc]
            write_tokens(token_file, np.asarray(ids, dtype=np.int64), vocab_size=tok.vocab_size)
    dataset = TokenDataset(token_file)
    if dataset.vocab_size > tok.vocab_size:
        raise GenlabError(f"{token_file} was written with vocab {dataset.vocab_size}, tokenizer has {tok.vocab_size}")
    model = Transformer(ModelConfig.llama_like(vocab_size=tok.vocab_size, d_model=d_model, n_layer=n_layer,
                                               n_head=n_head, max_seq_len=seq_len, tie_embeddings=True))
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum, lr=lr, warmup=warmup,
                      weight_decay=weight_decay, eval_every=eval_every, checkpoint_every=checkpoint_every,
                      bf16=bf16, compile=compile, seed=seed, run_dir=str(run_dir))
    console.print(f"{model.num_params() / 1e6:.2f}M parameters, {len(dataset):,} tokens, run dir {run_dir}")
    with TrainProgress(steps, "pretrain", console) as bar:
        result = train(model, dataset, cfg, callback=bar)
    model.eval()
    save_pretrained(model, run_dir / "model")
    save_tokenizer_dir(tok, run_dir / "model", model_max_length=seq_len)
    console.print(f"val loss {result.final_val_loss:.4f}, {result.tokens_per_s:,.0f} tok/s -> {run_dir / 'model'}")
