"""genlab.models: the decoder-only transformer, its config, and Hugging Face import/export."""

from genlab.models.attention import KVCache
from genlab.models.config import ModelConfig
from genlab.models.transformer import Transformer

__all__ = ["KVCache", "ModelConfig", "Transformer"]
