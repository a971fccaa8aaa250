"""`genlab tokenizer ...`: train a byte-level BPE tokenizer and inspect how it splits text.

Handbook III (tokenization).

    genlab tokenizer train --vocab-size 1024 --max-bytes 1000000 --out runs/tok
    genlab tokenizer encode runs/tok "Hello, world"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError

app = typer.Typer(help="Train and inspect byte-level BPE tokenizers.", no_args_is_help=True)


def read_inputs(paths: list[Path]) -> list[str]:
    texts = []
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        if not p.exists():
            raise GenlabError(f"input not found: {p}")
        for f in files:
            if f.is_file():
                try:
                    texts.append(f.read_text(encoding="utf-8"))
                except UnicodeDecodeError:
                    raise GenlabError(f"{f} is not UTF-8 text") from None
    if not texts:
        raise GenlabError("no input text found")
    return texts


@app.command("train")
def train(
    inputs: List[Path] = typer.Argument(None, help="Text files or folders. Default: the standard library corpus."),
    vocab_size: int = typer.Option(4096, help="Total vocabulary size, special tokens included."),
    max_bytes: int = typer.Option(5_000_000, help="Bytes of the standard library corpus to use when no inputs."),
    special: List[str] = typer.Option([], "--special", help="Special tokens to register (repeatable)."),
    out: Path = typer.Option(Path("runs/tokenizer"), help="Output directory for tokenizer.json."),
) -> None:
    """Train a tokenizer and write tokenizer.json (Hugging Face format)."""
    from genlab.data.corpus import stdlib_corpus
    from genlab.tokenizers import BPETokenizer

    texts = read_inputs(inputs) if inputs else [stdlib_corpus(max_bytes)]
    n_bytes = sum(len(t.encode()) for t in texts)
    start = time.perf_counter()
    with console.status(f"training BPE on {n_bytes / 1e6:.2f} MB, vocab {vocab_size}"):
        tok = BPETokenizer.train(texts, vocab_size, special_tokens=special)
    seconds = time.perf_counter() - start
    sample = texts[0][:200_000]
    ratio = len(sample.encode()) / max(1, len(tok.encode_ordinary(sample)))
    path = tok.save(out)
    console.print(f"vocab {tok.vocab_size}, trained in {seconds:.1f} s, {ratio:.2f} bytes/token -> {path}")


@app.command("encode")
def encode(
    tokenizer_dir: Path = typer.Argument(..., help="Directory or tokenizer.json path."),
    text: str = typer.Argument(..., help="Text to encode."),
) -> None:
    """Show the tokens a text splits into."""
    from genlab.tokenizers import BPETokenizer

    tok = BPETokenizer.load(tokenizer_dir)
    ids = tok.encode(text, allowed_special="all")
    pieces = [tok.decode([i]) for i in ids]
    console.print(f"{len(ids)} tokens: {ids}")
    console.print(" | ".join(repr(p)[1:-1] for p in pieces))


__all__ = ["app"]
