"""SFT data: targets and masks by hand, packing invariants, zero gradient on masked tokens,
packed == padded loss on a real genlab Transformer.

    python -m pytest -q tests/finetune/test_sft_data.py
"""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from genlab.data.chat import add_chat_tokens
from genlab.errors import ConfigError, GenlabError
from genlab.finetune.sft_data import (IGNORE_INDEX, SFTExample, example_targets, pack, pack_rows, pad_collate,
                                      padded_batches, render_examples, sft_batches)
from genlab.models import ModelConfig, Transformer
from genlab.tokenizers.bpe import BPETokenizer



@pytest.fixture(scope="module")
def tokenizer():
    from genlab.data.world import WorldConfig, build_world, pretraining_documents

    docs = pretraining_documents(build_world(WorldConfig(scale=0.05)))[:40]
    tok = BPETokenizer.train("\n".join(docs), 360)
    add_chat_tokens(tok)
    return tok


@pytest.fixture(scope="module")
def examples(tokenizer):
    from genlab.data.world import WorldConfig, build_world, sft_conversations

    world = build_world(WorldConfig(scale=0.05))
    # World tool traces carry a long tool system prompt; a short handmade one keeps the test fast.
    tool = [{"role": "user", "content": "What is 849 * 723?"},
            {"role": "assistant", "content": '{"tool": "calculator", "arguments": {"expression": "849 * 723"}}'},
            {"role": "tool", "content": "613827"}, {"role": "assistant", "content": "613827"}]
    return render_examples(sft_conversations(world)[:24] + [{"messages": tool}], tokenizer)


def test_example_targets_by_hand():
    example = SFTExample(ids=[10, 11, 12, 13, 14, 15], loss_mask=[0, 0, 0, 1, 1, 0])
    # Position t predicts token t+1 where that token is trained; the last position predicts nothing.
    assert example_targets(example) == [-100, -100, 13, 14, -100, -100]
    assert example.n_targets == 2


def test_pack_by_hand():
    a = SFTExample([1, 2, 3, 4], [0, 0, 1, 1])
    b = SFTExample([5, 6, 7], [0, 1, 1])
    c = SFTExample([8, 9, 10, 11, 12], [0, 0, 0, 1, 1])
    (batch,) = pack([a, b, c], seq_len=8, pad_id=0)
    # Best fit: a opens row 0 (room 4), b fits there (room 1), c opens row 1.
    assert batch.tokens.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 10, 11, 12, 0, 0, 0]]
    assert batch.targets.tolist() == [[-100, 3, 4, -100, 6, 7, -100, -100],
                                      [-100, -100, 11, 12, -100, -100, -100, -100]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch.segments.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 1, 1, 1]]
    assert batch.n_targets == 6


