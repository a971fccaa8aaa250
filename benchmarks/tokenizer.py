"""Tokenizer benchmark: genlab byte-level BPE vs HF `tokenizers` (training) and tiktoken (encoding).

Handbook III (tokenization). Same text for everyone: `stdlib_corpus` (~5 MB of Python docs and
stdlib sources; --quick: ~1 MB), GPT-4 split pattern, byte-level alphabet, one special token.
- train: genlab `BPETokenizer.train` vs HF `BpeTrainer` with Split(GPT-4 regex) + ByteLevel
  pre-tokenization (HF with its default thread pool, and with TOKENIZERS_PARALLELISM=false).
- encode: one thread, document by document, on the same text: genlab (fresh tokenizer, so its
  chunk cache starts empty; and a second, fully cached pass), HF `tokenizers` loading genlab's
  tokenizer.json, and tiktoken built from genlab's ranks. All three must produce the same ids.
Wall-clock seconds are the headline numbers; CPU seconds are printed too, since on a shared
machine wall time includes waiting for a core.

    python benchmarks/tokenizer.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genlab.data.corpus import DOCUMENT_SEPARATOR, stdlib_documents  # noqa: E402
from genlab.tokenizers import GPT4_PATTERN, BPETokenizer  # noqa: E402

SPECIAL = "<|endoftext|>"


def timed(function):
    """(result, wall seconds, CPU seconds of this process). On a shared machine wall time also
    counts waiting for a core; CPU time does not (for one-thread work it is the fairer number)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def train_hf(docs: list[str], vocab_size: int, parallel: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"), pre_tokenizers.ByteLevel(False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    _, seconds, _ = timed(lambda: hf.train_from_iterator(docs, trainer))
    return hf, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~1 MB of text and vocab 2048")
    args = parser.parse_args()
    max_bytes, vocab_size = (1_000_000, 2048) if args.quick else (5_000_000, 4096)

    docs = [d.text for d in stdlib_documents(max_bytes, seed=0)]
    megabytes = len(DOCUMENT_SEPARATOR.join(docs).encode("utf-8")) / 1e6

    genlab, genlab_train_s, genlab_train_cpu_s = timed(lambda: BPETokenizer.train(docs, vocab_size, special_tokens=[SPECIAL]))
    hf_trained, hf_train_s = train_hf(docs, vocab_size, parallel=True)
    _, hf_train_1thread_s = train_hf(docs, vocab_size, parallel=False)

    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as folder:
        file = genlab.save(folder)
        fresh = BPETokenizer.load(file)
        hf = Tokenizer.from_file(str(file))
    encoding = genlab.to_tiktoken()

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    genlab_ids, genlab_s, genlab_cpu_s = timed(lambda: [fresh.encode(d) for d in docs])
    _, genlab_cached_s, _ = timed(lambda: [fresh.encode(d) for d in docs])
    hf_ids, hf_s, _ = timed(lambda: [hf.encode(d, add_special_tokens=False).ids for d in docs])
    tiktoken_ids, tiktoken_s, tiktoken_cpu_s = timed(lambda: [encoding.encode_ordinary(d) for d in docs])
    identical = genlab_ids == hf_ids == tiktoken_ids
    tokens = sum(map(len, genlab_ids))

    speed = {
        "genlab": megabytes / genlab_s,
        "genlab_cached": megabytes / genlab_cached_s,
        "hf_tokenizers": megabytes / hf_s,
        "tiktoken": megabytes / tiktoken_s,
        "genlab_cpu": megabytes / genlab_cpu_s,
        "tiktoken_cpu": megabytes / tiktoken_cpu_s,
    }
    rows = [
        ("train s (genlab)", f"{genlab_train_s:.2f}"),
        ("train CPU s (genlab)", f"{genlab_train_cpu_s:.2f}"),
        ("train s (HF BpeTrainer, default threads)", f"{hf_train_s:.2f}"),
        ("train s (HF BpeTrainer, TOKENIZERS_PARALLELISM=false)", f"{hf_train_1thread_s:.2f}"),
        ("encode MB/s genlab (fresh cache)", f"{speed['genlab']:.2f}"),
        ("encode MB/s genlab (second pass, cached)", f"{speed['genlab_cached']:.2f}"),
        ("encode MB/s HF tokenizers", f"{speed['hf_tokenizers']:.2f}"),
        ("encode MB/s tiktoken", f"{speed['tiktoken']:.2f}"),
        ("encode MB per CPU s genlab (fresh cache)", f"{speed['genlab_cpu']:.2f}"),
        ("encode MB per CPU s tiktoken", f"{speed['tiktoken_cpu']:.2f}"),
        ("identical ids (genlab = HF = tiktoken)", str(identical)),
        ("bytes per token", f"{megabytes * 1e6 / tokens:.2f}"),
    ]
    print(f"tokenizer benchmark: {megabytes:.2f} MB stdlib corpus ({len(docs)} documents), vocab {vocab_size}, "
          f"GPT-4 pattern, {os.cpu_count()} CPUs")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>10}")
    result = {
        "benchmark": "tokenizer",
        "options": {"quick": args.quick, "megabytes": round(megabytes, 3), "vocab_size": vocab_size,
                    "documents": len(docs), "pattern": "gpt4", "encode": "single thread, per document"},
        "metrics": {
            "train_seconds": round(genlab_train_s, 3),
            "train_cpu_seconds": round(genlab_train_cpu_s, 3),
            "encode_mb_per_s": round(speed["genlab"], 3),
            "encode_mb_per_s_cached": round(speed["genlab_cached"], 3),
            "encode_mb_per_cpu_s": round(speed["genlab_cpu"], 3),
            "bytes_per_token": round(megabytes * 1e6 / tokens, 3),
            "identical_ids": identical,
        },
        "peers": {
            "hf_tokenizers": {"train_seconds": round(hf_train_s, 3), "train_seconds_1thread": round(hf_train_1thread_s, 3),
                              "encode_mb_per_s": round(speed["hf_tokenizers"], 3),
                              "vocab_size": hf_trained.get_vocab_size()},
            "tiktoken": {"encode_mb_per_s": round(speed["tiktoken"], 3),
                         "encode_mb_per_cpu_s": round(speed["tiktoken_cpu"], 3)},
        },
        "ratios": {
            "train_time_vs_hf_tokenizers": round(genlab_train_s / hf_train_s, 3),
            "train_time_vs_hf_tokenizers_1thread": round(genlab_train_s / hf_train_1thread_s, 3),
            "encode_speed_vs_tiktoken": round(speed["genlab"] / speed["tiktoken"], 3),
            "encode_speed_vs_tiktoken_cpu": round(speed["genlab_cpu"] / speed["tiktoken_cpu"], 3),
            "encode_speed_vs_hf_tokenizers": round(speed["genlab"] / speed["hf_tokenizers"], 3),
        },
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
