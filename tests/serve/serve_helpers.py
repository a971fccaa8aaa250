"""Helpers for the server tests: a uvicorn server in a thread, a log recorder, shared names.

    python -m pytest -q tests/serve
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from genlab.inference.sampling import SamplingParams
from genlab.serve.async_engine import EngineRequest, EngineUnavailable
from genlab.serve.engine_process import EngineSpec

API_KEY = "sk-genlab-test"
MODEL_NAME = "tiny-chat"
MAX_SEQ_LEN = 512


@dataclass
class LiveServer:
    base_url: str
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(app) -> LiveServer:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread)


class RecordHandler(logging.Handler):
    """Keeps the genlab.serve log lines, so tests can check what the server logged."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())



@dataclass
class BrokenSpec(EngineSpec):
    """An EngineSpec whose engine's first `failures` steps raise (-1: every step); module-level, so the
    spawned engine process can unpickle it."""

    failures: int = 0

    def build(self):
        engine = super().build()
        step, left = engine.step, [self.failures]

        def broken_step():
            if left[0]:
                left[0] -= 1
                raise RuntimeError("kernel exploded")
            return step()
        engine.step = broken_step
        engine.warm_up = lambda: None  # the engine process warms up through step(): not this one
        return engine


async def fail_a_step_then_submit_again(front, settled) -> tuple[bool, object]:
    """A request whose engine step raises reaches its stream as EngineUnavailable; once `settled()` (the
    engine's cleanup step ran, or it gave up) a second request either is refused (the engine is dead) or
    runs. Returns (dead, the second request's last output or None)."""
    stream = await front.submit([EngineRequest("x", [1, 2], SamplingParams(max_tokens=4))])
    with pytest.raises(EngineUnavailable, match="kernel exploded"):
        await stream.__anext__()
    for _ in range(100):
        if settled():
            break
        await asyncio.sleep(0.01)
    if front.dead:
        with pytest.raises(EngineUnavailable):
            await front.submit([EngineRequest("y", [1, 2], SamplingParams(max_tokens=4))])
        return True, None
    stream = await front.submit([EngineRequest("y", [1, 2], SamplingParams(max_tokens=4))])
    return False, [o async for o in stream][-1]


def check_failure_outcome(failures: int, dead: bool, last) -> None:
    if failures == 1:  # one bad step: the request fails, the engine recovers and serves the next one
        assert not dead and last.finished and last.finish_reason in ("stop", "length")
    else:
        assert dead
