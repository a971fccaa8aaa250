"""Next-token sampling: repetition penalty, temperature, top-k, top-p (nucleus), min-p, greedy.

Handbook V (sampling). Holtzman et al. 2019 (nucleus sampling, "The Curious Case of Neural Text
Degeneration"); Nguyen et al. 2024 (min-p sampling); Keskar et al. 2019 (CTRL repetition penalty).
Every filter is a pure function on logits [B, V] (or [V]) that returns new logits with the removed
tokens set to -inf; `sample_next` chains them in Hugging Face transformers' order
(repetition penalty -> temperature -> top-k -> top-p -> min-p), so tests hold each one equal to
the matching transformers logits processor/warper.

    python -m pytest -q tests/inference/test_sampling.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from genlab.errors import ConfigError

NEG_INF = float("-inf")


@dataclass
class SamplingParams:
    """How to pick each next token (OpenAI/vLLM-style names). temperature == 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0.0: off
    repetition_penalty: float = 1.0  # 1.0: off; > 1 discourages tokens already in prompt/output
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings; not included in the output text
    stop_token_ids: list[int] = field(default_factory=list)  # extra end-of-sequence ids
    seed: int | None = None  # None: draw from torch's global generator
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token's logprob + top-k alternatives

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"SamplingParams.{name}={getattr(self, name)!r}: must be {rule}")

        if not self.temperature >= 0.0 or self.temperature == float("inf"):
            raise bad("temperature", "a finite number >= 0 (0 means greedy)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 disables top-k)")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "in (0, 1] (1 disables top-p)")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "in [0, 1] (0 disables min-p)")
        if not 0.0 < self.repetition_penalty < float("inf"):
            raise bad("repetition_penalty", "a finite number > 0 (1 disables it)")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "an integer >= 1")
        if isinstance(self.stop, str):  # a common slip: stop="\n" instead of stop=["\n"]
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "a list of non-empty strings")
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "a list of integers >= 0")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "an integer or None")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise bad("logprobs", "None or an integer >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# --- logits processors (pure: each returns a new tensor) -------------------------------------------

def _as_2d(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if logits.dim() == 1:
        return logits[None], True
    if logits.dim() != 2:
        raise ValueError(f"logits must be [V] or [B, V], got shape {tuple(logits.shape)}")
    return logits, False


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor | Sequence, penalty: float) -> torch.Tensor:
    """CTRL penalty (Keskar et al. 2019, as in HF): for every token id seen in prev_ids, a positive
    logit is divided by `penalty` and a negative one multiplied, so penalty > 1 always lowers it.

    Each distinct id is penalised once, however often it occurred. prev_ids: [L] for [V] logits,
    [B, L] for [B, V] logits.
    """
    if penalty == 1.0:
        return logits
    x, squeeze = _as_2d(logits)
    prev = torch.as_tensor(prev_ids, dtype=torch.long, device=x.device)
    if prev.numel() == 0:
        return logits
    prev = prev.reshape(x.shape[0], -1) if prev.dim() > 1 or squeeze else prev[None].expand(x.shape[0], -1)
    seen = x.gather(1, prev)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    out = x.scatter(1, prev, seen)  # duplicates write the same value, so repeats do not compound
    return out[0] if squeeze else out


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T. T < 1 sharpens, T > 1 flattens; T == 0 (greedy) is handled by `sample_next`."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 to scale logits, got {temperature} (use 0 only via sample_next)")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (k <= 0 or k >= V: keep all).

    Ties at the k-th value are all kept (as HF's TopKLogitsWarper), so more than k may survive.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    cumulative probability is >= top_p; always at least the top token.

    Exact rule: sort probabilities descending; a token is kept iff the probability mass strictly
    ahead of it is < top_p. This is HF's TopPLogitsWarper (which removes a token when the ascending
    cumulative sum up to and including it is <= 1 - top_p) rewritten without the `1 - top_p`.
    Float edge: "reaching" top_p is judged with a tolerance of 8 machine epsilons of the working
    dtype (float32, or float64 for float64 logits), so probs [0.1, 0.2, 0.3, 0.4] keep {0.4, 0.3}
    for top_p = 0.6 and 0.7 (0.4 + 0.3 reaches 0.7), three tokens for 0.71, and {0.4} for 0.4,
    whatever the rounding of softmax. HF, with no tolerance, differs exactly at such ties; e.g. in
    float64 its top_p = 0.4 keeps {0.4, 0.3} and top_p = 0.9 keeps all four.
    Ties in probability are ordered by a stable sort, so at the boundary the lower token id wins.
    """
    if top_p >= 1.0:
        return logits
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits.to(work), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_ahead = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    tol = 8 * torch.finfo(work).eps
    remove_sorted = mass_ahead >= top_p - tol
    remove_sorted[..., 0] = False  # the most likely token always survives
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al. 2024): drop tokens whose probability is < min_p * (top probability).

    Same rule as HF's MinPLogitsWarper (strict <, so a token exactly at the threshold stays); the
    top token always stays since its ratio is 1 >= min_p.
    """
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    remove = probs < threshold
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, NEG_INF)


