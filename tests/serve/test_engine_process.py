"""EngineProcess: the LLMEngine in a spawned process of its own, driven from asyncio like AsyncEngine.

Concurrent requests match the engine's offline `generate`; a rejected request raises before
streaming and leaves nothing behind; closing a stream aborts it and frees its blocks; a step that
raises reaches the waiting stream (a second failure marks the engine dead); a child that dies or
cannot start is reported, not waited on forever. (The HTTP tests in test_openai_api.py run against
both fronts.)

    python -m pytest -q tests/serve/test_engine_process.py
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from genlab.errors import ConfigError
from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.inference.sampling import SamplingParams
from genlab.serve.async_engine import EngineRequest, EngineUnavailable
from genlab.serve.engine_process import EngineProcess, EngineSpec
from serve_helpers import MAX_SEQ_LEN, BrokenSpec, check_failure_outcome, fail_a_step_then_submit_again

CONFIG = EngineConfig(block_size=16, num_blocks=128)
PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


@pytest.fixture(scope="module")
def front(model_dir):
    engine = EngineProcess(EngineSpec.from_pretrained(model_dir, CONFIG, num_threads=1)).start()
    yield engine
    engine.stop()
    assert not engine.running and not engine._process.is_alive()


async def idle_stats(front):
    """Stats once the engine has nothing running (an abort lands on its next step)."""
    for _ in range(200):
        stats = await front.stats()
        if stats["blocks_in_use"] == 0 and stats["num_running"] == 0:
            break
        await asyncio.sleep(0.01)
    return stats


def test_concurrent_requests_match_offline_generate(front, model_dir):
    params = SamplingParams(temperature=0.0, max_tokens=12)
    offline = [r.token_ids for r in LLMEngine.from_pretrained(model_dir, CONFIG).generate(PROMPTS, params)]

    async def main():
        async def one(i):
            stream = await front.submit([EngineRequest(f"r{i}", PROMPTS[i], params)])
            return [t async for out in stream for t in out.token_ids]
        return await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))), await idle_stats(front)

    results, stats = run(main())
    assert results == offline
    assert stats["in_flight_requests"] == 0 and stats["engine_steps"] >= 12 and stats["generated_tokens"] >= 36


def test_rejected_request_raises_and_leaves_nothing_running(front):
    async def main():
        ok = EngineRequest("a", [1, 2], SamplingParams(max_tokens=4))
        too_long = EngineRequest("b", [1] * (MAX_SEQ_LEN + 1), SamplingParams(max_tokens=4))
        with pytest.raises(ConfigError, match="prompt"):
            await front.submit([ok, too_long])
        long = await front.submit([EngineRequest("dup", [1, 2], SamplingParams(max_tokens=300))])
        with pytest.raises(ConfigError, match="already in use"):
            await front.submit([EngineRequest("dup", [3], SamplingParams(max_tokens=3))])
        long.close()
        stream = await front.submit([EngineRequest("a", [1, 2], SamplingParams(max_tokens=3, temperature=0))])
        return [o async for o in stream], await idle_stats(front)

    outs, stats = run(main())
    assert outs[-1].finished and sum(len(o.token_ids) for o in outs) == 3
    assert stats["blocks_in_use"] == 0 and stats["num_running"] == 0 and stats["in_flight_requests"] == 0


def test_closing_a_stream_aborts_and_frees_blocks(front):
    async def main():
        stream = await front.submit([EngineRequest("long", [1, 2, 3], SamplingParams(max_tokens=400))])
        first = await stream.__anext__()
        stream.close()
        return first, await idle_stats(front)

    first, stats = run(main())
    assert not first.finished and stats["blocks_in_use"] == 0 and stats["num_running"] == 0


@pytest.mark.parametrize("failures", [1, -1])
def test_step_failure_reaches_the_stream_and_repeated_failure_marks_the_engine_dead(model_dir, failures):
    spec = BrokenSpec(**vars(EngineSpec.from_pretrained(model_dir, CONFIG, num_threads=1)), failures=failures)
    front = EngineProcess(spec).start()
    try:
        dead, last = run(fail_a_step_then_submit_again(front, lambda: front.dead))
    finally:
        front.stop()
    check_failure_outcome(failures, dead, last)
    assert not dead or "kernel exploded" in front.error


def test_a_dead_child_fails_the_waiting_streams(model_dir):
    front = EngineProcess(EngineSpec.from_pretrained(model_dir, CONFIG, num_threads=1)).start()

    async def main():
        stream = await front.submit([EngineRequest("long", [1, 2, 3], SamplingParams(max_tokens=400))])
        await stream.__anext__()
        front._process.kill()
        with pytest.raises(EngineUnavailable, match="exited"):
            async for _ in stream:
                pass
        with pytest.raises(EngineUnavailable):
            await front.submit([EngineRequest("next", [1], SamplingParams(max_tokens=2))])

    try:
        run(main())
        assert not front.running
    finally:
        front.stop()


def test_a_child_that_cannot_build_its_engine_is_reported(model_dir, tmp_path):
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    spec = dataclasses.replace(EngineSpec.from_pretrained(model_dir, CONFIG), model_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match="could not start: CheckpointError: .*no model.safetensors"):
        EngineProcess(spec).start()
