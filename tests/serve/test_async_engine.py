"""AsyncEngine: the real LLMEngine stepped in one background thread, driven from asyncio.

Concurrent requests interleave and match the engine's offline `generate`; a rejected request
raises before streaming and leaves nothing behind; closing a stream aborts it and frees its
blocks; a step that raises reaches every waiting stream, and a second failure marks it dead.

    python -m pytest -q tests/serve/test_async_engine.py
"""

from __future__ import annotations

import asyncio

import pytest

from genlab.errors import ConfigError
from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.inference.sampling import SamplingParams
from genlab.serve.async_engine import AsyncEngine, EngineRequest
from serve_helpers import MAX_SEQ_LEN, check_failure_outcome, fail_a_step_then_submit_again


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine.from_pretrained(model_dir, EngineConfig(block_size=16, num_blocks=128))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]]


def test_concurrent_requests_match_offline_generate(engine):
    params = SamplingParams(temperature=0.0, max_tokens=12)
    offline = [r.token_ids for r in engine.generate(PROMPTS, params)]

    async def main():
        front = AsyncEngine(engine).start()
        try:
            async def one(i):
                stream = await front.submit([EngineRequest(f"r{i}", PROMPTS[i], params)])
                return [t async for out in stream for t in out.token_ids]
            return await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))), await front.stats()
        finally:
            front.stop()

    results, stats = run(main())
    assert results == offline
    assert stats["blocks_in_use"] == 0 and stats["in_flight_requests"] == 0


def test_rejected_request_raises_and_leaves_nothing_running(engine):
    async def main():
        front = AsyncEngine(engine).start()
        try:
            ok = EngineRequest("a", [1, 2], SamplingParams(max_tokens=4))
            too_long = EngineRequest("b", [1] * (MAX_SEQ_LEN + 1), SamplingParams(max_tokens=4))
            with pytest.raises(ConfigError):
                await front.submit([ok, too_long])  # "a" was added, then aborted when "b" failed
            stream = await front.submit([EngineRequest("a2", [1, 2], SamplingParams(max_tokens=3, temperature=0))])
            outs = [o async for o in stream]
            return outs, await front.stats()
        finally:
            front.stop()

    outs, stats = run(main())
    assert outs[-1].finished and stats["blocks_in_use"] == 0 and stats["num_running"] == 0


def test_closing_a_stream_aborts_and_frees_blocks(engine):
    async def main():
        front = AsyncEngine(engine).start()
        try:
            stream = await front.submit([EngineRequest("long", [1, 2, 3], SamplingParams(max_tokens=400))])
            first = await stream.__anext__()
            stream.close()
            for _ in range(200):  # the abort lands on the engine's next step
                stats = await front.stats()
                if stats["blocks_in_use"] == 0 and stats["num_running"] == 0:
                    return first, stats
                await asyncio.sleep(0.01)
            return first, stats
        finally:
            front.stop()

    first, stats = run(main())
    assert not first.finished and stats["blocks_in_use"] == 0 and stats["num_running"] == 0


class BrokenEngine(LLMEngine):
    """Its next `failures` steps raise (-1: every step)."""

    failures = 0

    def step(self):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("kernel exploded")
        return super().step()


@pytest.mark.parametrize("failures", [1, -1])
def test_step_failure_reaches_the_stream_and_repeated_failure_marks_the_engine_dead(engine, failures):
    broken = BrokenEngine(engine.model, engine.tokenizer, EngineConfig(block_size=16, num_blocks=64))

    async def main():
        front = AsyncEngine(broken).start()
        try:
            broken.failures = failures
            return await fail_a_step_then_submit_again(front, lambda: front.dead or not broken.has_unfinished())
        finally:
            front.stop()

    check_failure_outcome(failures, *run(main()))
