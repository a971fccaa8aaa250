"""The eval suite end to end: JSON-able results for chat and few-shot modes, and a pipeline check
(chat render -> packed SFT batches -> 80 steps -> exact match through the chat prompt).

    python -m pytest -q tests/evals/test_eval_suite.py
"""

import json

import pytest
import torch

from eval_helpers import tiny_transformer
from genlab.errors import ConfigError
from genlab.evals import EvalConfig, choice_items_from_qa, exact_match, run_eval_suite, write_results
from genlab.finetune.sft_data import pack, render_examples


@pytest.fixture(scope="module")
def world_data():
    from genlab.data.world import WorldConfig, build_world, eval_sets, pretraining_documents, sft_conversations

    world = build_world(WorldConfig(scale=0.05))
    sets = {name: items[:3] for name, items in eval_sets(world).items()
            if name in ("qa_new_phrasings", "addition_2digit", "json_valid")}
    return sets, pretraining_documents(world)[:4], sft_conversations(world)


@pytest.mark.parametrize("mode", ["chat", "few_shot"])
def test_suite_results_are_json(bpe_tok, world_data, tmp_path, mode):
    sets, docs, pool = world_data
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=256)
    choices = {"sums": choice_items_from_qa(sets["addition_2digit"], n_choices=2)}
    config = EvalConfig(mode=mode, max_tokens=6, max_samples=2)
    results = run_eval_suite(model, bpe_tok, sets, bpb_texts=docs, choice_sets=choices, few_shot_pool=pool,
                             config=config)
    assert results["mode"] == mode and set(results["tasks"]) == set(sets)
    assert set(results["accuracy"]) == set(sets) and all(0 <= a <= 1 for a in results["accuracy"].values())
    assert all(len(t["samples"]) == 2 and t["n"] == 3 for t in results["tasks"].values())
    assert 0 < results["bpb"]["bpb"] < 20 and results["bpb"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert set(results["multiple_choice"]["sums"]) >= {"acc", "acc_norm", "n"}
    path = write_results(results, tmp_path / "eval" / "results.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))


def test_suite_config_errors(bpe_tok, world_data):
    sets, _, _ = world_data
    with pytest.raises(ConfigError, match="few_shot_pool"):
        run_eval_suite(tiny_transformer(bpe_tok.vocab_size), bpe_tok, sets, config=EvalConfig(mode="few_shot"))
    with pytest.raises(ConfigError, match="mode"):
        EvalConfig(mode="zero_shot")


def test_sft_pipeline_learns_to_answer_and_stop(bpe_tok):
    """A tiny model trained on packed, loss-masked chats answers them exactly and ends with <|end|>."""
    chats = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in [("Where does Ana live?", "Brightwater"), ("What is 12 + 30?", "42"),
                          ("Who is Zed Quorn?", "I don't know."), ("What is Bo's pet?", "a tortoise")]]
    torch.manual_seed(0)
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=64).train()
    (batch,) = pack(render_examples(chats, bpe_tok), seq_len=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model.loss(batch.tokens, batch.targets, **batch.model_kwargs())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02
    items = [{**c, "messages": c["messages"][:1], "answer": c["messages"][1]["content"]} for c in chats]
    result = exact_match(model, bpe_tok, items, max_tokens=20)
    assert result["accuracy"] == 1.0
    assert [s["output"] for s in result["samples"]] == [i["answer"] for i in items]  # stopped at <|end|>
