"""Shared terminal output for the CLI: one rich console and the user-error exit (progress bars: progress.py).

    genlab pretrain --help
"""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a user error (no traceback) and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)

