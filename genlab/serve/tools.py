"""OpenAI tools and response formats mapped onto genlab's chat conventions and structured outputs.

Handbook VII (function calling) and V (structured outputs). genlab's chat models call a tool by
replying with one JSON object `{"tool": NAME, "arguments": {...}}` (genlab.data.world.extras), after
a system prompt that lists the tools; the result comes back as a {"role": "tool"} message. So:

- `tools` become that system prompt (the exact wording of TOOL_SYSTEM_PROMPT, tool by tool);
- assistant `tool_calls` in the history are rendered back as those JSON objects;
- a reply that parses as such an object naming a known tool becomes `tool_calls`
  (finish_reason "tool_calls");
- tool_choice "required" or a named function constrains decoding (JSON Schema -> regex ->
  token index) to the tool-call object, so even an untrained model returns a well-formed call;
- response_format json_schema compiles the schema; json_object uses a fixed regex for JSON
  objects nested at most two levels deep (a regular language must bound nesting).

    python -c "from genlab.serve.tools import tool_call_schema; print(tool_call_schema([{'name': 'f', 'parameters': None}]))"
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from genlab.data.world.extras import TOOL_SYSTEM_PROMPT
from genlab.inference.structured.json_schema import NUMBER, STRING_CHAR

# 'You can use tools. To call one, reply with only a JSON object {...}. Tools: '
TOOL_PROMPT_HEAD = TOOL_SYSTEM_PROMPT[:TOOL_SYSTEM_PROMPT.index("Tools: ") + len("Tools: ")]
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def describe_tool(name: str, description: str | None, parameters: dict | None) -> str:
    """`name(arg, ...) description`, the way genlab's tool prompt lists a tool."""
    props = (parameters or {}).get("properties") or {}
    text = f"{name}({', '.join(props)})"
    return f"{text} {description.strip()}" if description and description.strip() else text


def tools_system_prompt(functions: Sequence[Any]) -> str:
    """The system prompt announcing `functions` (objects with name, description, parameters)."""
    return TOOL_PROMPT_HEAD + "; ".join(describe_tool(f.name, f.description, f.parameters) for f in functions)


def tool_call_schema(functions: Sequence[Any]) -> dict[str, Any]:
    """JSON Schema of a genlab tool-call object for any of `functions` (anyOf when several)."""
    options = []
    for f in functions:
        name = f["name"] if isinstance(f, dict) else f.name
        params = (f.get("parameters") if isinstance(f, dict) else f.parameters) or EMPTY_PARAMETERS
        params = {k: v for k, v in params.items() if k != "strict"}
        options.append({"type": "object", "properties": {"tool": {"const": name}, "arguments": params},
                        "required": ["tool", "arguments"]})
    return options[0] if len(options) == 1 else {"anyOf": options}


def render_tool_calls(tool_calls: Sequence[Any]) -> str:
    """Assistant tool_calls as the JSON objects a genlab model writes (one per line).

    ValueError when a call's `arguments` is not a JSON object.
    """
    lines = []
    for call in tool_calls:
        arguments = json.loads(call.function.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError(f"tool call {call.function.name!r}: arguments must be a JSON object")
        lines.append(json.dumps({"tool": call.function.name, "arguments": arguments}, ensure_ascii=False))
    return "\n".join(lines)


def parse_tool_call(text: str, tool_names: Sequence[str]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) if `text` is exactly one call of a known tool, else None."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    name = obj.get("tool", obj.get("name"))
    arguments = obj.get("arguments", {})
    if name not in tool_names or not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False)


def _json_object_regex(whitespace: str = r"[ ]?") -> str:
    ws = whitespace
    string = f'"{STRING_CHAR}*"'
    primitive = f"(?:{string}|{NUMBER}|true|false|null)"

    def obj(value: str) -> str:
        member = f"{string}{ws}:{ws}{value}"
        return rf"\{{{ws}(?:{member}(?:{ws},{ws}{member})*)?{ws}\}}"

    def arr(value: str) -> str:
        return rf"\[{ws}(?:{value}(?:{ws},{ws}{value})*)?{ws}\]"

    nested = f"(?:{primitive}|{obj(primitive)}|{arr(primitive)})"
    return obj(nested)


JSON_OBJECT_REGEX = _json_object_regex()
