"""Continuous-batching scheduler: token budget, decode first, chunked prefill, recompute preemption.

Handbook VI (continuous batching, chunked prefill). Yu et al. 2022 (Orca, iteration-level
scheduling); Agrawal et al. 2023 (Sarathi, chunked prefill); Kwon et al. 2023 (vLLM, preemption).

Each step gets a budget of `max_num_batched_tokens` tokens and at most `max_num_seqs` running
sequences. Order (first come, first served within each group):
1. running sequences in decode (one uncomputed token each);
2. running sequences part-way through their prefill, a chunk each, as far as the budget goes;
3. waiting sequences (new, or preempted ones at the front), admitted while budget, sequence
   slots and blocks last; a new one first shares its cached prefix blocks (prefix caching).
When a running sequence needs a block and the pool is empty, the most recently admitted running
sequence not yet scheduled this step is preempted by recompute: its blocks are freed and it goes
back to the front of the waiting queue, to prefill prompt + generated tokens again later. No new
sequence is admitted in a step that preempted.

    python -m pytest -q tests/inference/test_scheduler.py
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from genlab.inference.block_manager import BlockManager
from genlab.inference.sequence import Sequence, Status


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # first position computed in this step
    length: int  # tokens computed in this step

    @property
    def samples(self) -> bool:
        """The chunk reaches the end of the sequence's tokens, so its last row picks the next token."""
        return self.start + self.length == len(self.seq.tokens)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.preemptions = 0
        self.prefix_hit_tokens = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out (finished or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def schedule(self) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledChunk] = []
        done: set[int] = set()  # ids of sequences scheduled this step
        preempted = False
        decodes = [s for s in self.running if s.num_uncomputed == 1]
        prefills = [s for s in self.running if s.num_uncomputed > 1]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:  # preempted earlier in this loop
                continue
            n = min(seq.num_uncomputed, budget)
            while not self.blocks.allocate(seq, seq.num_computed + n):
                victims = [s for s in reversed(self.running) if id(s) not in done and s is not seq]
                victim = victims[0] if victims else seq
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            scheduled.append(ScheduledChunk(seq, seq.num_computed, n))
            done.add(id(seq))
            budget -= n
        while self.waiting and budget > 0 and not preempted and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # Cached tokens are not recomputed; prompt logprobs need every prompt row, so no sharing then.
            hit = 0 if seq.needs_prompt_logprobs else self.blocks.match_prefix(seq, seq.tokens)
            n = min(len(seq.tokens) - hit, budget)
            if not self.blocks.allocate(seq, hit + n):
                self.blocks.free(seq)  # give back the prefix hits; try again next step
                break
            self.waiting.popleft()
            self.prefix_hit_tokens += hit
            seq.num_computed = hit
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledChunk(seq, hit, n))
            budget -= n
        return scheduled
