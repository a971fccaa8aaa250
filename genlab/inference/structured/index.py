"""The Outlines index: for each automaton state, which tokens may come next and where they lead.

Handbook V (structured outputs); Willard & Louf (2023), "Efficient Guided Generation for Large
Language Models", section 3 (indexing the vocabulary by FSM state). Built once per (pattern,
vocabulary) and cached, so each decoding step costs one row lookup instead of a vocabulary scan.

Each token's bytes are walked through the byte-level DFA (regex.py) from every state at once with
numpy (a [states, vocab] array advanced one byte column at a time). A token is allowed in a state
when the walk does not die AND the state it reaches can still finish: `steps_to_accept` (the
fewest tokens to an accepting state, by BFS over the state graph) is finite. The same numbers let
the decoder refuse tokens that could not finish within the remaining token budget.

Storage (a choice): dense [states, vocab] arrays (int32 next state, bool mask), fast to index and
small for genlab's vocabularies (~2k tokens); Outlines keeps sparse maps, better for 100k-token
vocabularies with thousands of states. Special tokens and unused ids are never allowed (EOS is
the decoder's business).

    python -m pytest -q tests/inference/test_structured.py -k mask
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from genlab.errors import GenlabError
from genlab.inference.structured.json_schema import DEFAULT_WHITESPACE, schema_to_regex
from genlab.inference.structured.automaton import ByteDFA
from genlab.inference.structured.regex import compile_regex, escape_literal

UNREACHABLE = np.iinfo(np.int64).max // 4
_CACHE_SIZE = 32


@dataclass
class Vocabulary:
    """Token id -> bytes; None marks ids never to be generated (special tokens, unused ids)."""

    tokens: list[bytes | None]
    fingerprint: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for t in self.tokens:
            digest.update(b"\xff\xfe" if t is None else len(t).to_bytes(4, "little") + t)
        self.fingerprint = digest.hexdigest()

    @classmethod
    def from_tokens(cls, tokens: Sequence[bytes | str | None]) -> Vocabulary:
        """From token byte strings or decoded strings (str tokens are UTF-8 encoded)."""
        return cls([t.encode("utf-8") if isinstance(t, str) else t for t in tokens])

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        """From a genlab BPETokenizer (or anything with vocab_size, token_bytes, special_tokens)."""
        special = set(getattr(tokenizer, "special_tokens", {}).values())
        tokens: list[bytes | None] = []
        for i in range(tokenizer.vocab_size):
            try:
                tokens.append(None if i in special else tokenizer.token_bytes(i))
            except GenlabError:
                tokens.append(None)  # an unused id
        return cls(tokens)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class TokenIndex:
    """Per-DFA-state allowed tokens (`mask`) and successor states (`next_state`, 0 = not allowed)."""

    dfa: ByteDFA
    next_state: np.ndarray  # [S, V] int32
    mask: torch.Tensor  # [S, V] bool
    steps_to_accept: np.ndarray  # [S] int64, UNREACHABLE when the state cannot finish
    build_seconds: float = 0.0
    row_cache: dict = field(default_factory=dict, repr=False)  # decoders' precomputed logits masks

    @property
    def start(self) -> int:
        return self.dfa.start

    @property
    def vocab_size(self) -> int:
        return int(self.next_state.shape[1])

    def is_accepting(self, state: int) -> bool:
        return bool(self.dfa.accepting[state])

    def allowed(self, state: int) -> torch.Tensor:
        return self.mask[state]

    def advance(self, state: int, token_id: int) -> int:
        nxt = int(self.next_state[state, token_id])
        if nxt == 0:
            raise GenlabError(f"token {token_id} is not allowed in state {state} of pattern {self.dfa.pattern!r}")
        return nxt


def walk_all(dfa: ByteDFA, vocab: Vocabulary) -> np.ndarray:
    """[S, V] state reached by walking each token's bytes from each state (0: dead or no token)."""
    n_states, n_tokens = dfa.num_states, len(vocab)
    lengths = np.array([0 if t is None else len(t) for t in vocab.tokens], dtype=np.int64)
    width = int(lengths.max(initial=0))
    padded = np.zeros((n_tokens, max(width, 1)), dtype=np.int64)
    for i, t in enumerate(vocab.tokens):
        if t:
            padded[i, :len(t)] = np.frombuffer(t, dtype=np.uint8)
    current = np.broadcast_to(np.arange(n_states, dtype=np.int32)[:, None], (n_states, n_tokens)).copy()
    for j in range(width):
        active = np.nonzero(lengths > j)[0]  # longer tokens keep walking; the dead state 0 is a sink
        current[:, active] = dfa.transitions[current[:, active], padded[active, j]]
    current[:, lengths == 0] = 0  # empty tokens and excluded ids are never allowed
    return current


