"""LLMEngine: continuous batching over a paged KV cache, with streaming per-request outputs.

Handbook VI (serving: PagedAttention, continuous batching, prefix caching, chunked prefill) and
V (sampling, structured outputs). Kwon et al. 2023 (vLLM); Yu et al. 2022 (Orca); Agrawal et al.
2023 (Sarathi). The shape follows vLLM / nano-vllm: `add_request`, then `step()` until done.

Each `step()`: the scheduler (scheduler.py) picks decode tokens first, then prefill chunks, within
a token budget; ONE model forward runs over all of them flattened into one row [1, N] (explicit
positions, `PagedStep` doing the attention through block tables, logits only for the rows that
need them); each sequence whose chunk reached its end samples its next token with its own
SamplingParams (seeded requests own a torch.Generator, so their draws do not depend on the batch).

Done: the full public API of the shared contract (/work/notes/s2/engine_api.md): EngineConfig,
RequestOutput, EngineStats, LLMEngine (add_request with constraint and prompt_logprobs, abort,
step, has_unfinished, generate, stats, from_pretrained); paged attention (llama-like and
gpt2-like models, GQA, sliding window); chunked prefill; prefix caching with LRU eviction;
recompute preemption; stop ids / stop strings with hold-back; UTF-8-safe streaming; logprobs;
prompt logprobs (no prefix sharing for such requests, as in vLLM); metrics.
Not supported: ALiBi models (ConfigError).

Output rules are genlab.inference.generate's (see sequence.py): greedy output equals
`generate(...)` token for token whatever the batch. An abort with an unknown or finished id is
ignored (a server may abort after the last output). `generate()` needs an idle engine. The engine
puts the model in eval mode and, on CPU, stores its Linear weights column-major (weight_layout.py) and
runs decode-only steps of Llama-family models through fused_decode.py; `step()` is single-threaded (drive it from one thread).

    python -m pytest -q tests/inference/test_engine.py
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Sequence as Seq

import torch

from genlab.errors import ConfigError, GenlabError
from genlab.inference.block_manager import BlockManager
from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.fused_decode import FusedDecoder
from genlab.inference.generate import GenerationResult, _device_of, clip_max_tokens
from genlab.inference.paged_attention import Chunk, PagedKVCache
from genlab.inference.sampling import SamplingParams, TokenLogprobs, logprobs_of, sample_next
from genlab.inference.scheduler import ScheduledChunk, Scheduler
from genlab.inference.sequence import Sequence
from genlab.inference.structured.index import TokenIndex
from genlab.inference.structured.logits_processor import ConstrainedDecoder
from genlab.inference.weight_layout import column_major_linears

DEFAULT_STOP_TOKENS = ("<|end|>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "</s>")
MAX_LATENCY_SAMPLES = 100_000  # ttft_s / tpot_s keep the most recent ones


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # None: enough for max_num_seqs full-length sequences
    max_num_seqs: int = 64  # sequences running in one step
    max_num_batched_tokens: int = 1024  # token budget per step: decode tokens + prefill chunks
    enable_prefix_caching: bool = True
    fused_decode: bool = True  # all-decode steps through fused_decode.py where the model allows it

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"EngineConfig.{name}={getattr(self, name)!r}: must be an integer >= 1")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 1):
            raise ConfigError(f"EngineConfig.num_blocks={self.num_blocks!r}: must be None or an integer >= 1")


@dataclass
class RequestOutput:
    """One per request per step in which it made progress (a new token, or its end)."""

    request_id: str
    text: str  # NEW final text since this request's previous output (never retracted)
    token_ids: list[int]  # new token ids since the previous output
    logprobs: list[TokenLogprobs] | None  # per new token when params.logprobs is not None
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" (None while running)
    prompt_token_count: int
    completion_token_count: int  # total so far
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # first output only, when asked; entry 0 is None


@dataclass
class EngineStats:
    blocks_total: int
    blocks_in_use: int
    num_running: int
    num_waiting: int
    ttft_s: list[float] = field(default_factory=list)  # per finished request that sampled a token (latest 100k)
    tpot_s: list[float] = field(default_factory=list)  # per finished request with >= 2 tokens (latest 100k)
    generated_tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens of added requests
    preemptions: int = 0
    prefix_cache_hit_tokens: int = 0
    busy_s: float = 0.0  # time spent inside step()
    steps: int = 0

    @property
    def throughput_tok_s(self) -> float:
        """Generated tokens per second of engine time."""
        return self.generated_tokens / self.busy_s if self.busy_s > 0 else 0.0


class LLMEngine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None,
                 stop_token_ids: Seq[int] | None = None) -> None:
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config or EngineConfig()
        mc = model.config
        if mc.position == "alibi":
            raise ConfigError("the paged engine does not support ALiBi models; use genlab.inference.generate")
        self.device = _device_of(model)
        if self.device.type == "cpu":
            column_major_linears(model)  # faster small-batch GEMMs, same values (weight_layout.py)
        bs = self.config.block_size
        num_blocks = self.config.num_blocks or self.config.max_num_seqs * -(-mc.max_seq_len // bs)
        self.kv = PagedKVCache(mc, num_blocks, bs, model.embed.weight.dtype, self.device)
        # Decode-only steps of a Llama-family model skip the module path (fused_decode.py; same function).
        self.fused = None
        if self.config.fused_decode and FusedDecoder.unsupported(model, self.kv) is None:
            self.fused = FusedDecoder(model, self.kv)
        self.block_manager = BlockManager(num_blocks, bs, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs, self.config.max_num_batched_tokens)
        if stop_token_ids is None:
            special = getattr(tokenizer, "special_tokens", {}) or {}
            stop_token_ids = [special[name] for name in DEFAULT_STOP_TOKENS if name in special]
        self.stop_token_ids = [int(t) for t in stop_token_ids]
        self.requests: dict[str, Sequence] = {}  # unfinished requests
        self._pending: list[RequestOutput] = []  # abort outputs, delivered by the next step()
        self._stats = EngineStats(num_blocks, 0, 0, 0)
        self._generate_calls = 0

    @classmethod
    def from_pretrained(cls, model_dir, config: EngineConfig | None = None) -> "LLMEngine":
        from genlab.models.hf_io import load_pretrained
        from genlab.tokenizers import BPETokenizer

        return cls(load_pretrained(model_dir), BPETokenizer.load(model_dir), config)

    # --- requests --------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
                    constraint: TokenIndex | None = None, prompt_logprobs: int | None = None) -> None:
        if request_id in self.requests or any(o.request_id == request_id for o in self._pending):
            raise ConfigError(f"request id {request_id!r} is already in use")
        prompt = [int(t) for t in prompt_ids]
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise ConfigError(f"prompt holds token ids outside the model's vocabulary [0, {vocab})")
        max_new = clip_max_tokens(len(prompt), params.max_tokens, self.model.config.max_seq_len)
        if prompt_logprobs is not None and (not isinstance(prompt_logprobs, int) or prompt_logprobs < 0):
            raise ConfigError(f"prompt_logprobs={prompt_logprobs!r}: must be None or an integer >= 0")
        need = -(-(len(prompt) + max_new - 1) // self.config.block_size)
        if need > self.block_manager.num_blocks:
            raise ConfigError(f"request needs {need} KV blocks but the cache has {self.block_manager.num_blocks}; "
                              "raise EngineConfig.num_blocks or lower max_tokens")
        decoder = None
        if constraint is not None:
            if not self.stop_token_ids:
                raise ConfigError("a constrained request needs an end-of-sequence token (stop_token_ids)")
            decoder = ConstrainedDecoder(constraint, self.stop_token_ids[0])
            steps = int(constraint.steps_to_accept[constraint.start])
            if steps > max_new:
                raise ConfigError(f"the constraint needs at least {steps} tokens but only {max_new} may be generated")
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seq = Sequence(request_id, prompt, params, max_new, frozenset(self.stop_token_ids) | set(params.stop_token_ids),
                       IncrementalDetokenizer(self.tokenizer.token_bytes), generator, decoder, prompt_logprobs)
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        self._stats.prompt_tokens += len(prompt)

    def abort(self, request_id: str) -> None:
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return
        self.scheduler.remove(seq)
        seq.finish("abort")
        self._pending.append(self._output(seq, "", [], None))

    def has_unfinished(self) -> bool:
        return bool(self.requests or self._pending)

    # --- one iteration ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        outputs, self._pending = self._pending, []
        chunks = self.scheduler.schedule()
        if chunks:
            outputs += self._run(chunks)
        self._stats.busy_s += time.perf_counter() - t0
        self._stats.steps += 1
        return outputs

    def _run(self, chunks: list[ScheduledChunk]) -> list[RequestOutput]:
        ids, rows, row = [], [], 0
        for c in chunks:
            ids.extend(c.seq.tokens[c.start:c.start + c.length])
            if c.seq.needs_prompt_logprobs:
                rows.extend(range(row, row + c.length))
            elif c.samples:
                rows.append(row + c.length - 1)
            row += c.length
        step = self.kv.step([Chunk(c.seq.block_table, c.start, c.length) for c in chunks])
        with torch.inference_mode():
            # All-decode steps need every row's logits: no row selection (one copy fewer).
            logit_rows = None if len(rows) == row else torch.tensor(rows, dtype=torch.long, device=self.device)
            if self.fused is not None and logit_rows is None and step.all_decode:
                logits = self.fused(ids, step)
            else:
                idx = torch.tensor([ids], dtype=torch.long, device=self.device)
                logits = self.model(idx, cache=step, positions=step.positions, logit_rows=logit_rows)[0]
        samplers: list[tuple[Sequence, int]] = []  # (sequence, its row in `logits`)
        at = 0  # this chunk's first row in `logits`
        for c in chunks:
            seq = c.seq
            seq.num_computed += c.length
            self.block_manager.register_full_blocks(seq, seq.tokens, seq.num_computed)
            if seq.needs_prompt_logprobs:
                self._prompt_logprobs(seq, c, logits[at:at + c.length])
                at += c.length
                if c.samples:
                    samplers.append((seq, at - 1))
            elif c.samples:
                samplers.append((seq, at))
                at += 1
        # Plain greedy rows (most traffic) take one batched argmax; the rest sample one by one.
        plain = [i for i, (seq, _) in enumerate(samplers) if seq.params.greedy and seq.history is None
                 and seq.decoder is None]
        tokens: list[int | None] = [None] * len(samplers)
        if plain:
            plain_rows = [samplers[i][1] for i in plain]
            if plain_rows == list(range(len(logits))):  # every row, in order (all-decode, all greedy)
                best = logits.argmax(dim=-1).tolist()
            else:
                best = logits[torch.tensor(plain_rows)].argmax(dim=-1).tolist()
            for i, t in zip(plain, best):
                tokens[i] = t
        return [self._sample(seq, logits, r, tokens[i]) for i, (seq, r) in enumerate(samplers)]

    def _prompt_logprobs(self, seq: Sequence, c: ScheduledChunk, logits: torch.Tensor) -> None:
        """Row at position p scores prompt token p + 1; only entries not yet collected (re-prefill)."""
        first = len(seq.prompt_logprobs) - 1 - c.start  # chunk row predicting the next missing entry
        last = min(c.length, seq.num_prompt - 1 - c.start)  # rows that predict prompt tokens
        if first < last:
            targets = seq.prompt_ids[c.start + first + 1:c.start + last + 1]
            seq.prompt_logprobs.extend(logprobs_of(logits[first:last], targets, seq.prompt_logprobs_k))

    def _sample(self, seq: Sequence, all_logits: torch.Tensor, row: int, token: int | None) -> RequestOutput:
        """Pick (unless already picked) and record seq's next token from its raw logits all_logits[row] [V]."""
        params = seq.params
        logits = all_logits[row] if token is None or params.logprobs is not None else None  # a view, only if used
        if token is None:
            processed = logits
            if seq.decoder is not None:
                processed = seq.decoder.mask_logits(logits, seq.max_new - seq.num_output)
            token = int(sample_next(processed, params, seq.generator, seq.history))
            if seq.decoder is not None:
                seq.decoder.advance(token)
        lp = None
        if params.logprobs is not None and token not in seq.end_ids:
            lp = [logprobs_of(logits, token, params.logprobs)]  # the model's own distribution, as generate()
        text, finished = seq.accept_token(token)
        new_ids = [] if token in seq.end_ids else [token]
        self._stats.generated_tokens += len(new_ids)
        if finished:
            self._finish(seq)
        return self._output(seq, text, new_ids, lp)

    def _finish(self, seq: Sequence) -> None:
        self.requests.pop(seq.request_id, None)
        self.scheduler.remove(seq)
        if seq.first_token_time is not None:
            self._stats.ttft_s.append(seq.first_token_time - seq.arrival_time)
            if seq.num_output > 1:
                self._stats.tpot_s.append((seq.finish_time - seq.first_token_time) / (seq.num_output - 1))

    def _output(self, seq: Sequence, text: str, token_ids: list[int], lp) -> RequestOutput:
        prompt_lp = None
        if seq.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            seq.prompt_logprobs_sent = True
            if len(seq.prompt_logprobs) == seq.num_prompt:  # an abort may come before they are complete
                prompt_lp = seq.prompt_logprobs
        if lp is None and seq.params.logprobs is not None:
            lp = []
        return RequestOutput(seq.request_id, text, token_ids, lp, seq.finish_reason is not None, seq.finish_reason,
                             seq.num_prompt, seq.num_output, prompt_lp)

    # --- offline use and metrics -----------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[GenerationResult]:
        """Add every prompt, step until all finish; results in prompt order."""
        if self.has_unfinished():
            raise ConfigError("generate() needs an idle engine (requests are still running)")
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(plist)} SamplingParams")
        self._generate_calls += 1
        ids = [f"generate-{self._generate_calls}-{i}" for i in range(len(prompts))]
        try:
            for rid, prompt, p in zip(ids, prompts, plist):
                self.add_request(rid, prompt, p)
        except GenlabError:
            for rid in ids:
                self.abort(rid)
            self._pending.clear()
            raise
        collected: dict[str, list[RequestOutput]] = {rid: [] for rid in ids}
        while self.has_unfinished():
            for out in self.step():
                collected[out.request_id].append(out)
        results = []
        for rid, prompt, p in zip(ids, prompts, plist):
            outs = collected[rid]
            results.append(GenerationResult(
                text="".join(o.text for o in outs), token_ids=[t for o in outs for t in o.token_ids],
                finish_reason=outs[-1].finish_reason,
                logprobs=[x for o in outs for x in o.logprobs] if p.logprobs is not None else None,
                prompt_tokens=len(prompt)))
        return results

    def warm_up(self) -> None:
        """One tiny request through prefill and decode (numba kernels loaded from their disk cache, first
        allocations made), so a server's first client does not pay for it; stats start from zero after."""
        stops, self.stop_token_ids = self.stop_token_ids, []  # the dummy request must reach a decode step
        try:
            self.generate([[0, 0]], SamplingParams(temperature=0.0, max_tokens=3))
        finally:
            self.stop_token_ids = stops
        self._stats = EngineStats(self.block_manager.num_blocks, 0, 0, 0)

    @property
    def stats(self) -> EngineStats:
        """A snapshot (later steps do not change it)."""
        s = self._stats
        del s.ttft_s[:-MAX_LATENCY_SAMPLES], s.tpot_s[:-MAX_LATENCY_SAMPLES]  # bounded in a long-lived server
        return dataclasses.replace(
            s, ttft_s=list(s.ttft_s), tpot_s=list(s.tpot_s), blocks_in_use=self.block_manager.num_used,
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            preemptions=self.scheduler.preemptions, prefix_cache_hit_tokens=self.scheduler.prefix_hit_tokens)
