"""Generative exact match: greedy answers, normalised, compared with the reference answer.

Handbook V (benchmarks). lm-evaluation-harness's `generate_until` tasks: render a prompt, decode
greedily until a stop, score the output with a normalised exact match (here SQuAD's normaliser,
`genlab.data.world.normalize_answer`) or a task checker (JSON items: `json_item_ok`).

Two prompt formats:
- `ChatPrompt` (instruction-tuned models): `render_chat(item["messages"], add_generation_prompt=True)`;
  generation stops at `<|end|>`.
- `FewShotPrompt` (base models; Brown et al. 2020, "Language Models are Few-Shot Learners"):
  k solved examples from a pool, then the question, as plain text after `<|bos|>`:
  "Q: ...\\nA: ...\\n\\nQ: ...\\nA:"; generation stops at "\\n" (or `<|bos|>`, a new document).
  Shots come from a seeded draw (shared by all items by default), never the item's own question;
  the oldest shots are dropped if the prompt would not leave `max_tokens` room in the context.
Generation prefills each prompt once into the KV cache and decodes greedily; prompts of equal
length decode together (`genlab.evals.greedy`: the cache has no left padding), batch_size=1 runs
`genlab.inference.generate` one item at a time (the reference; tests hold the two equal).

    python -m pytest -q tests/evals/test_exact_match.py
"""

from __future__ import annotations

import copy
import random
import zlib
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

from genlab.data.chat import render_chat
from genlab.data.world.evalsets import json_item_ok, normalize_answer
from genlab.data.world.worked import final_answer
from genlab.errors import ConfigError
from genlab.evals.common import answer_of, bos_id_of, eval_mode, question_of, stop_ids_of, token_bytes_fn
from genlab.evals.greedy import greedy_batched
from genlab.inference.generate import generate
from genlab.inference.sampling import SamplingParams

Checker = Callable[[str, Mapping], bool]
DEFAULT_CHECKERS: dict[str, Checker] = {"json_valid": json_item_ok}


class PromptFormat:
    """Renders an item as prompt ids; `stop` are stop strings for its generations."""

    stop: list[str] = []

    def render(self, item: Mapping, budget: int | None = None) -> list[int]:
        raise NotImplementedError


