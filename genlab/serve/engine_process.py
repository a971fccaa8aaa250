"""The LLMEngine in its own process: the server's event loop and the engine never share a GIL.

Handbook VI (serving). vLLM V1 splits its server the same way: an EngineCore process runs the
scheduler and the model in a busy loop, the API server process does HTTP, and they talk over
sockets. Why here: with the engine stepped by a thread of the server process (async_engine.py),
every step's Python work and the event loop's SSE work take turns on one GIL, and the engine
thread, returning from a matmul (which runs without the GIL), waits for the loop to let go of it.
In a process of its own the engine steps back to back on its core while HTTP runs on another.
Measured with benchmarks/serve.py (64 streamed requests, 2-core dev machine, six runs): 1,110-1,434
tok/s against 955-1,252 with the engine in a server thread, level with the offline engine.

    parent (the server)                              child (spawned: fresh interpreter)
    EngineProcess.submit -> ("add", token, requests)  -> add_request ... -> ("added", token, error)
    RequestStream.close  -> ("abort", ids)           -> engine.abort
    EngineProcess.stats  -> ("stats", token)         -> ("stats", token, snapshot)
    receiver thread      <- ("outputs", [RequestOutput, ...])  after every step (coalesced there)
                         <- ("failed", message, fatal, ids)    a step raised
    stop()               -> ("stop",)                -> aborts all, ("stopped",), exits

`EngineProcess` has AsyncEngine's interface (start, stop, running, error, submit, abort, stats),
so the HTTP layer is the same code either way. The child is built from an `EngineSpec`: a model
directory, or a model's config and weights (sent as torch.save bytes, read back with
weights_only=True), plus tokenizer, EngineConfig, stop ids and torch's thread count. It ignores
SIGINT (the server shuts it down with "stop") and exits when the server's end of the pipe closes.

    python -m pytest -q tests/serve/test_engine_process.py
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.errors import CheckpointError, ConfigError, GenlabError
from genlab.serve.async_engine import (STREAM_INTERVAL_S, EngineRequest, EngineUnavailable, OutputCoalescer,
                                       RequestStream, _resolve, _Sink, abort_quietly, add_requests, deliver,
                                       fail_streams, stats_snapshot)

log = logging.getLogger("genlab.serve")
START_TIMEOUT_S = 300.0  # spawning imports torch and builds the engine (numba kernels come from the disk cache)


@dataclass
class EngineSpec:
    """Everything the engine process needs to build its LLMEngine; picklable."""

    model_config: Any  # genlab ModelConfig
    tokenizer: Any
    engine_config: Any  # EngineConfig
    stop_token_ids: list[int] | None = None  # None: the tokenizer's default end tokens
    model_dir: Path | None = None  # load the weights from here ...
    weights: bytes | None = None  # ... or from these torch.save bytes of a state dict
    num_threads: int | None = None  # torch intra-op threads in the child (None: torch's default)

    @classmethod
    def from_pretrained(cls, model_dir: Path, engine_config, num_threads: int | None = None) -> "EngineSpec":
        """Reads only config and tokenizer here; the child loads the weights."""
        from genlab.models.hf_io import config_from_hf, read_hf_config
        from genlab.tokenizers import BPETokenizer

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(f"{model_dir}: model directory not found")
        return cls(config_from_hf(read_hf_config(model_dir)), BPETokenizer.load(model_dir), engine_config, None,
                   model_dir, num_threads=num_threads)

    @classmethod
    def from_model(cls, model, tokenizer, engine_config, stop_token_ids: list[int] | None = None,
                   num_threads: int | None = None) -> "EngineSpec":
        import torch

        buffer = io.BytesIO()
        torch.save({name: t.detach().contiguous() for name, t in model.state_dict().items()}, buffer)
        return cls(model.config, tokenizer, engine_config, stop_token_ids, weights=buffer.getvalue(),
                   num_threads=num_threads)

    def build(self):
        import torch

        from genlab.inference.engine import LLMEngine
        from genlab.models.hf_io import load_pretrained
        from genlab.models.transformer import Transformer

        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if self.model_dir is not None:
            model = load_pretrained(self.model_dir)
        else:
            model = Transformer(self.model_config)
            model.load_state_dict(torch.load(io.BytesIO(self.weights), weights_only=True))
        return LLMEngine(model, self.tokenizer, self.engine_config, self.stop_token_ids)


# --- the child ---------------------------------------------------------------------------------------
class _EngineCore:
    """The engine process's loop: step whenever there is work; between steps, answer every pending command."""

    def __init__(self, conn, engine, stream_interval_s: float) -> None:
        self.conn, self.engine = conn, engine
        self.coalesce = OutputCoalescer(stream_interval_s)
        self.started, self.busy_s, self.steps, self.failures, self.dead = time.monotonic(), 0.0, 0, 0, False

    def run(self) -> None:
        """Returns on "stop" or when the server's end of the pipe is gone."""
        try:
            while True:
                if self.dead or not self.engine.has_unfinished():
                    self.conn.poll(None)  # idle: block until a command (or the pipe closing)
                while self.conn.poll(0):
                    if not self.handle(self.conn.recv()):
                        return
                if not self.dead and self.engine.has_unfinished():
                    self.step()
        except (EOFError, OSError):  # the server is gone
            return

    def handle(self, command: tuple) -> bool:
        """Carry out one command; False for "stop"."""
        kind, engine = command[0], self.engine
        if kind == "add":
            problem = EngineUnavailable("the engine failed") if self.dead else add_requests(engine, command[2])
            if problem is not None and not isinstance(problem, GenlabError):  # a bug: sent as a picklable 500
                problem = RuntimeError(f"{type(problem).__name__}: {problem}")
            self.conn.send(("added", command[1], problem))
        elif kind == "abort":
            for rid in command[1]:
                engine.abort(rid)
                self.coalesce.forget(rid)
        elif kind == "stats":
            snapshot = stats_snapshot(engine)
            snapshot.update(engine_busy_seconds=self.busy_s, engine_steps=self.steps,
                            in_flight_requests=len(engine.requests), uptime_seconds=time.monotonic() - self.started)
            self.conn.send(("stats", command[1], snapshot))
        elif kind == "stop":
            self.shutdown()
            return False
        return True

    def step(self) -> None:
        t0 = time.perf_counter()
        try:
            outputs = self.engine.step()
            self.failures = 0
        except Exception as exc:  # noqa: BLE001 - reported to every waiting stream, never kills the process
            self.failures += 1
            self.dead = self.failures > 1  # a second failure in a row: the engine is broken
            log.error("engine step failed: %r", exc, exc_info=exc)
            in_flight = self._abort_all()
            self.conn.send(("failed", f"{type(exc).__name__}: {exc}", self.dead, in_flight))
            return
        finally:
            self.busy_s += time.perf_counter() - t0
            self.steps += 1
        ready = self.coalesce(outputs)
        if ready:
            self.conn.send(("outputs", ready))

    def shutdown(self) -> None:
        """Abort everything; a few last steps report "abort" to the streams (unless the engine is broken)."""
        self._abort_all()
        deadline = time.monotonic() + 5.0
        try:
            while self.engine.has_unfinished() and not self.dead and time.monotonic() < deadline:
                self.conn.send(("outputs", self.coalesce(self.engine.step(), flush=True)))
        except (EOFError, OSError):
            raise
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self.conn.send(("stopped",))

    def _abort_all(self) -> list[str]:
        in_flight = list(self.engine.requests)
        abort_quietly(self.engine, in_flight)
        self.coalesce.clear()
        return in_flight


