"""genlab.tokenizers: byte-level BPE (handbook III, tokenization).

`BPETokenizer` trains, encodes and decodes; it reads and writes Hugging Face `tokenizer.json`
and converts to a `tiktoken.Encoding`. See bpe.py (the class), bpe_train.py (training),
pretokenize.py (regex split, byte alphabet) and hf_json.py (file format).

    python -c "from genlab.tokenizers import BPETokenizer; print(BPETokenizer.train('aaab' * 9, 260))"
"""

from genlab.tokenizers.bpe import BPETokenizer
from genlab.tokenizers.pretokenize import GPT2_PATTERN, GPT4_DIGITS_PATTERN, GPT4_PATTERN

__all__ = ["BPETokenizer", "GPT2_PATTERN", "GPT4_DIGITS_PATTERN", "GPT4_PATTERN"]
