"""Log-likelihood multiple choice: pick the choice the model finds most likely after the context.

Handbook V (benchmarks). Conventions of Gao et al., lm-evaluation-harness (`multiple_choice` tasks
such as HellaSwag, ARC, PIQA):
- each choice is scored as the continuation `target_delimiter + choice` of the context; the sum
  of its token log-probabilities is its log-likelihood;
- trailing spaces of the context move to the continuation, and the continuation's tokens are
  those of encode(context + continuation) after the tokens of encode(context) (`_encode_pair`);
- `acc`: argmax of the log-likelihood is the gold index;
- `acc_norm`: argmax of log-likelihood / length of the choice (without the delimiter), which
  removes the bias towards short choices. lm-evaluation-harness divides by `len(choice)` in
  characters; genlab uses UTF-8 bytes by default (`length_unit="chars"` for the harness's exact
  rule; identical for ASCII).
Every sequence starts with `<|bos|>` (the harness uses the model's BOS/EOT as context prefix).

Items: {"context": str, "choices": [str, ...], "gold": int}.

    python -m pytest -q tests/evals/test_multiple_choice.py
"""

from __future__ import annotations

import random
from typing import Literal, Mapping, Sequence

from genlab.errors import GenlabError
from genlab.evals.common import IGNORE_INDEX, answer_of, bos_id_of, eval_mode, question_of, score_windows


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `_encode_pair`: (context ids, continuation ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode_ordinary(context + continuation)
    context_ids = tokenizer.encode_ordinary(context)
    return context_ids, whole[len(context_ids):]


def _check_item(i: int, item: Mapping) -> None:
    choices, gold = item.get("choices"), item.get("gold")
    if not isinstance(item.get("context"), str) or not isinstance(choices, Sequence) or not choices:
        raise GenlabError(f"multiple-choice item {i} needs 'context' (str) and a non-empty 'choices' list")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise GenlabError(f"multiple-choice item {i}: gold={gold!r} is not an index into its {len(choices)} choices")


def choice_loglikelihoods(model, tokenizer, items: Sequence[Mapping], target_delimiter: str = " ",
                          batch_size: int = 16, bos_id: int | None = None) -> list[list[float]]:
    """Log-likelihood of every choice of every item (one forward row per choice, batched)."""
    bos = bos_id_of(tokenizer, bos_id)
    windows, owners = [], []
    for i, item in enumerate(items):
        _check_item(i, item)
        for choice in item["choices"]:
            context_ids, choice_ids = encode_pair(tokenizer, item["context"], target_delimiter + choice)
            if not choice_ids:
                raise GenlabError(f"multiple-choice item {i}: choice {choice!r} encodes to no tokens")
            sequence = [bos, *context_ids, *choice_ids]
            # Score only the choice's tokens: targets are -100 over the context.
            targets = [IGNORE_INDEX] * len(context_ids) + choice_ids
            windows.append((sequence[:-1], targets))
            owners.append(i)
    with eval_mode(model):
        scores = score_windows(model, windows, batch_size)
    out: list[list[float]] = [[] for _ in items]
    for i, lp in zip(owners, scores):
        out[i].append(float(lp.sum()))
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))  # first index wins a tie, as np.argmax


def multiple_choice(model, tokenizer, items: Sequence[Mapping], target_delimiter: str = " ",
                    batch_size: int = 16, length_unit: Literal["bytes", "chars"] = "bytes",
                    bos_id: int | None = None, keep_samples: bool = True) -> dict:
    """{"acc", "acc_norm", "n", "samples"} over `items` (accuracies as fractions)."""
    if not items:
        raise GenlabError("multiple_choice needs at least one item")
    lls = choice_loglikelihoods(model, tokenizer, items, target_delimiter, batch_size, bos_id)
    acc = acc_norm = 0
    samples = []
    for item, ll in zip(items, lls):
        lengths = [len(c.encode("utf-8")) if length_unit == "bytes" else len(c) for c in item["choices"]]
        pred = _argmax(ll)
        pred_norm = _argmax([v / max(n, 1) for v, n in zip(ll, lengths)])
        acc += pred == item["gold"]
        acc_norm += pred_norm == item["gold"]
        if keep_samples:
            samples.append({"context": item["context"], "gold": item["gold"], "pred": pred,
                            "pred_norm": pred_norm, "loglikelihoods": ll})
    result = {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "n": len(items)}
    if keep_samples:
        result["samples"] = samples
    return result


def choice_items_from_qa(items: Sequence[Mapping], n_choices: int = 4, seed: int = 0) -> list[dict]:
    """Turn question/answer eval items into multiple-choice items ("Q: ...\\nA:" + choices).

    Distractors are other items' answers with the same "detail" (the same attribute, e.g. a town
    for a town question), so every choice is plausible in form. Items whose group has too few
    distinct answers are skipped. The gold position is drawn with a seeded RNG.
    """
    if n_choices < 2:
        raise GenlabError(f"n_choices must be >= 2, got {n_choices}")
    groups: dict[str, list[str]] = {}
    for item in items:
        answers = groups.setdefault(str(item.get("detail", item.get("kind", ""))), [])
        if answer_of(item) not in answers:
            answers.append(answer_of(item))
    rng = random.Random(seed)
    out = []
    for item in items:
        gold_answer = answer_of(item)
        others = [a for a in groups[str(item.get("detail", item.get("kind", "")))] if a != gold_answer]
        if len(others) < n_choices - 1:
            continue
        choices = rng.sample(others, n_choices - 1)
        gold = rng.randrange(n_choices)
        choices.insert(gold, gold_answer)
        out.append({"context": f"Q: {question_of(item)}\nA:", "choices": choices, "gold": gold,
                    "kind": item.get("kind"), "detail": item.get("detail")})
    return out
