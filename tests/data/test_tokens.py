"""Token files and datasets: header, dtype choice, atomic writes, corruption errors, splits, batches.

Handbook III (pretraining data). Budget: < 2 s.

    python -m pytest -q tests/data/test_tokens.py
"""

import numpy as np
import pytest
import torch

from genlab.data.tokens import TokenDataset, read_header, read_tokens, token_dtype, write_tokens
from genlab.errors import ConfigError, GenlabError


def test_round_trip_uint16_and_header(tmp_path):
    ids = np.random.default_rng(0).integers(0, 4096, size=1000)
    path = write_tokens(tmp_path / "t.bin", ids, vocab_size=4096)
    header, offset = read_header(path)
    assert header["dtype"] == "uint16" and header["count"] == 1000 and header["vocab_size"] == 4096
    assert offset % 64 == 0
    arr = read_tokens(path)
    assert isinstance(arr, np.memmap) and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, ids)
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]  # no temp file left behind


def test_uint32_for_large_vocab_and_dtype_boundary(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    ids = [0, 70_000, 123_456, 5]
    path = write_tokens(tmp_path / "big.bin", ids, vocab_size=200_000)
    arr = read_tokens(path)
    assert arr.dtype == np.uint32
    assert arr.tolist() == ids


def test_inputs_tensor_generator_and_default_vocab(tmp_path):
    write_tokens(tmp_path / "a.bin", torch.tensor([3, 1, 2]))
    assert read_header(tmp_path / "a.bin")[0]["vocab_size"] == 4
    write_tokens(tmp_path / "b.bin", (i % 7 for i in range(20)), vocab_size=7)
    assert read_tokens(tmp_path / "b.bin").tolist() == [i % 7 for i in range(20)]


def test_overwrite_is_atomic_replacement(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, [1, 2, 3], vocab_size=10)
    reader = read_tokens(path)  # an open map of the old file keeps its data after the replace
    write_tokens(path, [4, 5], vocab_size=10)
    assert reader.tolist() == [1, 2, 3]
    assert read_tokens(path).tolist() == [4, 5]


def test_bad_inputs_and_corrupt_files(tmp_path):
    with pytest.raises(GenlabError, match=r"\[0, 10\)"):
        write_tokens(tmp_path / "x.bin", [1, 10], vocab_size=10)
    with pytest.raises(GenlabError, match="empty"):
        write_tokens(tmp_path / "x.bin", [])
    with pytest.raises(GenlabError, match="not found"):
        TokenDataset(tmp_path / "missing.bin")
    (tmp_path / "raw.bin").write_bytes(np.arange(10, dtype=np.uint16).tobytes())
    with pytest.raises(GenlabError, match="not a genlab token file"):
        TokenDataset(tmp_path / "raw.bin")
    path = write_tokens(tmp_path / "t.bin", np.arange(100), vocab_size=100)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(GenlabError, match="truncated"):
        TokenDataset(path)


@pytest.fixture
def positional(tmp_path):
    """Token i has id i, so a window reveals where it was taken from."""
    n = 1000
    return TokenDataset(write_tokens(tmp_path / "pos.bin", np.arange(n), vocab_size=n), val_fraction=0.2)


def test_split_is_contiguous_tail(positional):
    assert positional.split_index == 800
    assert positional.split("train").tolist() == list(range(800))
    assert positional.split("val").tolist() == list(range(800, 1000))
    with pytest.raises(ConfigError):
        positional.split("test")


def test_random_batches_are_shifted_windows_inside_the_split(positional):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = positional.batch("train", 16, 32, g)
        assert x.shape == y.shape == (16, 32) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # next-token targets
        assert torch.equal(x, x[:, :1] + torch.arange(32))  # contiguous windows
        assert int(y.max()) < 800  # never reads into the validation tail
    x, _ = positional.batch("val", 4, 8, g)
    assert int(x.min()) >= 800


def test_batches_follow_the_generator(positional):
    a = positional.batch("train", 8, 16, torch.Generator().manual_seed(1))
    b = positional.batch("train", 8, 16, torch.Generator().manual_seed(1))
    c = positional.batch("train", 8, 16, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_every_train_start_is_reachable(tmp_path):
    ds = TokenDataset(write_tokens(tmp_path / "s.bin", np.arange(12), vocab_size=12), val_fraction=0.0)
    starts = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        x, y = ds.batch("train", 8, 4, g)
        starts |= set(x[:, 0].tolist())
        assert int(y.max()) <= 11
    assert starts == set(range(8))  # 12 tokens, windows of 4+1: starts 0..7


def test_sequential_val_batches_cover_the_tail_in_order(positional):
    batches = list(positional.val_batches(batch_size=3, seq_len=40))
    firsts = [int(row[0]) for x, _ in batches for row in x]
    assert firsts == [800, 840, 880, 920]  # (200 - 1) // 40 = 4 windows, last batch smaller
    assert [x.shape[0] for x, _ in batches] == [3, 1]
    again = list(positional.val_batches(batch_size=3, seq_len=40))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(positional.val_batches(1, 40, max_batches=2))) == 2


def test_split_too_short_for_seq_len(positional):
    with pytest.raises(ConfigError, match="seq_len"):
        positional.batch("val", 2, 200)
    with pytest.raises(ConfigError):
        TokenDataset(positional.path, val_fraction=1.0)
