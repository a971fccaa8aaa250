"""genlab.quant: weight quantization (NF4 with double quantization for QLoRA)."""
