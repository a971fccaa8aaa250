"""genlab: the GenAI Handbook as one small, tested, CPU-first Python system.

Layers (data flows left to right; no module imports a layer to its right):
data -> tokenizers -> models -> train -> finetune -> inference -> serve; retrieval, agents, evals beside.
"""

__version__ = "0.1.0"