def process_logits(logits: torch.Tensor, params: SamplingParams, prev_ids=None) -> torch.Tensor:
    """The full processor chain for sampling (temperature > 0), in HF's order."""
    if prev_ids is not None:
        logits = apply_repetition_penalty(logits, prev_ids, params.repetition_penalty)
    logits = apply_temperature(logits, params.temperature)
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                prev_ids=None) -> torch.Tensor:
    """Pick next ids: LongTensor [B] for [B, V] logits, a 0-d LongTensor for [V].

    Greedy (temperature == 0): argmax after the repetition penalty (lowest id wins a tie).
    Otherwise: full chain, softmax, one multinomial draw per row from `generator` (seeded: reproducible).
    """
    x, squeeze = _as_2d(logits)
    if prev_ids is not None and squeeze:
        prev_ids = torch.as_tensor(prev_ids, dtype=torch.long, device=x.device)[None]
    if params.greedy:
        if prev_ids is not None:
            x = apply_repetition_penalty(x, prev_ids, params.repetition_penalty)
        ids = x.argmax(dim=-1)
    else:
        x = process_logits(x, params, prev_ids)
        probs = torch.softmax(x.float() if x.dtype != torch.float64 else x, dim=-1)
        ids = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return ids[0] if squeeze else ids


# --- logprobs ------------------------------------------------------------------------------------

@dataclass
class TokenLogprobs:
    """The chosen token's log-probability and the `top` most likely (id, logprob) alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def logprobs_of(logits: torch.Tensor, ids: torch.Tensor | int | Sequence[int], top_k: int):
    """Log-softmax of `logits` at the chosen ids, plus the top_k (id, logprob) pairs per row.

    Pass the model's raw logits to report the model's own distribution (as vLLM does by default),
    or processed logits to report the sampling distribution. Returns a TokenLogprobs for [V]
    logits and a list of them for [B, V].
    """
    x, squeeze = _as_2d(logits)
    lp = torch.log_softmax(x.float() if x.dtype != torch.float64 else x, dim=-1)
    chosen_ids = torch.as_tensor(ids, dtype=torch.long, device=x.device).reshape(-1)
    chosen = lp.gather(1, chosen_ids[:, None])[:, 0]
    k = min(max(top_k, 0), lp.shape[-1])
    top_vals, top_ids = torch.topk(lp, k, dim=-1) if k else (lp[:, :0], chosen_ids[:, None][:, :0])
    rows = [TokenLogprobs(int(chosen_ids[b]), float(chosen[b]),
                          list(zip(top_ids[b].tolist(), top_vals[b].tolist()))) for b in range(x.shape[0])]
    return rows[0] if squeeze else rows