class ChatPrompt(PromptFormat):
    """The chat format with the assistant prompt; the model ends its reply with `<|end|>`."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.stop = []

    def render(self, item: Mapping, budget: int | None = None) -> list[int]:
        return render_chat(item["messages"], self.tokenizer, add_generation_prompt=True)[0]


class FewShotPrompt(PromptFormat):
    """k solved examples, then the question, as "Q: ...\\nA: ..." plain text (base models).

    shared_shots (default): one seeded draw of shots serves every item (an item never gets its own
    question as a shot: the next drawn example replaces it), so prompts differ only in the question
    and equal-length prompts batch well. shared_shots=False draws shots per item, as
    lm-evaluation-harness does (seeded by the question, so still deterministic).
    """

    def __init__(self, tokenizer, pool: Sequence[Mapping], k: int = 3, seed: int = 0,
                 bos_id: int | None = None, shared_shots: bool = True) -> None:
        if k < 0:
            raise ConfigError(f"few-shot k must be >= 0, got {k}")
        # Single-turn solved examples only: (question, answer) pairs.
        self.shots = [(question_of(p), answer_of(p)) for p in pool
                      if sum(m.get("role") == "user" for m in p.get("messages", [])) == 1]
        if k and len(self.shots) < k + 1:
            raise ConfigError(f"few-shot pool has {len(self.shots)} single-turn examples; need more than k={k}")
        self.tokenizer, self.k, self.seed, self.shared_shots = tokenizer, k, seed, shared_shots
        self.bos = bos_id_of(tokenizer, bos_id)
        self.stop = ["\n"]
        self._shared = random.Random(seed).sample(self.shots, min(len(self.shots), k + 1))

    def text(self, item: Mapping, n_shots: int | None = None) -> str:
        question = question_of(item)
        drawn = self._shared
        if not self.shared_shots:
            rng = random.Random(zlib.crc32(f"{self.seed}:{question}".encode()))
            drawn = rng.sample(self.shots, min(len(self.shots), self.k + 1))
        shots = [s for s in drawn if s[0] != question][:self.k]
        keep = self.k if n_shots is None else n_shots
        shots = shots[max(0, len(shots) - keep):] if keep else []  # drop the oldest shots first
        return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in shots) + f"Q: {question}\nA:"

    def render(self, item: Mapping, budget: int | None = None) -> list[int]:
        for n_shots in range(self.k, -1, -1):
            ids = [self.bos, *self.tokenizer.encode_ordinary(self.text(item, n_shots))]
            if budget is None or len(ids) <= budget:
                return ids
        return ids  # even zero shots do not fit: let generation report the context error


def _as_format(render_prompt: PromptFormat | Callable[[Mapping], list[int]] | None, tokenizer) -> PromptFormat:
    if render_prompt is None:
        return ChatPrompt(tokenizer)
    if isinstance(render_prompt, PromptFormat):
        return render_prompt

    class _Callable(PromptFormat):  # a plain function item -> ids, no stop strings
        def render(self, item: Mapping, budget: int | None = None) -> list[int]:
            return list(render_prompt(item))

    return _Callable()


def generate_answers(model, tokenizer, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[str] = (),
                     batch_size: int = 32, engine: bool = False) -> list[str]:
    """Greedy continuations (stripped) of `prompts`, stopping at `<|end|>`/`<|bos|>` or a stop string.

    batch_size 1 runs `genlab.inference.generate` per prompt (the reference); larger sizes decode
    equal-length prompts together (`greedy_batched`), with the same results. engine=True decodes
    through the paged engine instead (`engine_answers`; batch_size is then ignored).
    """
    token_bytes, eos_ids = token_bytes_fn(tokenizer), stop_ids_of(tokenizer)
    if engine:
        return [t.strip() for t in engine_answers(model, tokenizer, prompts, max_tokens, stop, eos_ids)]
    with eval_mode(model):
        if batch_size == 1:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=list(stop))
            texts = [generate(model, p, params, token_bytes, eos_ids).text for p in prompts]
        else:
            texts = greedy_batched(model, prompts, max_tokens, token_bytes, eos_ids, stop, batch_size)
    return [t.strip() for t in texts]


def engine_answers(model, tokenizer, prompts: Sequence[list[int]], max_tokens: int, stop: Sequence[str],
                   eos_ids: Iterable[int]) -> list[str]:
    """Greedy continuations from `genlab.inference.engine.LLMEngine` run on a copy of `model`.

    Continuous batching takes prompts of any length together, and the prefix cache prefills the shots a
    few-shot prompt set shares once: the base model's 1,000 three-shot prompts of the speedrun (39
    lengths) took 11.8 s instead of 37.0 s with `greedy_batched`, with the same 1,000 outputs. The copy
    keeps the caller's model as it was (the engine re-lays out Linear weights for decoding and sets eval
    mode), so a model between training steps can be scored too.
    """
    from genlab.inference.engine import LLMEngine  # the engine pulls in numba kernels: only when asked for

    runner = LLMEngine(copy.deepcopy(model), tokenizer, stop_token_ids=sorted(set(eos_ids)))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=list(stop))
    return [result.text for result in runner.generate([list(p) for p in prompts], params)]


def exact_match(model, tokenizer, items: Sequence[Mapping], render_prompt=None, max_tokens: int = 32,
                normalize: Callable[[str], str] = normalize_answer,
                checkers: Mapping[str, Checker] | None = None, max_samples: int | None = None,
                batch_size: int = 32, extract: Callable[[str], str] = final_answer,
                engine: bool = False) -> dict[str, Any]:
    """Greedy-generate an answer per item and score it.

    render_prompt: a PromptFormat (ChatPrompt, FewShotPrompt), a function item -> prompt ids, or
    None for ChatPrompt. An item is correct when normalize(extract(output)) == normalize(answer)
    (extract: by default the text after the last "Answer:", genlab.data.world.worked), or, if
    checkers has an entry for item["kind"], when checker(output, item) is true (default: JSON
    items are checked with `json_item_ok`; pass {} to score them by exact match too).
    batch_size: prompts decoded together; engine: decode with the paged engine (see `generate_answers`).
    Returns {"accuracy", "n", "correct", "by_detail", "samples"} (samples: the first
    `max_samples` items, all when None), JSON-able.
    """
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    fmt = _as_format(render_prompt, tokenizer)
    checkers = DEFAULT_CHECKERS if checkers is None else checkers
    budget = model.config.max_seq_len - max_tokens
    prompts = [fmt.render(item, budget) for item in items]
    outputs = generate_answers(model, tokenizer, prompts, max_tokens, fmt.stop, batch_size, engine)
    n_correct = 0
    per_detail: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    samples = []
    for index, (item, output) in enumerate(zip(items, outputs)):
        answer = answer_of(item)
        checker = checkers.get(item.get("kind", ""))
        correct = bool(checker(output, item)) if checker else normalize(extract(output)) == normalize(answer)
        n_correct += correct
        detail = per_detail[str(item.get("detail", item.get("kind", "")))]
        detail[0] += correct
        detail[1] += 1
        if max_samples is None or index < max_samples:
            samples.append({"question": question_of(item), "answer": answer, "output": output,
                            "correct": correct, "kind": item.get("kind"), "detail": item.get("detail")})
    n = len(items)
    return {"accuracy": n_correct / n if n else 0.0, "n": n, "correct": n_correct,
            "by_detail": {k: v[0] / v[1] for k, v in sorted(per_detail.items())}, "samples": samples}


def few_shot_exact_match(model, tokenizer, items: Sequence[Mapping], pool: Sequence[Mapping], k: int = 3,
                         max_tokens: int = 32, seed: int = 0, shared_shots: bool = True, **kwargs) -> dict[str, Any]:
    """`exact_match` with a k-shot plain-text prompt from `pool` (base models)."""
    fmt = FewShotPrompt(tokenizer, pool, k, seed, shared_shots=shared_shots)
    return exact_match(model, tokenizer, items, fmt, max_tokens, **kwargs)
