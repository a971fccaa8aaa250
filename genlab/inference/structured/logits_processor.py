"""Constrained decoding: mask logits to the automaton's allowed tokens, advance with each choice.

Handbook V (structured outputs); Willard & Louf (2023), Outlines, algorithm 2 (masked sampling
over the precomputed index). `ConstrainedDecoder` is the stateful per-sequence part (one state
id); `generate_structured` is a KV-cached decoding loop that uses it.

EOS is allowed only in accepting states, and forced once nothing else can follow. Budget-aware
(a choice): given the tokens left, the decoder also drops tokens after which the pattern could
not be finished in time (index.steps_to_accept), so a run that starts with enough budget always
ends in an accepting state, even from a random model. Tokens past the index's vocabulary (a
model with a padded embedding) are never allowed.

    python -m pytest -q tests/inference/test_structured.py -k generate
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genlab.errors import GenlabError
from genlab.inference.generate import _device_of, clip_max_tokens
from genlab.inference.sampling import SamplingParams, sample_next
from genlab.inference.structured.index import UNREACHABLE, Constraint, TokenIndex, Vocabulary, index_for


class ConstrainedDecoder:
    """Tracks one sequence's automaton state and masks its logits."""

    def __init__(self, index: TokenIndex, eos_id: int) -> None:
        self.index = index
        self.eos_id = int(eos_id)
        self.state = index.start
        self.finished = False
        finite = index.steps_to_accept[index.steps_to_accept < UNREACHABLE]
        self._longest_need = int(finite.max())  # with more tokens left than this, budgets never bind

    def _blocked_rows(self, size: int) -> torch.Tensor:
        """Precomputed per-state "masked out" rows for a logits width (EOS open in accepting states)."""
        key = (size, self.eos_id)
        if key not in self.index.row_cache:  # shared by every decoder of this index
            if not 0 <= self.eos_id < size:
                raise GenlabError(f"eos id {self.eos_id} is outside the vocabulary of {size}")
            index = self.index
            allowed = torch.zeros(index.next_state.shape[0], size, dtype=torch.bool)
            n = min(size, index.vocab_size)
            allowed[:, :n] = index.mask[:, :n]
            allowed[:, self.eos_id] |= torch.from_numpy(index.dfa.accepting)
            self.index.row_cache[key] = ~allowed
        return self.index.row_cache[key]

    def reset(self) -> None:
        """Back to the start state, for a new sequence."""
        self.state, self.finished = self.index.start, False

    @property
    def is_accepting(self) -> bool:
        return self.index.is_accepting(self.state)

    def allowed_mask(self, vocab_size: int | None = None, remaining: int | None = None) -> torch.Tensor:
        """Bool [vocab_size] of the tokens allowed now; `remaining`: tokens left including this one."""
        index = self.index
        size = vocab_size or max(index.vocab_size, self.eos_id + 1)
        mask = torch.zeros(size, dtype=torch.bool)
        if self.finished:
            mask[self.eos_id] = True
            return mask
        row = index.mask[self.state]
        n = min(size, index.vocab_size)
        mask[:n] = row[:n]
        if remaining is not None:
            if remaining < 1:
                raise GenlabError("no tokens remain")
            after = index.steps_to_accept[index.next_state[self.state, :n]]
            mask[:n] &= torch.from_numpy(after <= remaining - 1)
        if self.is_accepting:
            if not 0 <= self.eos_id < size:
                raise GenlabError(f"eos id {self.eos_id} is outside the vocabulary of {size}")
            mask[self.eos_id] = True
        if not mask.any():
            raise GenlabError(f"pattern {index.dfa.pattern!r} cannot be finished within {remaining} more tokens")
        return mask

    def mask_logits(self, logits: torch.Tensor, remaining: int | None = None) -> torch.Tensor:
        """logits [..., V] with disallowed tokens set to -inf (a new tensor)."""
        if self.finished or (remaining is not None and remaining - 1 < self._longest_need):
            blocked = ~self.allowed_mask(logits.shape[-1], remaining)
        else:  # fast path: one precomputed row, no budget can bind
            blocked = self._blocked_rows(logits.shape[-1])[self.state]
        return logits.masked_fill(blocked.to(logits.device), float("-inf"))

    def advance(self, token_id: int) -> None:
        """Move past `token_id`; EOS (allowed only when accepting) finishes the sequence."""
        token_id = int(token_id)
        if self.finished:
            raise GenlabError("the constrained sequence already ended")
        if token_id == self.eos_id and self.is_accepting:
            self.finished = True
            return
        if token_id >= self.index.vocab_size:
            raise GenlabError(f"token {token_id} is outside the constrained vocabulary")
        self.state = self.index.advance(self.state, token_id)


@dataclass
class StructuredResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": EOS in an accepting state; "length": budget used up (output complete)


def generate_structured(model, tokenizer, prompt_ids: list[int], constraint: Constraint | TokenIndex,
                        max_tokens: int, eos_id: int, temperature: float = 1.0, top_p: float = 1.0,
                        seed: int | None = None, vocabulary: Vocabulary | None = None) -> StructuredResult:
    """Generate a completion that matches `constraint` (Regex, Choice, JsonSchema or a prebuilt index).

    `tokenizer` supplies token bytes (BPETokenizer, or pass `vocabulary` and tokenizer=None).
    The output always matches: budget-aware masking ends it in an accepting state by max_tokens;
    GenlabError if the constraint needs more tokens than the budget allows.
    """
    vocab = vocabulary or Vocabulary.from_tokenizer(tokenizer)
    index = index_for(constraint, vocab)
    prompt = [int(t) for t in prompt_ids]
    budget = clip_max_tokens(len(prompt), max_tokens, model.config.max_seq_len)
    need = int(index.steps_to_accept[index.start])
    if need > budget:
        raise GenlabError(f"constraint needs at least {need} tokens but only {budget} may be generated")
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed, max_tokens=budget)
    device = _device_of(model)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None and not params.greedy else None
    decoder = ConstrainedDecoder(index, eos_id)
    out: list[int] = []
    finish = "length"
    with torch.no_grad():
        cache = model.new_cache(1, len(prompt) + budget)
        logits = model(torch.tensor([prompt], dtype=torch.long, device=device), cache=cache)[0, -1]
        while len(out) < budget:
            token = int(sample_next(decoder.mask_logits(logits, budget - len(out)), params, generator))
            decoder.advance(token)
            if decoder.finished:
                finish = "stop"
                break
            out.append(token)
            if len(out) < budget:
                logits = model(torch.tensor([[token]], dtype=torch.long, device=device), cache=cache)[0, -1]
    assert decoder.is_accepting, "budget-aware masking guarantees an accepting end state"
    text = b"".join(vocab.tokens[t] for t in out).decode("utf-8")
    return StructuredResult(text, out, finish)
