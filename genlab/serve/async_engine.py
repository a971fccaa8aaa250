"""An asyncio front for the single-threaded LLMEngine: one background thread steps it, requests stream back.

Handbook VI (serving: continuous batching). Kwon et al. 2023 (vLLM, PagedAttention) run the
scheduler in one loop while an async server adds and aborts requests; genlab does the same with
one `threading.Thread` that owns the engine. Everything that touches the engine (add, abort,
step, stats) happens on that thread, so the engine itself needs no locks:

- the event loop sends commands (add / abort / stats / stop) through a thread-safe FIFO queue;
  FIFO order means an abort can never overtake the add it cancels;
- each HTTP request gets a `RequestStream` (an asyncio queue) that the engine thread fills with
  `RequestOutput`s via `loop.call_soon_threadsafe`;
- a stream closed before its requests finish (client disconnect, cancelled handler) aborts them,
  which frees their KV blocks on the engine's next step.

Streaming cost: the event loop shares the GIL with the engine thread, so every delivered output
(one SSE event per request) slows the steps down. Outputs are therefore coalesced per request
over `stream_interval_s` (as vLLM's stream interval): a request's first output (time to first
token) and its last are sent at once; in between, its tokens are merged and sent at most every
interval. Throughput at 64 streams rises; a reader sees a few tokens per event instead of one.
`genlab serve` goes further and runs the engine in a process of its own (engine_process.py, the
same interface): in benchmarks/serve.py's 64 streamed requests, 955-1,163 -> 1,238-1,417 tok/s
(three runs on the 2-core dev machine), level with the offline engine.

When nothing runs, the thread blocks on the command queue (no busy loop). An exception inside
`engine.step()` is reported to every in-flight stream and their requests are aborted; a second
failure in a row marks the engine dead (`/health` then answers 503).

    python -m pytest -q tests/serve/test_openai_api.py -k disconnect
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from genlab.errors import GenlabError
from genlab.inference.sampling import SamplingParams

log = logging.getLogger("genlab.serve")
STREAM_INTERVAL_S = 0.05  # coalesce a request's streamed tokens over this long (first and last go at once)


@dataclass
class EngineRequest:
    """One sequence to generate (an HTTP request with n choices or several prompts makes several)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    constraint: Any = None  # a genlab.inference.structured.TokenIndex, or None
    prompt_logprobs: int | None = None


class EngineUnavailable(GenlabError):
    """The engine thread stopped or failed; the server cannot generate."""


class RequestStream:
    """Async iterator over the outputs of one HTTP request's engine requests (all choices, interleaved).

    Ends when every request has finished. `close()` (or leaving `async with`) aborts whatever is
    still running; it is synchronous on purpose, so it also works inside a cancelled task.
    """

    def __init__(self, engine: "AsyncEngine", request_ids: list[str]) -> None:
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self.request_ids = list(request_ids)
        self.unfinished = set(request_ids)

    def _put(self, item: Any) -> None:  # called on the event loop, scheduled by the engine thread
        self._queue.put_nowait(item)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self):
        if not self.unfinished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):  # engine failure or client gone: nothing more will come
            self.close()
            raise item
        if item.finished:
            self.unfinished.discard(item.request_id)
        return item

    def close(self) -> None:
        """Abort the requests that have not finished (idempotent)."""
        if self.unfinished:
            self._engine.abort(sorted(self.unfinished))
            self.unfinished.clear()

    async def __aenter__(self) -> "RequestStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()


@dataclass
class _Sink:
    stream: RequestStream
    loop: asyncio.AbstractEventLoop


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any = None,
             error: BaseException | None = None) -> None:
    """Complete an asyncio future from the engine thread (ignored if its waiter already left)."""
    def done() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _merge(held: Any, new: Any) -> Any:
    """Two consecutive RequestOutputs of one request as one: texts, tokens and logprobs joined, the later state."""
    logprobs = None if held.logprobs is None and new.logprobs is None else (held.logprobs or []) + (new.logprobs or [])
    prompt_lp = held.prompt_logprobs if held.prompt_logprobs is not None else new.prompt_logprobs
    return dataclasses.replace(new, text=held.text + new.text, token_ids=held.token_ids + new.token_ids,
                               logprobs=logprobs, prompt_logprobs=prompt_lp)


def _put_all(batch: list[tuple[RequestStream, Any]]) -> None:
    for stream, output in batch:
        stream._put(output)


