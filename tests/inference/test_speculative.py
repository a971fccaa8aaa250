"""Speculative decoding: greedy output identical to the target alone; sampled output distributed as the target's.

Oracles: genlab.inference.generate.generate on the target alone (greedy: token for token, with text,
stops, logprobs); the target's exact processed distribution of the first two tokens (sampling: a
chi-square test over thousands of seeded runs, on an 8-token vocabulary). The chi-square runs use a
real 1-layer Transformer once and, for the many variants, a lookup-table language model whose
cache stores the tokens it has seen, so a wrong cache rollback changes its predictions.
Budget: ~20 s of CPU on one thread (~40 s wall on the busy shared 2-core machine).

    python -m pytest -q tests/inference/test_speculative.py
"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from genlab.errors import ConfigError
from genlab.inference.generate import generate
from genlab.inference.ngram_draft import NgramConfig, propose_ngram, propose_ngram_reference
from genlab.inference.sampling import SamplingParams, apply_repetition_penalty, process_logits
from genlab.inference.speculative import (acceptance_probability, draw, residual_distribution, speculative_generate,
                                          verify_drafts, verify_greedy)
from genlab.models.config import ModelConfig
from genlab.models.transformer import Transformer

# --- helpers -------------------------------------------------------------------------------------

VOCAB = [bytes([c]) for c in b"abcdefghij klmnop\n.,"] + ["é".encode()[:1], "é".encode()[1:], b"the", b"END"]
VOCAB += [b"<%d>" % i for i in range(len(VOCAB), 40)]


def token_bytes(i: int) -> bytes:
    return VOCAB[i]


def transformer(seed: int, vocab: int = 40, d_model: int = 32, n_layer: int = 2, init_std: float = 0.3,
                max_seq_len: int = 64) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig.llama_like(vocab_size=vocab, n_layer=n_layer, n_head=2, n_kv_head=1, d_model=d_model,
                                    max_seq_len=max_seq_len, init_std=init_std)
    return Transformer(config).double().eval()


def perturbed(model: Transformer, scale: float, seed: int) -> Transformer:
    """A draft that mostly agrees with the target: its weights plus noise."""
    copy = Transformer(model.config).double().eval()
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return copy


class TokenCache:
    """The table model's cache: the token ids seen so far; `length` is what counts (as KVCache)."""

    def __init__(self, max_len: int) -> None:
        self.tokens = [0] * max_len
        self.length = 0


class TableLM:
    """A trigram language model: logits of the next token = table[previous token, current token].

    It keeps its context in a TokenCache, so feeding after a wrong rollback would read stale tokens.
    """

    def __init__(self, table: torch.Tensor, max_seq_len: int = 32) -> None:
        self.table = table
        self.config = SimpleNamespace(vocab_size=table.shape[-1], max_seq_len=max_seq_len)

    def parameters(self):
        return iter([self.table])

    def new_cache(self, batch_size: int, max_len: int | None = None) -> TokenCache:
        return TokenCache(max_len or self.config.max_seq_len)

    def __call__(self, idx: torch.Tensor, cache: TokenCache | None = None) -> torch.Tensor:
        context, start = idx[0].tolist(), 0
        if cache is not None:
            start, end = cache.length, cache.length + len(context)
            cache.tokens[start:end] = context
            context, cache.length = cache.tokens[:end], end
        rows = [self.table[context[i - 1] if i else 0][context[i]] for i in range(start, len(context))]
        return torch.stack(rows)[None]


def table_lm(seed: int, vocab: int = 8, scale: float = 1.5) -> TableLM:
    g = torch.Generator().manual_seed(seed)
    return TableLM(torch.randn(vocab, vocab, vocab, generator=g, dtype=torch.float64) * scale)


def processed_probs(model, context: list[int], params: SamplingParams) -> torch.Tensor:
    """The target's sampling distribution after `context` (the repetition penalty sees all of it)."""
    with torch.no_grad():
        logits = model(torch.tensor([context]))[0, -1]
    logits = apply_repetition_penalty(logits, torch.tensor(context), params.repetition_penalty)
    return torch.softmax(process_logits(logits, params), dim=-1)


def exact_first_two(model, prompt: list[int], params: SamplingParams) -> torch.Tensor:
    """P(first token = a, second = b) under the target alone, as a [V, V] table."""
    first = processed_probs(model, prompt, params)
    rows = [processed_probs(model, prompt + [a], params) if first[a] > 0 else torch.zeros_like(first)
            for a in range(len(first))]
    return first[:, None] * torch.stack(rows)


