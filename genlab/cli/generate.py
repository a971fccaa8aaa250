"""`genlab generate`: stream text from a model directory (default: the latest run's model).

Handbook V (sampling).

    genlab generate --prompt "def fibonacci(" --max-tokens 60 --temperature 0.8 --top-p 0.95
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from genlab.cli.console import console


def resolve_model_dir(model: Optional[Path], runs_root: Path = Path("runs")) -> Path:
    """A model directory: the given one, a run directory's model/, or the latest run's model/."""
    from genlab.recipes.runs import latest_run

    if model is None:
        model = latest_run(runs_root)
    if (model / "model" / "config.json").is_file():
        return model / "model"
    return model


def generate(
    model: Optional[Path] = typer.Argument(None, help="Model directory or run directory (default: latest run)."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Prompt text (special tokens allowed)."),
    max_tokens: int = typer.Option(100, help="Maximum new tokens."),
    temperature: float = typer.Option(0.8, help="0 = greedy."),
    top_k: int = typer.Option(0, help="Keep the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1 = off)."),
    min_p: float = typer.Option(0.0, help="Drop tokens below min_p x the top probability."),
    repetition_penalty: float = typer.Option(1.0, help="CTRL repetition penalty (1 = off)."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling."),
) -> None:
    """Generate text from a prompt, streaming it as it is produced."""
    from genlab.inference.generate import generate_stream
    from genlab.inference.sampling import SamplingParams
    from genlab.models.hf_io import load_pretrained
    from genlab.tokenizers import BPETokenizer

    model_dir = resolve_model_dir(model)
    lm = load_pretrained(model_dir)
    tok = BPETokenizer.load(model_dir)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, max_tokens=max_tokens, stop=list(stop), seed=seed)
    bos = tok.special_tokens.get("<|bos|>")
    ids = ([bos] if bos is not None else []) + tok.encode(prompt, allowed_special="all")
    eos = {i for name, i in tok.special_tokens.items() if name in ("<|end|>", "<|endoftext|>", "<|bos|>")}
    console.print(prompt, end="", style="bold")
    finish = None
    for event in generate_stream(lm, ids, params, tok.token_bytes, eos_ids=eos):
        console.print(event.text, end="", markup=False, highlight=False)
        finish = event.finish_reason or finish
    console.print(f"\n[dim]({finish})[/]")
