"""`genlab speedrun`: the main job, from raw text to a trained model and its report, on a CPU.

    genlab speedrun --quick
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import typer

from genlab.cli.console import console


def speedrun(
    quick: bool = typer.Option(False, "--quick", help="A ~1 minute run with a tiny model (used by the tests)."),
    steps: Optional[int] = typer.Option(None, help="Override the number of pretraining steps."),
    sft_steps: Optional[int] = typer.Option(None, help="Override the number of SFT steps."),
    sft_lr: Optional[float] = typer.Option(None, help="Override the SFT learning rate."),
    sft_replay: Optional[int] = typer.Option(None, help="Copies of the pretraining documents packed into SFT "
                                             "(0: none; replay keeps the facts SFT would erase)."),
    sft_method: str = typer.Option("full", help="SFT stage: full, lora or dora (adapters merged after training)."),
    align: Optional[str] = typer.Option(None, help="After SFT: reward model + preference tuning (dpo, ipo, kto, orpo, simpo, "
                                             "robust, hinge)."),
    rl: Optional[str] = typer.Option(None, help="After SFT: reward model + RL with verifiable rewards (grpo)."),
    retrieval: bool = typer.Option(False, "--retrieval", help="After SFT: fine-tune a copy on the sources-question-answer "
                                   "format and score RAG on private documents (hybrid BM25 + MiniLM)."),
    rag_steps: Optional[int] = typer.Option(None, help="Steps of the --retrieval fine-tune (default 1600, ~15 minutes)."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)."),
    runs_root: str = typer.Option("runs", help="Where run directories go."),
    name: Optional[str] = typer.Option(None, help="Run name (default: speedrun-<timestamp>)."),
    seed: int = typer.Option(0, help="Seed for everything."),
) -> None:
    """World + real text -> tokenizer -> pretraining -> SFT -> evals -> runs/<name>/report.md."""
    from genlab.cli.progress import TrainProgress
    from rich.table import Table

    from genlab.recipes.report import CARD_COLUMNS
    from genlab.recipes.speedrun import SpeedrunConfig, SpeedrunHooks, run_speedrun

    from genlab.errors import GenlabError
    from genlab.cli.console import fail

    try:
        cfg = SpeedrunConfig.preset("quick" if quick else "default", steps=steps, sft_steps=sft_steps,
                                    sft_lr=sft_lr, sft_replay=sft_replay, sft_method=sft_method, align=align, rl=rl, retrieval=retrieval or None,
                                    rag_steps=rag_steps,
                                    threads=threads, runs_root=runs_root, name=name, seed=seed)
    except GenlabError as e:
        fail(str(e))

    class Hooks(SpeedrunHooks):
        def stage(self, stage: str, detail: str = "") -> None:
            console.print(f"[bold cyan]▸ {stage}[/] {detail}")

        @contextmanager
        def training(self, description: str, total_steps: int) -> Iterator:
            with TrainProgress(total_steps, description, console) as bar:
                yield bar

    result = run_speedrun(cfg, Hooks())
    s = result.summary
    table = Table(title="report card")
    table.add_column("stage")
    for _, title in CARD_COLUMNS:
        table.add_column(title, justify="right")
    for stage, row in s["stages"].items():
        table.add_row(stage, *[f"{row[k]:.3f}" for k, _ in CARD_COLUMNS])
    console.print(table)
    console.print(f"[bold green]done[/] in {s['wall_seconds']:.0f} s -> {result.run_dir}/report.md")
