"""Sampling filters vs HF transformers' logits processors/warpers, boundary cases, seeded and
statistical checks. Handbook V; Holtzman et al. 2019; Nguyen et al. 2024; Keskar et al. 2019.

    python -m pytest -q tests/inference/test_sampling.py
"""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from genlab.errors import ConfigError
from genlab.inference.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_temperature,
    logprobs_of,
    min_p_filter,
    process_logits,
    sample_next,
    top_k_filter,
    top_p_filter,
)


def random_logits(seed: int, batch: int = 6, vocab: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vocab, generator=g) * 3


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    finite = torch.isfinite(theirs)
    torch.testing.assert_close(ours[finite], theirs[finite])


# --- SamplingParams ----------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
    ("min_p", -0.1), ("min_p", 1.1), ("repetition_penalty", 0.0), ("max_tokens", 0), ("stop", [""]),
    ("stop_token_ids", [-1]), ("logprobs", -1), ("seed", 1.5),
])
def test_params_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})


def test_params_defaults_and_greedy():
    p = SamplingParams()
    assert p.stop == [] and p.stop_token_ids == [] and not p.greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams().stop is not SamplingParams().stop  # no shared mutable default


# --- parity with transformers ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("t", [0.3, 1.0, 1.7])
def test_temperature_matches_hf(seed, t):
    x = random_logits(seed)
    assert_same_logits(apply_temperature(x, t), TemperatureLogitsWarper(t)(None, x))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 2, 10, 49, 50, 80])
def test_top_k_matches_hf(seed, k):
    x = random_logits(seed)
    assert_same_logits(top_k_filter(x, k), TopKLogitsWarper(k)(None, x))


def test_top_k_keeps_ties_like_hf():
    x = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    ours = top_k_filter(x, 2)
    assert torch.isfinite(ours).tolist() == [[False, True, True, True, False]]
    assert_same_logits(ours, TopKLogitsWarper(2)(None, x))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_p_matches_hf(seed, p, dtype):
    x = random_logits(seed).to(dtype)
    assert_same_logits(top_p_filter(x, p), TopPLogitsWarper(p)(None, x))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("m", [0.01, 0.05, 0.1, 0.3, 1.0])
def test_min_p_matches_hf(seed, m):
    x = random_logits(seed)
    assert_same_logits(min_p_filter(x, m), MinPLogitsWarper(m)(None, x))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_hf(seed, penalty):
    x = random_logits(seed)
    g = torch.Generator().manual_seed(100 + seed)
    prev = torch.randint(0, 50, (x.shape[0], 12), generator=g)
    prev[:, 1] = prev[:, 0]  # repeated ids are penalised once
    ours = apply_repetition_penalty(x, prev, penalty)
    assert_same_logits(ours, RepetitionPenaltyLogitsProcessor(penalty)(prev, x.clone()))
    assert not torch.equal(ours, x)


def test_repetition_penalty_sign_rule():
    x = torch.tensor([2.0, -2.0, 1.0, 0.0])
    out = apply_repetition_penalty(x, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.0]
    assert x.tolist() == [2.0, -2.0, 1.0, 0.0]  # pure: the input is untouched


@pytest.mark.parametrize("seed", range(4))
def test_full_chain_matches_hf_order(seed):
    x = random_logits(seed)
    prev = torch.randint(0, 50, (x.shape[0], 8), generator=torch.Generator().manual_seed(seed))
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    hf = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8),
                              TopKLogitsWarper(20), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)])
    assert_same_logits(process_logits(x, params, prev), hf(prev, x.clone()))


