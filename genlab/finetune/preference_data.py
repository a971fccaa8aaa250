"""Preference pairs as tensors: chat-rendered prompts, completions with masks, held-out splits, reference log-probs.

Handbook IV (reward models, direct preference optimization). Rafailov et al. 2023 (DPO scores the completion
only); trl's preference format {"prompt": messages, "chosen": str, "rejected": str}.

A pair becomes two sequences that share the prompt: prompt = `render_chat(prompt, add_generation_prompt=True)`
(ends with `<|assistant|>`), completion = the encoded answer + `<|end|>` (so the stop is scored too, as SFT
trains it). A batch of b pairs is one right-padded [2b, T] tensor, chosen rows first then rejected rows (trl's
concatenated forward), with `completion_mask` (1 on completion tokens) and `attention_mask` (1 on real tokens).
Reference log-probs can be computed once before training (`precompute_reference`): the frozen reference
never needs to stay in memory, and each step saves a forward.

    python -m pytest -q tests/finetune/test_preference_trainer.py -k data
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch

from genlab.data.chat import END, render_chat
from genlab.errors import ConfigError, GenlabError
from genlab.finetune.logprobs import sequence_logprobs

Tensor = torch.Tensor


def prompt_messages(prompt: Any) -> list[dict]:
    """A pair's prompt as chat messages: a list of {"role", "content"} as is, a plain string as one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return prompt
    raise GenlabError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or trl's conversational form [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise GenlabError(f"a completion must be a string or a list with an assistant message, got {completion!r:.80}")


def prompt_key(prompt: Any) -> str:
    """The text that identifies a prompt (for splits): the contents of its messages joined."""
    return "\x1f".join(m.get("content", "") for m in prompt_messages(prompt))


