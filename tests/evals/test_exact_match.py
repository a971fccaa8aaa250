"""Generative exact match: normalisation, JSON checker, chat and few-shot prompts, stops, and
agreement with a naive greedy loop on a real genlab Transformer.

    python -m pytest -q tests/evals/test_exact_match.py
"""

import json

import pytest
import torch

from eval_helpers import ScriptedModel, tiny_transformer
from genlab.data.chat import render_chat
from genlab.evals.generative import ChatPrompt, FewShotPrompt, exact_match, few_shot_exact_match


def _item(question, answer, kind="qa", **extra):
    return {"messages": [{"role": "user", "content": question}], "answer": answer, "kind": kind, **extra}


def _scripted(tok, outputs: list[str], max_seq_len: int = 256) -> ScriptedModel:
    return ScriptedModel(tok.vocab_size, [tok.encode_ordinary(o) for o in outputs], tok.special_tokens["<|end|>"],
                         max_seq_len=max_seq_len)


def test_chat_exact_match_with_squad_normalisation(bytes_tok):
    items = [_item("Where does Ana live?", "Paris"), _item("Where does Bo live?", "Lyon"),
             _item("Who is Zed?", "I don't know.", kind="idk"), _item("What is 40 + 2?", "42")]
    model = _scripted(bytes_tok, [" The Paris.", "Paris", "i dont KNOW", "42\n\n"])
    result = exact_match(model, bytes_tok, items, max_tokens=16)
    assert (result["accuracy"], result["n"], result["correct"]) == (0.75, 4, 3)
    assert [s["correct"] for s in result["samples"]] == [True, False, True, True]
    assert [s["output"] for s in result["samples"]] == ["The Paris.", "Paris", "i dont KNOW", "42"]
    # The prompt is the chat rendering with the assistant prompt; <|end|> ended each answer.
    assert model.prompts == [render_chat(i["messages"], bytes_tok, add_generation_prompt=True)[0] for i in items]
    json.dumps(result, allow_nan=False)


def test_custom_normaliser_and_max_samples(bytes_tok):
    items = [_item("Where?", "Paris"), _item("Where?", "Paris")]
    result = exact_match(_scripted(bytes_tok, ["the Paris"]), bytes_tok, items, normalize=str.strip, max_samples=1)
    assert result["accuracy"] == 0.0 and len(result["samples"]) == 1


def test_json_items_use_the_checker(bytes_tok):
    item = _item("Describe Ana as JSON with keys name and age.", '{"name": "Ana", "age": 41}', kind="json_valid",
                 keys=["name", "age"])
    outputs = ['{"name": "Ana", "age": 40}', '{"name": "Ana"}', "name: Ana, age: 41"]
    result = exact_match(_scripted(bytes_tok, outputs), bytes_tok, [item] * 3)
    assert [s["correct"] for s in result["samples"]] == [True, False, False]  # valid JSON, exact keys
    strict = exact_match(_scripted(bytes_tok, outputs), bytes_tok, [item] * 3, checkers={})
    # SQuAD normalisation drops punctuation: by exact match the wrong age fails and the non-JSON
    # text with the right words passes, which is why JSON items need the checker.
    assert [s["correct"] for s in strict["samples"]] == [False, False, True]


def test_few_shot_prompt_format_and_newline_stop(bytes_tok):
    pool = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": str(2 * i)}]} for i in range(1, 5)]
    pool.append({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                              {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})
    fmt = FewShotPrompt(bytes_tok, pool, k=2, seed=3)
    item = _item("What is 2 + 2?", "4")  # also in the pool: never its own shot
    text = fmt.text(item)
    shots = text.split("\n\n")
    assert len(shots) == 3 and shots[-1] == "Q: What is 2 + 2?\nA:"
    for shot in shots[:2]:
        q, a = shot.split("\nA: ")
        assert q.startswith("Q: What is ") and q != "Q: What is 2 + 2?" and a == str(2 * int(q.split()[3]))
    assert text == fmt.text(item)  # deterministic per item
    other = fmt.text(_item("What is 7 + 7?", "14"))
    assert other.split("\n\n")[:2] == shots[:2] or "What is 2 + 2?" in other  # shared shots
    per_item = FewShotPrompt(bytes_tok, pool, k=2, seed=3, shared_shots=False)
    assert per_item.text(item).endswith("Q: What is 2 + 2?\nA:") and per_item.text(item).count("Q: ") == 3
    assert "Q: What is 2 + 2?\nA: 4" not in per_item.text(item)
    model = _scripted(bytes_tok, [" 4\nQ: What is 9 + 9?\nA: 18"])
    result = few_shot_exact_match(model, bytes_tok, [item], pool, k=2, seed=3)
    assert result["accuracy"] == 1.0 and result["samples"][0]["output"] == "4"  # cut at "\n"
    assert model.prompts[0] == [bytes_tok.special_tokens["<|bos|>"], *bytes_tok.encode_ordinary(text)]


def test_few_shot_drops_shots_to_fit_the_context(bytes_tok):
    pool = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(6)]
    item = _item("Final question?", "yes")
    zero_shot = 1 + len("Q: Final question?\nA:")
    model = _scripted(bytes_tok, [" yes"], max_seq_len=zero_shot + 40 + 8)  # room for one 30-byte shot only
    result = few_shot_exact_match(model, bytes_tok, [item], pool, k=3, max_tokens=8)
    prompt = bytes_tok.decode(model.prompts[0][1:])
    assert prompt.count("Q: ") == 2 and len(model.prompts[0]) <= model.config.max_seq_len - 8
    assert result["accuracy"] == 1.0


