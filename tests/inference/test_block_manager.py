"""Block pool: ref counts, block tables, prefix caching (hash chain, sharing, LRU eviction, last block kept).

    python -m pytest -q tests/inference/test_block_manager.py
"""

import pytest

from genlab.errors import ConfigError
from genlab.inference.block_manager import BlockManager, hash_chain


class Seq:
    def __init__(self) -> None:
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []


def computed(bm: BlockManager, tokens: list[int]) -> Seq:
    """A sequence that matched what it could, then allocated and computed all of `tokens`."""
    s = Seq()
    bm.match_prefix(s, tokens)
    assert bm.allocate(s, len(tokens))
    bm.register_full_blocks(s, tokens, len(tokens))
    return s


def test_allocate_grows_tables_and_fails_without_change():
    bm = BlockManager(num_blocks=5, block_size=4)
    a, b = Seq(), Seq()
    assert bm.allocate(a, 9) and len(a.block_table) == 3  # ceil(9 / 4)
    assert bm.allocate(a, 12) and len(a.block_table) == 3  # still fits
    assert not bm.allocate(b, 12) and b.block_table == [] and bm.num_free == 2
    assert bm.allocate(b, 8) and bm.num_free == 0 and bm.num_used == 5
    assert set(a.block_table).isdisjoint(b.block_table)
    bm.free(a)
    bm.free(b)
    bm.check_all_free()
    with pytest.raises(ConfigError):
        BlockManager(0, 4)


def test_hash_chain_depends_on_the_whole_prefix():
    x = hash_chain([1, 2, 3, 4, 5, 6, 7, 8], 4, 2)
    y = hash_chain([9, 9, 9, 9, 5, 6, 7, 8], 4, 2)
    assert x[1] != y[1]  # same block tokens, different parent
    assert hash_chain([1, 2, 3, 4, 5, 6, 7, 8, 0], 4, 2) == x
    assert hash_chain([1, 2, 3, 4, 5, 6, 7, 8], 4, 2, start=x[:1]) == x


def test_prefix_blocks_are_shared_with_ref_counts():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = computed(bm, list(range(14)))  # blocks: 3 full + 1 partial
    b = Seq()
    assert bm.match_prefix(b, list(range(12)) + [99, 98]) == 12
    assert b.block_table == a.block_table[:3]
    assert [bm.ref_count[i] for i in a.block_table] == [2, 2, 2, 1]
    bm.free(a)
    assert [bm.ref_count[i] for i in b.block_table] == [1, 1, 1]
    bm.free(b)
    bm.check_all_free()


def test_the_block_holding_the_last_prompt_token_is_never_matched():
    bm = BlockManager(num_blocks=10, block_size=4)
    bm.free(computed(bm, list(range(8))))
    s = Seq()
    assert bm.match_prefix(s, list(range(8))) == 4  # two full cached blocks, only the first is used
    bm.free(s)
    assert bm.match_prefix(s, list(range(9))) == 8
    bm.free(s)
    assert bm.match_prefix(s, [0]) == 0
    bm.free(s)


def test_free_cached_blocks_are_evicted_lru_only_when_needed():
    bm = BlockManager(num_blocks=6, block_size=2)
    first = computed(bm, [1, 2, 3, 4])  # 2 cached blocks
    first_blocks = list(first.block_table)
    second = computed(bm, [5, 6, 7, 8])  # 2 more
    bm.free(first)
    bm.free(second)
    assert bm.num_free == 6 and len(bm.cached) == 4  # free, yet still findable
    grab = Seq()
    assert bm.allocate(grab, 4) and len(bm.cached) == 4  # the 2 never-cached blocks go first
    assert bm.allocate(grab, 6) and len(bm.cached) == 3  # then the least recently freed cached block
    assert grab.block_table[2] == first_blocks[1]  # oldest free: first's tail (freed tail first)
    probe = Seq()
    assert bm.match_prefix(probe, [5, 6, 7, 8, 0]) == 4  # the later-freed prefix survived
    bm.free(probe)
    assert bm.match_prefix(probe, [1, 2, 3, 4, 0]) == 2  # first's head block is still cached
    bm.free(probe)
    bm.free(grab)
    bm.check_all_free()


def test_tail_blocks_are_evicted_before_their_prefix():
    bm = BlockManager(num_blocks=3, block_size=2)
    s = computed(bm, [1, 2, 3, 4, 5, 6])
    tail = s.block_table[-1]
    bm.free(s)  # freed tail first, so the tail is the oldest evictable block
    g = Seq()
    assert bm.allocate(g, 1) and g.block_table == [tail]
    p = Seq()
    assert bm.match_prefix(p, [1, 2, 3, 4, 5, 6, 7]) == 4
    bm.free(p)
    bm.free(g)
    bm.check_all_free()


def test_duplicate_content_stays_private_and_disabled_caching_never_matches():
    bm = BlockManager(num_blocks=8, block_size=2)
    a, b = computed(bm, [1, 2, 3]), Seq()
    assert bm.allocate(b, 3)  # computed the same tokens without matching (e.g. concurrently)
    bm.register_full_blocks(b, [1, 2, 3], 3)
    assert bm.block_hash[b.block_table[0]] is None and bm.cached[b.block_hashes[0]] == a.block_table[0]
    bm.free(a)
    bm.free(b)
    bm.check_all_free()
    off = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    bm_seq = computed(off, [1, 2, 3, 4, 5])
    off.free(bm_seq)
    assert off.match_prefix(Seq(), [1, 2, 3, 4, 5]) == 0 and not off.cached