class OutputCoalescer:
    """Merges each request's outputs over `interval_s` (see the module docstring); first and last go at once."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._held: dict[str, Any] = {}  # merged outputs not yet sent
        self._started: set[str] = set()  # requests that sent their first output
        self._last_flush = 0.0

    def __call__(self, outputs, flush: bool = False) -> list:
        """The outputs to send now; the rest are merged into what is held."""
        now = time.monotonic()
        due = flush or self.interval_s <= 0 or now - self._last_flush >= self.interval_s
        ready = []
        for output in outputs:
            rid = output.request_id
            held = self._held.pop(rid, None)
            if held is not None:
                output = _merge(held, output)
            if due or output.finished or rid not in self._started or not dataclasses.is_dataclass(output):
                ready.append(output)
                if output.finished:
                    self._started.discard(rid)
                else:
                    self._started.add(rid)
            else:
                self._held[rid] = output
        if due:
            ready.extend(self._held.values())
            self._held.clear()
            self._last_flush = now
        return ready

    def forget(self, request_id: str) -> None:
        self._held.pop(request_id, None)
        self._started.discard(request_id)

    def clear(self) -> None:
        self._held.clear()
        self._started.clear()


def deliver(sinks: dict[str, _Sink], outputs) -> list[str]:
    """Hand outputs to their streams, one wake-up per event loop (not per token); finished ones drop their
    sink. Returns the unfinished request ids whose event loop is gone (the caller aborts them)."""
    batches: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = {}
    for output in outputs:
        sink = sinks.get(output.request_id)
        if sink is None:
            continue
        if output.finished:
            del sinks[output.request_id]
        batches.setdefault(sink.loop, []).append((sink.stream, output))
    orphans = []
    for loop, batch in batches.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # that client's event loop is gone: stop generating for it
            orphans += [output.request_id for _, output in batch if not output.finished]
    return orphans


def fail_streams(sinks, error: str) -> None:
    """End each sink's stream with EngineUnavailable (its event loop raises it to the HTTP handler)."""
    for sink in sinks:
        try:
            sink.loop.call_soon_threadsafe(sink.stream._put, EngineUnavailable(f"generation failed: {error}"))
        except RuntimeError:  # that event loop is gone
            pass


def abort_quietly(engine, request_ids) -> None:
    """Abort each request, ignoring errors: after a failed step the engine may be inconsistent."""
    for rid in request_ids:
        try:
            engine.abort(rid)
        except Exception:  # noqa: BLE001 - cleaning up after a failure; the streams are failed anyway
            pass


def add_requests(engine, requests: list[EngineRequest]) -> Exception | None:
    """Add every request to `engine`, or none of them: on a rejection the ones added are aborted and the
    error is returned (for the caller to raise where the request came from); never raises."""
    added = []
    try:
        for r in requests:
            engine.add_request(r.request_id, r.prompt_ids, r.params, constraint=r.constraint,
                               prompt_logprobs=r.prompt_logprobs)
            added.append(r.request_id)
    except Exception as exc:  # noqa: BLE001 - a rejected request must not stop the engine
        for rid in added:
            engine.abort(rid)
        if not isinstance(exc, GenlabError):
            log.exception("engine.add_request failed")
        return exc
    return None


def stats_snapshot(engine) -> dict[str, Any]:
    """The engine's stats as a plain dict (lists copied)."""
    stats = engine.stats
    if dataclasses.is_dataclass(stats):
        snapshot = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    else:
        snapshot = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in snapshot.items()}


