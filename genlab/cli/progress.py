"""A rich progress bar for training: steps, loss, tokens/s and ETA, fed by the trainer's step callback.

Handbook III (pretraining recipes). The trainer never prints; the CLI wraps a run in this bar:

    with TrainProgress(cfg.steps) as bar:
        result = train(model, dataset, cfg, callback=bar)

    python -c "from genlab.cli.progress import TrainProgress; b = TrainProgress(3); b.__enter__(); [b({'step': i, 'loss': 1.0, 'tok_per_s': 1e3}) for i in (1, 2, 3)]; b.__exit__(None, None, None)"
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def training_progress(console: Console | None = None) -> Progress:
    """A Progress with columns: description, bar, step M/N, loss, val loss, tok/s, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}"),
        TextColumn("val [magenta]{task.fields[val_loss]}"),
        TextColumn("[green]{task.fields[tok_per_s]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


class TrainProgress:
    """Context manager and step callback in one: pass the instance as `train(..., callback=...)`."""

    def __init__(self, total_steps: int, description: str = "pretrain", console: Console | None = None) -> None:
        self.progress = training_progress(console)
        self.total_steps = total_steps
        self.description = description
        self.task = None
        self._seen_a_step = False

    def __enter__(self) -> "TrainProgress":
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=self.total_steps, loss="-", val_loss="-",
                                           tok_per_s="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, metrics: dict[str, Any]) -> None:
        """Update from one metrics row; the first row of a resumed run jumps the bar to its step."""
        # Every trainer reports a step; loss and throughput only where they apply (an RL step may log reward instead).
        fields: dict[str, Any] = {}
        if metrics.get("loss") is not None:
            fields["loss"] = f"{metrics['loss']:.4f}"
        if metrics.get("tok_per_s") is not None:
            fields["tok_per_s"] = f"{metrics['tok_per_s']:,.0f}"
        if metrics.get("val_loss") is not None:
            fields["val_loss"] = f"{metrics['val_loss']:.4f}"
        if not self._seen_a_step:  # a resumed run starts mid-way: restart the rate estimate there
            self._seen_a_step = True
            self.progress.reset(self.task, completed=metrics["step"] - 1)
        self.progress.update(self.task, completed=metrics["step"], **fields)
