"""Scheduler: decode first, token budget and chunked prefill, max_num_seqs, recompute preemption, removal.

The model is simulated: after each step every chunk counts as computed and a chunk that reaches the
end of its sequence appends one token (as the engine does after sampling).

    python -m pytest -q tests/inference/test_scheduler.py
"""

from genlab.inference.block_manager import BlockManager
from genlab.inference.detokenizer import IncrementalDetokenizer
from genlab.inference.sampling import SamplingParams
from genlab.inference.scheduler import Scheduler
from genlab.inference.sequence import Sequence, Status


def seq(name: str, prompt_len: int, first_token: int = 0) -> Sequence:
    prompt = [first_token + i for i in range(prompt_len)]
    return Sequence(name, prompt, SamplingParams(temperature=0), 100, frozenset(), IncrementalDetokenizer(bytes))


def run_step(sched: Scheduler) -> list[tuple[str, int, int]]:
    chunks = sched.schedule()
    for c in chunks:
        c.seq.num_computed += c.length
        sched.blocks.register_full_blocks(c.seq, c.seq.tokens, c.seq.num_computed)
        if c.samples:
            c.seq.tokens.append(7)
    assert sum(c.length for c in chunks) <= sched.max_num_batched_tokens
    assert len(sched.running) <= sched.max_num_seqs
    return [(c.seq.request_id, c.start, c.length) for c in chunks]


def test_decode_first_then_chunked_prefill_within_the_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=10)
    a, b = seq("a", 3), seq("b", 4, 100)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == [("a", 0, 3), ("b", 0, 4)]
    c = seq("c", 25, 200)
    sched.add(c)
    assert run_step(sched) == [("a", 3, 1), ("b", 4, 1), ("c", 0, 8)]  # decodes, then a chunk of c
    assert run_step(sched) == [("a", 4, 1), ("b", 5, 1), ("c", 8, 8)]
    assert run_step(sched) == [("a", 5, 1), ("b", 6, 1), ("c", 16, 8)]
    assert run_step(sched) == [("a", 6, 1), ("b", 7, 1), ("c", 24, 1)]  # c's last prompt token: it samples
    assert run_step(sched) == [("a", 7, 1), ("b", 8, 1), ("c", 25, 1)]


def test_max_num_seqs_keeps_the_rest_waiting():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [seq(f"s{i}", 3, 10 * i) for i in range(4)]
    for s in seqs:
        sched.add(s)
    assert [r[0] for r in run_step(sched)] == ["s0", "s1"]
    assert [s.status for s in seqs] == [Status.RUNNING] * 2 + [Status.WAITING] * 2
    sched.remove(seqs[0])
    assert [r[0] for r in run_step(sched)] == ["s1", "s2"]


def test_out_of_blocks_preempts_the_latest_and_recomputes_it_first():
    bm = BlockManager(num_blocks=4, block_size=4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = seq("a", 6), seq("b", 6, 50)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == [("a", 0, 6), ("b", 0, 6)]  # 2 blocks each: the pool is full
    assert run_step(sched) == [("a", 6, 1), ("b", 6, 1)]
    assert run_step(sched) == [("a", 7, 1), ("b", 7, 1)]
    # a needs a third block: b (admitted last) is preempted, its blocks freed, no admission this step
    sched.add(seq("late", 2, 90))
    assert run_step(sched) == [("a", 8, 1)]
    assert sched.preemptions == 1 and b.status is Status.WAITING and b.num_computed == 0 and not b.block_table
    assert [s.request_id for s in sched.waiting] == ["b", "late"]  # the victim goes to the front
    assert len(b.tokens) == 9  # prompt + 3 generated: all re-prefilled later
    sched.remove(a)
    assert run_step(sched)[0] == ("b", 4, 5)  # its first full block was still cached: re-prefill from 4
    assert sched.prefix_hit_tokens == 4


def test_a_sequence_preempts_itself_when_only_already_scheduled_ones_could_yield():
    bm = BlockManager(num_blocks=3, block_size=2)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=100)
    a, b = seq("a", 3), seq("b", 2, 50)
    sched.add(a)
    sched.add(b)
    assert run_step(sched) == [("a", 0, 3), ("b", 0, 2)]  # 2 + 1 blocks: the pool is full
    assert run_step(sched) == [("a", 3, 1)]  # b needs a block; a is already scheduled, so b yields
    assert b.status is Status.WAITING and sched.preemptions == 1 and list(sched.waiting) == [b]
    assert run_step(sched) == [("a", 4, 1)]  # a takes b's freed (cached, evictable) block


def test_remove_frees_blocks_of_running_and_waiting_sequences():
    bm = BlockManager(num_blocks=16, block_size=4)
    sched = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=100)
    a, b = seq("a", 9), seq("b", 5)
    sched.add(a)
    sched.add(b)
    run_step(sched)
    sched.remove(a)
    sched.remove(b)
    assert not sched.has_work()
    bm.check_all_free()
