"""BPETokenizer behaviour: round trips, tiktoken's special-token rules, vocab access, file errors.

Handbook III (tokenization). `python -m pytest -q tests/tokenizers/test_bpe_tokenizer.py`
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genlab.errors import TokenizerError
from genlab.tokenizers import BPETokenizer

# The trained_tokenizer fixture's special tokens (conftest.py), mixed into arbitrary text.
_SPECIAL_TEXT = st.lists(st.sampled_from(["<|endoftext|>", "<|fim_prefix|>"]) | st.text(max_size=8), max_size=12).map(
    "".join
)


def test_varied_texts_round_trip_and_compress(trained_tokenizer, varied_texts, corpus_text):
    for text in varied_texts:
        ids = trained_tokenizer.encode(text)
        assert trained_tokenizer.decode(ids) == text
        assert trained_tokenizer.decode_bytes(ids) == text.encode("utf-8")
    sample = corpus_text[:20_000]
    assert len(trained_tokenizer.encode(sample)) < 0.45 * len(sample.encode())  # real merges were learned


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_encode_round_trips_any_text(trained_tokenizer, text):
    assert trained_tokenizer.decode(trained_tokenizer.encode(text, disallowed_special=set())) == text


@settings(max_examples=150, deadline=None)
@given(_SPECIAL_TEXT)
def test_ordinary_encoding_never_produces_special_ids(trained_tokenizer, text):
    special_ids = set(trained_tokenizer.special_tokens.values())
    ordinary = trained_tokenizer.encode_ordinary(text)
    assert not special_ids & set(ordinary)
    assert trained_tokenizer.encode(text, disallowed_special=set()) == ordinary
    assert trained_tokenizer.decode(trained_tokenizer.encode(text, allowed_special="all")) == text


def test_allowed_disallowed_special_semantics(trained_tokenizer):
    tok = trained_tokenizer
    eot, fim = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|fim_prefix|>"]
    text = "a<|endoftext|>b<|fim_prefix|>"
    with pytest.raises(TokenizerError, match=r"<\|endoftext\|>"):
        tok.encode(text)  # default: every special is disallowed
    assert tok.encode(text, allowed_special="all") == [*tok.encode("a"), eot, *tok.encode("b"), fim]
    # Allowed one, disallowed (by "all") the other: raises naming the other.
    with pytest.raises(TokenizerError, match=r"<\|fim_prefix\|>"):
        tok.encode(text, allowed_special={"<|endoftext|>"})
    # Allowed one, the other neither allowed nor disallowed: encoded as ordinary text.
    mixed = tok.encode(text, allowed_special={"<|endoftext|>"}, disallowed_special=set())
    assert mixed == [*tok.encode("a"), eot, *tok.encode_ordinary("b<|fim_prefix|>")]
    assert fim not in mixed
    with pytest.raises(TokenizerError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    assert tok.encode_batch(["a", text], allowed_special="all") == [tok.encode("a"), tok.encode(text, "all")]


def test_add_special_tokens_appends_ids_and_is_idempotent():
    tok = BPETokenizer.train("hello world " * 20, vocab_size=270)
    size = tok.vocab_size
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == [size, size + 1]
    assert tok.add_special_tokens(["<|im_end|>"]) == [size + 1]
    assert tok.vocab_size == size + 2
    assert tok.encode("<|im_start|>hi", allowed_special="all")[0] == size
    assert tok.token_bytes(size) == b"<|im_start|>"
    with pytest.raises(TokenizerError):
        tok.add_special_tokens([""])


def test_token_strings_ids_and_bytes(trained_tokenizer):
    tok = trained_tokenizer
    assert tok.token_to_id("Ġ") == ord(" ") and tok.id_to_token(ord("\n")) == "Ċ"
    for token_id in range(0, tok.vocab_size, 37):
        assert tok.token_to_id(tok.id_to_token(token_id)) == token_id
    assert tok.token_to_id("<|endoftext|>") == tok.special_tokens["<|endoftext|>"]
    assert tok.token_to_id("definitely not a token") is None
    assert tok.token_bytes(tok.merges[0].new_id) == tok.token_bytes(tok.merges[0].left) + tok.token_bytes(
        tok.merges[0].right
    )


def test_decode_replaces_broken_utf8_and_rejects_unknown_ids(trained_tokenizer):
    tok = trained_tokenizer
    ids = tok.encode("é")  # two bytes, maybe two tokens
    assert tok.decode_bytes([0xC3]) == b"\xc3" and tok.decode([0xC3]) == "\ufffd"
    assert tok.decode(ids) == "é"
    for bad in (tok.vocab_size, -1):
        with pytest.raises(TokenizerError, match=f"unknown token id {bad}"):
            tok.decode([1, bad])


def test_lone_surrogates_are_replaced_like_tiktoken(trained_tokenizer):
    assert trained_tokenizer.decode(trained_tokenizer.encode("a\ud800b")) == "a\ufffdb"


def test_save_load_round_trip(trained_tokenizer, tmp_path, varied_texts):
    file = trained_tokenizer.save(tmp_path / "model")
    assert file == tmp_path / "model" / "tokenizer.json"
    loaded = BPETokenizer.load(tmp_path / "model")
    assert loaded.merges == trained_tokenizer.merges and loaded.special_tokens == trained_tokenizer.special_tokens
    for text in varied_texts:
        assert loaded.encode(text, "all") == trained_tokenizer.encode(text, "all")
    assert trained_tokenizer.save(tmp_path / "direct.json") == tmp_path / "direct.json"
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write left no temp files


def test_missing_and_corrupt_files_raise_clear_errors(trained_tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "nowhere")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": {')
    with pytest.raises(TokenizerError, match="not valid JSON"):
        BPETokenizer.load(bad)
    good = json.loads(trained_tokenizer.save(tmp_path / "good").read_text())

    def broken(change) -> str:
        doc = json.loads(json.dumps(good))
        change(doc)
        (tmp_path / "x.json").write_text(json.dumps(doc))
        with pytest.raises(TokenizerError) as error:
            BPETokenizer.load(tmp_path / "x.json")
        return str(error.value)

    assert "x.json" in broken(lambda d: d.pop("model"))
    assert "not a BPE model" in broken(lambda d: d["model"].update(type="WordPiece"))
    assert "missing from the vocab" in broken(lambda d: d["model"]["merges"].append("zzz qqq"))
    assert "no token for byte" in broken(lambda d: d["model"]["vocab"].pop("Ā"))  # byte 0, in no merge
    assert "not byte-level" in broken(lambda d: d["model"]["vocab"].update({"a b": 5000}))
    assert "unsupported pre_tokenizer" in broken(lambda d: d.update(pre_tokenizer={"type": "Whitespace"}))
    assert "malformed" in broken(lambda d: d["model"].update(merges=[1, 2]))
