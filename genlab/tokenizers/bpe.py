"""`BPETokenizer`: byte-level BPE with GPT-4-style pre-tokenization and tiktoken-style specials.

Handbook III (tokenization). Sennrich et al. (2016) BPE, byte-level as in GPT-2 (Radford et al.,
2019); the pre-tokenizer and special-token rules follow tiktoken's cl100k_base. Every byte is a
token (so any text round-trips), merges are applied lowest rank first, and special tokens are
separate ids that merges can never produce. Files are Hugging Face `tokenizer.json` (see
`hf_json.py`), so HF `tokenizers`, transformers and tiktoken all agree with it (tests/tokenizers).

    python -c "from genlab.tokenizers import BPETokenizer; t = BPETokenizer.train('low lower lowest ' * 50, 270); print(t.encode('lowest'))"
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable, Sequence
from itertools import chain, repeat
from operator import add
from pathlib import Path
from typing import Literal

import regex

from genlab.errors import ConfigError, TokenizerError
from genlab.tokenizers.bpe_train import Merge, chunk_counts, train_merges
from genlab.tokenizers.pretokenize import GPT4_PATTERN, PreTokenizer, bytes_to_token_string, token_string_to_bytes

AllowedSpecial = Literal["all", "none"] | set[str] | frozenset[str]
DisallowedSpecial = Literal["all"] | set[str] | frozenset[str]
_CACHE_LIMIT = 200_000  # chunk -> ids entries; cleared when full (the same chunks recur quickly)


class _ChunkCache(dict):
    """chunk -> token ids, computed on a miss; lets `encode_ordinary` run mostly in C."""

    def __init__(self, encode_chunk) -> None:
        super().__init__()
        self._encode_chunk = encode_chunk

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        ids = self[chunk] = self._encode_chunk(chunk)
        return ids


class BPETokenizer:
    """A byte-level BPE tokenizer. Build it with `train` or `load`, not the constructor."""

    def __init__(
        self,
        token_bytes: Sequence[bytes | None],
        merges: Sequence[Merge],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT4_PATTERN,
        *,
        ignore_merges: bool = False,
        add_prefix_space: bool = False,
        normalization: str | None = None,
    ) -> None:
        # id -> bytes; None marks an unused id (possible in imported files).
        self._token_bytes: list[bytes | None] = list(token_bytes)
        self.merges: list[Merge] = list(merges)
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.pattern = pattern
        # HF options read from imported files: `ignore_merges` emits a whole chunk as one token
        # when it is in the vocabulary; `add_prefix_space` prepends a space to each text segment;
        # `normalization` ("NFC", "NFKC", ...) is applied to text outside special tokens.
        self.ignore_merges = ignore_merges
        self.add_prefix_space = add_prefix_space
        self.normalization = normalization
        self._pretokenizer = PreTokenizer(pattern)
        self._check_and_index()

    def _check_and_index(self) -> None:
        special_ids = set(self.special_tokens.values())
        self._id_of_bytes = {
            data: i for i, data in enumerate(self._token_bytes) if data is not None and i not in special_ids
        }
        byte_ids = [self._id_of_bytes.get(bytes([b])) for b in range(256)]
        missing = [b for b, i in enumerate(byte_ids) if i is None]
        if missing:
            raise TokenizerError(f"not a byte-level vocabulary: no token for byte(s) {missing[:8]} ...")
        # Inside the encoder a chunk is a str whose characters are chr(token id); merging a pair
        # is then one C-level str.replace (see bpe_train.py for the same trick).
        self._byte_translation = None if byte_ids == list(range(256)) else dict(enumerate(byte_ids))
        self._merge_rank: dict[str, int] = {}
        for rank, m in enumerate(self.merges):
            self._merge_rank.setdefault(chr(m.left) + chr(m.right), rank)  # a repeated merge keeps its first rank
        self._merge_pair = [chr(m.left) + chr(m.right) for m in self.merges]  # by rank
        self._merge_char = [chr(m.new_id) for m in self.merges]  # by rank
        self._cache = _ChunkCache(self._encode_chunk)
        self._special_regex_cache: dict[frozenset[str], regex.Pattern] = {}

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (),
        pattern: str = GPT4_PATTERN,
    ) -> BPETokenizer:
        """Learn a tokenizer of `vocab_size` ids: 256 bytes, the learned merges, then the specials.

        Special-token strings inside `text` are cut out before counting, so no merge spans or
        imitates them. On a tiny text the vocabulary may end up smaller (no pairs left).
        """
        specials = list(dict.fromkeys(special_tokens))
        if vocab_size < 256 + len(specials):
            raise ConfigError(f"vocab_size={vocab_size} is below 256 byte tokens + {len(specials)} special tokens")
        texts = [text] if isinstance(text, str) else text
        merges = train_merges(chunk_counts(texts, pattern, specials), vocab_size - len(specials))
        token_bytes = [bytes([b]) for b in range(256)]
        for m in merges:
            token_bytes.append(token_bytes[m.left] + token_bytes[m.right])
        tokenizer = cls(token_bytes, merges, pattern=pattern)
        tokenizer.add_special_tokens(specials)
        return tokenizer

    def add_special_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Register special tokens (new ids after the current vocabulary); returns their ids."""
        ids = []
        for token in tokens:
            if not token:
                raise TokenizerError("a special token must be a non-empty string")
            if token not in self.special_tokens:
                self.special_tokens[token] = len(self._token_bytes)
                self._token_bytes.append(token.encode("utf-8"))
            ids.append(self.special_tokens[token])
        self._special_regex_cache.clear()
        return ids

    # ---- vocabulary ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (one more than the largest id)."""
        return len(self._token_bytes)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token's UTF-8 text)."""
        data = self._token_bytes[token_id] if 0 <= token_id < len(self._token_bytes) else None
        if data is None:
            raise TokenizerError(f"unknown token id {token_id} (vocab_size={self.vocab_size})")
        return data

    def id_to_token(self, token_id: int) -> str:
        """The token as `tokenizer.json` spells it: GPT-2 byte-to-unicode form, or a special's text."""
        data = self.token_bytes(token_id)
        if token_id in self.special_tokens.values():
            return data.decode("utf-8")
        return bytes_to_token_string(data)

    def token_to_id(self, token: str) -> int | None:
        """Inverse of `id_to_token`; None when there is no such token (like HF `tokenizers`)."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self._id_of_bytes.get(token_string_to_bytes(token))
        except KeyError:
            return None

    # ---- encoding -----------------------------------------------------------------------------

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        return self._encode_bytes(chunk.encode("utf-8"))

    def _encode_bytes(self, data: bytes) -> tuple[int, ...]:
        """BPE on one pre-tokenized chunk's bytes."""
        word = data.decode("latin-1")  # chr(b) for each byte b
        if self._byte_translation is not None:
            word = word.translate(self._byte_translation)
        if self.ignore_merges and len(word) > 1:
            whole = self._id_of_bytes.get(data)
            if whole is not None:
                return (whole,)
        rank_of, pairs, merged = self._merge_rank.get, self._merge_pair, self._merge_char
        no_merge = len(pairs)
        while len(word) > 1:
            # The lowest-ranked pair present (all in C: map over the 2-char pair strings); then
            # str.replace merges all its occurrences left to right, which equals merging them one
            # by one (pairs that contain the new token always rank later).
            rank = min(map(rank_of, map(add, word, word[1:]), repeat(no_merge)))
            if rank == no_merge:
                break
            word = word.replace(pairs[rank], merged[rank])
        return tuple(map(ord, word))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` with special-token strings treated as ordinary text."""
        if self.normalization:
            text = unicodedata.normalize(self.normalization, text)
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text
        try:
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))
        except UnicodeEncodeError:
            # Lone surrogates have no UTF-8 form; like tiktoken, encode them as U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return list(chain.from_iterable(map(self._cache.__getitem__, self._pretokenizer.split(text))))

    def encode(
        self,
        text: str,
        allowed_special: AllowedSpecial = "none",
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[int]:
        """Encode `text`, with tiktoken's rules for special tokens.

        `allowed_special` ("all", "none" or a set) are emitted as their ids. A `disallowed_special`
        string found in the text raises TokenizerError ("all" = every special not allowed); a
        special that is neither allowed nor disallowed is encoded as ordinary text.
        """
        allowed = self._resolve_allowed(allowed_special)
        disallowed = set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed:
            found = self._special_regex(frozenset(disallowed)).search(text)
            if found:
                raise TokenizerError(
                    f"text contains the disallowed special token {found.group()!r}; pass it in "
                    "allowed_special to encode it as a special token, or disallowed_special=set() "
                    "to encode it as ordinary text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        position = 0
        for match in self._special_regex(frozenset(allowed)).finditer(text):
            if match.start() > position:
                ids.extend(self.encode_ordinary(text[position : match.start()]))
            ids.append(self.special_tokens[match.group()])
            position = match.end()
        if position < len(text):
            ids.extend(self.encode_ordinary(text[position:]))
        return ids

    def encode_batch(
        self,
        texts: Iterable[str],
        allowed_special: AllowedSpecial = "none",
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[list[int]]:
        """`encode` for each text (single-threaded; the chunk cache is shared)."""
        return [self.encode(text, allowed_special, disallowed_special) for text in texts]

    def _resolve_allowed(self, allowed_special: AllowedSpecial) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special == "none":
            return set()
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise TokenizerError(f"allowed_special names unknown special token(s): {sorted(unknown)}")
        return set(allowed_special)

    def _special_regex(self, tokens: frozenset[str]) -> regex.Pattern:
        if tokens not in self._special_regex_cache:
            # Longest first, so "<|a|>x" wins over its prefix "<|a|>" when both are specials.
            alternatives = sorted(tokens, key=lambda t: (-len(t), t))
            self._special_regex_cache[tokens] = regex.compile("|".join(map(regex.escape, alternatives)))
        return self._special_regex_cache[tokens]

    # ---- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of `ids`."""
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            if ids and min(ids) < 0:  # a negative index would silently wrap around
                raise IndexError
            return b"".join(map(self._token_bytes.__getitem__, ids))
        except (IndexError, TypeError):
            bad = next((i for i in ids if not (0 <= i < self.vocab_size) or self._token_bytes[i] is None), None)
            raise TokenizerError(f"cannot decode: unknown token id {bad} (vocab_size={self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Decode to text; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- files and peers ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write Hugging Face `tokenizer.json` (into `path` if it is a directory); returns the file."""
        from genlab.tokenizers.hf_json import save_tokenizer_json

        return save_tokenizer_json(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a byte-level BPE `tokenizer.json` (a file, or a directory holding one)."""
        from genlab.tokenizers.hf_json import load_tokenizer_json

        return load_tokenizer_json(cls, path)

    def to_tiktoken(self, name: str = "genlab"):
        """A `tiktoken.Encoding` with the same ranks, pattern and specials (tiktoken: test-only).

        tiktoken ranks a merge by the id of the merged token, so this needs ids that grow with
        merge rank and unique token bytes, which genlab-trained tokenizers always have.
        """
        import tiktoken

        special_ids = set(self.special_tokens.values())
        ranks = {data: i for i, data in enumerate(self._token_bytes) if data is not None and i not in special_ids}
        if len(ranks) != len(self._token_bytes) - len(special_ids) - self._token_bytes.count(None):
            raise TokenizerError("tiktoken needs unique token bytes; this vocabulary repeats some")
        new_ids = [m.new_id for m in self.merges]
        if any(a >= b for a, b in zip(new_ids, new_ids[1:])) or any(
            m.new_id <= max(m.left, m.right) for m in self.merges
        ):
            raise TokenizerError("tiktoken needs token ids that increase with merge rank; this vocabulary's do not")
        return tiktoken.Encoding(name, pat_str=self.pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={len(self.special_tokens)})"
        )
