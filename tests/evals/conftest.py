"""Fixtures for the eval tests: tokenizers with the chat tokens (models live in eval_helpers.py)."""

import pytest

from eval_helpers import byte_tokenizer
from genlab.data.chat import add_chat_tokens
from genlab.tokenizers.bpe import BPETokenizer



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
