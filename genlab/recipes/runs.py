"""Run directories: runs/<name>/ with config.json, metrics.jsonl, checkpoints/, plots/, report.md, summary.json.

A `latest` text file in the runs root names the newest run, so `genlab chat` and `genlab generate` find it.

    python -c "from genlab.recipes.runs import new_run_dir; print(new_run_dir('runs', 'demo'))"
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from genlab.errors import GenlabError


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic JSON write (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")
    os.replace(f.name, path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)
    return path


def new_run_dir(root: str | Path, prefix: str, name: str | None = None) -> Path:
    root = Path(root)
    name = name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = root / name
    suffix = 1
    while run.exists() and any(run.iterdir()):  # never write into someone else's run
        run = root / f"{name}-{suffix}"
        suffix += 1
    for sub in ("", "plots", "checkpoints"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    write_text(root / "latest", run.name + "\n")
    return run


def latest_run(root: str | Path = "runs") -> Path:
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        raise GenlabError(f"no runs found under {root}/ (run `genlab speedrun` first, or pass a model directory)")
    run = Path(root) / pointer.read_text().strip()
    if not run.is_dir():
        raise GenlabError(f"{pointer} names {run}, which does not exist")
    return run


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
