"""LLMEngine against genlab.inference.generate and full-forward references: greedy parity whatever
the batch, prefix-cache hit == miss, seeded sampling, stops, logprobs, prompt logprobs, constraints.

    python -m pytest -q tests/inference/test_engine.py
"""

import re

import pytest
import torch

from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.inference.sampling import SamplingParams
from genlab.inference.structured import Regex, Vocabulary, index_for
from test_engine_common import END, VOCAB, ToyTokenizer, joined, make_model, random_prompts, reference, run_to_end

GREEDY = SamplingParams(temperature=0, max_tokens=24)
CONFIGS = {
    "roomy": EngineConfig(block_size=4),
    "chunked": EngineConfig(block_size=4, max_num_batched_tokens=7),
    "one_token_steps": EngineConfig(block_size=8, max_num_batched_tokens=1),
    "preempting": EngineConfig(block_size=4, num_blocks=18, max_num_batched_tokens=16),
    "two_seqs": EngineConfig(block_size=16, max_num_seqs=2, enable_prefix_caching=False),
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def prompts():
    return random_prompts([5, 17, 33, 1, 40, 9])


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_greedy_equals_generate_whatever_the_batch(model, prompts, config):
    refs = [reference(model, p, GREEDY) for p in prompts]
    engine = LLMEngine(model, ToyTokenizer(), config)
    for order in (list(range(len(prompts))), list(reversed(range(len(prompts))))):
        results = engine.generate([prompts[i] for i in order], GREEDY)
        for i, r in zip(order, results):
            assert (r.token_ids, r.text, r.finish_reason) == (refs[i].token_ids, refs[i].text, refs[i].finish_reason)
    assert any(len(set(r.token_ids)) > 3 for r in refs)  # non-degenerate outputs
    if config.num_blocks == 18:
        assert engine.stats.preemptions > 0
    engine.block_manager.check_all_free()


def test_staggered_arrivals_stream_the_same_output(model, prompts):
    """Requests join a running batch at different steps; each stream concatenates to generate's output."""
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4, max_num_batched_tokens=12))
    outs: dict[str, list] = {}
    pending = list(enumerate(prompts))
    step = 0
    while pending or engine.has_unfinished():
        if pending and step % 3 == 0:
            i, p = pending.pop(0)
            engine.add_request(f"r{i}", p, GREEDY)
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
        step += 1
    for i, p in enumerate(prompts):
        ref = reference(model, p, GREEDY)
        assert joined(outs[f"r{i}"]) == (ref.token_ids, ref.text, ref.finish_reason)
        assert outs[f"r{i}"][-1].completion_token_count == len(ref.token_ids)
        assert outs[f"r{i}"][0].prompt_token_count == len(p)


def test_prefix_cache_hit_equals_miss(model):
    shared = random_prompts([22], seed=5)[0]
    prompts = [shared + tail for tail in random_prompts([3, 9, 1], seed=6)] + [shared, shared[:8]]
    on = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4))
    off = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4, enable_prefix_caching=False))
    first_on = on.generate(prompts[:1], GREEDY)  # fills the cache with the shared prefix
    assert on.stats.prefix_cache_hit_tokens == 0
    rest_on = on.generate(prompts[1:], GREEDY)
    again_on = on.generate(prompts, GREEDY)  # everything cached now, even across finished requests
    miss = off.generate(prompts, GREEDY)
    assert off.stats.prefix_cache_hit_tokens == 0
    assert on.stats.prefix_cache_hit_tokens >= 20 * 3
    for a, b, c in zip(first_on + rest_on, again_on, miss):
        assert a.token_ids == b.token_ids == c.token_ids and a.text == c.text
    on.block_manager.check_all_free()


def test_prefix_cache_never_reuses_the_last_prompt_block(model):
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4))
    prompt = random_prompts([8], seed=2)[0]  # exactly two full blocks
    engine.generate([prompt], GREEDY)
    r = engine.generate([prompt], GREEDY)[0]
    assert engine.stats.prefix_cache_hit_tokens == 4  # the block holding the last prompt token is recomputed
    assert r.token_ids == reference(model, prompt, GREEDY).token_ids


SAMPLED = [
    SamplingParams(temperature=0.9, top_p=0.9, seed=3, max_tokens=16),
    SamplingParams(temperature=1.2, top_k=8, min_p=0.05, repetition_penalty=1.3, seed=4, max_tokens=16),
    SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=16),
]


