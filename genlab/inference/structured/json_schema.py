"""JSON Schema (a documented subset) -> regular expression, for constrained decoding.

Handbook V (structured outputs); Willard & Louf (2023), Outlines (`build_regex_from_schema`).

Every string the regex matches is JSON that `json.loads` parses and that validates against the
schema (sound); not every valid document is reachable (e.g. extra properties are never emitted).

Supported keywords: `type` (string, integer, number, boolean, null, object, array, or a list of
them = anyOf), `enum`, `const`, `anyOf`; strings: `minLength`, `maxLength`, `pattern`; arrays:
`items` (required), `minItems`, `maxItems`; objects: `properties`, `required`,
`additionalProperties` (true/false: either way no extra property is emitted). Annotations
(`title`, `description`, `default`, `examples`, `$schema`, `$id`, `$comment`) are ignored. Any other
keyword raises GenlabError naming it: never silent non-compliance.

Choices (documented policy):
- Properties appear in declared order; optional ones may be left out; required ones must be
  declared in `properties`.
- Whitespace: `whitespace` (a regex, default `[ ]?` as Outlines) may appear after `{` `[` `,` `:`
  and before `}` `]`; pass "" for compact JSON. Bounded on purpose: a model cannot wander in it.
- Strings hold unescaped characters except `"`, `\\` and controls, plus the escapes `\\" \\\\ \\/ \\b
  \\f \\n \\r \\t`; `\\uXXXX` is not emitted (surrogate pairs would make minLength counting wrong).
- `pattern` is matched against the whole string (`^`/`$` at its ends are dropped): stronger than
  JSON Schema's search semantics, so still valid. Characters that would need escaping in JSON are
  removed from its character classes. `pattern` with minLength/maxLength is rejected.
- Numbers: `-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?`; integers: without fraction/exponent.

    python -c "from genlab.inference.structured.json_schema import schema_to_regex as f; print(f({'type': 'object', 'properties': {'a': {'type': 'integer'}}}))"
"""

from __future__ import annotations

import json
from typing import Any

from genlab.errors import GenlabError
from genlab.inference.structured.regex import (
    Alt, CharSet, Concat, Repeat, complement, escape_literal, intersect, normalize, parse_regex,
)

DEFAULT_WHITESPACE = r"[ ]?"
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern"},
    "integer": set(),
    "number": set(),
    "boolean": set(),
    "null": set(),
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems"},
}
GENERIC_KEYWORDS = {"type", "enum", "const", "anyOf"} | ANNOTATIONS
# Unescaped characters a JSON string may hold: anything but '"', '\\' and U+0000-U+001F.
JSON_SAFE = complement(normalize([(0, 0x1F), (ord('"'), ord('"')), (ord("\\"), ord("\\"))]))
STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = INTEGER + r"(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?"