def chi_square_critical(df: int, z: float = 3.090) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.090: alpha = 0.001)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """(statistic, critical value); cells expecting < 5 are pooled; impossible cells must be empty."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    assert counts[probs == 0].sum() == 0, "a token outside the target's support was emitted"
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    stat = float(((counts[big] - expected[big]) ** 2 / expected[big]).sum())
    cells = int(big.sum())
    small_expected = float(expected[~big].sum())
    if small_expected > 0:
        stat += (float(counts[~big].sum()) - small_expected) ** 2 / small_expected
        cells += 1
    return stat, chi_square_critical(cells - 1)


def first_two_counts(run, runs: int, vocab: int) -> torch.Tensor:
    counts = torch.zeros(vocab, vocab)
    for _ in range(runs):
        ids = run()
        counts[ids[0], ids[1]] += 1
    return counts


# --- the acceptance rule by hand -----------------------------------------------------------------

def test_acceptance_and_residual_by_hand():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64)
    assert acceptance_probability(p, q, 0).item() == 1.0  # p >= q: always accepted
    assert acceptance_probability(p, q, 1).item() == pytest.approx(0.5)  # 0.3 / 0.6
    assert acceptance_probability(p, q, 2).item() == 1.0
    assert torch.allclose(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    # Point-mass draft (prompt lookup): accept x with p(x); the residual is p without x, renormalised.
    assert acceptance_probability(p, None, 1).item() == pytest.approx(0.3)
    assert torch.allclose(residual_distribution(p, None, 1), torch.tensor([5 / 7, 0.0, 2 / 7], dtype=torch.float64))
    # One position emits sum_x q(x) a(x) [y = x] + P(reject) residual(y) = min(p, q) + max(0, p - q) = p.
    accept = torch.stack([acceptance_probability(p, q, x) for x in range(3)])
    emitted = q * accept + (1 - (q * accept).sum()) * residual_distribution(p, q)
    assert torch.allclose(emitted, p)
    # p == q: the residual is empty, so it falls back to p (never NaN).
    assert torch.allclose(residual_distribution(p, p), p)


def test_verify_greedy_by_hand():
    assert verify_greedy([4, 5, 6, 7], [4, 5, 6]) == (3, 7)  # all accepted: bonus token
    assert verify_greedy([4, 9, 6, 7], [4, 5, 6]) == (1, 9)  # first mismatch: the target's choice
    assert verify_greedy([3], []) == (0, 3)


def test_draw_follows_probs_and_skips_zero_mass():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([draw(probs, g) for _ in range(3000)]), minlength=6)
    stat, critical = chi_square(counts, probs)  # also asserts the zero-mass tokens never came up
    assert stat < critical
    assert draw(torch.tensor([0.0, 0.0, 1.0]), g) == 2


def test_verify_drafts_one_position_emits_p():
    p = torch.tensor([[0.1, 0.5, 0.25, 0.15], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.4, 0.1, 0.4, 0.1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(4)
    accepted_draws = 0
    for _ in range(4000):
        x = int(torch.multinomial(q[0], 1, generator=g))
        accepted, token = verify_drafts(p, q, [x], g)
        counts[x if accepted else token] += 1
        accepted_draws += accepted
    stat, critical = chi_square(counts, p[0])
    assert stat < critical
    assert accepted_draws / 4000 == pytest.approx(float(torch.minimum(p[0], q[0]).sum()), abs=0.03)  # 0.6


# --- prompt lookup -------------------------------------------------------------------------------

def test_propose_ngram_by_hand_and_against_reference():
    assert propose_ngram([1, 2, 3, 4, 1, 2], 3) == [3, 4, 1]
    assert propose_ngram([1, 2, 9, 1, 2, 7, 1, 2], 2) == [7, 1]  # the latest occurrence wins
    assert propose_ngram([5, 6, 7, 8, 6, 7], 2, max_ngram=3) == [8, 6]  # falls back to n = 2
    # The copy may run into itself: (3 3) at 0 is followed by 3, then by the copied 3s.
    assert propose_ngram([3, 3, 3], 4) == [3, 3, 3, 3]
    assert propose_ngram([1, 2, 9, 1, 2, 7, 1, 2], 5) == [7, 1, 2, 7, 1]  # a period-3 loop
    assert propose_ngram([1, 2, 3], 2) == [] and propose_ngram([7], 2) == []
    assert propose_ngram([1, 2, 1], 0) == []
    rng = random.Random(0)
    for _ in range(300):
        seq = [rng.randrange(4) for _ in range(rng.randrange(1, 25))]
        k, hi = rng.randrange(1, 5), rng.randrange(1, 4)
        lo = rng.randrange(1, hi + 1)
        assert propose_ngram(seq, k, hi, lo) == propose_ngram_reference(seq, k, hi, lo)
    with pytest.raises(ConfigError, match="min_ngram"):
        NgramConfig(max_ngram=1, min_ngram=2)


# --- greedy: token for token the target's output -------------------------------------------------

PROMPTS = [[0, 1, 2, 10, 3], [5, 6, 7, 5, 6, 7, 5], [9]]


@pytest.fixture(scope="module")
def target():
    return transformer(0)


@pytest.fixture(scope="module")
def drafts(target):
    return {"unrelated": transformer(1, d_model=16, n_layer=1), "noisy": perturbed(target, 0.05, seed=2),
            "self": target}


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "repetitive", "one-token"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_identical_to_target_alone(target, drafts, prompt, k):
    params = SamplingParams(temperature=0, max_tokens=29)
    ref = generate(target, prompt, params, token_bytes)
    assert len(set(ref.token_ids)) > 3  # a non-degenerate sequence
    rates = {}
    for name, draft in drafts.items():
        out = speculative_generate(target, prompt, params, token_bytes, draft=draft, num_draft_tokens=k)
        assert out.token_ids == ref.token_ids, name
        assert (out.text, out.finish_reason) == (ref.text, ref.finish_reason)
        assert 0 <= out.accepted <= out.proposed and out.draft_forwards == out.proposed
        # Every target forward emits the accepted drafts plus one token.
        assert out.target_forwards + out.accepted == len(out.token_ids)
        rates[name] = out.acceptance_rate
    ngram = speculative_generate(target, prompt, params, token_bytes, ngram=NgramConfig(), num_draft_tokens=k)
    assert ngram.token_ids == ref.token_ids and ngram.text == ref.text
    assert ngram.accepted <= ngram.proposed and ngram.target_forwards + ngram.accepted == 29
    assert rates["self"] == 1.0 and rates["noisy"] > rates["unrelated"]
    self_forwards = speculative_generate(target, prompt, params, draft=target, num_draft_tokens=k).target_forwards
    assert self_forwards == math.ceil(29 / (k + 1))


def test_greedy_with_eos_stop_strings_penalty_and_logprobs(target, drafts):
    prompt = PROMPTS[0]
    base = generate(target, prompt, SamplingParams(temperature=0, max_tokens=29), token_bytes)
    eos = base.token_ids[9]  # an end token the target really emits
    stop = token_bytes(base.token_ids[5]).decode("utf-8", "replace")
    cases = [
        (SamplingParams(temperature=0, max_tokens=29), [eos]),
        (SamplingParams(temperature=0, max_tokens=29, stop=[stop]), []),
        (SamplingParams(temperature=0, max_tokens=29, repetition_penalty=1.7, logprobs=3), []),
        (SamplingParams(temperature=0, max_tokens=200), []),  # clipped to the context window
    ]
    for params, eos_ids in cases:
        ref = generate(target, prompt, params, token_bytes, eos_ids)
        for drafter in ({"draft": drafts["noisy"]}, {"ngram": NgramConfig(max_ngram=2)}):
            out = speculative_generate(target, prompt, params, token_bytes, eos_ids, num_draft_tokens=4, **drafter)
            assert out.token_ids == ref.token_ids
            assert (out.text, out.finish_reason) == (ref.text, ref.finish_reason)
            if params.logprobs is not None:
                for mine, theirs in zip(out.logprobs, ref.logprobs, strict=True):
                    assert mine.token_id == theirs.token_id and mine.logprob == pytest.approx(theirs.logprob, abs=1e-9)
                    assert [i for i, _ in mine.top] == [i for i, _ in theirs.top]
    assert generate(target, prompt, SamplingParams(temperature=0, max_tokens=200), token_bytes).finish_reason == "length"


def test_bad_arguments(target):
    params = SamplingParams(temperature=0, max_tokens=4)
    with pytest.raises(ConfigError, match="exactly one drafter"):
        speculative_generate(target, [1, 2], params)
    with pytest.raises(ConfigError, match="exactly one drafter"):
        speculative_generate(target, [1, 2], params, draft=target, ngram=NgramConfig())
    with pytest.raises(ConfigError, match="vocab_size"):
        speculative_generate(target, [1, 2], params, draft=transformer(3, vocab=41))
    with pytest.raises(ConfigError, match="max_seq_len"):
        speculative_generate(target, [1, 2], params, draft=transformer(3, max_seq_len=4))
    with pytest.raises(ConfigError, match="num_draft_tokens"):
        speculative_generate(target, [1, 2], params, ngram=NgramConfig(), num_draft_tokens=0)
    with pytest.raises(ConfigError, match="token_bytes"):
        speculative_generate(target, [1, 2], SamplingParams(stop=["a"]), ngram=NgramConfig())
    with pytest.raises(ConfigError, match="empty"):
        speculative_generate(target, [], params, ngram=NgramConfig())
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_generate(target, [1, 40], params, ngram=NgramConfig())


# --- sampling: the target's distribution ---------------------------------------------------------

def test_seeded_sampling_is_reproducible(target, drafts):
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_tokens=20)
    first = speculative_generate(target, PROMPTS[0], params, token_bytes, draft=drafts["noisy"])
    again = speculative_generate(target, PROMPTS[0], params, token_bytes, draft=drafts["noisy"])
    assert first.token_ids == again.token_ids and first.text == again.text and len(first.token_ids) == 20
    assert 0 < first.accepted <= first.proposed


def test_sampling_matches_target_distribution_real_transformers():
    """A 1-layer Transformer target and an unrelated draft, 8 tokens, first two tokens jointly."""
    target, draft = transformer(10, vocab=8, d_model=16, n_layer=1, init_std=0.5), \
        transformer(11, vocab=8, d_model=16, n_layer=1, init_std=0.5)
    prompt, params, g = [0, 1, 2], SamplingParams(temperature=1.0, max_tokens=2), torch.Generator().manual_seed(0)
    stats = {"accepted": 0, "proposed": 0}

    def run():
        out = speculative_generate(target, prompt, params, draft=draft, num_draft_tokens=2, generator=g)
        stats["accepted"] += out.accepted
        stats["proposed"] += out.proposed
        return out.token_ids

    stat, critical = chi_square(first_two_counts(run, 1000, 8), exact_first_two(target, prompt, params))
    assert stat < critical
    assert 0.1 < stats["accepted"] / stats["proposed"] < 0.9  # the draft is neither useless nor the target


@pytest.mark.parametrize("drafter,params", [
    ("draft", SamplingParams(temperature=0.7, top_k=3, max_tokens=3)),
    ("draft", SamplingParams(temperature=1.3, top_p=0.8, repetition_penalty=1.5, max_tokens=3)),
    ("ngram", SamplingParams(temperature=1.0, max_tokens=3)),
    ("ngram", SamplingParams(temperature=0.7, top_k=3, max_tokens=3)),
], ids=["draft-temp-topk", "draft-topp-penalty", "ngram", "ngram-temp-topk"])
def test_sampling_matches_target_distribution(drafter, params):
    target, draft = table_lm(0), table_lm(1)
    # A repetitive prompt so that prompt lookup proposes (its last bigram occurred before).
    prompt, g = [3, 5, 1, 3, 5, 1, 3, 5], torch.Generator().manual_seed(42)
    kwargs = {"draft": draft} if drafter == "draft" else {"ngram": NgramConfig(max_ngram=2)}
    stats = {"accepted": 0, "proposed": 0}

    def run():
        out = speculative_generate(target, prompt, params, num_draft_tokens=3, generator=g, **kwargs)
        stats["accepted"] += out.accepted
        stats["proposed"] += out.proposed
        return out.token_ids

    stat, critical = chi_square(first_two_counts(run, 1600, 8), exact_first_two(target, prompt, params))
    assert stat < critical, (stat, critical)
    assert 0 < stats["accepted"] < stats["proposed"]


def test_chi_square_detects_the_draft_distribution():
    """The test has power: sampling straight from the draft (no verification) is rejected."""
    target, draft = table_lm(0), table_lm(1)
    prompt, params = [3, 5, 1, 3, 5, 1, 3, 5], SamplingParams(temperature=1.0, max_tokens=2)
    wrong = exact_first_two(draft, prompt, params).flatten()
    counts = torch.bincount(torch.multinomial(wrong, 4000, replacement=True, generator=torch.Generator().manual_seed(0)),
                            minlength=64).reshape(8, 8)
    stat, critical = chi_square(counts, exact_first_two(target, prompt, params))
    assert stat > 3 * critical
