"""`genlab serve` and `genlab chat` as real processes on the tiny model; model-directory resolution; tool prompts.

    python -m pytest -q tests/serve/test_cli_serve.py
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from genlab.cli.serve import resolve_serve_dir
from genlab.data.world.extras import TOOL_SYSTEM_PROMPT
from genlab.errors import GenlabError
from genlab.serve.protocol import ChatCompletionRequest
from genlab.serve.chat import chat_messages
from genlab.serve.tools import tools_system_prompt

CLI = [sys.executable, "-m", "genlab.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("front", ["--engine-process", "--engine-thread"])
def test_serve_process_answers_and_stops_cleanly(model_dir, front):
    port = _free_port()
    proc = subprocess.Popen([*CLI, "serve", str(model_dir), "--port", str(port), "--api-key", "k1",
                             "--model-name", "tiny", "--max-num-seqs", "4", front],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(base + "/v1/models").status_code == 401
        models = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer k1"}).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        reply = httpx.post(base + "/v1/chat/completions", headers={"Authorization": "Bearer k1"}, timeout=30,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
        assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, output
    assert f"127.0.0.1:{port}" in output and "Traceback" not in output


def test_serve_rejects_a_missing_model_dir(tmp_path):
    from typer.testing import CliRunner

    from genlab.cli.main import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nope")])
    assert isinstance(result.exception, GenlabError)  # main() turns it into one red line and exit code 2
    assert "model directory not found" in str(result.exception)


def test_serve_names_weights_that_cannot_load_without_a_traceback(model_dir, tmp_path):
    """The engine process fails to build; `genlab serve` says why and exits 2 before starting uvicorn."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).exists():
            (tmp_path / name).write_text((model_dir / name).read_text())
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    out = subprocess.run([*CLI, "serve", str(tmp_path), "--port", str(_free_port())], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())  # the console wraps long lines
    assert "could not start: CheckpointError" in message and "cannot read weights" in message
    assert "Traceback" not in out.stdout + out.stderr


def test_chat_streams_replies_through_the_engine(model_dir):
    out = subprocess.run([*CLI, "chat", str(model_dir), "--max-tokens", "6", "--system", "Be brief."],
                         input="Hello\nAnd again?\n/exit\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("bot> ") == 2 and "genlab chat" in out.stdout


def test_resolve_serve_dir(model_dir, tmp_path):
    run = tmp_path / "runs" / "r1"
    shutil.copytree(model_dir, run / "model")
    (tmp_path / "runs" / "latest").write_text("r1\n")
    assert resolve_serve_dir(run, tmp_path / "runs") == run / "model"
    assert resolve_serve_dir(model_dir) == model_dir
    assert resolve_serve_dir(None, tmp_path / "runs") == run / "model"


def test_tools_prompt_matches_the_training_prompt_and_calls_round_trip():
    tools = [{"type": "function", "function": {"name": "calculator",
                                               "description": "evaluates a + b, a - b or a * b on integers",
                                               "parameters": {"type": "object",
                                                              "properties": {"expression": {"type": "string"}}}}},
             {"type": "function", "function": {"name": "lookup",
                                               "description": 'returns the document about a person, or "No document found."',
                                               "parameters": {"type": "object",
                                                              "properties": {"query": {"type": "string"}}}}}]
    req = ChatCompletionRequest(tools=tools, messages=[
        {"role": "user", "content": "What is 84929 * 72330?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "calculator", "arguments": '{"expression": "84929 * 72330"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "6142914570"}])
    assert tools_system_prompt([t.function for t in req.tools]) == TOOL_SYSTEM_PROMPT
    messages = chat_messages(req, use_tools=True)
    assert messages[0] == {"role": "system", "content": TOOL_SYSTEM_PROMPT}
    # the assistant's call is rendered exactly as genlab's tool traces write it
    assert messages[2] == {"role": "assistant",
                           "content": json.dumps({"tool": "calculator", "arguments": {"expression": "84929 * 72330"}})}
    assert messages[3] == {"role": "tool", "content": "6142914570"}


@pytest.mark.parametrize("text, expected", [
    ('{"tool": "lookup", "arguments": {"query": "Ana"}}', ("lookup", '{"query": "Ana"}')),
    ('{"tool": "unknown", "arguments": {}}', None),
    ('{"tool": "lookup", "arguments": "Ana"}', None),
    ("Ana lives in Brightwater.", None),
])
def test_parse_tool_call(text, expected):
    from genlab.serve.tools import parse_tool_call

    assert parse_tool_call(text, ["lookup", "calculator"]) == expected


def test_serve_help_lists_its_options():
    from typer.testing import CliRunner

    from genlab.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--api-key", "--block-size"):
        assert option in result.output
