"""`genlab chat`: talk to a chat model in the terminal, with the reply streamed as it is generated.

Handbook IV (chat models), V (sampling), VI (serving). Commands inside the chat: /reset (forget the
conversation), /exit. When the conversation outgrows the model's context, the oldest turns are dropped.
Replies stream through genlab's LLMEngine (paged KV cache): with prefix caching, each turn reuses the
KV blocks of the conversation so far instead of recomputing them.

    genlab chat                      # the latest run's SFT model
    genlab chat runs/x/model --system "Answer briefly." --temperature 0
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genlab.cli.console import console

PROMPT = "you> "


def chat(
    model: Optional[Path] = typer.Argument(None, help="Model directory or run directory (default: latest run)."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    top_k: int = typer.Option(0, help="Top-k (0 = off)."),
    max_tokens: int = typer.Option(128, help="Maximum tokens per reply."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling."),
) -> None:
    """Interactive chat with streaming replies (/reset, /exit)."""
    from genlab.cli.generate import resolve_model_dir
    from genlab.data.chat import BOS, END, add_chat_tokens, render_chat
    from genlab.inference.engine import EngineConfig, LLMEngine
    from genlab.inference.sampling import SamplingParams
    from genlab.models.hf_io import load_pretrained
    from genlab.tokenizers import BPETokenizer

    model_dir = resolve_model_dir(model)
    lm = load_pretrained(model_dir)
    tok = BPETokenizer.load(model_dir)
    ids = add_chat_tokens(tok)
    stop_ids = {ids[END], ids[BOS]}
    # One conversation at a time: a cache for one full-length sequence is enough.
    engine = LLMEngine(lm, tok, EngineConfig(max_num_seqs=1), stop_token_ids=sorted(stop_ids))
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    base = [{"role": "system", "content": system}] if system else []
    history: list[dict[str, str]] = []
    turn = 0
    console.print(f"[dim]genlab chat with {model_dir} ({lm.num_params() / 1e6:.1f}M parameters). /reset, /exit[/]")
    while True:
        try:
            text = input(PROMPT)
        except EOFError:
            console.print()
            return
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            history = []
            console.print("[dim](conversation reset)[/]")
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        prompt, _ = render_chat(base + history, tok, add_generation_prompt=True)
        while len(prompt) + 8 > lm.config.max_seq_len and len(history) > 1:
            history = history[2:] if len(history) > 2 else history[-1:]  # drop the oldest exchange
            prompt, _ = render_chat(base + history, tok, add_generation_prompt=True)
        reply = []
        console.print("bot> ", end="", style="bold green")
        turn += 1
        engine.add_request(f"turn-{turn}", prompt, params)
        while engine.has_unfinished():
            for output in engine.step():
                reply.append(output.text)
                console.print(output.text, end="", markup=False, highlight=False, soft_wrap=True)
                console.file.flush()
        console.print()
        history.append({"role": "assistant", "content": "".join(reply)})
