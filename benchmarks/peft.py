"""PEFT benchmark: full finetuning vs LoRA, DoRA and QLoRA (genlab), and peft's LoRA/DoRA as peers.

Handbook IV (LoRA, DoRA), VI (QLoRA/NF4). Hu et al. 2021; Liu et al. 2024; Dettmers et al. 2023.
One run: build the chat world, train a byte-level BPE on it, pretrain a small Llama-shaped genlab model
on the world's documents plus another world's chats (shared by every method), then SFT it on this world's
conversations with each method for the same number of steps, on the same padded batches, in a fresh
process per method (so peak RSS is the method's own: mostly the ~540 MB of torch itself at this size).
LoRA/DoRA/QLoRA start from one saved adapter (B = 0) that peft's peers load too, so genlab and peft train
identical weights on identical data (their final losses are compared in `ratios`).
Measured: trainable parameters, bytes of weights + gradients + AdamW state, peak RSS, seconds per step
(median, one thread), and the SFT accuracy (greedy next-token accuracy on the assistant tokens of
held-out conversations). QLoRA's NF4 base computes in float32 on CPU; its frozen base bytes are compared
with the same layers in bf16. peft's QLoRA needs bitsandbytes (CUDA), so QLoRA has no peer here.
Options on: r=2, alpha=8 on all attention and MLP projections (not the head), AdamW without weight decay,
constant lr 1e-3 (full) / 4e-3 (adapters); all printed with the results.

    python benchmarks/peft.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named peft.py: drop its own folder from the path, or `import peft` would import it.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

GENLAB_METHODS = ("full", "lora", "dora", "qlora")
PEER_METHODS = ("peft-lora", "peft-dora")
IGNORE = -100


def options(quick: bool) -> dict:
    common = dict(seed=0, r=2, alpha=8, targets=["all-linear"], lr_full=1e-3, lr_adapter=4e-3, batch_size=16,
                  threads=1, vocab_size=1024, d_model=128, n_layer=4, n_head=4, n_kv_head=2, d_ff=384,
                  pretrain_seq=128, pretrain_batch=16, pretrain_lr=3e-3)
    if quick:
        return {**common, "world_scale": 0.5, "pretrain_steps": 150, "sft_steps": 60}
    return {**common, "world_scale": 1.0, "pretrain_steps": 600, "sft_steps": 200}


# --- preparation (parent process) ------------------------------------------------------------------
def prepare(opts: dict, workdir: Path) -> dict:
    from genlab.data.chat import CHAT_SPECIAL_TOKENS, chat_token_ids, render_chat
    from genlab.data.world import WorldConfig, build_world, pretraining_documents, sft_conversations
    from genlab.finetune.lora import LoraConfig, add_adapter
    from genlab.finetune.peft_io import save_peft_adapter
    from genlab.finetune.sft_data import padded_batches, render_examples
    from genlab.models import ModelConfig, Transformer
    from genlab.models.hf_io import save_pretrained
    from genlab.tokenizers import BPETokenizer

    torch.manual_seed(opts["seed"])
    world = build_world(WorldConfig(seed=opts["seed"], scale=opts["world_scale"]))
    docs, convs = pretraining_documents(world), sft_conversations(world)
    texts = docs + [m["content"] for c in convs for m in c["messages"]]
    tokenizer = BPETokenizer.train(texts, opts["vocab_size"], special_tokens=CHAT_SPECIAL_TOKENS)
    bos = chat_token_ids(tokenizer)["<|bos|>"]
    # Pretraining (with a "midtraining" share, as nanochat): the world's documents, plus chats of *another*
    # world (seed + 1: other people, same formats). The base thus knows the chat tokens but none of this
    # world's answers; without it, frozen-embedding methods must learn never-seen <|end|>/role tokens.
    other = sft_conversations(build_world(WorldConfig(seed=opts["seed"] + 1, scale=opts["world_scale"])))
    pieces = [[bos] + tokenizer.encode_ordinary(d) for d in docs] + [render_chat(c["messages"], tokenizer)[0]
                                                                    for c in other]
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(opts["seed"])).tolist()
    stream = torch.tensor([t for i in order for t in pieces[i]])
    config = ModelConfig.llama_like(vocab_size=tokenizer.vocab_size, d_model=opts["d_model"], n_layer=opts["n_layer"],
                                    n_head=opts["n_head"], n_kv_head=opts["n_kv_head"], d_ff=opts["d_ff"],
                                    max_seq_len=256)
    model = Transformer(config)
    t0 = time.perf_counter()
    pretrain_loss = pretrain(model, stream, opts)
    pretrain_s = time.perf_counter() - t0
    save_pretrained(model.eval(), workdir / "base")
    n_eval = len(convs) // 10
    examples = render_examples(convs, tokenizer)
    train, held_out = examples[n_eval:], examples[:n_eval]
    batches = padded_batches(train, opts["batch_size"], pad_id=bos)
    eval_batches = padded_batches(held_out, 64, pad_id=bos)
    torch.save({"train": [vars(b) for b in batches], "eval": [vars(b) for b in eval_batches]}, workdir / "data.pt")
    for dora in (False, True):  # one initial adapter for genlab and peft alike
        torch.manual_seed(opts["seed"] + 1)
        add_adapter(model, LoraConfig(r=opts["r"], alpha=opts["alpha"], targets=opts["targets"], dora=dora),
                    "init_dora" if dora else "init_lora")
        save_peft_adapter(model, workdir / ("init_dora" if dora else "init_lora"), "init_dora" if dora else "init_lora")
    return {"conversations": len(convs), "train_batches": len(batches), "eval_conversations": n_eval,
            "pretrain_tokens": int(stream.numel()), "pretrain_loss": pretrain_loss, "pretrain_s": pretrain_s,
            "params": sum(p.numel() for n, p in model.named_parameters() if "adapters" not in n)}


def pretrain(model, stream: torch.Tensor, opts: dict) -> float:
    g = torch.Generator().manual_seed(opts["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=opts["pretrain_lr"], weight_decay=0.0)
    steps, T, B = opts["pretrain_steps"], opts["pretrain_seq"], opts["pretrain_batch"]
    model.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:  # cosine to 10%
            group["lr"] = opts["pretrain_lr"] * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        starts = torch.randint(0, stream.numel() - T - 1, (B,), generator=g)
        x = torch.stack([stream[s:s + T] for s in starts])
        y = torch.stack([stream[s + 1:s + T + 1] for s in starts])
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-10:]) / 10


# --- one method (child process) --------------------------------------------------------------------
def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def run_method(method: str, workdir: Path, opts: dict) -> dict:
    torch.manual_seed(opts["seed"])
    data = torch.load(workdir / "data.pt")
    peer = method.startswith("peft-")
    extra: dict = {}
    if peer:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(workdir / "base", dtype=torch.float32)
        model = PeftModel.from_pretrained(hf, workdir / f"init_{method[5:]}", is_trainable=True)
        forward = lambda b: model(input_ids=b["tokens"], position_ids=b["positions"]).logits  # noqa: E731
    else:
        from genlab.finetune.lora import mark_only_adapters_trainable
        from genlab.finetune.peft_io import load_peft_adapter
        from genlab.models.hf_io import load_pretrained
        from genlab.quant.nf4 import quantize_model_nf4

        model = load_pretrained(workdir / "base")
        if method == "qlora":
            names = quantize_model_nf4(model)
            layers = [model.get_submodule(n) for n in names]
            extra["frozen_base_bytes"] = sum(m.nbytes() for m in layers)
            extra["bf16_base_bytes"] = sum(2 * m.in_features * m.out_features for m in layers)
            extra["frozen_ratio_vs_bf16"] = extra["frozen_base_bytes"] / extra["bf16_base_bytes"]
        if method != "full":
            load_peft_adapter(model, workdir / ("init_dora" if method == "dora" else "init_lora"))
            mark_only_adapters_trainable(model)
        forward = lambda b: model(b["tokens"], positions=b["positions"])  # noqa: E731
    trainable = [p for p in model.parameters() if p.requires_grad]
    total_params = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() * (2 if b.dtype == torch.uint8 else 1) for n, b in model.named_buffers() if "packed" in n)
    lr = opts["lr_full"] if method == "full" else opts["lr_adapter"]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    model.train()
    times, losses = [], []
    for step in range(opts["sft_steps"]):
        batch = data["train"][step % len(data["train"])]
        t0 = time.perf_counter()
        logits = forward(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    state_bytes = (tensor_bytes(list(model.parameters()) + list(model.buffers()))
                   + tensor_bytes(p.grad for p in trainable)
                   + tensor_bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()))
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in data["eval"]:
            pred = forward(batch).argmax(-1)
            mask = batch["targets"] != IGNORE
            correct += int((pred[mask] == batch["targets"][mask]).sum())
            total += int(mask.sum())
    steady = sorted(times[2:]) or times
    return {"trainable_params": sum(p.numel() for p in trainable), "total_params": total_params,
            "trainable_fraction": sum(p.numel() for p in trainable) / total_params, "state_bytes": state_bytes,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "s_per_step": steady[len(steady) // 2], "accuracy": correct / total,
            "final_loss": sum(losses[-10:]) / min(10, len(losses)), **extra}


# --- report ----------------------------------------------------------------------------------------
def print_table(metrics: dict, peers: dict) -> None:
    cols = ("trainable_params", "trainable_fraction", "state_bytes", "peak_rss_mb", "s_per_step", "accuracy",
            "final_loss")
    head = f"{'method':<10}" + "".join(f"{c:>19}" for c in cols)
    print(head)
    print("-" * len(head))
    for name, row in {**metrics, **peers}.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append(f"{v:>19.4g}" if isinstance(v, float) else f"{v:>19}")
        print(f"{name:<10}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half-size world, 150 pretraining and 60 SFT steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    opts = options(args.quick)
    torch.set_num_threads(opts["threads"])  # a benchmark, not library code: one thread, comparable timings
    if args.worker:
        print(json.dumps(run_method(args.worker, Path(args.workdir), opts)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        info = prepare(opts, workdir)
        results = {}
        for method in GENLAB_METHODS + PEER_METHODS:
            cmd = [sys.executable, __file__, "--worker", method, "--workdir", str(workdir)]
            cmd += ["--quick"] if args.quick else []
            env = {**os.environ, "OMP_NUM_THREADS": str(opts["threads"]), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    metrics = {m: results[m] for m in GENLAB_METHODS}
    peers = {m: results[m] for m in PEER_METHODS}
    full = metrics["full"]
    ratios = {
        "lora_trainable_fraction": metrics["lora"]["trainable_fraction"],
        "qlora_frozen_base_vs_bf16": metrics["qlora"]["frozen_ratio_vs_bf16"],
        "lora_accuracy_minus_full": metrics["lora"]["accuracy"] - full["accuracy"],
        "dora_accuracy_minus_full": metrics["dora"]["accuracy"] - full["accuracy"],
        "qlora_accuracy_minus_full": metrics["qlora"]["accuracy"] - full["accuracy"],
        "lora_state_bytes_vs_full": metrics["lora"]["state_bytes"] / full["state_bytes"],
        "qlora_state_bytes_vs_full": metrics["qlora"]["state_bytes"] / full["state_bytes"],
        "lora_s_per_step_vs_peft": metrics["lora"]["s_per_step"] / peers["peft-lora"]["s_per_step"],
        "dora_s_per_step_vs_peft": metrics["dora"]["s_per_step"] / peers["peft-dora"]["s_per_step"],
        "lora_final_loss_minus_peft": metrics["lora"]["final_loss"] - peers["peft-lora"]["final_loss"],
        "dora_final_loss_minus_peft": metrics["dora"]["final_loss"] - peers["peft-dora"]["final_loss"],
    }
    print(f"options: {json.dumps(opts)}")
    print(f"data: {json.dumps(info)}")
    print_table(metrics, peers)
    print(f"ratios: {json.dumps({k: round(v, 4) for k, v in ratios.items()})}")
    print(json.dumps({"benchmark": "peft", "options": opts, "data": info, "metrics": metrics, "peers": peers,
                      "ratios": ratios}))


if __name__ == "__main__":
    main()
