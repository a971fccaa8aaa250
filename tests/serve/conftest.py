"""Fixtures for the server tests: a tiny random-init llama-like chat model on disk, and live uvicorn servers.

The model directory is what `genlab serve` reads (config.json + model.safetensors + tokenizer.json
with the chat special tokens). Servers run the real LLMEngine behind uvicorn in a thread, on a
free localhost port.

    python -m pytest -q tests/serve
"""

from __future__ import annotations

import logging

import pydoc_data.topics
import pytest
import torch

from genlab.data.chat import add_chat_tokens, save_tokenizer_dir
from genlab.models.config import ModelConfig
from genlab.models.hf_io import save_pretrained
from genlab.models.transformer import Transformer
from genlab.tokenizers import BPETokenizer

from serve_helpers import API_KEY, MAX_SEQ_LEN, MODEL_NAME, RecordHandler, start_server


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    text = "\n".join(list(pydoc_data.topics.topics.values())[:8]) + ' {"tool": "calculator", "arguments": {}} 12 + 30'
    tokenizer = BPETokenizer.train(text, 320)
    add_chat_tokens(tokenizer)
    torch.manual_seed(0)
    config = ModelConfig.llama_like(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_kv_head=1, d_model=32,
                                    d_ff=64, max_seq_len=MAX_SEQ_LEN)
    directory = tmp_path_factory.mktemp("tiny_chat_model")
    save_pretrained(Transformer(config).eval(), directory)
    save_tokenizer_dir(tokenizer, directory, model_max_length=MAX_SEQ_LEN)
    return directory


@pytest.fixture(scope="session")
def server_log():
    handler = RecordHandler()
    logger = logging.getLogger("genlab.serve")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture(scope="session", params=["engine-thread", "engine-process"])
def live_server(request, model_dir, server_log):
    """The server most tests share: API key required, engine with default stop tokens; every test runs
    against both fronts: the engine stepped by a thread of the server (AsyncEngine) and in its own process."""
    from genlab.inference.engine import EngineConfig, LLMEngine
    from genlab.serve import EngineProcess, EngineSpec, create_app

    config = EngineConfig(block_size=16, num_blocks=256, max_num_seqs=32)
    if request.param == "engine-thread":
        engine = LLMEngine.from_pretrained(model_dir, config)
    else:
        engine = EngineProcess(EngineSpec.from_pretrained(model_dir, config, num_threads=1))
    live = start_server(create_app(engine, MODEL_NAME, api_key=API_KEY))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def client(live_server):
    import openai

    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
