"""Structured-output benchmark: index build time and per-token mask cost, genlab vs outlines-core.

Handbook V (structured outputs); Willard & Louf (2023), Outlines. Same vocabulary for everyone:
genlab's byte-level BPE trained to 2048 ids on the Python language reference (`pydoc_data`),
one special EOS. Same regexes for everyone: genlab's `schema_to_regex` output for a nested JSON
schema, an e-mail-like regex and a choice list.
- index build: genlab `build_index(compile_regex(...))` (cache bypassed; regex compile timed
  apart) vs `outlines_core.Index` (Rust) on the same regex and vocabulary.
- mask cost: a random walk of allowed tokens (genlab's index, seeded) is replayed in both; per
  step each side produces a float32 logits tensor masked to the allowed tokens (genlab:
  `ConstrainedDecoder.mask_logits`; outlines-core: `get_allowed_tokens` -> bool mask ->
  masked_fill). A naive per-step vocabulary scan (no index: walk every token through the DFA)
  is the baseline the index replaces. The allowed sets of both libraries are compared per step.
Options: one thread (torch.set_num_threads(1)); --quick walks fewer steps.

    python benchmarks/structured.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydoc_data.topics  # noqa: E402
import torch  # noqa: E402

from genlab.inference.structured import (  # noqa: E402
    ConstrainedDecoder, Vocabulary, build_index, choice_regex, compile_regex, schema_to_regex,
)
from genlab.tokenizers import BPETokenizer  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "email": {"type": "string", "pattern": r"[a-z]{1,12}@[a-z]{1,10}\.(com|org)"},
        "tags": {"type": "array", "items": {"enum": ["admin", "user", "guest"]}, "maxItems": 4},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                     "zip": {"type": "string", "pattern": r"\d{5}"}},
                    "required": ["city"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age"],
}
CASES = {
    "json_schema": schema_to_regex(SCHEMA),
    "email_regex": r"[a-z0-9._]{1,20}@[a-z]{1,12}\.(com|org|net)",
    "choice": choice_regex(["positive", "negative", "neutral", "mixed feelings", "no opinion"]),
}


def timed(function, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - t0)
    return result, best


def random_walk(index, rng, steps: int) -> list[int]:
    """Tokens of a seeded random path through the index; stops early only where nothing can follow."""
    state, tokens = index.start, []
    for _ in range(steps):
        allowed = np.nonzero(index.mask[state].numpy())[0]
        if len(allowed) == 0:
            break
        token = int(rng.choice(allowed))
        tokens.append(token)
        state = int(index.next_state[state, token])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 60 if args.quick else 300
    text = "\n".join(pydoc_data.topics.topics.values())[:300_000]
    tokenizer = BPETokenizer.train(text, 2048, special_tokens=("<|endoftext|>",))
    eos = tokenizer.special_tokens["<|endoftext|>"]
    vocab = Vocabulary.from_tokenizer(tokenizer)
    try:
        import outlines_core
        by_bytes: dict[bytes, list[int]] = {}
        for i, t in enumerate(vocab.tokens):
            if t:
                by_bytes.setdefault(t, []).append(i)
        oc_vocab = outlines_core.Vocabulary(eos, by_bytes)
    except ImportError:
        outlines_core = None

    rows, results = [], {}
    for name, pattern in CASES.items():
        dfa, compile_s = timed(lambda: compile_regex(pattern))
        index, build_s = timed(lambda: build_index(dfa, vocab), repeat=2)
        rng, walks = np.random.default_rng(0), []
        while sum(map(len, walks)) < steps:  # complete walks, each to where nothing can follow
            walks.append(random_walk(index, rng, steps))
        n_steps = sum(map(len, walks))
        logits = torch.randn(tokenizer.vocab_size)

        decoder = ConstrainedDecoder(index, eos)
        decoder.mask_logits(logits)  # one-off: builds the [states, vocab] mask rows (not timed)
        t0 = time.perf_counter()
        for walk in walks:
            decoder.reset()
            for t in walk:
                decoder.mask_logits(logits)
                decoder.advance(t)
        genlab_us = (time.perf_counter() - t0) / n_steps * 1e6

        state, t0 = index.start, time.perf_counter()
        scan_tokens = walks[0][:20]  # the naive scan is slow: a few steps
        for t in scan_tokens:
            allowed = torch.tensor([bool(b) and dfa.walk(state, b) != 0 for b in vocab.tokens])
            logits.masked_fill(~allowed, float("-inf"))
            state = int(index.next_state[state, t])
        naive_us = (time.perf_counter() - t0) / len(scan_tokens) * 1e6

        row = {"case": name, "dfa_states": dfa.num_states, "compile_s": compile_s, "index_build_s": build_s,
               "genlab_mask_us": genlab_us, "naive_scan_mask_us": naive_us, "steps": n_steps}
        if outlines_core is not None:
            oc_index, oc_build_s = timed(lambda: outlines_core.Index(pattern, oc_vocab))
            agree, t0 = 0, time.perf_counter()
            for walk in walks:
                state = oc_index.get_initial_state()
                for t in walk:
                    mask = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
                    mask[oc_index.get_allowed_tokens(state)] = True
                    logits.masked_fill(~mask, float("-inf"))
                    state = oc_index.get_next_state(state, t)
            oc_us = (time.perf_counter() - t0) / n_steps * 1e6
            for walk in walks:  # same allowed set (EOS aside) at every step?
                g_state, o_state = index.start, oc_index.get_initial_state()
                for t in walk:
                    mine = set(np.nonzero(index.mask[g_state].numpy())[0].tolist())
                    theirs = set(oc_index.get_allowed_tokens(o_state)) - {eos}
                    agree += mine == theirs
                    g_state, o_state = int(index.next_state[g_state, t]), oc_index.get_next_state(o_state, t)
            row |= {"outlines_core_build_s": oc_build_s, "outlines_core_mask_us": oc_us,
                    "steps_with_same_allowed_set": f"{agree}/{n_steps}"}
        rows.append(row)
        results[name] = row

    for row in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    main_row = results["json_schema"]
    peers = {}
    ratios = {"naive_scan_vs_genlab_mask": main_row["naive_scan_mask_us"] / main_row["genlab_mask_us"]}
    if outlines_core is not None:
        peers = {"outlines_core": {"index_build_s": main_row["outlines_core_build_s"],
                                   "mask_us_per_token": main_row["outlines_core_mask_us"]}}
        ratios |= {"build_genlab_vs_outlines_core": main_row["index_build_s"] / main_row["outlines_core_build_s"],
                   "mask_genlab_vs_outlines_core": main_row["genlab_mask_us"] / main_row["outlines_core_mask_us"]}
    print(json.dumps({
        "benchmark": "structured",
        "options": {"vocab_size": tokenizer.vocab_size, "threads": 1, "quick": args.quick, "steps": steps},
        "metrics": {"index_build_s": main_row["index_build_s"], "mask_us_per_token": main_row["genlab_mask_us"],
                    "regex_compile_s": main_row["compile_s"], "dfa_states": main_row["dfa_states"]},
        "peers": peers,
        "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