class AsyncEngine:
    """Owns an LLMEngine and its stepping thread. Use from one asyncio event loop (or several)."""

    def __init__(self, engine, stream_interval_s: float = STREAM_INTERVAL_S) -> None:
        self.engine = engine
        self._coalesce = OutputCoalescer(stream_interval_s)  # engine-thread only
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, _Sink] = {}  # engine-thread only
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.started_at = time.monotonic()
        self.busy_seconds = 0.0  # time spent inside engine.step()
        self.steps = 0
        self.error: str | None = None  # the last step failure, if any
        self.dead = False

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "AsyncEngine":
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="genlab-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Abort everything in flight and join the thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._commands.put(("stop",))
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.dead

    # --- event-loop side ---------------------------------------------------------------------------
    async def submit(self, requests: list[EngineRequest]) -> RequestStream:
        """Add requests to the engine; returns their stream once all were accepted.

        If the engine rejects one (ConfigError: prompt too long, duplicate id, ...), the ones already
        added are aborted and the error is raised here, before any output exists.
        """
        if not self.running:
            raise EngineUnavailable(f"the engine is not running{': ' + self.error if self.error else ''}")
        loop = asyncio.get_running_loop()
        stream = RequestStream(self, [r.request_id for r in requests])
        accepted = loop.create_future()
        self._commands.put(("add", requests, _Sink(stream, loop), accepted))
        try:
            await accepted
        except asyncio.CancelledError:
            stream.close()
            raise
        return stream

    def abort(self, request_ids: list[str]) -> None:
        """Abort requests (thread-safe, non-blocking); unknown or finished ids are ignored."""
        self._commands.put(("abort", list(request_ids)))

    async def stats(self) -> dict[str, Any]:
        """A snapshot of the engine's stats (a plain dict), taken on the engine thread."""
        if not self.running:
            raise EngineUnavailable("the engine is not running")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._commands.put(("stats", loop, future))
        return await future

    # --- engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            idle = self.dead or not self.engine.has_unfinished()
            try:
                command = self._commands.get(timeout=None) if idle else self._commands.get_nowait()
            except queue.Empty:
                command = None
            while command is not None:  # drain every pending command before the next step
                if command[0] == "stop":
                    self._shutdown()
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if self.dead or not self.engine.has_unfinished():
                continue
            t0 = time.perf_counter()
            try:
                outputs = self.engine.step()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - reported to every waiting client, never kills the thread
                failures += 1
                self._fail_all(exc, fatal=failures > 1)
                continue
            finally:
                self.busy_seconds += time.perf_counter() - t0
                self.steps += 1
            self._deliver(outputs)

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if kind == "add":
            _, requests, sink, accepted = command
            if self.dead:
                _resolve(sink.loop, accepted, error=EngineUnavailable(f"the engine failed: {self.error}"))
                return
            problem = add_requests(self.engine, requests)
            if problem is not None:
                _resolve(sink.loop, accepted, error=problem)
                return
            for r in requests:
                self._sinks[r.request_id] = sink
            _resolve(sink.loop, accepted, True)
        elif kind == "abort":
            for rid in command[1]:
                self._abort_one(rid)
        elif kind == "stats":
            _, loop, future = command
            try:
                _resolve(loop, future, self._stats_snapshot())
            except Exception as exc:  # noqa: BLE001
                _resolve(loop, future, error=exc)

    def _abort_one(self, request_id: str) -> None:
        if request_id not in self._sinks:
            return  # finished already, or never added
        try:
            self.engine.abort(request_id)
        except GenlabError:
            self._sinks.pop(request_id, None)
            self._coalesce.forget(request_id)

    def _deliver(self, outputs, flush: bool = False) -> None:
        for request_id in deliver(self._sinks, self._coalesce(outputs, flush)):
            self._abort_one(request_id)  # its sink stays until the "abort" output

    def _fail_all(self, exc: Exception, fatal: bool) -> None:
        log.error("engine step failed: %r", exc, exc_info=exc)
        self.error = f"{type(exc).__name__}: {exc}"
        self.dead = self.dead or fatal
        sinks, self._sinks = self._sinks, {}
        self._coalesce.clear()
        abort_quietly(self.engine, sinks)
        fail_streams(sinks.values(), self.error)
        if self.dead:
            log.error("engine marked dead after repeated failures")

    def _shutdown(self) -> None:
        for rid in list(self._sinks):
            self._abort_one(rid)
        deadline = time.monotonic() + 5.0
        while self.engine.has_unfinished() and time.monotonic() < deadline and not self.dead:
            try:
                self._deliver(self.engine.step(), flush=True)  # aborted requests report "abort", free blocks
            except Exception:  # noqa: BLE001
                break
        self.dead = True

    def _stats_snapshot(self) -> dict[str, Any]:
        snapshot = stats_snapshot(self.engine)
        snapshot["engine_busy_seconds"] = self.busy_seconds
        snapshot["engine_steps"] = self.steps
        snapshot["uptime_seconds"] = time.monotonic() - self.started_at
        snapshot["in_flight_requests"] = len(self._sinks)
        return snapshot

__all__ = ["AsyncEngine", "EngineRequest", "EngineUnavailable", "RequestStream", "abort_quietly", "add_requests",
           "fail_streams"]
