"""Trainer tests run single-threaded: their models are tiny, and on a shared 2-core machine a second
intra-op thread mostly waits for a time slice (measured: 8 s vs 42 s for test_train_checkpoint.py under load).
The previous thread count is restored after each test, so other test folders are unaffected.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