def _literal(value: Any) -> str:
    return escape_literal(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _nonneg_int(schema: dict, key: str, where: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise GenlabError(f"schema at {where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _repeat_suffix(lo: int, hi: int | None) -> str:
    return f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"


def _class_char(cp: int) -> str:
    # \\uXXXX covers the BMP; beyond it a literal character is never special inside [...]
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)


def ast_to_regex(node) -> str:
    """Render an AST from `parse_regex` back to regex text (used to rewrite `pattern`)."""
    if isinstance(node, CharSet):
        assert node.ranges, "empty character sets are removed by _restrict"
        parts = [_class_char(lo) + ("" if hi == lo else "-" + _class_char(hi)) for lo, hi in node.ranges]
        return "[" + "".join(parts) + "]"
    if isinstance(node, Concat):
        return "".join(f"(?:{ast_to_regex(p)})" for p in node.parts)
    if isinstance(node, Alt):
        return "(?:" + "|".join(ast_to_regex(o) for o in node.options) + ")"
    if isinstance(node, Repeat):
        return f"(?:{ast_to_regex(node.node)}){_repeat_suffix(node.min, node.max)}"
    raise AssertionError(node)


def _restrict(node, allowed):
    """Intersect every character set with `allowed`; None when the node can match nothing."""
    if isinstance(node, CharSet):
        ranges = intersect(node.ranges, allowed)
        return CharSet(ranges) if ranges else None
    if isinstance(node, Concat):
        parts = [_restrict(p, allowed) for p in node.parts]
        return None if any(p is None for p in parts) else Concat(tuple(parts))
    if isinstance(node, Alt):
        options = [o for o in (_restrict(o, allowed) for o in node.options) if o is not None]
        return Alt(tuple(options)) if options else None
    if isinstance(node, Repeat):
        inner = _restrict(node.node, allowed)
        if inner is None:
            return Concat(()) if node.min == 0 else None
        return Repeat(inner, node.min, node.max)
    raise AssertionError(node)


def _pattern_regex(pattern: str, where: str) -> str:
    if not isinstance(pattern, str):
        raise GenlabError(f"schema at {where}: pattern must be a string")
    body = pattern[1:] if pattern.startswith("^") else pattern
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    node = _restrict(parse_regex(body), JSON_SAFE)
    if node is None:
        raise GenlabError(f"schema at {where}: pattern {pattern!r} matches no string that JSON can hold unescaped")
    return '"' + ast_to_regex(node) + '"'


class _Builder:
    def __init__(self, whitespace: str) -> None:
        self.ws = whitespace

    def build(self, schema: Any, where: str) -> str:
        if schema is True or schema == {}:
            raise GenlabError(f"schema at {where}: an unconstrained value (true / {{}}) is not supported; give a type")
        if not isinstance(schema, dict):
            raise GenlabError(f"schema at {where}: expected an object, got {type(schema).__name__}")
        types = schema.get("type")
        if isinstance(types, list):
            allowed = set(GENERIC_KEYWORDS).union(*(TYPE_KEYWORDS.get(t, set()) for t in types))
        elif types is not None:
            if types not in TYPE_KEYWORDS:
                raise GenlabError(f"schema at {where}: unsupported type {types!r}")
            allowed = GENERIC_KEYWORDS | TYPE_KEYWORDS[types]
        else:
            allowed = GENERIC_KEYWORDS
        unknown = sorted(set(schema) - allowed)
        if unknown:
            raise GenlabError(f"schema at {where}: unsupported keyword(s) {', '.join(unknown)} "
                              f"(supported here: {', '.join(sorted(allowed - ANNOTATIONS))})")
        if "const" in schema:
            if len(schema) - len(set(schema) & ANNOTATIONS) != 1:
                raise GenlabError(f"schema at {where}: const together with other keywords is not supported")
            return _literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise GenlabError(f"schema at {where}: enum must be a non-empty list")
            if len(schema) - len(set(schema) & ANNOTATIONS) != 1:
                raise GenlabError(f"schema at {where}: enum together with other keywords is not supported")
            return "(?:" + "|".join(_literal(v) for v in values) + ")"
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise GenlabError(f"schema at {where}: anyOf must be a non-empty list")
            if len(schema) - len(set(schema) & ANNOTATIONS) != 1:
                raise GenlabError(f"schema at {where}: anyOf together with other keywords is not supported")
            return "(?:" + "|".join(self.build(o, f"{where}/anyOf/{i}") for i, o in enumerate(options)) + ")"
        if types is None:
            raise GenlabError(f"schema at {where}: needs a type, enum, const or anyOf")
        if isinstance(types, list):
            if not types:
                raise GenlabError(f"schema at {where}: type list is empty")
            options = []
            for t in types:  # one branch per type, each with the keywords that belong to it
                options.append(self.build({k: v for k, v in schema.items() if k in TYPE_KEYWORDS.get(t, ())} | {"type": t},
                                          where))
            return "(?:" + "|".join(options) + ")"
        return getattr(self, f"_{types}")(schema, where)

    def _string(self, schema: dict, where: str) -> str:
        lo = _nonneg_int(schema, "minLength", where) or 0
        hi = _nonneg_int(schema, "maxLength", where)
        if hi is not None and hi < lo:
            raise GenlabError(f"schema at {where}: maxLength {hi} < minLength {lo}")
        if "pattern" in schema:
            if "minLength" in schema or "maxLength" in schema:
                raise GenlabError(f"schema at {where}: pattern together with minLength/maxLength is not supported")
            return _pattern_regex(schema["pattern"], where)
        return '"' + STRING_CHAR + _repeat_suffix(lo, hi) + '"'

    def _integer(self, schema: dict, where: str) -> str:
        return INTEGER

    def _number(self, schema: dict, where: str) -> str:
        return NUMBER

    def _boolean(self, schema: dict, where: str) -> str:
        return "(?:true|false)"

    def _null(self, schema: dict, where: str) -> str:
        return "null"

    def _array(self, schema: dict, where: str) -> str:
        if "items" not in schema:
            raise GenlabError(f"schema at {where}: arrays need an `items` schema")
        lo = _nonneg_int(schema, "minItems", where) or 0
        hi = _nonneg_int(schema, "maxItems", where)
        if hi is not None and hi < lo:
            raise GenlabError(f"schema at {where}: maxItems {hi} < minItems {lo}")
        item = self.build(schema["items"], f"{where}/items")
        ws = self.ws
        if hi == 0:
            return rf"\[{ws}\]"
        more = f"(?:{ws},{ws}{item}){_repeat_suffix(max(lo - 1, 0), None if hi is None else hi - 1)}"
        body = f"{item}{more}"
        if lo == 0:
            body = f"(?:{body})?"
        return rf"\[{ws}{body}{ws}\]"

    def _object(self, schema: dict, where: str) -> str:
        props = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict) or not isinstance(required, list):
            raise GenlabError(f"schema at {where}: properties must be an object and required a list")
        if not isinstance(extra, bool):
            raise GenlabError(f"schema at {where}: additionalProperties as a schema is not supported (use true/false)")
        missing = [r for r in required if r not in props]
        if missing:
            raise GenlabError(f"schema at {where}: required {missing} not declared in properties")
        ws = self.ws
        items = [(f"{_literal(name)}{ws}:{ws}{self.build(sub, f'{where}/properties/{name}')}", name in required)
                 for name, sub in props.items()]

        def rest(i: int, first: bool) -> str:
            """Properties i.. given whether one was already written (then a comma goes first)."""
            if i == len(items):
                return ""
            text, is_required = items[i]
            if not first:
                head = f"{ws},{ws}{text}"
                return head + rest(i + 1, False) if is_required else f"(?:{head})?" + rest(i + 1, False)
            if is_required:
                return text + rest(i + 1, False)
            return f"(?:{text}{rest(i + 1, False)}|{rest(i + 1, True)})"

        return rf"\{{{ws}{rest(0, True)}{ws}\}}"


def schema_to_regex(schema: dict | str, whitespace: str = DEFAULT_WHITESPACE) -> str:
    """A regex whose matches are JSON documents valid under `schema` (dict or JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise GenlabError(f"schema is not valid JSON: {exc}") from exc
    parse_regex(whitespace)  # fail early on a bad whitespace pattern
    return _Builder(whitespace).build(schema, "#")
