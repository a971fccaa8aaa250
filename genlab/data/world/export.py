"""JSONL export of the whole synthetic world, in the shapes Hugging Face `datasets` and trl read.

Handbook IV. `export_jsonl` writes, atomically (temp file + os.replace), into `out_dir`:
  pretrain.jsonl         {"text"}
  sft.jsonl              {"messages"}                      (trl SFTTrainer conversational format)
  eval_<set>.jsonl       {"messages", "answer", "kind", "detail"[, "keys"]}
  preferences.jsonl      {"prompt", "chosen", "rejected"}, each a message list (trl's
                         conversational preference format; in memory chosen/rejected are str)
  verifiable.jsonl       {"messages", "answer", "kind"}
  private_docs.jsonl     {"id", "title", "text"};  private_questions.jsonl {..., "doc_id"}
  lookup_docs.jsonl      {"id", "title", "text"} (the lookup tool's corpus)
  tool_traces.jsonl      {"messages"} with role "tool" turns
  world.json             the config and every entity, for inspection and report cards

    python -c "from genlab.data.world import *; print(export_jsonl(build_world(), '/tmp/world'))"
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from genlab.atomic import write_text
from genlab.data.world.conversations import msg, sft_conversations
from genlab.data.world.documents import pretraining_documents
from genlab.data.world.entities import World
from genlab.data.world.evalsets import eval_sets
from genlab.data.world.extras import (lookup_documents, preference_pairs, private_documents,
                                      tool_traces, verifiable_prompts)
from genlab.errors import GenlabError




def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write `rows` as JSON lines, atomically; returns the path."""
    path = Path(path)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_text(path, text)
    return path


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); with `required`, each row must be an object with those keys."""
    path = Path(path)
    if not path.is_file():
        raise GenlabError(f"JSONL file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise GenlabError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if required and (not isinstance(row, dict) or any(k not in row for k in required)):
                raise GenlabError(f"{path}:{number}: expected an object with {', '.join(required)}")
            rows.append(row)
    return rows


def world_summary(world: World) -> dict:
    """The config and all entities as plain JSON-able data."""
    return {"config": dataclasses.asdict(world.config),
            "people": [dataclasses.asdict(p) for p in world.people],
            "towns": [dataclasses.asdict(t) for t in world.towns],
            "splits": world.splits, "unknown_names": world.unknown_names,
            "private_people": [dataclasses.asdict(p) for p in world.private_people],
            "lookup_people": [dataclasses.asdict(p) for p in world.lookup_people]}


def export_jsonl(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write every dataset of `world` under `out_dir` (created if missing); name -> path."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GenlabError(f"cannot create output directory {out}: {err}") from None
    private = private_documents(world)
    files = {
        "pretrain": [{"text": t} for t in pretraining_documents(world)],
        "sft": [{"messages": c["messages"]} for c in sft_conversations(world)],
        "preferences": [{"prompt": p["prompt"], "chosen": [msg("assistant", p["chosen"])],
                         "rejected": [msg("assistant", p["rejected"])]}
                        for p in preference_pairs(world)],
        "verifiable": verifiable_prompts(world),
        "private_docs": private["documents"],
        "private_questions": private["questions"],
        "lookup_docs": lookup_documents(world),
        "tool_traces": [{"messages": t["messages"]} for t in tool_traces(world)],
    }
    files.update({f"eval_{name}": items for name, items in eval_sets(world).items()})
    written = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in files.items()}
    world_path = out / "world.json"
    write_text(world_path, json.dumps(world_summary(world), indent=1) + "\n")
    written["world"] = world_path
    return written
