"""A client that goes away mid-request aborts it: the engine reports "abort" and every KV block is free again.

The engine here never stops early (no stop tokens), so only an abort can end a request before
max_tokens; a recording subclass keeps each request's finish reason and token count.

    python -m pytest -q tests/serve/test_disconnect.py
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from genlab.inference.engine import EngineConfig, LLMEngine
from genlab.serve import create_app
from serve_helpers import MODEL_NAME, start_server

MAX_TOKENS = 480


class RecordingEngine(LLMEngine):
    """LLMEngine that remembers (finish_reason, completion tokens) of each finished request."""

    finished: dict

    def step(self):
        outputs = super().step()
        for out in outputs:
            if out.finished:
                self.finished[out.request_id] = (out.finish_reason, out.completion_token_count)
        return outputs


@pytest.fixture(scope="module")
def free_running(model_dir):
    base = LLMEngine.from_pretrained(model_dir)
    engine = RecordingEngine(base.model, base.tokenizer, EngineConfig(block_size=16, num_blocks=512), stop_token_ids=[])
    engine.finished = {}
    live = start_server(create_app(engine, MODEL_NAME))
    yield live, engine
    live.stop()


def _wait_idle(base_url: str, engine: RecordingEngine, prefix: str, count: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {k: v for k, v in engine.finished.items() if k.startswith(prefix)}
        metrics = httpx.get(base_url + "/metrics").json()
        if len(done) >= count and metrics["kv_blocks"]["in_use"] == 0 and metrics["engine"]["num_running"] == 0:
            return done
        time.sleep(0.05)
    raise AssertionError(f"engine not idle: finished={engine.finished} metrics={metrics}")


def test_disconnect_mid_stream_aborts_and_frees_blocks(free_running, server_log):
    live, engine = free_running
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": MAX_TOKENS, "stream": True, "temperature": 0.8, "seed": 0}
    pieces = 0
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", live.base_url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    pieces += bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))
                if pieces >= 3:
                    break  # leave while the server is still generating; closing the response drops the connection
    done = _wait_idle(live.base_url, engine, "chatcmpl", 1)
    ((reason, tokens),) = done.values()
    assert reason == "abort" and 3 <= tokens < MAX_TOKENS
    assert any("aborting" in line for line in server_log.lines)


def test_disconnect_while_waiting_for_a_non_streaming_reply(free_running):
    live, engine = free_running
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "n": 8, "seed": 1}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(live.base_url + "/v1/completions", json=body, timeout=0.3)
    done = _wait_idle(live.base_url, engine, "cmpl", 8)
    assert {reason for reason, _ in done.values()} == {"abort"}
    assert all(tokens < MAX_TOKENS for _, tokens in done.values())
    # the server still serves, with the whole cache available
    out = httpx.post(live.base_url + "/v1/completions", json={**body, "n": 1, "max_tokens": 4}, timeout=30).json()
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 4
