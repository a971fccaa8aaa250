"""The OpenAI-compatible HTTP server (FastAPI): routes, API key, OpenAI-style errors, metrics, web chat page.

Handbook VI (serving). `create_app(engine, model_name, api_key=None)` wraps an LLMEngine in an
AsyncEngine (started and stopped with the app's lifespan) and serves:

    GET  /                     the web chat page (static/index.html; streams replies over SSE)
    GET  /health               200 {"status": "ok"} while the engine thread runs, else 503
    GET  /metrics              engine stats: TTFT/TPOT percentiles (ms), throughput, KV blocks, counters
    GET  /v1/models            the one served model
    POST /v1/completions       genlab/serve/completions.py
    POST /v1/chat/completions  genlab/serve/chat.py

Errors are always {"error": {"message", "type", "param", "code"}}: malformed JSON or an invalid
field -> 400 naming it, unknown model -> 404, missing or wrong API key (when one is set, checked
before the body is read) -> 401, engine down -> 503, anything unexpected -> 500 (logged; the
server keeps serving). Only /v1/* needs the key; the page asks for it and sends it.

    genlab serve runs/q/model --port 8000   # then: curl localhost:8000/v1/models
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from genlab.serve.async_engine import AsyncEngine
from genlab.serve.chat import create_chat_completion
from genlab.serve.completions import create_completion
from genlab.serve.engine_process import EngineProcess
from genlab.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from genlab.serve.serving import ServerState, percentiles

log = logging.getLogger("genlab.serve")
STATIC = Path(__file__).parent / "static"


class APIKeyMiddleware:
    """Pure ASGI check of `Authorization: Bearer KEY` on /v1/* (before the body is parsed; streams untouched)."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"")
            given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(given, self.api_key):
                error = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                 code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request ({first.get('msg', 'invalid JSON')}).",
                        code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message} (got {first.get('input')!r})"[:500]
    return APIError(400, message, param=param, code="invalid_value" if param else "invalid_request")


def create_app(engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving `engine` under the name `model_name`: an LLMEngine (stepped by a thread of
    this process, AsyncEngine) or an EngineProcess (the engine in a process of its own, engine_process.py)."""
    if isinstance(engine, EngineProcess):
        async_engine, tokenizer, model_config = engine, engine.spec.tokenizer, engine.spec.model_config
    else:
        async_engine, tokenizer, model_config = AsyncEngine(engine), engine.tokenizer, engine.model.config
    state = ServerState(engine=async_engine, tokenizer=tokenizer, model_name=model_name,
                        max_seq_len=int(model_config.max_seq_len),
                        vocab_size=min(int(model_config.vocab_size), int(tokenizer.vocab_size)),
                        api_key=api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async_engine.start()
        log.info("serving %s (context %d tokens)", model_name, state.max_seq_len)
        try:
            yield
        finally:
            async_engine.stop()

    app = FastAPI(title="genlab", description="OpenAI-compatible server for genlab models", lifespan=lifespan)
    app.state.serving = state
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        state.counters[f"errors_{exc.status}"] += 1
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return await _api_error(request, APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return await _api_error(request, APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon; spares browsers a logged 404

    @app.get("/health")
    async def health():
        if not async_engine.running:
            return JSONResponse({"status": "error", "error": async_engine.error or "engine stopped"}, status_code=503)
        return {"status": "ok", "model": model_name}

    @app.get("/metrics")
    async def metrics():
        return await _metrics(state)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=model_name, max_model_len=state.max_seq_len)]).model_dump()

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        state.check_model(name)
        return ModelCard(id=model_name, max_model_len=state.max_seq_len).model_dump()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await create_completion(state, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await create_chat_completion(state, body, request)

    return app


async def _metrics(state: ServerState) -> dict[str, Any]:
    try:
        stats = await state.engine.stats()
    except Exception as e:  # noqa: BLE001 - metrics must answer even when the engine is down
        raise APIError(503, f"engine stats unavailable: {e}", type="server_error") from None
    ttft, tpot = stats.pop("ttft_s", []) or [], stats.pop("tpot_s", []) or []
    busy, uptime = stats.get("engine_busy_seconds") or 0.0, stats.get("uptime_seconds") or 0.0
    generated = stats.get("generated_tokens") or 0
    total, used = stats.get("blocks_total"), stats.get("blocks_in_use")
    return {
        "model": state.model_name,
        "ttft_ms": percentiles(ttft),
        "tpot_ms": percentiles(tpot),
        "requests_finished": len(ttft),
        "throughput_tokens_per_s": {"busy": generated / busy if busy > 0 else 0.0,
                                    "uptime": generated / uptime if uptime > 0 else 0.0},
        "kv_blocks": {"total": total, "in_use": used,
                      "usage": (used / total) if total else None},
        "engine": stats,
        "requests": dict(state.counters),
    }
