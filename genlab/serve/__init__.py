"""OpenAI-compatible serving for genlab models: an asyncio front over LLMEngine, FastAPI routes, a web chat page.

Handbook VI (serving). `create_app(engine, model_name, api_key=None)` builds the app; `genlab serve
MODEL_DIR` runs it with uvicorn. FastAPI and uvicorn are imported only here and in the CLI.

    python -m pytest -q tests/serve
"""

from genlab.serve.app import create_app
from genlab.serve.async_engine import AsyncEngine, EngineRequest, RequestStream

__all__ = ["AsyncEngine", "EngineRequest", "RequestStream", "create_app"]