def held_out_split(items: Sequence[Mapping], fraction: float, seed: int = 0,
                   key: Callable[[Mapping], str] | None = None) -> tuple[list[Mapping], list[Mapping]]:
    """(train, held_out): an item is held out when crc32(seed, key(item)) falls in the lowest `fraction`.

    Deterministic, independent of order and list length, and by prompt text (default key: the "prompt" or
    "messages" field), so the same question never lands on both sides.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in (0, 1), got {fraction}")
    key = key or (lambda item: prompt_key(item["prompt"] if "prompt" in item else item["messages"]))
    train, held = [], []
    for item in items:
        bucket = zlib.crc32(f"{seed}:{key(item)}".encode()) / 2**32
        (held if bucket < fraction else train).append(item)
    if not train or not held:
        raise ConfigError(f"split of {len(items)} items at fraction {fraction} leaves one side empty")
    return train, held


def encode_prompt(prompt: Any, tokenizer) -> list[int]:
    return render_chat(prompt_messages(prompt), tokenizer, add_generation_prompt=True)[0]


def encode_completion(completion: Any, tokenizer) -> list[int]:
    return tokenizer.encode_ordinary(completion_text(completion)) + [tokenizer.special_tokens[END]]


def pad_rows(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, completion_mask, attention_mask), each [N, T] long, right-padded to the longest prompt+completion."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lengths)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(prompts), T), dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tokens[i, :len(p) + len(c)] = torch.tensor(p + c)
        completion_mask[i, len(p):len(p) + len(c)] = 1
        attention_mask[i, :len(p) + len(c)] = 1
    return tokens, completion_mask, attention_mask


@dataclass
class PairBatch:
    """b pairs as 2b rows: rows [:b] chosen, rows [b:] rejected."""

    tokens: Tensor  # [2b, T]
    completion_mask: Tensor  # [2b, T]
    attention_mask: Tensor  # [2b, T]
    ref_logps: Tensor | None = None  # [2b] precomputed reference sums, same row order
    kl_tokens: Tensor | None = None  # [2b, T'] mismatched prompt/completion rows for KTO's reference point
    kl_completion_mask: Tensor | None = None
    ref_kl_logps: Tensor | None = None  # [2b]

    @property
    def n_pairs(self) -> int:
        return self.tokens.shape[0] // 2


class PreferenceData:
    """Encoded pairs ready for batching. `pairs`: dicts with "prompt", "chosen", "rejected" (trl's format).

    Sequences longer than `max_len` lose completion tokens from the end (the prompt is kept whole); a prompt
    that leaves no room for one completion token raises. For KTO, pair i's mismatched (KL) rows are prompt i
    with the completions of pair (i + 1) mod N: fixed, so their reference log-probs can be precomputed too.
    """

    def __init__(self, pairs: Sequence[Mapping], tokenizer, max_len: int, pad_id: int | None = None) -> None:
        if not pairs:
            raise ConfigError("no preference pairs")
        self.pad_id = tokenizer.special_tokens[END] if pad_id is None else pad_id
        self.max_len = max_len
        self.prompts, self.chosen, self.rejected = [], [], []
        for n, pair in enumerate(pairs):
            missing = {"prompt", "chosen", "rejected"} - set(pair)
            if missing:
                raise GenlabError(f"preference pair {n} lacks {sorted(missing)}")
            prompt = encode_prompt(pair["prompt"], tokenizer)
            room = max_len - len(prompt)
            if room < 1:
                raise GenlabError(f"preference pair {n}: prompt has {len(prompt)} tokens, max_len is {max_len}")
            self.prompts.append(prompt)
            self.chosen.append(encode_completion(pair["chosen"], tokenizer)[:room])
            self.rejected.append(encode_completion(pair["rejected"], tokenizer)[:room])
        margins = [pair.get("margin") for pair in pairs]
        if any(m is not None for m in margins) and any(m is None for m in margins):
            raise GenlabError("some preference pairs have a 'margin' and some do not")
        self.margins = None if margins[0] is None else torch.tensor([float(m) for m in margins])  # reward-model BT margins
        self.ref_logps: Tensor | None = None  # [N, 2] (chosen, rejected)
        self.ref_kl_logps: Tensor | None = None  # [N, 2]

    def __len__(self) -> int:
        return len(self.prompts)

    def _kl_rows(self, indices: list[int]) -> tuple[list[list[int]], list[list[int]]]:
        n = len(self)
        prompts, completions = [], []
        for side in (self.chosen, self.rejected):
            for i in indices:
                room = self.max_len - len(self.prompts[i])
                prompts.append(self.prompts[i])
                completions.append(side[(i + 1) % n][:room])
        return prompts, completions

    def batch(self, indices: Sequence[int] | Tensor, with_kl: bool = False) -> PairBatch:
        idx = [int(i) for i in indices]
        prompts = [self.prompts[i] for i in idx] * 2
        completions = [self.chosen[i] for i in idx] + [self.rejected[i] for i in idx]
        tokens, completion_mask, attention_mask = pad_rows(prompts, completions, self.pad_id)
        out = PairBatch(tokens, completion_mask, attention_mask)
        if self.ref_logps is not None:
            out.ref_logps = torch.cat([self.ref_logps[idx, 0], self.ref_logps[idx, 1]])
        if with_kl:
            out.kl_tokens, out.kl_completion_mask, _ = pad_rows(*self._kl_rows(idx), self.pad_id)
            if self.ref_kl_logps is not None:
                out.ref_kl_logps = torch.cat([self.ref_kl_logps[idx, 0], self.ref_kl_logps[idx, 1]])
        return out

    @torch.no_grad()
    def precompute_reference(self, model, batch_size: int = 32, with_kl: bool = False,
                             context: Callable[[], ContextManager] | None = None) -> None:
        """Store the reference's summed completion log-probs (and KTO's KL rows when `with_kl`).

        `model` is the reference (often the policy before training); `context` wraps each forward, e.g.
        `lambda: adapters_disabled(policy)` to score with a LoRA model's frozen base.
        """
        context = context or contextlib.nullcontext
        was_training = model.training
        model.eval()
        ref, ref_kl = torch.zeros(len(self), 2), torch.zeros(len(self), 2)
        device = next(model.parameters()).device
        for start in range(0, len(self), batch_size):
            idx = list(range(start, min(start + batch_size, len(self))))
            b = self.batch(idx, with_kl=with_kl)
            with context():
                lp = sequence_logprobs(model, b.tokens.to(device), b.completion_mask.to(device)).summed.cpu()
                ref[idx] = torch.stack(lp.chunk(2), dim=1)
                if with_kl:
                    kl = sequence_logprobs(model, b.kl_tokens.to(device), b.kl_completion_mask.to(device)).summed
                    ref_kl[idx] = torch.stack(kl.cpu().chunk(2), dim=1)
        model.train(was_training)
        self.ref_logps = ref
        self.ref_kl_logps = ref_kl if with_kl else None