def test_truncation_and_dropping():
    long = SFTExample(list(range(1, 11)), [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    cut_before_reply = SFTExample(list(range(1, 11)), [0] * 8 + [1, 1])
    batches = pack([long, cut_before_reply], seq_len=5)
    assert len(batches) == 1 and batches[0].tokens.tolist() == [[1, 2, 3, 4, 5]]  # first seq_len tokens kept
    assert batches[0].targets.tolist() == [[-100, -100, 4, 5, -100]]
    padded = pad_collate([long, cut_before_reply], seq_len=5)  # padding keeps every row
    assert padded.tokens.shape == (2, 5) and padded.segments is None and padded.n_targets == 2
    with pytest.raises(ConfigError):
        pack([long], seq_len=1)
    with pytest.raises(GenlabError):
        SFTExample([1, 2], [1])


def test_pack_keeps_every_conversation_once(examples):
    seq_len = 160
    batches = pack(examples, seq_len, batch_size=3)
    kept = [e.truncated(seq_len) for e in examples if e.truncated(seq_len).n_targets]
    rows = [(b.tokens[r], b.segments[r], b.targets[r]) for b in batches for r in range(b.tokens.shape[0])]
    found = Counter()
    for tokens, segments, _ in rows:
        for s in segments.unique().tolist():
            found[tuple(tokens[segments == s].tolist())] += 1
    want = Counter(tuple(e.ids) for e in kept)
    assert all(found[k] == v for k, v in want.items())  # padding runs are the only extra segments
    assert sum(b.n_targets for b in batches) == sum(e.n_targets for e in kept)
    assert all(b.tokens.shape[0] <= 3 and b.tokens.shape[1] == seq_len for b in batches)
    # Best fit wastes little: within two rows of the token count's lower bound (one row per conversation: 25).
    assert len(rows) <= math.ceil(sum(len(e.ids) for e in kept) / seq_len) + 2 < len(kept)


def test_pack_rows_best_fit_never_overflows():
    lengths = [7, 3, 5, 1, 8, 2, 2, 6, 4, 4]
    rows = pack_rows([SFTExample([1] * n, [1] * n) for n in lengths], 8)
    assert all(sum(len(e) for e in row) <= 8 for row in rows)
    assert sorted(len(e) for row in rows for e in row) == sorted(lengths)
    assert len(rows) == 6  # 42 tokens need >= 6 rows of 8


def _tiny_model(tokenizer, position: str) -> Transformer:
    base = ModelConfig.gpt2_like if position == "learned" else ModelConfig.llama_like
    config = base(vocab_size=tokenizer.vocab_size, d_model=32, n_head=4, n_layer=2, max_seq_len=512)
    return Transformer(config).eval()


def _mean_loss(model, batch) -> torch.Tensor:
    return model.loss(batch.tokens, batch.targets, **batch.model_kwargs())


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_packed_and_padded_batches_give_the_same_loss(tokenizer, examples, position):
    model = _tiny_model(tokenizer, position)
    kept = [e for e in examples if e.n_targets]
    longest = max(len(e) for e in kept)
    with torch.no_grad():
        (packed,) = pack(kept, seq_len=longest)  # nothing truncated, so both see the same targets
        padded = pad_collate(kept)
        assert packed.n_targets == padded.n_targets
        packed_loss, padded_loss = _mean_loss(model, packed), _mean_loss(model, padded)
        assert abs(packed_loss.item() - padded_loss.item()) < 1e-5
        # Batches of padded rows summed token-wise give the same mean too.
        total = sum(F.cross_entropy(model(b.tokens).flatten(0, 1), b.targets.flatten(), reduction="sum",
                                    ignore_index=IGNORE_INDEX) for b in padded_batches(kept, 5))
        assert abs(total.item() / padded.n_targets - packed_loss.item()) < 1e-5
        # The check can fail: packing without segments/positions lets conversations see each other.
        # (Compared token by token: a tiny random model's mean loss barely moves.)
        naive = model(packed.tokens)
        segmented = model(packed.tokens, **packed.model_kwargs())
        trained = packed.targets != IGNORE_INDEX
        assert (naive - segmented)[trained].abs().max().item() > 1e-3


def test_masked_tokens_get_exactly_zero_gradient(tokenizer, examples):
    model = _tiny_model(tokenizer, "rope").train()
    (batch,) = pack(examples[:12], seq_len=200)
    logits = model(batch.tokens, **batch.model_kwargs())
    logits.retain_grad()
    loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    masked = batch.targets == IGNORE_INDEX
    assert masked.any() and (~masked).any()
    assert torch.count_nonzero(logits.grad[masked]) == 0
    assert (logits.grad[~masked].abs().sum(-1) > 0).all()
    # Perturbing the logits at masked positions leaves the loss bit-for-bit unchanged.
    with torch.no_grad():
        noisy = logits.detach() + 5.0 * torch.randn_like(logits) * masked[..., None]
        again = F.cross_entropy(noisy.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX)
    assert again.item() == loss.item()
    # And user/system/tool tokens are never targets: every target is a trained (assistant) token.
    trained = Counter(t for e in examples[:12] for t, m in zip(e.ids[1:], e.loss_mask[1:]) if m)
    assert Counter(batch.targets[~masked].tolist()) == trained


@pytest.mark.parametrize("packed", [True, False])
def test_sft_batches_epoch_covers_every_target_once(examples, packed):
    kept = [e for e in examples if e.n_targets]
    epoch0 = sft_batches(kept, 128, 4, packed=packed, seed=1, epoch=0)
    epoch1 = sft_batches(kept, 128, 4, packed=packed, seed=1, epoch=1)
    want = sum(e.truncated(128).n_targets for e in kept)
    assert sum(b.n_targets for b in epoch0) == sum(b.n_targets for b in epoch1) == want
    assert all(b.tokens.shape[0] <= 4 and b.tokens.shape[1] <= 128 for b in epoch0)
    assert epoch0[0].tokens.tolist() != epoch1[0].tokens.tolist()  # reshuffled per epoch
    again = sft_batches(kept, 128, 4, packed=packed, seed=1, epoch=0)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(epoch0, again))


def test_replay_documents_train_on_every_token_beside_the_conversations(tokenizer):
    """SFTDataset(documents=...): pretraining text packed with the conversations, every token a target."""
    from genlab.finetune.sft import SFTDataset

    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    doc = [tokenizer.special_tokens["<|bos|>"]] + tokenizer.encode_ordinary("Ada lives in Wuby.")
    plain = SFTDataset([conversation], tokenizer, 64)
    replay = SFTDataset([conversation], tokenizer, 64, documents=[doc, doc])
    assert replay.n_target_tokens == plain.n_target_tokens + 2 * (len(doc) - 1)
    targets = [t for row in replay.rows for t in row.targets[0].tolist() if t != IGNORE_INDEX]
    assert Counter(targets)[doc[-1]] >= 2 and all(t in targets for t in doc[1:])



def test_replay_documents_longer_than_a_row_are_cut_not_truncated(tokenizer):
    """A replayed document longer than seq_len is split into seq_len pieces: every token is kept and each
    piece trains on its tokens after the first (truncation would lose the document's end)."""
    from genlab.finetune.sft import SFTDataset

    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    doc = list(range(1, 47))  # 46 tokens in rows of 32: pieces of 32 and 14
    plain = SFTDataset([conversation], tokenizer, 32)
    replay = SFTDataset([conversation], tokenizer, 32, documents=[doc])
    assert replay.n_target_tokens == plain.n_target_tokens + 31 + 13
    pieces = replay.train_examples[1:]
    assert [len(p) for p in pieces] == [32, 14]
    assert [t for p in pieces for t in p.ids] == doc


def test_val_documents_are_held_out_and_evaluated(tokenizer):
    """val_documents (packed pretraining's held-out text) feed val_batches and never the training rows."""
    from genlab.finetune.sft import SFTDataset

    train_doc, val_doc = list(range(1, 30)), list(range(100, 140))
    data = SFTDataset([], tokenizer, 32, documents=[train_doc], val_documents=[val_doc])
    trained = {t for row in data.rows for t in row.tokens[0].tolist()}
    assert trained.isdisjoint(val_doc) and set(train_doc) <= trained
    evaluated = [t for x, _, _ in data.val_batches(4, 32) for t in x.flatten().tolist()]
    assert set(val_doc) <= set(evaluated) and set(evaluated).isdisjoint(train_doc)
