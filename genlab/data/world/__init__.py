"""A synthetic world with measurable knowledge: entities, pretraining text, SFT chats, eval sets.

Handbook IV (instruct fine-tuning) and V (benchmarks); Allen-Zhu & Li, "Physics of Language
Models 3.1" (facts are extractable only when pretraining states them in varied paraphrases).
Everything is a pure function of `WorldConfig(seed, scale)`: same config, same bytes.

    python -c "from genlab.data.world import *; w = build_world(WorldConfig(seed=1)); print(export_jsonl(w, '/tmp/world'))"
"""

from genlab.data.world.conversations import IDK_ANSWER, sft_conversations
from genlab.data.world.documents import pretraining_documents
from genlab.data.world.entities import Person, Town, World, WorldConfig, build_world
from genlab.data.world.evalsets import eval_sets, exact_match, json_item_ok, normalize_answer
from genlab.data.world.export import export_jsonl, read_jsonl, write_jsonl
from genlab.data.world.extras import (TOOL_SYSTEM_PROMPT, lookup_documents, preference_pairs,
                                      private_documents, run_calculator, tool_traces,
                                      verifiable_prompts, verifiable_sums)

__all__ = [
    "IDK_ANSWER", "TOOL_SYSTEM_PROMPT", "Person", "Town", "World", "WorldConfig", "build_world",
    "eval_sets", "exact_match", "export_jsonl", "json_item_ok", "lookup_documents",
    "normalize_answer", "preference_pairs", "pretraining_documents", "private_documents",
    "read_jsonl", "run_calculator", "sft_conversations", "tool_traces", "verifiable_prompts", "verifiable_sums",
    "write_jsonl",
]
