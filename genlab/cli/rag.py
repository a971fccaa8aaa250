"""`genlab rag`: index text files, search them (hybrid BM25 + vectors), answer questions with citations.

Handbook V (vector databases, RAG). Thin layer over genlab.retrieval: parses options, shows rich
progress bars and tables; all logic lives in the library. Mounted by the main CLI as `genlab rag`.

    genlab rag index docs/ README.md && genlab rag search "how are checkpoints written" && genlab rag ask "..."
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genlab.cli.console import fail
from genlab.errors import GenlabError

app = typer.Typer(help="Retrieval: index files, search them, answer questions citing sources.", no_args_is_help=True)


def _console() -> Console:
    """A fresh console per command, so the terminal width (or $COLUMNS) is read when the command runs."""
    return Console()

DEFAULT_DB = Path("runs/rag/store.db")
DbOption = typer.Option(DEFAULT_DB, "--db", help="SQLite store (created on first index).")
ModelDirOption = typer.Option(None, "--model-dir", help="BERT sentence-embedding model directory (default: bundled all-MiniLM-L6-v2).")


def _fail(error: Exception) -> None:
    fail(str(error))  # the CLI-wide user-error exit: one line on stderr, exit 2


def _make_embedder(name: str, model_dir: Optional[Path]):
    from genlab.retrieval.embedders import HashingEmbedder, SentenceEmbedder

    if name.startswith("hashing"):
        dim = int(name.split("-", 1)[1]) if "-" in name else 256
        return HashingEmbedder(dim)
    return SentenceEmbedder(model_dir)


def _stored_embedder_name(db: Path) -> str | None:
    """Which embedder filled an existing store (read-only peek, so search uses the same one)."""
    import sqlite3

    if not db.is_file():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
        except sqlite3.DatabaseError:
            return None
    return json.loads(row[0])["name"] if row else None


def _open(db: Path, model_dir: Optional[Path], embedder: Optional[str] = None, **config):
    from genlab.retrieval.chunking import ChunkConfig
    from genlab.retrieval.knowledge import KnowledgeBase, RetrievalConfig

    name = embedder or _stored_embedder_name(db) or "minilm"  # a mismatch with the store is refused by KnowledgeBase
    with _console().status(f"loading embedder {name} ..."):
        emb = _make_embedder(name, model_dir)
    chunk = config.pop("chunk", ChunkConfig())
    return KnowledgeBase(db, emb, RetrievalConfig(chunk=chunk, **config))


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _hits_table(hits, title: str, cited: set[int] | None = None) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source", overflow="fold")
    table.add_column("ranks")
    table.add_column("text")
    for n, hit in enumerate(hits, start=1):
        mark = "*" if cited and n in cited else ""
        ranks = " ".join(f"{k}:{v}" for k, v in hit.ranks.items())
        table.add_row(f"{n}{mark}", f"{hit.score:.4f}", f"{_short_path(hit.source)}:{hit.line}", ranks, _snippet(hit.text))
    return table


def _short_path(source: str) -> str:
    """Relative to the working directory when the file lies below it, else as stored."""
    try:
        rel = os.path.relpath(source)
    except ValueError:
        return source
    return source if rel.startswith("..") else rel


@app.command()
def index(
    paths: List[Path] = typer.Argument(..., help="Files (.txt, .md, .py) or directories to index."),
    db: Path = DbOption,
    embedder: Optional[str] = typer.Option(None, help="minilm (genlab's BERT encoder; default for a new store) or "
                                                      "hashing-DIM (no model; for tests). Default: the store's own."),
    model_dir: Optional[Path] = ModelDirOption,
    unit: str = typer.Option("tokens", help="Chunk by 'tokens' or 'sentences'."),
    chunk_size: int = typer.Option(200, help="Tokens (or sentences) per chunk."),
    overlap: int = typer.Option(40, help="Tokens (or sentences) shared by consecutive chunks."),
):
    """Add or refresh documents: changed files replace their chunks, unchanged ones are skipped."""
    console = _console()
    from genlab.retrieval.chunking import ChunkConfig
    from genlab.retrieval.knowledge import find_text_files

    try:
        files = find_text_files(paths)
        kb = _open(db, model_dir, embedder, chunk=ChunkConfig(unit, chunk_size, overlap))
    except GenlabError as e:
        _fail(e)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[current]}"))
    try:
        with kb, Progress(*columns, console=console) as bar:
            task = bar.add_task("indexing", total=len(files), current="")
            report = kb.ingest_paths(files, progress=lambda source, status: bar.update(
                task, advance=1, current=f"{status}: {_short_path(source)}"))
            bar.update(task, current="building vector index")
            kb.vector_index()
            docs, chunks = kb.store.count()
    except GenlabError as e:
        _fail(e)
    table = Table(title=f"indexed into {db}")
    for column in ("added", "updated", "unchanged", "new chunks", "store documents", "store chunks"):
        table.add_column(column, justify="right")
    table.add_row(str(report.added), str(report.updated), str(report.unchanged), str(report.chunks), str(docs), str(chunks))
    console.print(table)


def _reranker(name: str, kb, model_dir: Optional[Path]):
    from genlab.retrieval.embedders import SentenceEmbedder
    from genlab.retrieval.rerank import CrossEncoderReranker, LateInteractionReranker, MMRReranker

    if name == "none":
        return None
    if name == "mmr":
        return MMRReranker(kb.embedder)
    if name == "late":
        if not isinstance(kb.embedder, SentenceEmbedder):
            raise GenlabError("the late-interaction reranker needs a store indexed with the minilm embedder")
        return LateInteractionReranker(kb.embedder.encoder)
    if name.startswith("cross:"):
        return CrossEncoderReranker.from_pretrained(name.split(":", 1)[1])
    raise GenlabError(f"unknown reranker {name!r}: use none, mmr, late or cross:MODEL_DIR")


@app.command()
def search(
    query: str = typer.Argument(..., help="What to look for."),
    db: Path = DbOption,
    k: int = typer.Option(5, "-k", "--k", help="Results to show."),
    mode: str = typer.Option("hybrid", help="hybrid (BM25 + vectors, RRF), vector or bm25."),
    rerank: str = typer.Option("none", help="none, mmr, late (MaxSim over MiniLM tokens) or cross:MODEL_DIR."),
    model_dir: Optional[Path] = ModelDirOption,
):
    """Search the indexed documents and show the best chunks."""
    console = _console()
    if not db.is_file():
        _fail(GenlabError(f"no store at {db}: run `genlab rag index PATH...` first"))
    try:
        with _open(db, model_dir) as kb:
            hits = kb.search(query, k, mode=mode, reranker=_reranker(rerank, kb, model_dir))
    except GenlabError as e:
        _fail(e)
    if not hits:
        console.print("no matches")
        return
    console.print(_hits_table(hits, f"{mode} search: {query}"))


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to answer from the indexed documents."),
    db: Path = DbOption,
    k: int = typer.Option(5, "-k", "--k", help="Sources put in the prompt."),
    mode: str = typer.Option("hybrid", help="Retrieval mode: hybrid, vector or bm25."),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                                                      "(genlab serve). Without it: an extractive no-model baseline."),
    model: str = typer.Option("genlab", help="Model name sent to the endpoint."),
    api_key: Optional[str] = typer.Option(None, envvar="OPENAI_API_KEY", help="Bearer token for the endpoint."),
    show_prompt: bool = typer.Option(False, help="Print the prompt sent to the generator."),
    model_dir: Optional[Path] = ModelDirOption,
):
    """Retrieve sources, prompt the generator with them numbered, print the answer and the cited sources."""
    console = _console()
    from genlab.retrieval.rag import ExtractiveGenerator, OpenAICompatibleGenerator, RAGConfig, RAGPipeline

    if not db.is_file():
        _fail(GenlabError(f"no store at {db}: run `genlab rag index PATH...` first"))
    generator = OpenAICompatibleGenerator(base_url, model, api_key) if base_url else ExtractiveGenerator()
    try:
        with _open(db, model_dir) as kb:
            pipeline = RAGPipeline.from_knowledge_base(kb, generator, RAGConfig(k=k), mode=mode)
            with console.status("retrieving and generating ..."):
                result = pipeline.ask(question)
    except GenlabError as e:
        _fail(e)
    if show_prompt:
        console.print(Panel(result.prompt, title="prompt"))
    console.print(Panel(result.answer, title=f"answer ({'endpoint ' + model if base_url else 'extractive baseline'})"))
    console.print(_hits_table(result.sources, "sources (* = cited)", set(result.citations)))
