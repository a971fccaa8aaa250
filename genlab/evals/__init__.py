"""genlab.evals: bits-per-byte, generative exact match, log-likelihood multiple choice, the suite.

Handbook V (benchmarks); conventions of Gao et al., lm-evaluation-harness.

    python -m pytest -q tests/evals
"""

from genlab.evals.generative import ChatPrompt, FewShotPrompt, exact_match, few_shot_exact_match
from genlab.evals.multiple_choice import choice_items_from_qa, multiple_choice
from genlab.evals.perplexity import TextScore, bits_per_byte, score_texts
from genlab.evals.suite import EvalConfig, run_eval_suite, write_results

__all__ = [
    "ChatPrompt", "EvalConfig", "FewShotPrompt", "TextScore", "bits_per_byte", "choice_items_from_qa",
    "exact_match", "few_shot_exact_match", "multiple_choice", "run_eval_suite", "score_texts", "write_results",
]
