"""Retrieval-augmented generation: question -> retrieve -> prompt with numbered sources -> cited answer.

Handbook V (RAG). Paper: Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive
NLP Tasks". The generator is any callable `generate(prompt: str) -> str`:
  * `OpenAICompatibleGenerator(base_url, model)` posts to `{base_url}/chat/completions` with httpx
    (genlab's own server, vLLM, llama.cpp, OpenAI ...);
  * a genlab model wrapped in a function;
  * `ExtractiveGenerator`, a no-model baseline that quotes the source sentence sharing most words
    with the question (lets `genlab rag ask` work offline; it is not a language model).
Answers cite sources as [n]; `parse_citations` reads them back and drops numbers that name no source.

    python -m pytest -q tests/retrieval/test_rag.py
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from genlab.errors import ConfigError, GenlabError
from genlab.retrieval.knowledge import Hit

# The sources and the question alone: for a model fine-tuned on this layout (the speedrun's RAG stage), which
# learns to cite and to say "I don't know" from its examples and is spared the instructions (~85 tokens with a
# small model's BPE).
COMPACT_PROMPT_TEMPLATE = """Sources:
{sources}

Question: {question}
Answer:"""

PROMPT_TEMPLATE = """Answer the question using only the numbered sources below. Cite the sources you use \
by their number in square brackets, like [1]. If the sources do not contain the answer, say that you \
do not know.

""" + COMPACT_PROMPT_TEMPLATE

_SOURCE_BLOCK = re.compile(r"^\[(\d+)\] \(([^)\n]*)\)\n(.*?)(?=^\[\d+\] \(|^Question: )", re.S | re.M)
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


class Generator(Protocol):
    def __call__(self, prompt: str) -> str: ...


Retrieve = Callable[[str, int], list[Hit]]


@dataclass
class RAGConfig:
    k: int = 5  # sources put in the prompt
    max_source_chars: int = 1500  # each source is clipped to this many characters
    template: str = PROMPT_TEMPLATE

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError(f"RAG needs k >= 1 sources, got {self.k}")
        if "{sources}" not in self.template or "{question}" not in self.template:
            raise ConfigError("the RAG template needs {sources} and {question} placeholders")


@dataclass
class RAGAnswer:
    question: str
    answer: str
    sources: list[Hit]
    citations: list[int] = field(default_factory=list)  # 1-based source numbers cited in the answer
    prompt: str = ""

    @property
    def cited_sources(self) -> list[Hit]:
        return [self.sources[n - 1] for n in self.citations]


def format_sources(hits: list[Hit], max_chars: int = 1500) -> str:
    blocks = []
    for n, hit in enumerate(hits, start=1):
        text = hit.text if len(hit.text) <= max_chars else hit.text[:max_chars].rstrip() + " ..."
        blocks.append(f"[{n}] ({hit.source})\n{text.strip()}\n")
    return "\n".join(blocks)


def build_prompt(question: str, hits: list[Hit], config: RAGConfig | None = None) -> str:
    config = config or RAGConfig()
    sources = format_sources(hits, config.max_source_chars) if hits else "(no sources found)\n"
    return config.template.format(sources=sources.rstrip("\n"), question=question.strip())


def parse_citations(answer: str, n_sources: int) -> list[int]:
    """Distinct source numbers cited as [n] or [n, m], in order of first mention, within 1..n_sources."""
    seen: list[int] = []
    for group in _CITATION.findall(answer):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= n_sources and n not in seen:
                seen.append(n)
    return seen


class RAGPipeline:
    def __init__(self, retrieve: Retrieve, generate: Generator, config: RAGConfig | None = None):
        self.retrieve, self.generate, self.config = retrieve, generate, config or RAGConfig()

    @classmethod
    def from_knowledge_base(cls, kb, generate: Generator, config: RAGConfig | None = None, **search_kwargs) -> "RAGPipeline":
        return cls(lambda q, k: kb.search(q, k, **search_kwargs), generate, config)

    def ask(self, question: str) -> RAGAnswer:
        if not question.strip():
            raise GenlabError("the question is empty")
        hits = self.retrieve(question, self.config.k)
        prompt = build_prompt(question, hits, self.config)
        answer = self.generate(prompt)
        return RAGAnswer(question, answer.strip(), hits, parse_citations(answer, len(hits)), prompt)


class OpenAICompatibleGenerator:
    """generate(prompt) via POST {base_url}/chat/completions (OpenAI's schema), using httpx."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 512, timeout: float = 120.0, system: str | None = None, client=None):
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.max_tokens, self.system = model, temperature, max_tokens, system
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout, headers=headers)
        self._httpx = httpx

    def __call__(self, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": prompt}]
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens}
        try:
            response = self.client.post(self.url, json=body)
        except self._httpx.HTTPError as e:
            raise GenlabError(f"cannot reach the generation endpoint {self.url}: {e}") from e
        if response.status_code != 200:
            raise GenlabError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GenlabError(f"{self.url} returned no chat completion: {response.text[:300]}") from e


class ExtractiveGenerator:
    """No-model baseline: quote the source sentence with the most words in common with the question."""

    def __call__(self, prompt: str) -> str:
        question = prompt.rsplit("Question:", 1)[-1].split("Answer:", 1)[0]
        q_words = set(re.findall(r"\w+", question.lower())) - _STOPWORDS
        best, best_n, best_overlap = "", 0, 0
        for m in _SOURCE_BLOCK.finditer(prompt):
            n, text = int(m.group(1)), m.group(3)
            for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
                overlap = len(q_words & set(re.findall(r"\w+", sentence.lower())))
                if overlap > best_overlap:
                    best, best_n, best_overlap = sentence.strip(), n, overlap
        if not best_overlap:
            return "I do not know: the sources do not mention it."
        return f"{best} [{best_n}]"


_STOPWORDS = frozenset("a an and are as at be by did do does for from how in is it of on or the to was what when where "
                       "which who why with".split())