def _core_main(conn, spec: EngineSpec, stream_interval_s: float) -> None:
    """The engine process's entry point: build and warm up the engine, report, then run the loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us with "stop"
    try:
        engine = spec.build()
        engine.warm_up()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it from start()
        conn.send(("ready", f"{type(exc).__name__}: {exc}", None))
        return
    conn.send(("ready", None, {"num_params": engine.model.num_params(), "pid": os.getpid()}))
    _EngineCore(conn, engine, stream_interval_s).run()


# --- the server's side -------------------------------------------------------------------------------
class EngineProcess:
    """AsyncEngine's interface over an engine running in a spawned child process."""

    def __init__(self, spec: EngineSpec, stream_interval_s: float = STREAM_INTERVAL_S) -> None:
        self.spec, self.stream_interval_s = spec, stream_interval_s
        self.error: str | None = None
        self.dead = False
        self.info: dict[str, Any] = {}  # from the child once started: num_params, pid
        self._process = None
        self._conn = None
        self._receiver: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards _sinks and _waiting (event loop threads + the receiver)
        self._sinks: dict[str, _Sink] = {}
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._tokens = itertools.count()
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        if self._process is not None:
            return self
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch/OpenMP state
        self._conn, child_end = context.Pipe()
        self._process = context.Process(target=_core_main, args=(child_end, self.spec, self.stream_interval_s),
                                        name="genlab-engine", daemon=True)
        self._process.start()
        child_end.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._kill()
            raise EngineUnavailable(f"the engine process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            _, problem, self.info = self._conn.recv()
        except EOFError:
            problem = f"it exited with code {self._process.exitcode}"
        if problem is not None:
            self._kill()
            raise EngineUnavailable(f"the engine process could not start: {problem}")
        self._receiver = threading.Thread(target=self._receive, name="genlab-engine-receiver", daemon=True)
        self._receiver.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Abort everything in flight, stop the child and join it."""
        if self._process is None:
            return
        self._stopping = True
        try:
            self._send(("stop",))
        except EngineUnavailable:
            pass
        if self._receiver is not None:
            self._receiver.join(timeout)
        self._process.join(timeout)
        self._kill()
        self._conn.close()
        self.dead = True

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive() and not self.dead

    # --- event-loop side ---------------------------------------------------------------------------
    async def submit(self, requests: list[EngineRequest]) -> RequestStream:
        """As AsyncEngine.submit: the stream once every request was accepted, else the engine's error."""
        if not self.running:
            raise EngineUnavailable(f"the engine is not running{': ' + self.error if self.error else ''}")
        loop = asyncio.get_running_loop()
        stream = RequestStream(self, [r.request_id for r in requests])
        sink = _Sink(stream, loop)
        with self._lock:
            taken = [r.request_id for r in requests if r.request_id in self._sinks]
            if taken:
                raise ConfigError(f"request id {taken[0]!r} is already in use")
            for r in requests:
                self._sinks[r.request_id] = sink
        try:
            problem = await self._ask(loop, ("add", requests))
        except BaseException:
            stream.close()
            raise
        if problem is not None:
            with self._lock:
                for r in requests:
                    self._sinks.pop(r.request_id, None)
            stream.unfinished.clear()
            raise problem
        return stream

    def abort(self, request_ids: list[str]) -> None:
        """Abort requests (non-blocking); unknown or finished ids are ignored."""
        try:
            self._send(("abort", list(request_ids)))
        except EngineUnavailable:
            pass

    async def stats(self) -> dict[str, Any]:
        if not self.running:
            raise EngineUnavailable("the engine is not running")
        return await self._ask(asyncio.get_running_loop(), ("stats",))

    async def _ask(self, loop, command: tuple) -> Any:
        token = next(self._tokens)
        future = loop.create_future()
        with self._lock:
            self._waiting[token] = (loop, future)
        try:
            self._send((command[0], token, *command[1:]))
            return await future
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError, AttributeError) as exc:
                raise EngineUnavailable(f"the engine process is gone ({exc})") from None

    # --- receiver thread ---------------------------------------------------------------------------
    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                if not self._stopping:
                    self._fail(f"the engine process exited (code {self._process.exitcode})", fatal=True)
                return
            kind = message[0]
            if kind == "outputs":
                with self._lock:
                    orphans = deliver(self._sinks, message[1])
                if orphans:
                    self.abort(orphans)
            elif kind in ("added", "stats"):
                with self._lock:
                    waiter = self._waiting.pop(message[1], None)
                if waiter is not None:
                    _resolve(*waiter, message[2])
            elif kind == "failed":
                _, error, fatal, request_ids = message
                self._fail(error, fatal, request_ids)
            elif kind == "stopped":
                return

    def _fail(self, error: str, fatal: bool, request_ids: list[str] | None = None) -> None:
        log.error("engine failed: %s", error)
        self.error = error
        self.dead = self.dead or fatal
        with self._lock:
            ids = list(self._sinks) if request_ids is None else [r for r in request_ids if r in self._sinks]
            sinks = [self._sinks.pop(r) for r in ids]
            waiting = list(self._waiting.values()) if fatal else []
        fail_streams(sinks, error)
        for loop, future in waiting:
            _resolve(loop, future, error=EngineUnavailable(f"the engine failed: {error}"))


__all__ = ["EngineProcess", "EngineSpec"]
