"""Fixtures for the eval tests: tokenizers with the chat tokens (models live in eval_helpers.py)."""

import pytest
import torch

from eval_helpers import byte_tokenizer
from genlab.data.chat import add_chat_tokens
from genlab.tokenizers.bpe import BPETokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: a second thread only adds spin-waiting on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bytes_tok() -> BPETokenizer:
    return byte_tokenizer()


@pytest.fixture(scope="session")
def bpe_tok() -> BPETokenizer:
    from genlab.data.world import WorldConfig, build_world, pretraining_documents

    docs = pretraining_documents(build_world(WorldConfig(scale=0.05)))[:40]
    tok = BPETokenizer.train("\n".join(docs), 380)
    add_chat_tokens(tok)
    return tok
