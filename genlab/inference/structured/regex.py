"""A small regex parser for constrained decoding: pattern -> AST (compiled by automaton.py to a DFA).

Handbook V (structured outputs); Willard & Louf (2023), "Efficient Guided Generation for Large
Language Models" (Outlines): a regular expression becomes a finite automaton whose states index
the vocabulary (see index.py).

Supported syntax (whole-string match, as `re.fullmatch`): literals, escapes (\\d \\w \\s \\D \\W \\S,
\\. \\\\ and any escaped punctuation, \\n \\t \\r \\f \\v \\0, \\xhh, \\uhhhh), `.` (any character but a newline),
classes `[a-z]`, `[^...]` (escapes and \\d-style classes inside), groups `(...)` / `(?:...)`,
alternation `|`, quantifiers `* + ? {m} {m,} {m,n}` (a lazy `?` suffix is accepted: under a whole-
string match it does not change the language). Anything else (anchors, lookarounds, backreferences,
\\b, flags, named groups) raises GenlabError naming it. \\d \\w \\s are ASCII, as with `re.ASCII`.

Bytes, not characters (a choice): each character class is turned into UTF-8 byte sequences (the
utf8-ranges construction, surrogates excluded) so the automaton runs over bytes. Byte-level BPE
tokens can hold half a character; over bytes such a token simply moves the automaton into a
state "inside a character", so no special case is needed anywhere else.

    python -c "from genlab.inference.structured.regex import compile_regex as c; d = c('a[0-9]+'); print(d.matches('a12'))"
"""

from __future__ import annotations

from dataclasses import dataclass

from genlab.errors import GenlabError

MAX_CODEPOINT = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]


# --- AST ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CharSet:
    ranges: Ranges  # sorted, disjoint, inclusive code point ranges


@dataclass(frozen=True)
class Concat:
    parts: tuple


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    node: object
    min: int
    max: int | None  # None: unbounded


EMPTY = Concat(())


