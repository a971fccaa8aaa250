"""Bits per byte (and perplexity) of held-out text: a tokenizer-independent language-modelling score.

Handbook V (benchmarks). Gao et al. 2020 ("The Pile") and lm-evaluation-harness report
bits-per-byte = total negative log-likelihood in nats / (ln 2 * number of UTF-8 bytes), so models
with different tokenizers compare fairly (a tokenizer with longer tokens has fewer, harder tokens;
the byte count does not change).

Each text is scored as `<|bos|>` + its tokens, so every token of the text is predicted and every
byte counted. Texts longer than `seq_len` predictions are split like lm-evaluation-harness's
`loglikelihood_rolling`: disjoint windows of `seq_len` predicted tokens, each conditioned on the
window itself plus the one token before it (no longer context: cheaper, slightly pessimistic).

    python -m pytest -q tests/evals/test_bits_per_byte.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from genlab.errors import ConfigError, GenlabError
from genlab.evals.common import bos_id_of, eval_mode, score_windows


@dataclass
class TextScore:
    """Totals over a set of texts: NLL in nats, predicted tokens, UTF-8 bytes."""

    nll_nats: float
    n_tokens: int
    n_bytes: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / (math.log(2) * self.n_bytes)

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll_nats / self.n_tokens)

    def as_dict(self) -> dict[str, float | int]:
        return {"bpb": self.bits_per_byte, "token_perplexity": self.token_perplexity,
                "nll_nats": self.nll_nats, "tokens": self.n_tokens, "bytes": self.n_bytes}


def rolling_windows(ids: list[int], bos_id: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that predict every id of `ids` exactly once, from `<|bos|>` on."""
    sequence = [bos_id, *ids]
    windows = []
    for k in range(0, len(ids), seq_len):
        end = min(k + seq_len, len(ids))  # predict sequence[k+1 .. end] from sequence[k .. end-1]
        windows.append((sequence[k:end], sequence[k + 1:end + 1]))
    return windows


def score_texts(model, tokenizer, texts: Iterable[str], seq_len: int | None = None, batch_size: int = 8,
                bos_id: int | None = None) -> TextScore:
    """Sum of token NLL over `texts` (empty texts are skipped), with token and byte counts."""
    seq_len = seq_len or model.config.max_seq_len
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    bos = bos_id_of(tokenizer, bos_id)
    windows: list[tuple[list[int], list[int]]] = []
    n_bytes = n_tokens = 0
    for text in texts:
        ids = tokenizer.encode_ordinary(text)
        if not ids:
            continue
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
        windows += rolling_windows(ids, bos, seq_len)
    if n_bytes == 0:
        raise GenlabError("bits_per_byte needs at least one non-empty text")
    with eval_mode(model):
        logprobs = score_windows(model, windows, batch_size)
    nll = -float(sum(lp.sum() for lp in logprobs))
    return TextScore(nll, n_tokens, n_bytes)


def bits_per_byte(model, tokenizer, texts: Iterable[str], seq_len: int | None = None, batch_size: int = 8,
                  bos_id: int | None = None) -> float:
    """Sum of token NLL in nats / (ln 2 * UTF-8 bytes) over `texts` (lower is better)."""
    return score_texts(model, tokenizer, texts, seq_len, batch_size, bos_id).bits_per_byte
