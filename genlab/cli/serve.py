"""`genlab serve`: an OpenAI-compatible server (and web chat page) for a model directory.

Handbook VI (serving). Loads the model into genlab's LLMEngine (paged KV cache, continuous
batching, prefix caching), by default in a process of its own (genlab.serve.engine_process), and
serves it with uvicorn. Binds 127.0.0.1 unless --host says
otherwise; with --api-key (or GENLAB_API_KEY) every /v1 request needs `Authorization: Bearer KEY`.

    genlab serve runs/q --port 8000      # a run directory (its model/), a model directory, or `latest`
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "What is 12 + 30?"}], "max_tokens": 16}'
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from genlab.cli.console import console, fail


def resolve_serve_dir(model: Optional[Path], runs_root: Path = Path("runs")) -> Path:
    """A model directory from a model dir, a run dir (its model/), `latest` or nothing (the latest run)."""
    from genlab.cli.generate import resolve_model_dir
    from genlab.recipes.runs import latest_run

    if model is not None and str(model) == "latest" and not model.exists():
        model = latest_run(runs_root)
    return resolve_model_dir(model, runs_root)


def serve(
    model: Optional[Path] = typer.Argument(None, help="Model directory, run directory, or `latest` (default)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, envvar="GENLAB_API_KEY", help="Require this bearer key on /v1."),
    model_name: Optional[str] = typer.Option(None, help="Name clients use (default: the model directory's name)."),
    block_size: int = typer.Option(16, help="KV-cache block size in tokens."),
    num_blocks: Optional[int] = typer.Option(None, help="KV-cache blocks (default: max-num-seqs full sequences)."),
    max_num_seqs: int = typer.Option(64, help="Sequences decoded together in one step."),
    max_num_batched_tokens: int = typer.Option(1024, help="Token budget per step (decode + prefill chunks)."),
    prefix_caching: bool = typer.Option(True, help="Reuse KV blocks of shared prompt prefixes."),
    engine_process: bool = typer.Option(
        True, "--engine-process/--engine-thread",
        help="Run the engine in a process of its own (default; the HTTP side then never holds its GIL) "
             "or in a thread of the server process."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with a web chat page at /."""
    import uvicorn

    from genlab.inference.engine import EngineConfig, LLMEngine
    from genlab.serve import EngineProcess, EngineSpec, create_app
    from genlab.serve.async_engine import EngineUnavailable

    model_dir = resolve_serve_dir(model)
    if not 0 < port < 65536:
        fail(f"--port {port} is not a TCP port (1-65535)")
    config = EngineConfig(block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens, enable_prefix_caching=prefix_caching)
    if engine_process:
        engine = EngineProcess(EngineSpec.from_pretrained(model_dir, config))
        try:  # started before uvicorn, so weights that cannot load are a clean error here
            engine.start()
        except EngineUnavailable as e:
            fail(str(e))
        num_params = engine.info["num_params"]
    else:
        engine = LLMEngine.from_pretrained(model_dir, config)
        engine.warm_up()
        num_params = engine.model.num_params()
    name = model_name or (model_dir.parent.name if model_dir.name == "model" else model_dir.name)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s %(message)s")
    console.print(f"[bold]genlab serve[/] {model_dir} as [bold]{name}[/] on http://{host}:{port}/ "
                  f"({num_params / 1e6:.1f}M parameters, engine in {'its own process' if engine_process else 'a thread'}"
                  f"{', API key required' if api_key else ''})")
    uvicorn.run(create_app(engine, name, api_key=api_key), host=host, port=port, log_level=log_level)
