"""OpenAI-compatible serving for genlab models: an asyncio front over LLMEngine (a thread, or a process of its own), FastAPI routes, a web chat page.

Handbook VI (serving). `create_app(engine, model_name, api_key=None)` builds the app; `genlab serve
MODEL_DIR` runs it with uvicorn. FastAPI and uvicorn are imported only here and in the CLI.

    python -m pytest -q tests/serve
"""

from genlab.serve.app import create_app
from genlab.serve.async_engine import AsyncEngine, EngineRequest, RequestStream
from genlab.serve.engine_process import EngineProcess, EngineSpec

__all__ = ["AsyncEngine", "EngineProcess", "EngineRequest", "EngineSpec", "RequestStream", "create_app"]
