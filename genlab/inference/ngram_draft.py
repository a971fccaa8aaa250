"""Prompt-lookup (n-gram) drafting: propose the tokens that followed the latest earlier occurrence
of the sequence's last n tokens.

Handbook VI (speculative decoding). Saxena 2023, "Prompt Lookup Decoding" (transformers'
`prompt_lookup_num_tokens`, vLLM's "ngram" speculator). No draft model: when the output copies
from its context (code edits, summaries quoting the source, repeated boilerplate) the continuation
of an earlier match is a good guess, and a wrong guess costs only the verification slots.

Matching rule: try n = max_ngram down to min_ngram; for the first n whose suffix occurs earlier
(occurrences may overlap the suffix, but must leave at least one following token), take the
LATEST such occurrence and propose the `num_tokens` tokens that follow it. The copy may run into
the tokens it is proposing (an overlapping copy, as in LZ77), so when the match is only P tokens
from the end the proposal repeats those P tokens: a period-P loop is drafted in full rather than
P tokens at a time. transformers takes the earliest occurrence and stops at the end of the
context; the latest occurrence is the more recent context, which copies better when the text is
being rewritten.

    python -c "from genlab.inference.ngram_draft import propose_ngram; print(propose_ngram([1,2,3,4,1,2], 3))"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from genlab.errors import ConfigError


@dataclass
class NgramConfig:
    """How to look up drafts: suffix lengths tried, longest first."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(f"NgramConfig: need 1 <= min_ngram <= max_ngram, got "
                              f"min_ngram={self.min_ngram}, max_ngram={self.max_ngram}")


def propose_ngram(tokens: Sequence[int] | np.ndarray, num_tokens: int, max_ngram: int = 3,
                  min_ngram: int = 1) -> list[int]:
    """Up to `num_tokens` draft ids continuing `tokens` (prompt + output so far); [] when no match."""
    if num_tokens <= 0:
        return []
    seq = np.asarray(tokens, dtype=np.int64)
    length = len(seq)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = seq[length - n:]
        # Windows starting at 0 .. length-n-1: each leaves at least one token after it (the suffix
        # itself, starting at length-n, is excluded).
        windows = sliding_window_view(seq[:length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            period = length - start  # tokens between the match's continuation and the end
            return seq[start + np.arange(num_tokens) % period].tolist()
    return []


def propose_ngram_reference(tokens: Sequence[int], num_tokens: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """The same rule as a plain Python loop (the test oracle for `propose_ngram`)."""
    seq = list(tokens)
    for n in range(max_ngram, min_ngram - 1, -1):
        if n >= len(seq):
            continue
        suffix = seq[-n:]
        for i in range(len(seq) - n - 1, -1, -1):
            if seq[i:i + n] == suffix:
                extended = list(seq)
                for j in range(max(num_tokens, 0)):  # copy token by token; the copy may read itself
                    extended.append(extended[i + n + j])
                return extended[len(seq):]
    return []