def test_seeded_sampling_is_reproducible_whatever_the_batch(model, prompts):
    refs = [reference(model, prompts[i], p) for i, p in enumerate(SAMPLED)]
    for config in (CONFIGS["roomy"], CONFIGS["chunked"], CONFIGS["preempting"]):
        engine = LLMEngine(model, ToyTokenizer(), config)
        alone = [engine.generate([prompts[i]], p)[0] for i, p in enumerate(SAMPLED)]
        noise = [SamplingParams(temperature=1.0, max_tokens=10)] * 3  # unseeded neighbours
        mixed = engine.generate(prompts[:3] + prompts[3:6], SAMPLED + noise)[:3]
        for a, m, ref in zip(alone, mixed, refs):
            assert a.token_ids == m.token_ids == ref.token_ids


def test_stop_strings_cut_the_text_as_generate_does(model, prompts):
    free = reference(model, prompts[2], GREEDY)
    stop = free.text[5:7]
    params = SamplingParams(temperature=0, max_tokens=24, stop=[stop, "zzzz"])
    ref = reference(model, prompts[2], params)
    got = LLMEngine(model, ToyTokenizer(), CONFIGS["chunked"]).generate([prompts[2]], params)[0]
    assert got.finish_reason == "stop" and stop not in got.text and free.text.startswith(got.text)
    assert (got.text, got.token_ids) == (ref.text, ref.token_ids)


def test_stop_token_ids_and_length_limits(model, prompts):
    free = reference(model, prompts[0], GREEDY)
    stop_id = free.token_ids[6]
    cut = free.token_ids.index(stop_id)
    engine = LLMEngine(model, ToyTokenizer(), CONFIGS["roomy"])
    by_id = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_id]))[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[:cut]
    short = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=3))[0]
    assert short.finish_reason == "length" and short.token_ids == free.token_ids[:3]
    near_end = [i % 60 for i in range(93)]  # max_seq_len 96: only 3 tokens fit
    clipped = engine.generate([near_end], SamplingParams(temperature=0, max_tokens=50))[0]
    assert clipped.finish_reason == "length" and len(clipped.token_ids) == 3
    assert clipped.token_ids == reference(model, near_end, SamplingParams(temperature=0, max_tokens=50)).token_ids


def test_engine_stop_ids_default_to_the_tokenizers_end_token(model):
    engine = LLMEngine(model, ToyTokenizer())
    assert engine.stop_token_ids == [END]
    prompt = [1, 2, 3]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1].clone()
    biased = make_model("llama" if model.config.position == "rope" else "gpt2")
    with torch.no_grad():  # make <|end|> the greedy choice right away
        biased.head.weight[END] = biased.head.weight[int(logits.argmax())] * 10
    r = LLMEngine(biased, ToyTokenizer()).generate([prompt], GREEDY)[0]
    assert r.token_ids == [] and r.finish_reason == "stop" and r.text == ""


def test_logprobs_match_a_full_forward(model, prompts):
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=10, logprobs=3)
    outs = LLMEngine(model, ToyTokenizer(), CONFIGS["chunked"]).generate([prompts[1]], params)[0]
    assert len(outs.logprobs) == len(outs.token_ids) == 10
    with torch.no_grad():
        logits = model(torch.tensor([prompts[1] + outs.token_ids]))[0]
    lp = torch.log_softmax(logits, -1)
    for i, (tok, entry) in enumerate(zip(outs.token_ids, outs.logprobs)):
        row = lp[len(prompts[1]) - 1 + i]
        assert entry.token_id == tok and entry.logprob == pytest.approx(float(row[tok]), abs=1e-9)
        assert [t for t, _ in entry.top] == row.topk(3).indices.tolist()


