"""Log-likelihood multiple choice: a hand-computed acc vs acc_norm split, lm-eval's pair encoding,
batched scores equal to one forward per choice.

    python -m pytest -q tests/evals/test_multiple_choice.py
"""

import math

import pytest
import torch

from eval_helpers import FixedDistributionModel, tiny_transformer
from genlab.errors import GenlabError
from genlab.evals.multiple_choice import (choice_items_from_qa, choice_loglikelihoods, encode_pair,
                                          multiple_choice)


def _fixed_model(tok, probs: dict[str, float]) -> FixedDistributionModel:
    """Every position predicts the same distribution: the given bytes, the rest spread evenly."""
    assert sum(probs.values()) < 1
    p = torch.full((tok.vocab_size,), (1.0 - sum(probs.values())) / (tok.vocab_size - len(probs)))
    for char, prob in probs.items():
        p[ord(char)] = prob
    return FixedDistributionModel(p.log())


def test_short_choice_wins_acc_long_choice_wins_acc_norm(bytes_tok):
    # One token per byte; log p(" x") = ln .5 + ln .1 = -2.996, log p(" yyy") = ln .5 + 3 ln .3 = -4.305.
    # acc prefers the short choice; per byte of the choice (1 vs 3 bytes): -2.996 < -1.435, so acc_norm
    # prefers the long one. (A longer choice with the higher total always wins acc_norm too, since
    # log-likelihoods are negative: length normalisation can only move the choice towards longer ones.)
    model = _fixed_model(bytes_tok, {" ": 0.5, "x": 0.1, "y": 0.3})
    items = [{"context": "Q: pick one\nA:", "choices": ["x", "yyy"], "gold": 1},
             {"context": "Q: pick again\nA:", "choices": ["x", "yyy"], "gold": 0}]
    lls = choice_loglikelihoods(model, bytes_tok, items)
    assert lls[0] == pytest.approx([math.log(0.5) + math.log(0.1), math.log(0.5) + 3 * math.log(0.3)], rel=1e-5)
    result = multiple_choice(model, bytes_tok, items)
    assert (result["acc"], result["acc_norm"], result["n"]) == (0.5, 0.5, 2)
    assert [s["pred"] for s in result["samples"]] == [0, 0]
    assert [s["pred_norm"] for s in result["samples"]] == [1, 1]


def test_both_metrics_agree_when_the_long_choice_is_likely(bytes_tok):
    model = _fixed_model(bytes_tok, {" ": 0.05, "x": 0.01, "y": 0.9})
    result = multiple_choice(model, bytes_tok, [{"context": "Q:", "choices": ["x", "yyy"], "gold": 1}])
    assert (result["acc"], result["acc_norm"]) == (1.0, 1.0)


def test_encode_pair_moves_trailing_space_to_the_continuation(bpe_tok):
    context_ids, cont_ids = encode_pair(bpe_tok, "The town is ", "Brightwater")
    head = bpe_tok.encode_ordinary("The town is")
    assert context_ids == head
    assert cont_ids == bpe_tok.encode_ordinary("The town is Brightwater")[len(head):]
    assert bpe_tok.decode(cont_ids) == " Brightwater"


def test_batched_scores_equal_one_forward_per_choice(bpe_tok):
    model = tiny_transformer(bpe_tok.vocab_size)
    items = [{"context": "Ana lives in", "choices": ["Brightwater", "the old town by the river", "Osk"], "gold": 0},
             {"context": "What is 2 + 2? ", "choices": ["4", "five"], "gold": 0}]
    bos = bpe_tok.special_tokens["<|bos|>"]
    lls = choice_loglikelihoods(model, bpe_tok, items, batch_size=2)
    with torch.no_grad():
        for item, item_lls in zip(items, lls):
            for choice, ll in zip(item["choices"], item_lls):
                ctx, cont = encode_pair(bpe_tok, item["context"], " " + choice)
                seq = torch.tensor([[bos, *ctx, *cont]])
                logprobs = torch.log_softmax(model(seq[:, :-1])[0].double(), -1)
                want = sum(logprobs[len(ctx) + j, t].item() for j, t in enumerate(cont))
                assert ll == pytest.approx(want, abs=1e-4)


def test_bad_items_raise(bytes_tok):
    model = _fixed_model(bytes_tok, {})
    with pytest.raises(GenlabError, match="gold"):
        multiple_choice(model, bytes_tok, [{"context": "Q:", "choices": ["a"], "gold": 3}])
    with pytest.raises(GenlabError, match="at least one"):
        multiple_choice(model, bytes_tok, [])


def test_choice_items_from_qa():
    items = [{"messages": [{"role": "user", "content": f"Where does P{i} live?"}], "answer": f"Town{i % 5}",
              "kind": "qa", "detail": "town"} for i in range(10)]
    items.append({"messages": [{"role": "user", "content": "How old is P0?"}], "answer": "41", "detail": "age"})
    mc = choice_items_from_qa(items, n_choices=4, seed=1)
    assert len(mc) == 10  # the lone "age" item has no distractors of its kind
    for src, item in zip(items, mc):
        assert item["context"] == f"Q: {src['messages'][0]['content']}\nA:"
        assert item["choices"][item["gold"]] == src["answer"] and len(set(item["choices"])) == 4
        assert all(c.startswith("Town") for c in item["choices"])
    assert mc == choice_items_from_qa(items, n_choices=4, seed=1)
