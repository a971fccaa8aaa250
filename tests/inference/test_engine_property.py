"""Property test: random arrivals, aborts and forced preemptions (tiny block pools). Every request ends
exactly once, unaborted ones equal generate() token for token, ref counts always match the block
tables, and afterwards the pool is fully free.

    python -m pytest -q tests/inference/test_engine_property.py
"""

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.inference.sampling import SamplingParams
from test_engine_common import ToyTokenizer, make_model, random_prompts, reference

MODEL = make_model("llama", max_seq_len=64)
PREFIXES = [[]] + random_prompts([5, 9], seed=11)  # shared prompt starts, for prefix-cache hits
_REFS: dict = {}


def ref_of(prompt, params):
    key = (tuple(prompt), repr(params))
    if key not in _REFS:
        _REFS[key] = reference(MODEL, prompt, params)
    return _REFS[key]


@st.composite
def scenarios(draw):
    block_size = draw(st.sampled_from([2, 4, 8]))
    requests = []
    for i in range(draw(st.integers(1, 6))):
        prompt = draw(st.sampled_from(PREFIXES)) + draw(st.lists(st.integers(0, 62), max_size=10))
        prompt = prompt or [1]
        seeded = draw(st.booleans())
        params = SamplingParams(temperature=1.0 if seeded else 0.0, seed=i if seeded else None,
                                max_tokens=draw(st.integers(1, 12)))
        requests.append(dict(id=f"r{i}", prompt=prompt, params=params, arrival=draw(st.integers(0, 8)),
                             abort=draw(st.none() | st.integers(0, 20))))
    most = max(-(-(len(r["prompt"]) + r["params"].max_tokens - 1) // block_size) for r in requests)
    config = EngineConfig(block_size=block_size, num_blocks=draw(st.integers(most, most + 4)),
                          max_num_seqs=draw(st.integers(1, 6)), max_num_batched_tokens=draw(st.integers(1, 40)),
                          enable_prefix_caching=draw(st.booleans()))
    return config, requests


def check_ref_counts(engine: LLMEngine) -> None:
    uses = Counter(b for s in engine.requests.values() for b in s.block_table)
    assert all(engine.block_manager.ref_count[b] == uses.get(b, 0) for b in range(engine.block_manager.num_blocks))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_traffic_finishes_everything_and_frees_the_pool(scenario):
    config, requests = scenario
    engine = LLMEngine(MODEL, ToyTokenizer(), config)
    outs: dict[str, list] = {r["id"]: [] for r in requests}
    aborted = set()
    step = 0
    while step <= 8 or engine.has_unfinished():
        for r in requests:
            if r["arrival"] == step:
                engine.add_request(r["id"], r["prompt"], r["params"])
            if r["abort"] == step and r["arrival"] <= step and not (outs[r["id"]] and outs[r["id"]][-1].finished):
                engine.abort(r["id"])
                aborted.add(r["id"])
        for o in engine.step():
            outs[o.request_id].append(o)
        check_ref_counts(engine)
        step += 1
        assert step < 2000, "no progress"
    for r in requests:
        o = outs[r["id"]]
        assert sum(x.finished for x in o) == 1 and o[-1].finished
        tokens = [t for x in o for t in x.token_ids]
        ref = ref_of(r["prompt"], r["params"])
        if r["id"] in aborted:
            assert o[-1].finish_reason == "abort" and ref.token_ids[:len(tokens)] == tokens
        else:
            assert (tokens, "".join(x.text for x in o), o[-1].finish_reason) == (ref.token_ids, ref.text, ref.finish_reason)
    engine.block_manager.check_all_free()
    assert engine.stats.blocks_in_use == 0 and engine.stats.num_running == engine.stats.num_waiting == 0


def test_tiny_pools_do_preempt_and_still_match():
    prompts = random_prompts([10, 12, 7, 9], seed=8)
    params = SamplingParams(temperature=0, max_tokens=20)
    engine = LLMEngine(MODEL, ToyTokenizer(), EngineConfig(block_size=2, num_blocks=16, max_num_batched_tokens=8))
    results = engine.generate(prompts, params)
    assert engine.stats.preemptions >= 3
    assert [r.token_ids for r in results] == [ref_of(p, params).token_ids for p in prompts]
    engine.block_manager.check_all_free()