@pytest.mark.parametrize("budget", [1024, 5])
def test_prompt_logprobs_match_a_full_forward_log_softmax(model, prompts, budget):
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4, max_num_batched_tokens=budget))
    prompt = prompts[4]
    engine.generate([prompt], GREEDY)  # cached prefix blocks exist; prompt logprobs must still see every row
    engine.add_request("echo", prompt, SamplingParams(temperature=0, max_tokens=2), prompt_logprobs=2)
    outs = run_to_end(engine)["echo"]
    plp = outs[0].prompt_logprobs
    assert all(o.prompt_logprobs is None for o in outs[1:])
    assert len(plp) == len(prompt) and plp[0] is None
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt]))[0], -1)
    for t in range(1, len(prompt)):
        assert plp[t].token_id == prompt[t]
        assert plp[t].logprob == pytest.approx(float(lp[t - 1, prompt[t]]), abs=1e-9)
        assert [i for i, _ in plp[t].top] == lp[t - 1].topk(2).indices.tolist()


def test_constrained_output_matches_its_regex(model, prompts):
    pattern = r"(ab|c)[a-e]{2,6}\.(the)?"
    index = index_for(Regex(pattern), Vocabulary.from_tokenizer(ToyTokenizer()))
    engine = LLMEngine(model, ToyTokenizer(), CONFIGS["chunked"])
    for seed in range(4):
        params = SamplingParams(temperature=1.0, seed=seed, max_tokens=12)
        engine.add_request(f"c{seed}", prompts[seed], params, constraint=index)
        engine.add_request(f"free{seed}", prompts[seed], params)  # an unconstrained neighbour
    outs = run_to_end(engine)
    for seed in range(4):
        ids, text, reason = joined(outs[f"c{seed}"])
        assert re.fullmatch(pattern, text), text
        assert text == b"".join(VOCAB[i] for i in ids).decode()


def test_abort_frees_blocks_and_reports_once(model, prompts):
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4, max_num_seqs=2))
    for i, p in enumerate(prompts[:4]):
        engine.add_request(f"r{i}", p, GREEDY)
    early = engine.step() + engine.step()
    engine.abort("r0")  # running
    engine.abort("r3")  # still waiting (max_num_seqs=2)
    engine.abort("nope")  # unknown: ignored
    outs = run_to_end(engine)
    for o in reversed(early):
        outs[o.request_id].insert(0, o)
    for rid in ("r0", "r3"):
        assert outs[rid][-1].finish_reason == "abort" and outs[rid][-1].finished
        assert sum(o.finished for o in outs[rid]) == 1
    for rid in ("r1", "r2"):
        assert joined(outs[rid])[0] == reference(model, prompts[int(rid[1])], GREEDY).token_ids
    engine.abort("r1")  # already finished: ignored
    assert not engine.has_unfinished() and engine.stats.blocks_in_use == 0
    engine.block_manager.check_all_free()


def test_warm_up_changes_no_output_and_leaves_zeroed_stats_and_a_free_pool(model, prompts):
    cold = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4)).generate(prompts, GREEDY)
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4))
    engine.warm_up()
    s = engine.stats
    assert s.generated_tokens == s.prompt_tokens == s.steps == 0 and not s.ttft_s and s.busy_s == 0
    assert s.blocks_in_use == 0 and engine.stop_token_ids == [END] and not engine.has_unfinished()
    assert [r.token_ids for r in engine.generate(prompts, GREEDY)] == [r.token_ids for r in cold]


def test_stats_report_latency_throughput_and_blocks(model, prompts):
    engine = LLMEngine(model, ToyTokenizer(), EngineConfig(block_size=4))
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, GREEDY)
    first = engine.step()
    assert engine.stats.blocks_in_use > 0 and engine.stats.num_running == len(prompts)
    outs = run_to_end(engine)
    for o in first:
        outs[o.request_id].insert(0, o)
    s = engine.stats
    produced = sum(len(joined(o)[0]) for o in outs.values())
    assert s.generated_tokens == produced and s.prompt_tokens == sum(map(len, prompts))
    assert len(s.ttft_s) == len(prompts) and all(t > 0 for t in s.ttft_s)
    assert len(s.tpot_s) == sum(len(joined(o)[0]) > 1 for o in outs.values())
    assert s.throughput_tok_s > 0 and s.blocks_in_use == 0 and s.num_running == s.num_waiting == 0


def test_sliding_window_model_equals_generate():
    model = make_model("llama", sliding_window=5)
    prompts = random_prompts([12, 3, 20], seed=9)
    got = LLMEngine(model, ToyTokenizer(), CONFIGS["chunked"]).generate(prompts, GREEDY)
    assert [g.token_ids for g in got] == [reference(model, p, GREEDY).token_ids for p in prompts]
