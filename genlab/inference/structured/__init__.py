"""Structured outputs: regex / choice / JSON Schema constraints compiled to a byte-level DFA, the
Outlines token index over it, and a logits processor that masks decoding to it.

Handbook V (structured outputs); Willard & Louf (2023), Outlines.

    python -m pytest -q tests/inference/test_structured.py
"""

from genlab.inference.structured.index import (
    Choice, JsonSchema, Regex, TokenIndex, Vocabulary, build_index, choice_regex, index_for, index_for_regex,
)
from genlab.inference.structured.json_schema import schema_to_regex
from genlab.inference.structured.logits_processor import ConstrainedDecoder, StructuredResult, generate_structured
from genlab.inference.structured.automaton import ByteDFA, compile_ast
from genlab.inference.structured.regex import compile_regex, parse_regex

__all__ = [
    "ByteDFA", "Choice", "compile_ast", "ConstrainedDecoder", "JsonSchema", "Regex", "StructuredResult", "TokenIndex",
    "Vocabulary",
    "build_index", "choice_regex", "compile_regex", "generate_structured", "index_for", "index_for_regex",
    "parse_regex", "schema_to_regex",
]
