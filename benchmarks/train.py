"""Training throughput: genlab's Transformer vs transformers' LlamaForCausalLM, same config, data, optimizer, precision.

Handbook III (pretraining recipes). Both models: vocab 4096, d_model 256, 6 layers, 8 heads, SwiGLU (d_ff 704),
RMSNorm, RoPE, untied head (~6.9M parameters), sequences of 256 tokens, the same batches drawn from one token
file, and the same optimizer: genlab's `build_optimizer` (AdamW, decay on Linear matrices only, fused kernel)
applied to each model. transformers runs as shipped (attn_implementation="sdpa", eager PyTorch).
genlab runs eager and, where it pays, under torch.compile (the loss function: forward + cross entropy).

Rows: fp32 (the headline: genlab's best fp32 row vs transformers fp32) and bf16 autocast for both (eager;
this CPU has no bf16 matmul instructions, so those rows are slow and get 2 timed steps).
Timing excludes warmup; torch.compile's first-call time is reported on its own. Contestants take turns
step by step (round robin), so load from other processes on this shared machine hits all of them alike;
each row is the median step. tok/s per CPU-second is printed too (one thread: the work, without waiting).
One intra-op thread by default (--threads N to change), the same for every contestant.

    python benchmarks/train.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genlab.data.tokens import TokenDataset, write_tokens  # noqa: E402
from genlab.models import ModelConfig, Transformer  # noqa: E402
from genlab.train.optim import build_optimizer, optimizer_impl  # noqa: E402

VOCAB, D_MODEL, N_LAYER, N_HEAD, SEQ = 4096, 256, 6, 8, 256


@dataclass
class Contestant:
    name: str
    system: str  # "genlab" or "transformers"
    precision: str  # "fp32" or "bf16"
    step: Callable[[torch.Tensor, torch.Tensor], float]
    compiled: bool = False
    warmup_s: float = 0.0  # the first step (includes compilation for compiled rows)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_loss: float = float("nan")

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / statistics.median(self.wall)

    def tokens_per_cpu_s(self, tokens: int) -> float:
        return tokens / statistics.median(self.cpu)


def genlab_model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.llama_like(vocab_size=VOCAB, d_model=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
                                              max_seq_len=SEQ))


def hf_model(seed: int, d_ff: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=d_ff, num_hidden_layers=N_LAYER,
                         num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD, max_position_embeddings=SEQ,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def make_step(model: torch.nn.Module, loss_of: Callable, bf16: bool, lr: float = 1e-3) -> Callable:
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.1)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    step.optimizer = optimizer  # type: ignore[attr-defined]
    return step


def build_contestants(args) -> list[Contestant]:
    """fp32: genlab eager (+ compiled), transformers eager (+ compiled with --compile-peer); bf16: both eager."""
    g = genlab_model(0)
    d_ff = g.config.d_ff
    rows = [Contestant("genlab eager fp32", "genlab", "fp32", make_step(g, g.loss, False))]
    if args.compile:
        gc = genlab_model(0)
        rows.append(Contestant("genlab compile fp32", "genlab", "fp32", make_step(gc, torch.compile(gc.loss), False),
                               compiled=True))
    h = hf_model(0, d_ff)
    rows.append(Contestant("transformers fp32", "transformers", "fp32",
                           make_step(h, lambda x, y: h(input_ids=x, labels=y).loss, False)))
    if args.compile_peer:
        hc = hf_model(0, d_ff)
        rows.append(Contestant("transformers compile fp32", "transformers", "fp32",
                               make_step(hc, torch.compile(lambda x, y: hc(input_ids=x, labels=y).loss), False),
                               compiled=True))
    if args.bf16:  # eager only: without bf16 hardware these steps are slow, and compiling adds minutes more
        gb, hb = genlab_model(0), hf_model(0, d_ff)
        rows.append(Contestant("genlab eager bf16", "genlab", "bf16", make_step(gb, gb.loss, True)))
        rows.append(Contestant("transformers bf16", "transformers", "bf16",
                               make_step(hb, lambda x, y: hb(input_ids=x, labels=y).loss, True)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed fp32 steps, no compile or bf16 rows (~1-2 min)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None, help="timed steps per contestant (default 8; quick 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine a second thread mostly "
                             "waits for a time slice; use 2+ on a quiet machine)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    parser.add_argument("--compile", dest="compile", action="store_true")
    parser.add_argument("--compile-peer", action="store_true", help="also time torch.compile'd transformers")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", default=None)
    parser.add_argument("--bf16", dest="bf16", action="store_true", help="bf16 autocast rows (default: on unless --quick)")
    args = parser.parse_args()
    if args.compile is None:
        args.compile = not args.quick
    rounds = args.rounds or (3 if args.quick else 8)
    # bf16 matmuls without AVX512-BF16/AMX fall back to slow kernels (~20x fp32 here): time fewer of those steps
    bf16_rounds = 2
    if args.bf16 is None:
        args.bf16 = not args.quick
    if args.threads:
        torch.set_num_threads(args.threads)
    B = args.batch_size
    tokens = B * SEQ

    with tempfile.TemporaryDirectory() as tmp:
        ids = np.random.default_rng(0).integers(0, VOCAB, size=200_000)
        data = TokenDataset(write_tokens(Path(tmp) / "bench.bin", ids, vocab_size=VOCAB), val_fraction=0.0)
        g = torch.Generator().manual_seed(0)
        batches = [data.batch("train", B, SEQ, g) for _ in range(rounds + 2)]

    rows = build_contestants(args)
    for row in rows:  # warmup: the first step compiles (compiled rows) and fills the allocator; the second settles
        t = time.perf_counter()
        row.first_loss = row.step(*batches[0])
        row.warmup_s = time.perf_counter() - t
        if row.precision == "fp32":
            row.step(*batches[1])
    for precision, n in (("fp32", rounds), ("bf16", bf16_rounds)):
        group = [row for row in rows if row.precision == precision]
        for r in range(n):  # round robin: every contestant sees the same load pattern and the same batch
            x, y = batches[2 + r]
            for row in group:
                wall, cpu = time.perf_counter(), time.process_time()
                row.step(x, y)
                row.wall.append(time.perf_counter() - wall)
                row.cpu.append(time.process_time() - cpu)

    g_params = genlab_model(0).num_params()
    opt = optimizer_impl(rows[0].step.optimizer)
    print(f"train benchmark: {g_params / 1e6:.2f}M params, batch {B} x {SEQ} tokens, {rounds} timed steps each, "
          f"{torch.get_num_threads()} threads, AdamW {opt}, torch {torch.__version__}, {platform.processor() or 'cpu'}")
    print(f"  {'contestant':<28} {'tok/s':>8} {'ms/step':>8} {'tok/cpu-s':>10} {'1st step s':>10} {'loss@0':>7}")
    for row in rows:
        print(f"  {row.name:<28} {row.tokens_per_s(tokens):>8.0f} {1000 * statistics.median(row.wall):>8.0f} "
              f"{row.tokens_per_cpu_s(tokens):>10.0f} {row.warmup_s:>10.1f} {row.first_loss:>7.3f}")

    def best(system: str, precision: str, peer_eager: bool = False) -> Contestant:
        pool = [r for r in rows if r.system == system and r.precision == precision and not (peer_eager and r.compiled)]
        return max(pool, key=lambda r: r.tokens_per_s(tokens))

    fp32_g, fp32_h = best("genlab", "fp32"), best("transformers", "fp32", peer_eager=True)
    metrics = {"tokens_per_s": fp32_g.tokens_per_s(tokens), "tokens_per_cpu_s": fp32_g.tokens_per_cpu_s(tokens),
               "genlab_fp32_row": fp32_g.name, "params": g_params}
    peers = {"transformers_tokens_per_s": fp32_h.tokens_per_s(tokens)}
    ratios = {"tokens_per_s_vs_transformers": fp32_g.tokens_per_s(tokens) / fp32_h.tokens_per_s(tokens),
              "cpu_tokens_per_s_vs_transformers": fp32_g.tokens_per_cpu_s(tokens) / fp32_h.tokens_per_cpu_s(tokens)}
    for row in rows:
        key = row.name.replace(" ", "_")
        (metrics if row.system == "genlab" else peers)[f"{key}_tokens_per_s"] = row.tokens_per_s(tokens)
        if row.compiled:
            metrics[f"{key}_compile_s"] = row.warmup_s - statistics.median(row.wall)  # first step minus a normal one
    eager_g = next(r for r in rows if r.name == "genlab eager fp32")
    ratios["eager_tokens_per_s_vs_transformers"] = eager_g.tokens_per_s(tokens) / fp32_h.tokens_per_s(tokens)
    if args.bf16:
        bf_g, bf_h = best("genlab", "bf16"), best("transformers", "bf16", peer_eager=True)
        metrics["bf16_tokens_per_s"] = bf_g.tokens_per_s(tokens)
        peers["transformers_bf16_tokens_per_s"] = bf_h.tokens_per_s(tokens)
        ratios["bf16_tokens_per_s_vs_transformers"] = bf_g.tokens_per_s(tokens) / bf_h.tokens_per_s(tokens)
    options = {"sdpa": True, "adamw": opt, "compile": args.compile, "compile_peer": args.compile_peer,
               "bf16_autocast_rows": args.bf16, "threads": torch.get_num_threads(), "batch_size": B, "seq_len": SEQ,
               "timed_steps": rounds, "timed_steps_bf16": bf16_rounds if args.bf16 else 0, "quick": args.quick, "grad_clip": 1.0}
    print(json.dumps({"benchmark": "train", "ratios": ratios, "metrics": metrics, "peers": peers, "options": options}))


if __name__ == "__main__":
    main()
