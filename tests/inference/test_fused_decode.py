"""Fused decode step == the model's own forward through the paged cache (logits and stored keys/values),
and the engine's greedy outputs are the same with and without it.

    python -m pytest -q tests/inference/test_fused_decode.py
"""

import pytest
import torch

from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.inference.fused_decode import SCALAR_ROWS, FusedDecoder
from genlab.inference.paged_attention import Chunk, PagedKVCache
from genlab.inference.sampling import SamplingParams
from genlab.inference.weight_layout import column_major_linears
from test_engine_common import ToyTokenizer, make_model

MODELS = {
    "gqa": dict(),
    "mha_tied": dict(n_kv_head=4, tie_embeddings=True),
    "mqa_qkv_bias": dict(n_kv_head=1, qkv_bias=True),
    "window": dict(sliding_window=5),
}


def prefilled_cache(model, lengths, block_size=4, num_blocks=48, seed=0):
    """A paged cache holding random prompts of `lengths` under scattered block tables (module path)."""
    g = torch.Generator().manual_seed(seed)
    cache = PagedKVCache(model.config, num_blocks, block_size, model.embed.weight.dtype)
    free = torch.randperm(num_blocks, generator=g).tolist()
    tables = []
    for n in lengths:
        table = [free.pop() for _ in range(-(-(n + 1) // block_size))]  # room for one decode token
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
        step = cache.step([Chunk(table, 0, n)])
        with torch.no_grad():
            model(ids, cache=step, positions=step.positions)
        tables.append(table)
    return cache, tables


@pytest.mark.parametrize("rows", [2, 5], ids=["silu_kernel", "silu_torch"])  # SCALAR_ROWS = 4 splits the two
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_fused_decode_equals_module_path(name, dtype, tol, rows):
    model = make_model("llama", dtype=dtype, **MODELS[name])
    # Random norm weights and biases: the default ones/zeros would hide a missing scale or bias.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + 1.0)
    column_major_linears(model)
    lengths = [1, 7, 12, 3, 16][-rows:]
    cache, tables = prefilled_cache(model, lengths)
    assert FusedDecoder.unsupported(model, cache) is None and SCALAR_ROWS in range(2, 5)
    fused = FusedDecoder(model, cache)
    tokens = [5, 0, 62, 17, 33][-rows:]
    chunks = [Chunk(t, n, 1) for t, n in zip(tables, lengths)]
    before_k, before_v = cache.k.clone(), cache.v.clone()
    step = cache.step(chunks)
    with torch.no_grad():
        want = model(torch.tensor([tokens]), cache=step, positions=step.positions)[0]
    want_k, want_v = cache.k.clone(), cache.v.clone()
    cache.k.copy_(before_k)
    cache.v.copy_(before_v)
    got = fused(tokens, cache.step(chunks))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(cache.k, want_k, atol=tol, rtol=tol)  # the new keys/values are stored too
    torch.testing.assert_close(cache.v, want_v, atol=tol, rtol=tol)
    assert not torch.equal(want_k, before_k)


def test_engine_greedy_outputs_are_the_same_with_and_without_fused_decode():
    model = make_model("llama", n_kv_head=2, sliding_window=9)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 63, (n,), generator=g).tolist() for n in (3, 11, 20, 6, 1, 14)]
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in (12, 30, 7, 25, 18, 40)]
    outputs = {}
    for fused in (True, False):
        engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4, max_num_seqs=4, fused_decode=fused),
                           stop_token_ids=[])
        assert (engine.fused is not None) == fused
        outputs[fused] = [r.token_ids for r in engine.generate(prompts, params)]
        assert engine.block_manager.num_used == 0 or engine.config.enable_prefix_caching
    assert outputs[True] == outputs[False]
    assert [len(o) for o in outputs[True]] == [p.max_tokens for p in params]


def test_unsupported_models_keep_the_module_path():
    gpt2 = make_model("gpt2")
    cache = PagedKVCache(gpt2.config, 8, 4, gpt2.embed.weight.dtype)
    assert "position='learned'" in FusedDecoder.unsupported(gpt2, cache)
    with pytest.raises(ValueError, match="fused decode is not available"):
        FusedDecoder(gpt2, cache)
    assert LLMEngine(gpt2, ToyTokenizer(), EngineConfig(block_size=4)).fused is None
    reference = make_model("llama", attn_impl="reference")
    assert "attn_impl" in FusedDecoder.unsupported(reference, PagedKVCache(reference.config, 8, 4, torch.float64))
