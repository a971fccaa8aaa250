"""KV-cache block pool: reference counts, per-sequence block tables, prefix caching with LRU eviction.

Handbook VI (KV caching, PagedAttention). Kwon et al. 2023, "Efficient Memory Management for Large
Language Model Serving with PagedAttention" (vLLM); automatic prefix caching as in vLLM.

The KV cache is cut into `num_blocks` blocks of `block_size` token slots. A sequence owns a block
table (logical block i -> physical block id). Each physical block has a reference count: a block
may be shared by several sequences whose prompts start alike.

Prefix caching: a FULL block is named by a hash chain, hash(parent block's hash, its token ids), so
equal hashes mean equal whole prefixes. Full computed blocks are registered under their hash;
a new sequence looks its prefix up block by block and shares the hits (ref count + 1). A block
whose count drops to 0 keeps its hash and goes to an LRU of evictable blocks: it is free (counted
in `num_free`) but still findable, and is evicted (loses its hash) only when a fresh block is
needed and no never-cached free block is left. The last block holding a prompt's final token is
never reused, so at least one token is computed and the step has logits to sample from.

Hashes are Python's 64-bit tuple hashes: a collision (probability ~2^-64 per pair) would share a
wrong block; vLLM accepts the same risk with its default hash.

    python -m pytest -q tests/inference/test_block_manager.py
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Sequence

from genlab.errors import ConfigError


def block_hash(parent: int | None, tokens: Sequence[int]) -> int:
    """The chained hash of one full block: equal only for equal whole prefixes (up to collisions)."""
    return hash((parent, tuple(tokens)))


def hash_chain(tokens: Sequence[int], block_size: int, n_blocks: int, start: list[int] | None = None) -> list[int]:
    """Hashes of the first `n_blocks` full blocks of `tokens`, extending the known hashes `start`."""
    hashes = list(start or [])
    for i in range(len(hashes), n_blocks):
        hashes.append(block_hash(hashes[-1] if hashes else None, tokens[i * block_size:(i + 1) * block_size]))
    return hashes


class BlockManager:
    """The pool of physical blocks. Sequences are anything with a `block_table: list[int]`."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ConfigError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id (blocks in use or evictable)
        self._fresh: deque[int] = deque(range(num_blocks))  # free, no hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # free, hashed; oldest first

    # --- accounting ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks available to a new allocation (never-cached ones + evictable cached ones)."""
        return len(self._fresh) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, seq, n_tokens: int) -> int:
        """Extra blocks for `seq` to hold `n_tokens` tokens in total."""
        return max(0, -(-n_tokens // self.block_size) - len(seq.block_table))

    # --- allocation ------------------------------------------------------------------------------
    def _take_free(self) -> int:
        if self._fresh:
            return self._fresh.popleft()
        block, _ = self._evictable.popitem(last=False)  # least recently freed cached block
        del self.cached[self.block_hash[block]]
        self.block_hash[block] = None
        return block

    def allocate(self, seq, n_tokens: int) -> bool:
        """Grow seq's block table to hold n_tokens; False (and no change) if the pool is short."""
        need = self.blocks_needed(seq, n_tokens)
        if need > self.num_free:
            return False
        for _ in range(need):
            block = self._take_free()
            self.ref_count[block] = 1
            seq.block_table.append(block)
        return True

    def match_prefix(self, seq, tokens: Sequence[int]) -> int:
        """Share the cached full blocks that start `tokens` (seq's table must be empty).

        Returns the number of tokens whose keys/values are thereby in the cache. The block holding the
        last token is never matched: its logits must be computed.
        """
        assert not seq.block_table, "prefix matching is for a sequence without blocks"
        seq.block_hashes = []
        if not self.enable_prefix_caching:
            return 0
        n_full = (len(tokens) - 1) // self.block_size
        for h in hash_chain(tokens, self.block_size, n_full):
            block = self.cached.get(h)
            if block is None:
                break
            if self.ref_count[block] == 0:
                del self._evictable[block]
            self.ref_count[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(h)
        return len(seq.block_table) * self.block_size

    def register_full_blocks(self, seq, tokens: Sequence[int], n_computed: int) -> None:
        """Name seq's blocks that are now full and computed, so later sequences can share them."""
        if not self.enable_prefix_caching:
            return
        n_full = min(n_computed // self.block_size, len(seq.block_table))
        if n_full <= len(seq.block_hashes):
            return
        old = len(seq.block_hashes)
        seq.block_hashes = hash_chain(tokens, self.block_size, n_full, seq.block_hashes)
        for i in range(old, n_full):
            h, block = seq.block_hashes[i], seq.block_table[i]
            if h not in self.cached and self.block_hash[block] is None:
                self.cached[h] = block
                self.block_hash[block] = h
            # else: an equal block was computed elsewhere first; this copy stays private (unnamed)

    def free(self, seq) -> None:
        """Drop seq's references; tail blocks first, so they are evicted before shared prefixes."""
        for block in reversed(seq.block_table):
            self.ref_count[block] -= 1
            assert self.ref_count[block] >= 0, f"block {block} freed twice"
            if self.ref_count[block] == 0:
                if self.block_hash[block] is not None:
                    self._evictable[block] = None
                else:
                    self._fresh.append(block)
        seq.block_table = []
        seq.block_hashes = []

    def check_all_free(self) -> None:
        """Invariant after all sequences end: every count 0 and every block free."""
        assert all(c == 0 for c in self.ref_count), "blocks still referenced"
        assert self.num_free == self.num_blocks, f"{self.num_blocks - self.num_free} blocks leaked"
        assert set(self._evictable) | set(self._fresh) == set(range(self.num_blocks))
