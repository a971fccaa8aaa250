"""Chat format: role special tokens, a renderer with a loss mask, and the same format as a Jinja template.

Handbook IV (instruction fine-tuning). Ouyang et al. 2022 (InstructGPT) train only on the
assistant's replies; the format follows nanochat / ChatML in spirit:

    <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|><|tool|>...<|end|>...

`render_chat` returns token ids and a loss mask that is 1 only on assistant content tokens and
the assistant's closing `<|end|>` (so the model learns to stop), never on system/user/tool turns
or role tokens. Message contents are encoded with `encode_ordinary`, so text such as "<|end|>"
typed by a user is ordinary bytes, never a control token.

`CHAT_TEMPLATE` is the same format in Jinja for Hugging Face's `apply_chat_template`; its
`{% generation %}` block marks the assistant spans, so `return_assistant_tokens_mask=True` (and
trl's `assistant_only_loss`) give the same mask as `render_chat`. `save_tokenizer_dir` writes
tokenizer.json + tokenizer_config.json + special_tokens_map.json, which `AutoTokenizer` loads.
HF tokenizes special-token text inside contents as control tokens unless called with
`sanitize_control_tokens=True`; genlab always treats contents as plain text.

    python -m pytest -q tests/data/test_chat.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from genlab.atomic import write_text
from genlab.errors import GenlabError, TokenizerError

BOS = "<|bos|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (BOS, SYSTEM, USER, ASSISTANT, TOOL, END)

ROLE_TOKENS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL}
ROLES: tuple[str, ...] = tuple(ROLE_TOKENS)
DEFAULT_MODEL_MAX_LENGTH = 2048

# One line, no whitespace between tags: Jinja would render any whitespace outside {{ }} as text.
# Role check mirrors render_chat's GenlabError (raise_exception is provided by transformers).
CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown chat role ' ~ message['role'] ~ '; expected system, user, assistant or tool') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] ~ '<|end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' ~ message['role'] ~ '|>' ~ message['content'] ~ '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def add_chat_tokens(tokenizer) -> dict[str, int]:
    """Register the chat special tokens (those not yet present); return name -> id for all six."""
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        tokenizer.add_special_tokens(missing)
    return chat_token_ids(tokenizer)


def chat_token_ids(tokenizer) -> dict[str, int]:
    """name -> id of the chat special tokens; TokenizerError if the tokenizer lacks any."""
    specials: Mapping[str, int] = tokenizer.special_tokens
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in specials]
    if missing:
        raise TokenizerError(f"tokenizer lacks chat special tokens {missing}; call add_chat_tokens(tokenizer)")
    return {t: int(specials[t]) for t in CHAT_SPECIAL_TOKENS}


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    """GenlabError naming the first message whose role or content is unusable."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise GenlabError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise GenlabError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLE_TOKENS:
            raise GenlabError(f"message {i} has unknown chat role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise GenlabError(f"message {i} ({role}) needs a string 'content', got {message.get('content')!r}")


def render_chat(messages: Sequence[Mapping[str, Any]], tokenizer,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 = train on this token) for a conversation.

    add_generation_prompt appends `<|assistant|>` (mask 0), the prompt for the model's reply.
    """
    validate_messages(messages)
    special = chat_token_ids(tokenizer)
    ids: list[int] = [special[BOS]]
    mask: list[int] = [0]
    for message in messages:
        is_reply = message["role"] == "assistant"
        content = tokenizer.encode_ordinary(message["content"])
        ids.append(special[ROLE_TOKENS[message["role"]]])
        ids.extend(content)
        ids.append(special[END])
        mask.append(0)
        mask.extend([int(is_reply)] * (len(content) + 1))  # the content and its closing <|end|>
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(0)
    return ids, mask


def render_chat_text(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """The conversation as text, exactly what CHAT_TEMPLATE renders (for logs and parity tests)."""
    validate_messages(messages)
    parts = [BOS]
    for message in messages:
        parts += [ROLE_TOKENS[message["role"]], message["content"], END]
    if add_generation_prompt:
        parts.append(ASSISTANT)
    return "".join(parts)




def tokenizer_config(model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict[str, Any]:
    """tokenizer_config.json contents for a chat tokenizer (the tokens live in tokenizer.json)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "bos_token": BOS,
        "eos_token": END,
        # <|end|> doubles as padding: padded positions are never trained on (targets -100).
        "pad_token": END,
        "model_max_length": int(model_max_length),
        "add_bos_token": False,  # the chat template writes <|bos|> itself
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }


def save_tokenizer_dir(tokenizer, directory: str | os.PathLike,
                       model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> Path:
    """Write tokenizer.json (tokenizer.save), tokenizer_config.json and special_tokens_map.json."""
    chat_token_ids(tokenizer)  # fail before writing anything if the chat tokens are missing
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    config = tokenizer_config(model_max_length)
    special_map = {"bos_token": BOS, "eos_token": END, "pad_token": END,
                   "additional_special_tokens": [t for t in CHAT_SPECIAL_TOKENS if t not in (BOS, END)]}
    write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")
    return out
