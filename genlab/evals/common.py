"""Shared helpers for the evals: eval mode, devices, token log-likelihoods of padded windows.

Handbook V (benchmarks). Gao et al., lm-evaluation-harness: every log-likelihood task reduces to
"sum of log p(target token | everything before it) over chosen tokens", which `score_windows`
computes for many (input, target) windows at once, right-padded in batches.

    python -m pytest -q tests/evals
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch

from genlab.data.chat import BOS, END
from genlab.errors import GenlabError, TokenizerError

IGNORE_INDEX = -100


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """model.eval() and no autograd inside; the training flag is restored afterwards."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def special_id(tokenizer, token: str) -> int | None:
    return tokenizer.special_tokens.get(token) if hasattr(tokenizer, "special_tokens") else None


def bos_id_of(tokenizer, bos_id: int | None = None) -> int:
    """The id every scored sequence starts with: `bos_id`, else the tokenizer's `<|bos|>`."""
    if bos_id is not None:
        return int(bos_id)
    found = special_id(tokenizer, BOS)
    if found is None:
        raise TokenizerError(f"tokenizer has no {BOS} token to condition the first token on; "
                             "add the chat tokens (genlab.data.chat.add_chat_tokens) or pass bos_id")
    return int(found)


def stop_ids_of(tokenizer) -> list[int]:
    """Ids that end a generation: `<|end|>` (end of an assistant turn) and `<|bos|>` (a new document)."""
    return [i for i in (special_id(tokenizer, END), special_id(tokenizer, BOS)) if i is not None]


def token_bytes_fn(tokenizer) -> Callable[[int], bytes]:
    """id -> bytes, whether the tokenizer exposes `token_bytes` as a method or a list."""
    tb = tokenizer.token_bytes
    return tb if callable(tb) else tb.__getitem__


def question_of(item: Mapping) -> str:
    """The last user message of an item (the question being asked)."""
    for message in reversed(item.get("messages", [])):
        if message.get("role") == "user":
            return message["content"]
    raise GenlabError(f"eval item has no user message: {item!r:.200}")


def answer_of(item: Mapping) -> str:
    """The reference answer: item["answer"], else the final assistant message (SFT conversations)."""
    if "answer" in item:
        return str(item["answer"])
    messages = item.get("messages", [])
    if messages and messages[-1].get("role") == "assistant":
        return messages[-1]["content"]
    raise GenlabError(f"item has neither 'answer' nor a final assistant message: {item!r:.200}")


def score_windows(model, windows: Sequence[tuple[list[int], list[int]]], batch_size: int) -> list[torch.Tensor]:
    """Per-token log-probabilities (float64) of each window's targets.

    A window is (inputs, targets) of equal length; targets[t] is scored from inputs[:t + 1], and
    a target of -100 is not scored (its entry is 0). Windows are sorted by length so each batch
    pads little; the results come back in the input order. Must run inside `eval_mode`.
    """
    device = device_of(model)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    out: list[torch.Tensor | None] = [None] * len(windows)
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start:start + batch_size]
        width = max(len(windows[i][0]) for i in chunk)
        inputs = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(chunk):
            inp, tgt = windows[i]
            assert len(inp) == len(tgt), "a window's inputs and targets must have the same length"
            inputs[row, :len(inp)] = torch.tensor(inp)
            targets[row, :len(tgt)] = torch.tensor(tgt)
        # Right padding is safe: causal attention never lets a real token see later padding.
        logits = model(inputs.to(device))
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        valid = targets != IGNORE_INDEX
        picked = logprobs.gather(-1, targets.clamp(min=0).to(device)[..., None])[..., 0].double().cpu()
        picked = torch.where(valid, picked, torch.zeros((), dtype=torch.float64))
        for row, i in enumerate(chunk):
            out[i] = picked[row, :len(windows[i][0])]
    return out  # type: ignore[return-value]
