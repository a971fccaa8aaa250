"""Run directories: runs/<name>/ with config.json, metrics.jsonl, checkpoints/, plots/, report.md, summary.json.

A `latest` text file in the runs root names the newest run, so `genlab chat` and `genlab generate` find it.

    python -c "from genlab.recipes.runs import new_run_dir; print(new_run_dir('runs', 'demo'))"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from genlab.atomic import write_text
from genlab.errors import GenlabError


def new_run_dir(root: str | Path, prefix: str, name: str | None = None) -> Path:
    root = Path(root)
    name = name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = root / name
    suffix = 1
    while run.exists() and any(run.iterdir()):  # never write into someone else's run
        run = root / f"{name}-{suffix}"
        suffix += 1
    for sub in ("", "plots"):  # stages keep their own checkpoints (pretrain/, sft/)
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
