"""Byte-level BPE training: an incremental trainer and the slow reference it must agree with.

Handbook III (tokenization). Sennrich et al. (2016), "Neural Machine Translation of Rare Words
with Subword Units"; byte-level variant from GPT-2 (Radford et al., 2019). Training repeatedly
merges the most frequent adjacent pair of tokens into a new token.

The fast trainer works on *unique* pre-tokenized chunks with their frequencies, keeps pair
counts up to date incrementally (only the chunks that contain the merged pair are revisited,
found through a pair -> chunks index), and picks the next pair from a heap with lazy
invalidation (stale entries are re-pushed with their current count when popped).
A readability trick does the per-chunk work in C: a chunk is stored as a `str` whose i-th
character is `chr(token_id)`, so a pair is a 2-character string and applying a merge to a chunk
is `chunk.replace(pair, chr(new_id))` (str.replace scans left to right without overlap, which is
exactly BPE's merge rule). Ties are broken deterministically: highest count, then smallest
(left_id, right_id).

    python -c "from genlab.tokenizers.bpe_train import train_merges; print(train_merges({'hello': 3, ' hello': 2}, 260))"
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from operator import add
from typing import Iterable, Mapping, NamedTuple

import regex

from genlab.tokenizers.pretokenize import PreTokenizer

Pair = tuple[int, int]


def chunk_counts(texts: Iterable[str], pattern: str, special_tokens: Iterable[str] = ()) -> Counter[str]:
    """Frequencies of the pre-tokenized chunks of `texts` (special-token strings cut out first)."""
    splitter = PreTokenizer(pattern)
    specials = sorted(special_tokens, key=len, reverse=True)
    special_re = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None
    counts: Counter[str] = Counter()
    for text in texts:
        # Special tokens are atoms: their text must not teach merges, nor be merged across.
        for piece in special_re.split(text) if special_re else (text,):
            counts.update(splitter.split(piece))
    return counts


def _as_byte_words(counts: Mapping[str, int]) -> tuple[list[str], list[int]]:
    """Chunks -> words of byte tokens: latin-1 decoding maps byte b to chr(b), i.e. token id b."""
    words = [chunk.encode("utf-8").decode("latin-1") for chunk in counts]
    return words, list(counts.values())


class Merge(NamedTuple):
    """One learned merge: tokens `left` and `right` become token `new_id`."""

    left: int
    right: int
    new_id: int


def train_merges(counts: Mapping[str, int], vocab_size: int) -> list[Merge]:
    """Learn merges from chunk frequencies until the vocabulary (256 bytes + one token per merge)
    has `vocab_size` entries, or no adjacent pair is left (tiny corpora). Merge i makes id 256 + i.

    Every merge yields new bytes: a span whose ends stay token boundaries is segmented the same
    way in every chunk (merges inside it never depend on its neighbours), so two different pairs
    can never spell the same bytes. The same fact makes each token's own bytes encode to itself.
    """
    words, freqs = _as_byte_words(counts)
    pair_counts: dict[str, int] = defaultdict(int)
    chunks_with_pair: dict[str, set[int]] = defaultdict(set)
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in map(add, word, word[1:]):
            pair_counts[pair] += freq
            chunks_with_pair[pair].add(index)
    # Heap entries are (-count, pair): max count first, then the smallest pair string, which
    # compares like the tuple (left_id, right_id) because each character is one token id.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Merge] = []
    while 256 + len(merges) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current <= 0:
            continue
        if current != -neg_count:  # stale entry: the count fell since it was pushed
            heapq.heappush(heap, (-current, pair))
            continue
        new_id = 256 + len(merges)
        merges.append(Merge(ord(pair[0]), ord(pair[1]), new_id))
        _apply_merge(pair, chr(new_id), words, freqs, pair_counts, chunks_with_pair, heap)
    return merges


def _apply_merge(
    pair: str,
    new_token: str,
    words: list[str],
    freqs: list[int],
    pair_counts: dict[str, int],
    chunks_with_pair: dict[str, set[int]],
    heap: list[tuple[int, str]],
) -> None:
    """Merge `pair` in every chunk containing it and update pair counts by difference only."""
    delta: dict[str, int] = defaultdict(int)
    for index in chunks_with_pair.pop(pair):
        word = words[index]
        if pair not in word:  # index entries are never removed eagerly; skip stale ones
            continue
        merged = word.replace(pair, new_token)
        freq = freqs[index]
        # Subtract the chunk's old pairs, add its new ones; unchanged pairs cancel out in `delta`.
        for old_pair in map(add, word, word[1:]):
            delta[old_pair] -= freq
        for new_pair in map(add, merged, merged[1:]):
            delta[new_pair] += freq
            if new_token in new_pair:
                chunks_with_pair[new_pair].add(index)
        words[index] = merged
    for changed_pair, change in delta.items():
        if change:
            count = pair_counts[changed_pair] + change
            pair_counts[changed_pair] = count
            if change > 0:  # a fallen count is fixed lazily when its old entry surfaces
                heapq.heappush(heap, (-count, changed_pair))
    pair_counts.pop(pair, None)


def train_merges_reference(counts: Mapping[str, int], vocab_size: int) -> list[Merge]:
    """The slow, obviously-correct trainer (minbpe style): recount every pair before each merge.

    Same tie-break as `train_merges`. Tests use it to check the incremental bookkeeping.
    """
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    merges: list[Merge] = []
    while 256 + len(merges) < vocab_size:
        stats: dict[Pair, int] = defaultdict(int)
        for ids, freq in zip(words, freqs):
            for left, right in zip(ids, ids[1:]):
                stats[(left, right)] += freq
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))
        new_id = 256 + len(merges)
        merges.append(Merge(best[0], best[1], new_id))
        words = [merge_ids(ids, best, new_id) for ids in words]
    return merges


def merge_ids(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` (left to right) in `ids` by `new_id`."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
