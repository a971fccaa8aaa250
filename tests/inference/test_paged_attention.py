"""Paged attention == dense attention: flattened mixed batches through scrambled block tables give the
logits of a full forward (and of the contiguous KVCache), for every chunking of the prefill.

    python -m pytest -q tests/inference/test_paged_attention.py
"""

import pytest
import torch

from genlab.errors import GenlabError
from genlab.inference import paged_kernels
from genlab.inference.paged_attention import Chunk, PagedKVCache
from test_engine_common import make_model, random_prompts

MODELS = {
    "llama_gqa": dict(kind="llama"),
    "gpt2": dict(kind="gpt2"),
    "llama_window": dict(kind="llama", sliding_window=6),
    "llama_reference_attn": dict(kind="llama", attn_impl="reference"),
}


def dense_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0]


def paged_logits(model, seqs, schedule, block_size=4, num_blocks=64, seed=0):
    """Run `schedule` (a list of steps, each a list of (seq index, n tokens)) through one paged cache.

    Blocks are handed out in a random order, so tables are scattered over the store. Returns the
    logits of every token of every sequence, [len(seq), V] each.
    """
    cache = PagedKVCache(model.config, num_blocks, block_size, model.embed.weight.dtype)
    free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables = [[] for _ in seqs]
    done = [0] * len(seqs)
    rows: list[list[torch.Tensor]] = [[] for _ in seqs]
    for step in schedule:
        chunks, ids = [], []
        for i, n in step:
            while len(tables[i]) * block_size < done[i] + n:
                tables[i].append(free.pop())
            chunks.append(Chunk(tables[i], done[i], n))
            ids += seqs[i][done[i]:done[i] + n]
        paged = cache.step(chunks)
        with torch.no_grad():
            logits = model(torch.tensor([ids]), cache=paged, positions=paged.positions)[0]
        at = 0
        for i, n in step:
            rows[i].append(logits[at:at + n])
            at += n
            done[i] += n
    assert done == [len(s) for s in seqs]
    return [torch.cat(r) for r in rows]


def mixed_schedule(lengths, chunk_sizes, seed=0):
    """Each step takes the next chunk of every unfinished sequence, sequences in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    left, schedule = list(lengths), []
    while any(left):
        step = []
        for i in torch.randperm(len(lengths), generator=g).tolist():
            if left[i]:
                n = min(left[i], chunk_sizes[i % len(chunk_sizes)])
                step.append((i, n))
                left[i] -= n
        schedule.append(step)
    return schedule


@pytest.mark.parametrize("kernel", [True, False], ids=["numba_kernel", "gather_sdpa"])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_paged_equals_dense_for_mixed_chunked_batches(name, dtype, tol, kernel, monkeypatch):
    assert paged_kernels.AVAILABLE  # numba is a test dependency: both decode paths are always tested
    monkeypatch.setattr(paged_kernels, "AVAILABLE", kernel)
    spec = dict(MODELS[name])
    model = make_model(spec.pop("kind"), dtype=dtype, **spec)
    if dtype == torch.float32:  # a realistic scale for fp32 (init_std 0.3 makes logits ~100)
        model = make_model(MODELS[name]["kind"], dtype=dtype, init_std=0.05, **spec)
    if name == "llama_reference_attn":
        tol = 1e-5  # reference_attention computes in float32 whatever the model's dtype
    lengths = [13, 1, 30, 7, 22]
    seqs = random_prompts(lengths, seed=1)
    dense = [dense_logits(model, s) for s in seqs]
    # one-shot prefill, odd chunks, token-by-token "decode" mixed with prefill chunks
    for chunk_sizes in ([64], [5, 3, 11], [1, 1, 4], [2, 7]):
        got = paged_logits(model, seqs, mixed_schedule(lengths, chunk_sizes), seed=len(chunk_sizes))
        for g, d in zip(got, dense):
            torch.testing.assert_close(g, d, atol=tol, rtol=0)


def test_chunked_prefill_equals_full_prefill_then_decode_equals_kv_cache():
    model = make_model("llama", dtype=torch.float32, init_std=0.05)
    prompt = random_prompts([29], seed=3)[0]
    full = paged_logits(model, [prompt], [[(0, 29)]])[0]
    for chunks in ([1] * 29, [8, 8, 8, 5], [3, 26]):
        got = paged_logits(model, [prompt], [[(0, n)] for n in chunks])[0]
        torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    cache = model.new_cache(1, 40)  # the contiguous KVCache path: prefill 20, then one token at a time
    with torch.no_grad():
        rows = [model(torch.tensor([prompt[:20]]), cache=cache)[0]]
        rows += [model(torch.tensor([[t]]), cache=cache)[0] for t in prompt[20:]]
    torch.testing.assert_close(torch.cat(rows), full, atol=1e-5, rtol=0)


def test_logit_rows_select_positions():
    model = make_model("gpt2")
    seq = random_prompts([9], seed=4)[0]
    rows = torch.tensor([0, 8, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([seq]), logit_rows=rows)[0], model(torch.tensor([seq]))[0, rows],
                                   atol=1e-12, rtol=0)


def test_paged_cache_needs_positions():
    model = make_model("llama")
    step = PagedKVCache(model.config, 4, 4, torch.float64).step([Chunk([0], 0, 2)])
    with pytest.raises(GenlabError, match="positions"):
        model(torch.tensor([[1, 2]]), cache=step)


@pytest.mark.parametrize("kernel", [True, False], ids=["numba_kernel", "gather_sdpa"])
def test_consecutive_blocks_read_in_place_equal_dense(kernel, monkeypatch):
    """Without the kernel, a lone sequence whose blocks are consecutive is read as a view of the store
    (no gather), for decode and for later prefill chunks; a scattered table takes the gather path. The
    kernel reads in place anyway. Same logits."""
    monkeypatch.setattr(paged_kernels, "AVAILABLE", kernel)
    model = make_model("llama", dtype=torch.float64)
    prompt = random_prompts([23], seed=5)[0]
    dense = dense_logits(model, prompt)
    for first_block, scattered in ((3, False), (3, True)):
        cache = PagedKVCache(model.config, 16, 4, torch.float64)
        table = [first_block + i for i in range(6)]
        if scattered:
            table = table[::-1]
        rows, done = [], 0
        for n in [5, 6] + [1] * 12:  # two prefill chunks, then decode one token at a time
            step = cache.step([Chunk(table, done, n)])
            assert (step.decode_span is not None) == (n == 1 and not scattered and not kernel)
            with torch.no_grad():
                rows.append(model(torch.tensor([prompt[done:done + n]]), cache=step, positions=step.positions)[0])
            done += n
        torch.testing.assert_close(torch.cat(rows), dense, atol=1e-10, rtol=0)
