"""`genlab eval`: score a model on the synthetic world's held-out sets and on held-out real text.

Handbook V (evaluation). Tasks: qa_new_phrasings, knowledge_extraction, addition_2digit, idk, json_valid
(exact match; JSON must parse with the required keys) and bits per byte. Results go to a JSON file;
`--json` prints them as one JSON object.

    genlab eval --limit 50 --json
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from genlab.cli.console import console
from genlab.errors import GenlabError


def evaluate(
    model: Optional[Path] = typer.Argument(None, help="Model directory or run directory (default: latest run)."),
    task: List[str] = typer.Option([], "--task", help="Task to run (repeatable; default: all five)."),
    mode: str = typer.Option("chat", help="chat (SFT models) or few_shot (base models)."),
    limit: Optional[int] = typer.Option(200, help="Items per task (a seeded sample)."),
    world_seed: int = typer.Option(0, help="Seed of the world the model was trained on."),
    world_scale: float = typer.Option(1.0, help="Scale of that world."),
    bpb_bytes: int = typer.Option(150_000, help="Bytes of held-out real text for bits per byte (0 = skip)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    out: Optional[Path] = typer.Option(None, help="Write results here (default: eval_<mode>.json beside the model)."),
) -> None:
    """Exact-match accuracy on the world's held-out sets, and bits per byte."""
    from genlab.cli.generate import resolve_model_dir
    from genlab.data.corpus import split_documents, stdlib_documents
    from genlab.data.world import WorldConfig, build_world, sft_conversations
    from genlab.evals.suite import EvalConfig, run_eval_suite, write_results
    from genlab.models.hf_io import load_pretrained
    from genlab.recipes.world_tasks import EVAL_TASKS, eval_items, few_shot_pools
    from genlab.tokenizers import BPETokenizer

    unknown = set(task) - set(EVAL_TASKS)
    if unknown:
        raise GenlabError(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(EVAL_TASKS)}")
    model_dir = resolve_model_dir(model)
    lm = load_pretrained(model_dir)
    tok = BPETokenizer.load(model_dir)
    world = build_world(WorldConfig(seed=world_seed, scale=world_scale))
    items = {k: v for k, v in eval_items(world, limit, world_seed).items() if not task or k in task}
    pools = few_shot_pools(sft_conversations(world)) if mode == "few_shot" else None
    # The speedrun holds out the last tenth of these documents; the same split keeps bpb comparable.
    bpb_texts = split_documents([d.text for d in stdlib_documents(bpb_bytes, world_seed)], 0.1, world_seed)[1] \
        if bpb_bytes else None
    config = EvalConfig(mode=mode, max_tokens=64)  # room for worked answers ("... Answer: value")
    with nullcontext() if as_json else console.status(f"evaluating {model_dir} on {len(items)} tasks"):
        results = run_eval_suite(lm, tok, items, bpb_texts=bpb_texts, few_shot_pool=pools, config=config)
    path = write_results(results, out or model_dir.parent / f"eval_{mode}.json")
    if as_json:
        print(json.dumps({"accuracy": results["accuracy"], "bpb": results.get("bpb", {}).get("bpb"),
                          "mode": mode, "n": {k: v["n"] for k, v in results["tasks"].items()},
                          "results_file": str(path)}))
        return
    for name, acc in results["accuracy"].items():
        console.print(f"{name:24s} {acc:6.1%}  (n={results['tasks'][name]['n']})")
    if "bpb" in results:
        console.print(f"{'bits per byte':24s} {results['bpb']['bpb']:.4f}")
    console.print(f"[dim]-> {path}[/]")

