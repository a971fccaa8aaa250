"""Read and write Hugging Face `tokenizer.json` files for byte-level BPE tokenizers.

Handbook III (tokenization). The format is the one HF `tokenizers` serializes: a `model` of type
BPE (`vocab`: token string -> id, `merges` in rank order), tokens spelled in GPT-2's
byte-to-unicode alphabet, a pre-tokenizer (a regex `Split` then `ByteLevel`, as Llama 3 / Qwen2
ship it, or GPT-2's plain `ByteLevel` with its built-in regex) and `added_tokens` for specials.
genlab writes files that HF `tokenizers` and transformers load unchanged, and reads the files
they write (tests/tokenizers/test_hf_parity.py checks both directions).

    python -c "from genlab.tokenizers import BPETokenizer as T; T.train('hello world ' * 9, 270).save('/tmp/tok'); print(T.load('/tmp/tok'))"
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genlab.atomic import write_text
from genlab.errors import TokenizerError
from genlab.tokenizers.bpe_train import Merge
from genlab.tokenizers.pretokenize import GPT2_PATTERN, bytes_to_token_string, token_string_to_bytes

if TYPE_CHECKING:
    from genlab.tokenizers.bpe import BPETokenizer

FILE_NAME = "tokenizer.json"
_UNICODE_NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")


def _resolve_file(path: str | os.PathLike, for_writing: bool) -> Path:
    path = Path(path)
    if path.suffix == ".json" and not path.is_dir():
        return path
    if for_writing:
        path.mkdir(parents=True, exist_ok=True)
    return path / FILE_NAME


def _byte_level(add_prefix_space: bool, use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def to_tokenizer_json(tokenizer: BPETokenizer) -> dict[str, Any]:
    """The `tokenizer.json` document for `tokenizer`."""
    if tokenizer.pattern == GPT2_PATTERN:
        pre_tokenizer = _byte_level(tokenizer.add_prefix_space, use_regex=True)
    elif tokenizer.add_prefix_space:
        raise TokenizerError("tokenizer.json cannot express add_prefix_space with a custom split pattern")
    else:
        split = {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False}
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [split, _byte_level(False, use_regex=False)]}
    special_ids = set(tokenizer.special_tokens.values())
    vocab = {
        bytes_to_token_string(tokenizer.token_bytes(i)): i
        for i in range(tokenizer.vocab_size)
        if i not in special_ids and tokenizer._token_bytes[i] is not None
    }
    added = [
        {"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for token, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    ]  # fmt: skip
    # Merges as "left right" strings: byte-level tokens never contain a real space (it is 'Ġ'),
    # and this older spelling is read by every tokenizers version, not only >= 0.20.
    merges = [f"{tokenizer.id_to_token(m.left)} {tokenizer.id_to_token(m.right)}" for m in tokenizer.merges]
    normalizer = {"type": tokenizer.normalization} if tokenizer.normalization else None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": _byte_level(True, use_regex=True),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tokenizer.ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }


def save_tokenizer_json(tokenizer: BPETokenizer, path: str | os.PathLike) -> Path:
    """Write `tokenizer.json` atomically (temp file + os.replace); `path` is a file or directory."""
    file = _resolve_file(path, for_writing=True)
    return write_text(file, json.dumps(to_tokenizer_json(tokenizer), ensure_ascii=False, indent=2))


def load_tokenizer_json(cls: type[BPETokenizer], path: str | os.PathLike) -> BPETokenizer:
    """Build a `cls` from a byte-level BPE `tokenizer.json`; TokenizerError names what is wrong."""
    file = _resolve_file(path, for_writing=False)
    if not file.is_file():
        raise TokenizerError(f"no tokenizer file at {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{file} is not valid JSON: {error}") from None
    try:
        return _from_document(cls, data)
    except TokenizerError as error:
        raise TokenizerError(f"{file}: {error}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise TokenizerError(f"{file}: malformed tokenizer.json ({type(error).__name__}: {error})") from None


def _from_document(cls: type[BPETokenizer], data: Any) -> BPETokenizer:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError("no 'model' object; not a tokenizer.json")
    model = data["model"]
    if model.get("type", "BPE") != "BPE" or "merges" not in model or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"model type {model.get('type')!r} is not a BPE model with vocab and merges")
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise TokenizerError("BPE options byte_fallback / subword prefix / word suffix are not byte-level BPE")
    if model.get("dropout"):
        raise TokenizerError("BPE dropout is not supported")
    pattern, add_prefix_space = _read_pre_tokenizer(data.get("pre_tokenizer"))
    normalization = _read_normalizer(data.get("normalizer"))

    # Every added token is atomic in HF (split out before pre-tokenization), so all of them,
    # "special" or not, become genlab special tokens.
    special_tokens = {entry["content"]: entry["id"] for entry in data.get("added_tokens") or []}
    all_ids = [*model["vocab"].values(), *special_tokens.values()]
    if not all(isinstance(i, int) and i >= 0 for i in all_ids):
        raise TokenizerError("token ids must be non-negative integers")
    size = 1 + max(all_ids, default=-1)
    token_bytes: list[bytes | None] = [None] * size
    for content, token_id in special_tokens.items():
        token_bytes[token_id] = content.encode("utf-8")
    special_ids = set(special_tokens.values())
    for token, token_id in model["vocab"].items():
        if token_id in special_ids:
            continue
        try:
            token_bytes[token_id] = token_string_to_bytes(token)
        except KeyError:
            raise TokenizerError(f"vocab token {token!r} is not byte-level (GPT-2 byte-to-unicode) text") from None
    merges = []
    vocab = model["vocab"]
    for rank, entry in enumerate(model["merges"]):
        left, right = entry.split(" ") if isinstance(entry, str) else entry
        ids = vocab.get(left), vocab.get(right), vocab.get(left + right)
        if None in ids:
            raise TokenizerError(f"merge #{rank} ({left!r}, {right!r}) refers to a token missing from the vocab")
        merges.append(Merge(*ids))
    return cls(
        token_bytes,
        merges,
        special_tokens,
        pattern,
        ignore_merges=bool(model.get("ignore_merges", False)),
        add_prefix_space=add_prefix_space,
        normalization=normalization,
    )


def _read_pre_tokenizer(spec: Any) -> tuple[str, bool]:
    """(split pattern, add_prefix_space) for the two byte-level layouts in use."""
    if isinstance(spec, dict) and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return GPT2_PATTERN, bool(spec.get("add_prefix_space", False))
    parts = spec.get("pretokenizers") if isinstance(spec, dict) and spec.get("type") == "Sequence" else None
    if parts and len(parts) == 2:
        split, byte_level = parts
        regex_pattern = split.get("pattern", {}).get("Regex") if split.get("type") == "Split" else None
        if (
            regex_pattern is not None
            and split.get("behavior") == "Isolated"
            and not split.get("invert", False)
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space", False)
        ):
            return regex_pattern, False
    raise TokenizerError(
        "unsupported pre_tokenizer (expected ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]): "
        + json.dumps(spec)[:200]
    )


def _read_normalizer(spec: Any) -> str | None:
    if spec is None:
        return None
    if isinstance(spec, dict) and spec.get("type") in _UNICODE_NORMALIZERS:
        return spec["type"]
    raise TokenizerError(f"unsupported normalizer: {json.dumps(spec)[:200]}")