def test_matches_naive_greedy_decoding_on_a_transformer(bpe_tok):
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=96, seed=1)
    items = [_item("Where does Ana live?", "x"), _item("What is 12 + 30?", "42")]
    result = exact_match(model, bpe_tok, items, ChatPrompt(bpe_tok), max_tokens=12)
    stops = {bpe_tok.special_tokens["<|end|>"], bpe_tok.special_tokens["<|bos|>"]}
    for item, sample in zip(items, result["samples"]):
        ids = render_chat(item["messages"], bpe_tok, add_generation_prompt=True)[0]
        out = []
        with torch.no_grad():
            for _ in range(12):  # full recompute every step: no cache
                token = int(model(torch.tensor([ids + out]))[0, -1].argmax())
                if token in stops:
                    break
                out.append(token)
        assert sample["output"] == bpe_tok.decode(out).strip()
        assert len(out) > 0


def test_bad_max_tokens(bytes_tok):
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError):
        exact_match(_scripted(bytes_tok, ["x"]), bytes_tok, [_item("q", "a")], max_tokens=0)


def test_batched_greedy_equals_one_at_a_time_generate(bpe_tok):
    from genlab.data.world import WorldConfig, build_world, eval_sets
    from genlab.evals.greedy import greedy_batched
    from genlab.inference.generate import generate
    from genlab.inference.sampling import SamplingParams

    sets = eval_sets(build_world(WorldConfig(scale=0.05)))
    items = sets["addition_2digit"][:6] + sets["qa_new_phrasings"][:6]  # many share a prompt length
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=160, seed=2)
    prompts = [ChatPrompt(bpe_tok).render(i) for i in items]
    assert len(set(map(len, prompts))) < len(prompts)  # some groups really hold several rows
    ends = [bpe_tok.special_tokens["<|end|>"], bpe_tok.special_tokens["<|bos|>"]]

    def reference(stops):
        params = SamplingParams(temperature=0.0, max_tokens=10, stop=stops)
        with torch.no_grad():
            return [generate(model, p, params, bpe_tok.token_bytes, ends).text for p in prompts]

    plain = reference([])
    # A stop string taken from the outputs themselves, so cutting is really exercised.
    stop = next(t[3:5] for t in plain if len(t) >= 5)
    with torch.no_grad():
        for stops in ([], [stop]):
            assert greedy_batched(model, prompts, 10, bpe_tok.token_bytes, ends, stops, batch_size=4) == \
                reference(stops)
    assert reference([stop]) != plain
    # exact_match's two paths (generate per item, batched) agree as well.
    one = exact_match(model, bpe_tok, items, max_tokens=10, batch_size=1)
    many = exact_match(model, bpe_tok, items, max_tokens=10, batch_size=5)
    assert [s["output"] for s in one["samples"]] == [s["output"] for s in many["samples"]]


def test_engine_path_equals_batched_and_leaves_the_model_as_it_was(bpe_tok):
    from genlab.data.world import WorldConfig, build_world, eval_sets
    from genlab.evals.generative import engine_answers, generate_answers

    sets = eval_sets(build_world(WorldConfig(scale=0.05)))
    items = sets["addition_2digit"][:8] + sets["qa_new_phrasings"][:8]
    model = tiny_transformer(bpe_tok.vocab_size, max_seq_len=160, seed=3)
    model.train()
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    ends = [bpe_tok.special_tokens["<|end|>"], bpe_tok.special_tokens["<|bos|>"]]
    prompts = [ChatPrompt(bpe_tok).render(i) for i in items]
    plain = generate_answers(model, bpe_tok, prompts, 12)
    stop = next(t[2:4] for t in plain if len(t) >= 4)
    for stops in ([], [stop]):
        assert generate_answers(model, bpe_tok, prompts, 12, stops, engine=True) == \
            generate_answers(model, bpe_tok, prompts, 12, stops, batch_size=4)
    assert engine_answers(model, bpe_tok, prompts, 12, [stop], ends) != engine_answers(model, bpe_tok, prompts, 12,
                                                                                       [], ends)
    # The engine ran on a copy: same values, same (row-major) layout, still in training mode.
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k][0]) and v.stride() == before[k][1]
    few = exact_match(model, bpe_tok, items, max_tokens=12, engine=True)
    assert few == exact_match(model, bpe_tok, items, max_tokens=12)