def normalize(ranges) -> Ranges:
    """Sort and merge overlapping/adjacent ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def complement(ranges: Ranges) -> Ranges:
    out, nxt = [], 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return tuple(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    out = [(max(lo1, lo2), min(hi1, hi2)) for lo1, hi1 in a for lo2, hi2 in b if max(lo1, lo2) <= min(hi1, hi2)]
    return normalize(out)


DIGIT: Ranges = ((48, 57),)
WORD: Ranges = normalize([(48, 57), (65, 90), (95, 95), (97, 122)])
SPACE: Ranges = normalize([(9, 13), (32, 32)])  # \t \n \v \f \r and space, as re.ASCII
CLASS_ESCAPES = {"d": DIGIT, "w": WORD, "s": SPACE,
                 "D": complement(DIGIT), "W": complement(WORD), "S": complement(SPACE)}
CONTROL_ESCAPES = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "0": 0}
UNSUPPORTED_ESCAPES = {"b": "word boundary \\b", "B": "\\B", "A": "anchor \\A", "Z": "anchor \\Z",
                       "z": "anchor \\z", "G": "\\G", "p": "unicode property \\p", "P": "unicode property \\P"}


# --- parser ---------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, pattern: str) -> None:
        self.s, self.i = pattern, 0

    def error(self, what: str) -> GenlabError:
        return GenlabError(f"regex {self.s!r}: {what} at position {self.i}")

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def parse(self):
        node = self.alternation()
        if self.i != len(self.s):
            raise self.error(f"unexpected {self.s[self.i]!r}")
        return node

    def alternation(self):
        options = [self.concat()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.concat())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def concat(self):
        parts = []
        while self.peek() is not None and self.peek() not in "|)":
            parts.append(self.quantified(self.atom()))
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def quantified(self, node):
        while True:
            c = self.peek()
            if c in ("*", "+", "?"):
                self.i += 1
                node = Repeat(node, 0 if c != "+" else 1, None if c != "?" else 1)
            elif c == "{" and self._brace_quantifier() is not None:
                lo, hi = self._brace_quantifier()
                self.i = self.s.index("}", self.i) + 1
                node = Repeat(node, lo, hi)
            else:
                return node
            if self.peek() == "?":  # lazy: same language under a whole-string match
                self.i += 1
            if self.peek() == "+":
                raise self.error("possessive quantifier is not supported")

    def _brace_quantifier(self) -> tuple[int, int | None] | None:
        end = self.s.find("}", self.i)
        if end < 0:
            return None
        body = self.s[self.i + 1:end]
        lo_s, comma, hi_s = body.partition(",")
        if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
            return None  # not a quantifier: `{` is a literal, as in Python's re
        lo, hi = int(lo_s), (int(hi_s) if hi_s else None) if comma else int(lo_s)
        if hi is not None and hi < lo:
            raise self.error(f"quantifier {{{body}}} has max < min")
        return lo, hi

    def atom(self):
        c = self.peek()
        if c == "(":
            self.i += 1
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.peek() == "?":
                kind = self.s[self.i + 1:self.i + 2]
                raise self.error(f"group syntax '(?{kind}' (lookaround/flags/named group) is not supported")
            node = self.alternation()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c in ("*", "+", "?", "{") and not (c == "{" and self._brace_quantifier() is None):
            raise self.error(f"nothing to repeat before {c!r}")
        if c in ("^", "$"):
            raise self.error(f"anchor {c!r} is not supported (patterns always match the whole string)")
        if c == ")":
            raise self.error("unbalanced ')'")
        if c == "[":
            return CharSet(self.char_class())
        if c == ".":
            self.i += 1
            return CharSet(complement(((10, 10),)))
        if c == "\\":
            return CharSet(self.escape(in_class=False))
        self.i += 1
        return CharSet(((ord(c), ord(c)),))

    def escape(self, in_class: bool) -> Ranges:
        self.i += 1
        c = self.peek()
        if c is None:
            raise self.error("pattern ends with a lone backslash")
        self.i += 1
        if c in CLASS_ESCAPES:
            return CLASS_ESCAPES[c]
        if c in CONTROL_ESCAPES:
            return ((CONTROL_ESCAPES[c],) * 2,)
        if c in ("x", "u"):
            width = 2 if c == "x" else 4
            digits = self.s[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"bad \\{c} escape")
            self.i += width
            return ((int(digits, 16),) * 2,)
        if c == "b" and in_class:
            return ((8, 8),)
        if c in UNSUPPORTED_ESCAPES or c.isdigit():
            raise self.error(f"{UNSUPPORTED_ESCAPES.get(c, 'backreference')} is not supported")
        if c.isalnum():
            raise self.error(f"unknown escape \\{c}")
        return ((ord(c), ord(c)),)

    def char_class(self) -> Ranges:
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("missing ']'")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self._class_item()
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]":
                self.i += 1
                hi = self._class_item()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.error("bad range in character class")
                if hi[0][0] < lo[0][0]:
                    raise self.error("character class range out of order")
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges.extend(lo)
        out = normalize(ranges)
        return complement(out) if negate else out

    def _class_item(self) -> Ranges:
        if self.peek() == "\\":
            return self.escape(in_class=True)
        if self.s.startswith("[:", self.i):
            raise self.error("POSIX classes [:...:] are not supported")
        c = self.s[self.i]
        self.i += 1
        return ((ord(c), ord(c)),)


def parse_regex(pattern: str):
    """The AST of `pattern` (CharSet / Concat / Alt / Repeat); GenlabError on unsupported syntax."""
    return _Parser(pattern).parse()


def escape_literal(text: str) -> str:
    """A regex matching exactly `text`."""
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}-" else c for c in text)


def compile_regex(pattern: str):
    """Parse and compile `pattern` (whole-string match) to a minimal byte-level DFA (automaton.ByteDFA)."""
    from genlab.inference.structured.automaton import compile_ast  # automaton imports this module's AST

    return compile_ast(parse_regex(pattern), pattern)
