"""Models with known outputs for the eval tests, and small builders (imported by the tests).

`FixedDistributionModel` and `ScriptedModel` give hand-checkable log-probabilities and greedy
outputs; `tiny_transformer` is a real genlab Transformer for batching-vs-unbatched checks.
"""

import torch
from torch import nn

from genlab.data.chat import add_chat_tokens
from genlab.models import ModelConfig, Transformer
from genlab.tokenizers.bpe import BPETokenizer


class FixedDistributionModel(nn.Module):
    """Predicts the same next-token distribution (given as log-probs [V]) at every position."""

    def __init__(self, logprobs: torch.Tensor, max_seq_len: int = 512) -> None:
        super().__init__()
        self.register_buffer("logprobs", logprobs.float())
        self.config = ModelConfig(vocab_size=logprobs.numel(), max_seq_len=max_seq_len, n_layer=1, d_model=8,
                                  n_head=1)

    def forward(self, idx: torch.Tensor, cache=None, positions=None, segments=None) -> torch.Tensor:
        return self.logprobs.expand(*idx.shape, -1).clone()


class _CountingCache:
    def __init__(self) -> None:
        self.length = 0

    def advance(self, n: int) -> None:
        self.length += n


class ScriptedModel(nn.Module):
    """Greedy decoding of the i-th prompt seen emits scripts[i % len(scripts)] (token ids), then `end_id`.

    Checks that generation uses the KV cache (prefill once, then one token per step) and records
    every prompt it was given.
    """

    def __init__(self, vocab_size: int, scripts: list[list[int]], end_id: int, max_seq_len: int = 256) -> None:
        super().__init__()
        self.scripts, self.end_id = [list(s) for s in scripts], end_id
        self.config = ModelConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, n_layer=1, d_model=8, n_head=1)
        self.prompts: list[list[int]] = []
        self._rows: list[list[int]] = []
        self._prompt_len = 0

    def new_cache(self, batch_size: int, max_len: int | None = None) -> _CountingCache:
        return _CountingCache()

    def forward(self, idx: torch.Tensor, cache=None, positions=None, segments=None) -> torch.Tensor:
        assert cache is not None, "generation must use the KV cache"
        if cache.length == 0:  # prefill: new prompts, one per row, scripts assigned in order
            self._rows = [self.scripts[(len(self.prompts) + r) % len(self.scripts)] for r in range(idx.shape[0])]
            self._prompt_len = idx.shape[1]
            self.prompts += idx.tolist()
        else:
            assert idx.shape[1] == 1, "after the prefill, one new token per step"
        step = cache.length + idx.shape[1] - self._prompt_len  # tokens generated before this prediction
        logits = torch.zeros(*idx.shape, self.config.vocab_size)
        for row, script in enumerate(self._rows):
            logits[row, -1, script[step] if step < len(script) else self.end_id] = 10.0
        cache.advance(idx.shape[1])
        return logits


def byte_tokenizer() -> BPETokenizer:
    """No merges: every UTF-8 byte is one token, so token counts are byte counts."""
    tok = BPETokenizer([bytes([b]) for b in range(256)], [])
    add_chat_tokens(tok)
    return tok


def tiny_transformer(vocab_size: int, max_seq_len: int = 128, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig.llama_like(vocab_size=vocab_size, d_model=32, n_head=4, n_layer=2, max_seq_len=max_seq_len)
    return Transformer(config).eval()