# --- documented boundary cases -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("top_p,kept", [
    (0.6, [0, 0, 1, 1]), (0.7, [0, 0, 1, 1]), (0.71, [0, 1, 1, 1]), (0.4, [0, 0, 0, 1]),
    (0.3, [0, 0, 0, 1]), (0.9, [0, 1, 1, 1]), (0.91, [1, 1, 1, 1]), (1.0, [1, 1, 1, 1]), (1e-9, [0, 0, 0, 1]),
])
def test_top_p_boundary_vector(dtype, top_p, kept):
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype).log()
    assert torch.isfinite(top_p_filter(logits, top_p)).int().tolist() == kept


def test_top_p_tie_at_boundary_prefers_lower_id():
    logits = torch.tensor([0.25, 0.25, 0.25, 0.25]).log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, True, False, False]


def test_min_p_threshold_is_relative_to_top_probability():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).log()
    assert torch.isfinite(min_p_filter(logits, 0.2)).tolist() == [True, True, True, False]  # cut at 0.1
    assert torch.isfinite(min_p_filter(logits, 0.7)).tolist() == [True, False, False, False]  # cut at 0.35


# --- sample_next -------------------------------------------------------------------------------

def test_greedy_is_argmax_and_respects_penalty():
    x = random_logits(0)
    params = SamplingParams(temperature=0.0)
    assert torch.equal(sample_next(x, params), x.argmax(-1))
    row = torch.tensor([1.0, 3.0, 2.9])
    assert int(sample_next(row, params)) == 1
    assert int(sample_next(row, SamplingParams(temperature=0, repetition_penalty=1.5), prev_ids=[1])) == 2


def test_seeded_sampling_is_reproducible():
    x = random_logits(1, batch=32)
    params = SamplingParams(temperature=1.0, top_p=0.95)
    a = sample_next(x, params, torch.Generator().manual_seed(7))
    b = sample_next(x, params, torch.Generator().manual_seed(7))
    c = sample_next(x, params, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sample_next(x[0], params, torch.Generator().manual_seed(7)).shape == ()


def chi_square_matches(counts: torch.Tensor, probs: torch.Tensor, alpha: float = 1e-3) -> bool:
    support = probs > 0
    n = counts.sum()
    expected = probs[support] * n
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    dof = torch.tensor(float(support.sum() - 1), dtype=torch.float64)
    p_value = torch.special.gammaincc(dof / 2, stat / 2)  # chi-square survival function
    return float(p_value) > alpha


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7, top_k=4),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=1.0, min_p=0.2),
], ids=["temp+topk", "temp+topp", "minp"])
def test_sample_frequencies_match_filtered_distribution(params):
    logits = torch.tensor([2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0], dtype=torch.float64)
    n = 40_000
    ids = sample_next(logits.expand(n, -1), params, torch.Generator().manual_seed(1234))
    counts = torch.bincount(ids, minlength=logits.numel()).double()
    probs = torch.softmax(process_logits(logits, params), -1)
    assert (probs > 0).sum() < logits.numel()  # the filter removed something
    assert torch.all(counts[probs == 0] == 0)  # filtered tokens are never drawn
    assert chi_square_matches(counts, probs)
    # ... and the test can fail: the unfiltered softmax is rejected by the same statistic
    assert not chi_square_matches(counts, torch.softmax(logits / params.temperature, -1))


# --- logprobs ----------------------------------------------------------------------------------

def test_logprobs_of():
    x = random_logits(3, batch=2, vocab=10)
    rows = logprobs_of(x, torch.tensor([4, 7]), top_k=3)
    ref = torch.log_softmax(x, -1)
    for b, row in enumerate(rows):
        assert row.token_id == [4, 7][b]
        assert math.isclose(row.logprob, float(ref[b, row.token_id]), rel_tol=1e-6)
        ids = [i for i, _ in row.top]
        assert ids == ref[b].topk(3).indices.tolist()
        assert all(math.isclose(lp, float(ref[b, i]), rel_tol=1e-6) for i, lp in row.top)
    single = logprobs_of(x[0], 4, top_k=0)
    assert single.top == [] and math.isclose(single.logprob, rows[0].logprob, rel_tol=1e-6)
