"""Shared fixtures for the tokenizer tests: a small real corpus, a trained tokenizer, hard texts.

Handbook III (tokenization). `python -m pytest -q tests/tokenizers`
"""

from __future__ import annotations

import pytest

from genlab.data.corpus import stdlib_corpus
from genlab.tokenizers import BPETokenizer

SPECIALS = ["<|endoftext|>", "<|fim_prefix|>"]

# Texts that have broken byte-level BPE implementations: prose, code, scripts, CJK, emoji with
# joiners, every kind of whitespace run (trailing, leading, mixed, CRLF), numbers, contractions.
VARIED_TEXTS = [
    "",
    "Hello world! It's a beautiful day, isn't it? They'll've said: \"we'd\" & I'm sure.",
    "I'M SHOUTING, WE'RE LOUD, DON'T STOP, YOU'LL SEE, SHE'D, THEY'VE 'TIS",
    "def square(x: int) -> int:\n    \"\"\"Square x.\"\"\"\n    return x ** 2  # fast\n\n\nclass A(B):\n\tpass\n",
    "if (a<=b && c!=d) { x += 1; } else { y->z = arr[i][j]; }\n",
    "naïve café — résumé, coöperate, Ångström, Straße, ﬁ ligature",
    "Привет, мир! Ελληνικά κείμενα. العربية نص. עברית. हिन्दी पाठ। ภาษาไทย",
    "日本語のテキスト、中文文本。한국어 텍스트입니다。全角ＡＢＣ１２３",
    "emoji 👋🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣ ❤️ 🤖🤖🤖",
    "a  b   c\t\td\n\n\ne   \n  \n   ",
    "   leading spaces and trailing spaces   ",
    "line one\r\nline two\r\n\r\n  indented\r\n",
    "\n",
    " ",
    "     ",
    "\t\n \u00a0\u2003\u3000 \u2028\u2029\x0b\x0c\x1c\x1d\x1e\x1f\x85",
    "1234567 3.14159 1,000,000 0x1F 2024-01-01 12:30 -42 +7e-10 ½ ² ٣ 四",
    "\x00null\x01\x7f delete \x80\x9f controls",
    "Ġ Ċ ĉ Ā ł Ń ń: the byte-map characters themselves",
    "!!!??? ... --- *** ==== //// ''' \"\"\" `code` ~tilde~ @at #hash $dollar %percent ^caret",
    "x" * 300 + " " + "ab" * 150 + " " + "=" * 80 + "\n",
    "word's 's 'S 're ‘curly’ “quotes” don’t",
]


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 300 KB of real prose and code (no download)."""
    return stdlib_corpus(300_000, seed=0)


@pytest.fixture(scope="session")
def trained_tokenizer(corpus_text: str) -> BPETokenizer:
    return BPETokenizer.train(corpus_text, vocab_size=1024, special_tokens=SPECIALS)


@pytest.fixture(scope="session")
def varied_texts(corpus_text: str) -> list[str]:
    """The hard cases, their concatenation, and a few KB of real text."""
    return [*VARIED_TEXTS, "".join(VARIED_TEXTS), corpus_text[:4000], corpus_text[-3000:]]
