"""Shared terminal output for the CLI: one rich console, error exit, and progress bars with rate and ETA.

    genlab pretrain --help
"""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user error (no traceback) and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def progress_bar(transient: bool = False) -> Progress:
    """A progress bar showing count, percentage, a free-form rate field, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=transient,
    )
