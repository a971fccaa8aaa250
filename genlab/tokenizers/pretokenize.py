"""Regex pre-tokenization and the GPT-2 byte <-> unicode alphabet for byte-level BPE.

Handbook III (tokenization). GPT-2 (Radford et al., 2019, "Language Models are Unsupervised
Multitask Learners") splits text into chunks with a regex before BPE so merges never cross
word/number/punctuation boundaries; GPT-4's cl100k pattern (tiktoken) refines it (numbers in
groups of at most 3 digits, case-insensitive contractions, newlines kept apart). Hugging Face's
`tokenizer.json` stores byte-level tokens as printable unicode strings through GPT-2's
`bytes_to_unicode` table; this module owns that table in both directions.

    python -c "from genlab.tokenizers.pretokenize import pretokenize; print(pretokenize('Hello world!!  42'))"
"""

from __future__ import annotations

import re
from functools import lru_cache

import regex

# GPT-4's cl100k_base pattern as tiktoken first published it (minbpe uses it too). Later tiktoken
# releases write `\p{N}{1,3}+` and add `\s++$`; Oniguruma (the engine inside HF `tokenizers`) reads
# `{1,3}+` as "repeat the group", not as possessive, so this form is the one that the `regex`
# package, Oniguruma and tiktoken's fancy-regex all read alike. Its possessive `?+` and `++` are
# understood by all three.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# GPT-4's pattern with every digit its own pre-token (as Llama 1/2 and PaLM split numbers): arithmetic
# then works digit by digit instead of on a thousand opaque 1-3 digit tokens.
GPT4_DIGITS_PATTERN = GPT4_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-2's pattern: what HF's ByteLevel pre-tokenizer applies when `use_regex` is true.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# The same patterns restricted to ASCII text, for the stdlib `re` engine (about twice as fast as
# `regex` here). \s is spelled out because `re` also counts \x1c-\x1f as whitespace, while the
# Unicode White_Space property (used by `regex`, Oniguruma and Rust) does not.
_WS = r"\t\n\x0b\x0c\r "
_ASCII_TWINS = {
    GPT4_PATTERN: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^WA-Za-z0-9]+[\r\n]*|[W]*[\r\n]"""
        r"""|[W]+(?![^W])|[W]+"""
    ).replace("W", _WS),
    GPT2_PATTERN: (r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^WA-Za-z0-9]+|[W]+(?![^W])|[W]+""").replace(
        "W", _WS
    ),
}
_ASCII_TWINS[GPT4_DIGITS_PATTERN] = _ASCII_TWINS[GPT4_PATTERN].replace("[0-9]{1,3}", "[0-9]")
# Where text may be cut so each piece can be split on its own (ASCII pieces with `re`, the rest
# with `regex`): after a newline that follows a visible ASCII character and precedes another.
# Under both patterns that newline starts a chunk (or ends "!\n"-style punctuation) and no chunk
# runs from it into a visible character; a lone whitespace character is also immune to the
# `\s+(?!\S)` lookahead, which a longer whitespace run at a cut would not be.
_SAFE_CUT = re.compile(r"(?<=[!-~]\n)(?=[!-~])")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _is_safe_cut(text: str, position: int) -> bool:
    return (
        1 < position < len(text)
        and text[position - 1] == "\n"
        and "!" <= text[position - 2] <= "~"
        and "!" <= text[position] <= "~"
    )


def _last_safe_cut(text: str, start: int, end: int) -> int:
    """The last safe cut in [start, end], or `start`."""
    newline = text.rfind("\n", start, end)
    while newline >= start:
        if _is_safe_cut(text, newline + 1) and newline + 1 <= end:
            return newline + 1
        newline = text.rfind("\n", start, newline)
    return start


@lru_cache(maxsize=32)
def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile (once) a pre-tokenization pattern with the `regex` package (\\p{L} support)."""
    return regex.compile(pattern)


class PreTokenizer:
    """Splits text into the chunks BPE works on; concatenating the chunks gives the text back.

    Equivalent to `regex.findall(pattern, text)`; for the two known patterns, ASCII stretches of
    text take a faster path through the stdlib `re` engine.
    """

    def __init__(self, pattern: str = GPT4_PATTERN) -> None:
        self.pattern = pattern
        self._full = compile_pattern(pattern)
        twin = _ASCII_TWINS.get(pattern)
        self._ascii = re.compile(twin) if twin is not None else None

    def split(self, text: str) -> list[str]:
        if self._ascii is None:
            return self._split_isolated(text)
        if text.isascii():
            return self._ascii.findall(text)
        # Stretches around non-ASCII characters, widened to safe cuts, go through `regex`.
        chunks: list[str] = []
        done = 0
        for match in _NON_ASCII.finditer(text):
            if match.start() < done:
                continue  # inside a stretch already split
            cut_before = _last_safe_cut(text, done, match.start())
            cut_after = _SAFE_CUT.search(text, match.end())
            cut_after_position = cut_after.start() if cut_after else len(text)
            if cut_before > done:
                chunks += self._ascii.findall(text, done, cut_before)
            chunks += self._full.findall(text[cut_before:cut_after_position])
            done = cut_after_position
        if done < len(text):
            chunks += self._ascii.findall(text, done)
        return chunks

    def _split_isolated(self, text: str) -> list[str]:
        """HF `Split(behavior="Isolated")`: matches are chunks, and so is any text between them
        (the two known patterns match every character, so for them this equals findall)."""
        chunks = self._full.findall(text)
        if sum(map(len, chunks)) == len(text):
            return chunks
        chunks, position = [], 0
        for match in self._full.finditer(text):
            if match.start() > position:
                chunks.append(text[position : match.start()])
            if match.end() > match.start():
                chunks.append(match.group())
            position = match.end()
        if position < len(text):
            chunks.append(text[position:])
        return chunks


@lru_cache(maxsize=32)
def _pretokenizer(pattern: str) -> PreTokenizer:
    return PreTokenizer(pattern)


def pretokenize(text: str, pattern: str = GPT4_PATTERN) -> list[str]:
    """Split `text` into pre-tokenization chunks with `pattern`."""
    return _pretokenizer(pattern).split(text)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (so tokens are readable JSON strings).

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, 0x7F-0xA0,
    soft hyphen) map to U+0100 onwards in byte order. Space becomes 'Ġ', newline 'Ċ'.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of `bytes_to_unicode`."""
    return {char: b for b, char in bytes_to_unicode().items()}


def bytes_to_token_string(data: bytes) -> str:
    """A token's bytes as the printable string HF `tokenizer.json` stores (e.g. b' the' -> 'Ġthe')."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def token_string_to_bytes(token: str) -> bytes:
    """Inverse of `bytes_to_token_string`; raises KeyError for a character outside the alphabet."""
    table = unicode_to_bytes()
    return bytes(table[char] for char in token)
