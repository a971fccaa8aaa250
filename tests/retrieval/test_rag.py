"""RAG: numbered-source prompt, citation parsing, pipeline with a pluggable generator, OpenAI-compatible
adapter (httpx mock transport, no network), extractive baseline.

    python -m pytest -q tests/retrieval/test_rag.py
"""

import json

import httpx
import pytest

from genlab.errors import ConfigError, GenlabError
from genlab.retrieval.knowledge import Hit
from genlab.retrieval.rag import (COMPACT_PROMPT_TEMPLATE, ExtractiveGenerator, OpenAICompatibleGenerator, RAGConfig,
                                  RAGPipeline, build_prompt, parse_citations)

HITS = [Hit(1, 1, "zoo.md", "The zoo opens at 9 am. Tickets cost 12 euros.", 0.9, 0, 40, {}),
        Hit(2, 2, "park.md", "The park has a lake with ducks.", 0.5, 0, 31, {})]


def test_prompt_numbers_sources_and_keeps_question():
    prompt = build_prompt("When does the zoo open?", HITS)
    assert "[1] (zoo.md)\nThe zoo opens at 9 am." in prompt and "[2] (park.md)\nThe park has" in prompt
    assert prompt.index("[1]") < prompt.index("[2]") < prompt.index("Question: When does the zoo open?")
    assert prompt.rstrip().endswith("Answer:")
    clipped = build_prompt("q", HITS, RAGConfig(max_source_chars=10))
    assert "The zoo op ..." in clipped
    with pytest.raises(ConfigError):
        RAGConfig(template="no placeholders")


def test_parse_citations():
    assert parse_citations("At 9 am [1]. Ducks [2][1], see [1, 2] and [7].", 2) == [1, 2]
    assert parse_citations("no sources", 3) == []


def test_pipeline_with_a_callable_generator():
    seen = {}

    def generate(prompt: str) -> str:
        seen["prompt"] = prompt
        return "It opens at 9 am [1]."

    rag = RAGPipeline(lambda q, k: HITS[:k], generate, RAGConfig(k=1))
    answer = rag.ask("When does the zoo open?")
    assert answer.answer == "It opens at 9 am [1]." and answer.citations == [1]
    assert answer.cited_sources[0].source == "zoo.md" and "park.md" not in seen["prompt"]
    with pytest.raises(GenlabError):
        rag.ask("   ")


def test_openai_compatible_generator_posts_chat_completion():
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = json.loads(request.content)
        assert body["model"] == "genlab" and body["messages"][-1]["content"].startswith("Answer the question")
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "9 am [1]"}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    gen = OpenAICompatibleGenerator("http://127.0.0.1:8000/v1/", "genlab", client=client)
    answer = RAGPipeline(lambda q, k: HITS, gen).ask("When does the zoo open?")
    assert answer.answer == "9 am [1]" and answer.citations == [1]
    assert str(requests[0].url) == "http://127.0.0.1:8000/v1/chat/completions"

    failing = OpenAICompatibleGenerator("http://x/v1", "m", client=httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(500, text="boom"))))
    with pytest.raises(GenlabError, match="HTTP 500"):
        failing("hi")
    garbage = OpenAICompatibleGenerator("http://x/v1", "m", client=httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"nope": 1}))))
    with pytest.raises(GenlabError, match="no chat completion"):
        garbage("hi")


def test_extractive_baseline_quotes_and_cites_the_best_sentence():
    gen = ExtractiveGenerator()
    assert gen(build_prompt("How much do zoo tickets cost?", HITS)) == "Tickets cost 12 euros. [1]"
    assert gen(build_prompt("Where are the ducks?", HITS)).endswith("[2]")
    assert "do not know" in gen(build_prompt("Quantum chromodynamics?", HITS))


def test_compact_layout_is_the_full_one_without_instructions():
    compact = RAGConfig(template=COMPACT_PROMPT_TEMPLATE)
    full, short = build_prompt("How much do zoo tickets cost?", HITS), build_prompt("How much do zoo tickets cost?",
                                                                                     HITS, compact)
    assert full.endswith(short) and full.startswith("Answer the question") and short.startswith("Sources:\n[1]")
    assert ExtractiveGenerator()(short) == "Tickets cost 12 euros. [1]"  # sources parse the same way
