"""Regex AST -> byte-level automata: UTF-8 range splitting, Thompson NFA, subset construction, Moore minimisation.

Handbook V (structured outputs); Willard & Louf (2023), Outlines (the FSM their index walks);
Thompson (1968) NFA construction; Russ Cox's utf8-ranges construction for character classes.

Bytes, not characters (a choice): each character class becomes UTF-8 byte-range sequences
(surrogates excluded) so the DFA runs over bytes and a byte-level BPE token holding half a
character simply leaves the DFA "inside a character". The DFA is minimal; state 0 is the dead
sink into which every state that can no longer accept is merged.

    python -c "from genlab.inference.structured.automaton import compile_ast; from genlab.inference.structured.regex import parse_regex as p; print(compile_ast(p('a[0-9]+')).matches('a12'))"
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from genlab.inference.structured.regex import Alt, CharSet, Concat, Repeat


# --- UTF-8: code point ranges -> byte-range sequences ---------------------------------------------

def _encode(cp: int) -> bytes:
    return chr(cp).encode("utf-8")


def utf8_sequences(lo: int, hi: int) -> list[list[tuple[int, int]]]:
    """Byte-range sequences whose concatenations are exactly the UTF-8 encodings of [lo, hi]."""
    out, stack = [], [(lo, hi)]
    while stack:
        lo, hi = stack.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:  # surrogates have no UTF-8 encoding
            stack += [(lo, 0xD7FF), (0xE000, hi)]
            continue
        split = next((m for m in (0x7F, 0x7FF, 0xFFFF) if lo <= m < hi), None)
        if split is not None:  # different encoded lengths
            stack += [(lo, split), (split + 1, hi)]
            continue
        if hi <= 0x7F:
            out.append([(lo, hi)])
            continue
        n = len(_encode(lo))
        for i in range(1, n):  # make every continuation byte span its full 0x80-0xBF range or agree
            m = (1 << (6 * i)) - 1
            if lo & ~m != hi & ~m:
                if lo & m != 0:
                    stack += [(lo, lo | m), ((lo | m) + 1, hi)]
                    break
                if hi & m != m:
                    stack += [(lo, (hi & ~m) - 1), (hi & ~m, hi)]
                    break
        else:
            out.append(list(zip(_encode(lo), _encode(hi))))
    return out


# --- NFA (Thompson) and DFA (subset construction + Moore minimisation) ----------------------------

class _NFA:
    def __init__(self) -> None:
        self.edges: list[list[tuple[int, int, int]]] = []  # state -> (byte lo, byte hi, target)
        self.eps: list[list[int]] = []

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def build(self, node, start: int) -> int:
        """Add `node` from `start`; return its end state."""
        if isinstance(node, CharSet):
            end = self.new()
            for lo, hi in node.ranges:
                for seq in utf8_sequences(lo, hi):
                    cur = start
                    for j, (blo, bhi) in enumerate(seq):
                        nxt = end if j == len(seq) - 1 else self.new()
                        self.edges[cur].append((blo, bhi, nxt))
                        cur = nxt
            return end
        if isinstance(node, Concat):
            for part in node.parts:
                start = self.build(part, start)
            return start
        if isinstance(node, Alt):
            end = self.new()
            for option in node.options:
                s = self.new()
                self.eps[start].append(s)
                self.eps[self.build(option, s)].append(end)
            return end
        if isinstance(node, Repeat):
            for _ in range(node.min):
                start = self.build(node.node, start)
            if node.max is None:  # star: loop back through a fresh state
                loop = self.new()
                self.eps[start].append(loop)
                self.eps[self.build(node.node, loop)].append(loop)
                return loop
            end = self.new()
            for _ in range(node.max - node.min):
                self.eps[start].append(end)
                start = self.build(node.node, start)
            self.eps[start].append(end)
            return end
        raise AssertionError(f"unknown node {node!r}")

    def closure(self, states) -> frozenset[int]:
        seen, stack = set(states), list(states)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)


@dataclass
class ByteDFA:
    """A minimal DFA over bytes. State 0 is the dead sink; `start` is 1 unless the language is empty."""

    transitions: np.ndarray  # [S, 256] int32
    accepting: np.ndarray  # [S] bool
    start: int
    pattern: str = ""

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    def walk(self, state: int, data: bytes) -> int:
        for b in data:
            state = int(self.transitions[state, b])
            if state == 0:
                return 0
        return state

    def matches(self, text: str | bytes) -> bool:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return bool(self.accepting[self.walk(self.start, data)])


def _minimize(trans: np.ndarray, accepting: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moore partition refinement on [S, columns]; returns (transitions, accepting, old->new map)."""
    block = accepting.astype(np.int64)
    n_blocks = len(np.unique(block))
    while True:
        signature = np.ascontiguousarray(np.concatenate([block[:, None], block[trans]], axis=1))
        rows = signature.view(np.dtype((np.void, signature.dtype.itemsize * signature.shape[1])))
        _, new_block = np.unique(rows.reshape(-1), return_inverse=True)  # one key per row: fast
        new_block = new_block.reshape(-1)
        if len(np.unique(new_block)) == n_blocks:
            break
        block, n_blocks = new_block, len(np.unique(new_block))
    # renumber: the dead state's block becomes 0
    order = np.full(n_blocks, -1, dtype=np.int64)
    order[block[0]] = 0
    nxt = 1
    for b in block:
        if order[b] < 0:
            order[b] = nxt
            nxt += 1
    mapping = order[block]
    new_trans = np.zeros((n_blocks, trans.shape[1]), dtype=np.int32)
    new_acc = np.zeros(n_blocks, dtype=bool)
    new_trans[mapping] = mapping[trans]
    new_acc[mapping] = accepting
    return new_trans, new_acc, mapping


def compile_ast(node, pattern: str = "") -> ByteDFA:
    nfa = _NFA()
    start = nfa.new()
    final = nfa.build(node, start)
    # subset construction over byte classes (bytes no edge boundary separates behave alike)
    bounds = sorted({0, 256} | {x for edges in nfa.edges for lo, hi, _ in edges for x in (lo, hi + 1)})
    class_of_byte = np.array([bisect_right(bounds, b) - 1 for b in range(256)])
    n_classes = len(bounds) - 1
    start_set = nfa.closure([start])
    ids = {frozenset(): 0, start_set: 1}
    rows: list[list[int]] = [[0] * n_classes, []]
    acc = [False, final in start_set]
    todo = [start_set]
    while todo:
        current = todo.pop()
        targets: list[set[int]] = [set() for _ in range(n_classes)]
        for s in current:
            for lo, hi, t in nfa.edges[s]:
                for k in range(bisect_right(bounds, lo) - 1, bisect_right(bounds, hi) - 1 + 1):
                    targets[k].add(t)
        row = []
        for tset in targets:
            key = nfa.closure(tset) if tset else frozenset()
            if key not in ids:
                ids[key] = len(rows)
                rows.append([])
                acc.append(final in key)
                todo.append(key)
            row.append(ids[key])
        rows[ids[current]] = row
    accepting = np.asarray(acc, dtype=bool)
    # minimise over byte classes (few columns), then expand to all 256 bytes;
    # states that cannot reach acceptance merge into the dead state 0
    trans, accepting, mapping = _minimize(np.asarray(rows, dtype=np.int32), accepting)
    return ByteDFA(np.ascontiguousarray(trans[:, class_of_byte]), accepting, int(mapping[1]), pattern)