def steps_to_accept(next_state: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Fewest tokens from each state to an accepting one (BFS backwards over unique state edges)."""
    n_states = len(accepting)
    src, tok = np.nonzero(next_state)
    edges = np.unique(src.astype(np.int64) * n_states + next_state[src, tok])
    edge_src, edge_dst = edges // n_states, edges % n_states
    dist = np.where(accepting, 0, UNREACHABLE).astype(np.int64)
    dist[0] = UNREACHABLE
    frontier = accepting.copy()
    frontier[0] = False
    level = 0
    while frontier.any():
        level += 1
        reached = np.unique(edge_src[frontier[edge_dst]])
        reached = reached[dist[reached] == UNREACHABLE]
        dist[reached] = level
        frontier = np.zeros(n_states, dtype=bool)
        frontier[reached] = True
    return dist


def build_index(dfa: ByteDFA, vocab: Vocabulary) -> TokenIndex:
    t0 = time.perf_counter()
    nxt = walk_all(dfa, vocab)
    dist = steps_to_accept(nxt, dfa.accepting)
    nxt[dist[nxt] >= UNREACHABLE] = 0  # a token into a state that can never finish is a dead end
    if dfa.start == 0 or dist[dfa.start] >= UNREACHABLE:
        raise GenlabError(f"pattern {dfa.pattern!r} cannot be produced by this vocabulary (no string of tokens matches it)")
    return TokenIndex(dfa, nxt, torch.from_numpy(nxt != 0), dist, time.perf_counter() - t0)


_cache: OrderedDict[tuple[str, str], TokenIndex] = OrderedDict()


def index_for_regex(pattern: str, vocab: Vocabulary) -> TokenIndex:
    """The index of `pattern` over `vocab`, from an LRU cache keyed by (pattern, vocabulary hash)."""
    key = (pattern, vocab.fingerprint)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    index = build_index(compile_regex(pattern), vocab)
    _cache[key] = index
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return index


def choice_regex(choices: Sequence[str]) -> str:
    """A regex matching exactly one of `choices`."""
    if not choices or not all(isinstance(c, str) for c in choices):
        raise GenlabError("choice needs a non-empty list of strings")
    return "(?:" + "|".join(escape_literal(c) for c in choices) + ")"


@dataclass(frozen=True)
class Regex:
    pattern: str

    def to_regex(self) -> str:
        return self.pattern


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def to_regex(self) -> str:
        return choice_regex(self.choices)


@dataclass(frozen=True)
class JsonSchema:
    schema: dict | str
    whitespace: str = DEFAULT_WHITESPACE

    def to_regex(self) -> str:
        return schema_to_regex(self.schema, self.whitespace)


Constraint = Regex | Choice | JsonSchema


def index_for(constraint: Constraint | TokenIndex, vocab: Vocabulary) -> TokenIndex:
    """Build (or fetch from the cache) the index of a Regex, Choice or JsonSchema constraint."""
    if isinstance(constraint, TokenIndex):
        if constraint.vocab_size != len(vocab):
            raise GenlabError(f"index was built for {constraint.vocab_size} tokens, vocabulary has {len(vocab)}")
        return constraint
    if isinstance(constraint, (Regex, Choice, JsonSchema)):
        return index_for_regex(constraint.to_regex(), vocab)
    raise GenlabError(f"unknown constraint {type(constraint).__name__}: use Regex, Choice or JsonSchema")
