"""Parity with the oracles: HF `tokenizers` (both file directions) and tiktoken, on hard texts.

Handbook III (tokenization); oracle table in shared/GUIDE.md.
`python -m pytest -q tests/tokenizers/test_tokenizer_parity.py`
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from genlab.tokenizers import GPT2_PATTERN, GPT4_DIGITS_PATTERN, GPT4_PATTERN, BPETokenizer


def _hf_trained(text: str, pre_tokenizer, vocab_size: int = 800) -> Tokenizer:
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizer
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],  # HF puts specials first: byte ids are not 0..255
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([text], trainer)
    return hf


@pytest.fixture(scope="module")
def hf_of_genlab(trained_tokenizer, tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_file(str(trained_tokenizer.save(tmp_path_factory.mktemp("genlab"))))


def _assert_same(genlab: BPETokenizer, hf: Tokenizer, texts: list[str]) -> None:
    for text in texts:
        ours = genlab.encode(text, allowed_special="all")
        theirs = hf.encode(text, add_special_tokens=False).ids
        assert ours == theirs, f"encodings differ for {text[:60]!r}"
        assert genlab.decode(ours) == hf.decode(theirs, skip_special_tokens=False)


def test_hf_loads_genlab_file_and_encodes_identically(trained_tokenizer, hf_of_genlab, varied_texts):
    assert hf_of_genlab.get_vocab_size(with_added_tokens=True) == trained_tokenizer.vocab_size
    texts = [*varied_texts, "a<|endoftext|>b <|fim_prefix|> c<|endoftext|><|endoftext|>\n"]
    _assert_same(trained_tokenizer, hf_of_genlab, texts)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_hf_agrees_on_random_text(trained_tokenizer, hf_of_genlab, text):
    _assert_same(trained_tokenizer, hf_of_genlab, [text])


def test_digit_split_tokenizer_round_trips_through_hf(corpus_text, varied_texts, tmp_path):
    """The speedrun's digit-by-digit tokenizer: HF reads genlab's file and encodes the same ids."""
    genlab = BPETokenizer.train(corpus_text[:100_000], vocab_size=600, special_tokens=["<|endoftext|>"],
                                pattern=GPT4_DIGITS_PATTERN)
    hf = Tokenizer.from_file(str(genlab.save(tmp_path / "digits")))
    texts = [*varied_texts, "What is 47 + 385? 40 + 380 = 420, 7 + 5 = 12. Answer: 432<|endoftext|>"]
    _assert_same(genlab, hf, texts)
    assert all(len(genlab.decode([t])) == 1 for t in genlab.encode("1234567890"))  # one token per digit


def test_genlab_loads_hf_trained_tokenizers(corpus_text, varied_texts, tmp_path):
    # The Llama-3 / Qwen2 layout (Split regex + ByteLevel) and GPT-2's own (ByteLevel with regex,
    # with and without add_prefix_space).
    layouts = {
        "split": pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(GPT4_PATTERN), "isolated"), pre_tokenizers.ByteLevel(False, use_regex=False)]
        ),
        "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "gpt2_prefix": pre_tokenizers.ByteLevel(add_prefix_space=True),
    }
    for name, pre_tokenizer in layouts.items():
        hf = _hf_trained(corpus_text[:150_000], pre_tokenizer)
        hf.save(str(tmp_path / f"{name}.json"))
        genlab = BPETokenizer.load(tmp_path / f"{name}.json")
        assert genlab.pattern == (GPT4_PATTERN if name == "split" else GPT2_PATTERN)
        assert genlab.vocab_size == hf.get_vocab_size() and genlab.special_tokens == {"<|endoftext|>": 0}
        _assert_same(genlab, hf, [*varied_texts, "x<|endoftext|>y"])
        # ... and genlab's re-export of it is read back by HF identically.
        again = Tokenizer.from_file(str(genlab.save(tmp_path / f"{name}_again")))
        _assert_same(genlab, again, varied_texts)


def test_ignore_merges_and_list_style_merges_are_honoured(trained_tokenizer, tmp_path, varied_texts):
    doc = json.loads(trained_tokenizer.save(tmp_path / "a").read_text())
    doc["model"]["ignore_merges"] = True
    doc["model"]["merges"] = [merge.split(" ") for merge in doc["model"]["merges"]]  # tokenizers >= 0.20 style
    # A token whose standalone BPE differs from itself shows the flag mattering: add one.
    doc["model"]["vocab"]["ĠqzqzqzÃ©"] = max(doc["model"]["vocab"].values()) + 1
    doc["added_tokens"] = []
    (tmp_path / "b.json").write_text(json.dumps(doc))
    genlab, hf = BPETokenizer.load(tmp_path / "b.json"), Tokenizer.from_file(str(tmp_path / "b.json"))
    _assert_same(genlab, hf, [*varied_texts, " qzqzqzé qzqzqzé"])
    assert len(genlab.encode(" qzqzqzé")) == 1


def test_overlapping_special_tokens_match_longest_first(tmp_path):
    tok = BPETokenizer.train("hello there " * 30, vocab_size=280, special_tokens=["<|a|>", "<|a|>b"])
    hf = Tokenizer.from_file(str(tok.save(tmp_path)))
    _assert_same(tok, hf, ["x<|a|>by<|a|>c<|a|>"])


def test_tiktoken_from_genlab_ranks_encodes_identically(trained_tokenizer, varied_texts):
    encoding = trained_tokenizer.to_tiktoken()
    assert encoding.n_vocab == trained_tokenizer.vocab_size
    for text in varied_texts:
        assert trained_tokenizer.encode_ordinary(text) == encoding.encode_ordinary(text)
        assert trained_tokenizer.encode(text + "<|endoftext|>", allowed_special="all") == encoding.encode(
            text + "<|endoftext|>", allowed_special="all"
        )
    with pytest.raises(ValueError):  # tiktoken's own disallowed-special rule, mirrored by genlab
        encoding.encode("<|endoftext|>")


@pytest.fixture(scope="module")
def tiktoken_of_genlab(trained_tokenizer):
    return trained_tokenizer.to_tiktoken()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_tiktoken_agrees_on_random_text(trained_tokenizer, tiktoken_of_genlab, text):
    encoding = tiktoken_of_genlab
    assert trained_tokenizer.encode_ordinary(text) == encoding.encode_ordinary(text)


def test_tiktoken_from_hf_trained_gpt2_style_file(corpus_text, varied_texts, tmp_path):
    hf = _hf_trained(corpus_text[:100_000], pre_tokenizers.ByteLevel(add_prefix_space=False), vocab_size=600)
    hf.save(str(tmp_path / "t.json"))
    genlab = BPETokenizer.load(tmp_path / "t.json")
    encoding = genlab.to_tiktoken()
    for text in varied_texts:
        assert genlab.encode_ordinary(text) == encoding.encode_ordinary(text) == hf.encode(text).ids
