"""Rollouts for RL on language models: batched sampling of completions, and their per-token log-probs.

Handbook IV (RLHF), V (sampling). Ouyang et al. 2022 / Shao et al. 2024 sample completions from the current
policy, score them, then re-score their tokens under the policy (and the reference) with a teacher-forced
forward pass: that pass, not the sampler, defines the log-probs the losses use, so sampling numerics (KV cache)
never leak into the gradient.

Prompts of equal length decode together in one KV cache (the cache has no left padding; see
genlab.evals.greedy). A completion ends with the first end id it samples, which is kept as its last token, so
the policy is credited (or blamed) for stopping; a completion that runs out of room has no end id.

    python -m pytest -q tests/finetune/test_grpo.py -k sample
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
from torch import nn

from genlab.data.chat import END, render_chat
from genlab.data.world.evalsets import normalize_answer
from genlab.data.world.worked import final_answer
from genlab.errors import ConfigError
from genlab.finetune.logprobs import logprobs_from_logits
from genlab.finetune.lora import adapters_disabled, lora_layers
from genlab.finetune.preference_data import pad_rows
from genlab.inference.generate import clip_max_tokens, length_groups

Tensor = torch.Tensor


@torch.no_grad()
def sample_group(model, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 end_ids: Iterable[int] = (), generator: torch.Generator | None = None) -> list[list[int]]:
    """One sampled completion per prompt; all prompts have the same length. temperature 0 = greedy."""
    length = len(prompts[0])
    if any(len(p) != length for p in prompts):
        raise ConfigError("sample_group needs prompts of equal length (the KV cache has no left padding)")
    steps = clip_max_tokens(length, max_new_tokens, model.config.max_seq_len)
    device = next(model.parameters()).device
    end = torch.tensor(sorted(set(end_ids)), dtype=torch.long)
    cache = model.new_cache(len(prompts), length + steps)
    logits = model(torch.tensor(prompts, dtype=torch.long, device=device), cache=cache)[:, -1].float()
    outputs: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for step in range(steps):
        if temperature == 0:
            tokens = logits.argmax(dim=-1).cpu()
        else:
            probs = torch.softmax(logits / temperature, dim=-1).cpu()
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        for row in (~done).nonzero().flatten().tolist():
            outputs[row].append(int(tokens[row]))
        if len(end):
            done |= torch.isin(tokens, end)
        if bool(done.all()) or step == steps - 1:
            break
        logits = model(tokens[:, None].to(device), cache=cache)[:, -1].float()
    return outputs


def sample_completions(model, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float = 1.0,
                       end_ids: Iterable[int] = (), generator: torch.Generator | None = None,
                       max_batch: int = 64) -> list[list[int]]:
    """A sampled completion for every prompt (any lengths), in input order; repeat a prompt for several samples.

    The model is put in eval mode for sampling and restored afterwards."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    end_ids = list(end_ids)
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for chunk in length_groups(prompts, max_batch, shortest_first=True):
            for i, completion in zip(chunk, sample_group(model, [prompts[i] for i in chunk], max_new_tokens,
                                                         temperature, end_ids, generator)):
                out[i] = completion
    finally:
        model.train(was_training)
    return out


@dataclass
class RolloutBatch:
    """Prompt + completion rows, right-padded; `mask` [N, T-1] marks completion tokens in per-token tensors
    (index t-1 holds token t, as genlab.finetune.logprobs)."""

    tokens: Tensor  # [N, T]
    completion_mask: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]

    @property
    def mask(self) -> Tensor:
        return self.completion_mask[:, 1:].float()


def rollout_batch(prompts: Sequence[list[int]], completions: Sequence[list[int]], pad_id: int) -> RolloutBatch:
    """Rows for the teacher-forced pass. An empty completion (no room) gets no scored token."""
    return RolloutBatch(*pad_rows(prompts, completions, pad_id))


def token_logprobs_of(model, batch: RolloutBatch) -> Tensor:
    """[N, T-1] log π(token t | < t) under `model`, zero outside the completion (with grad if enabled)."""
    logits = model(batch.tokens.to(next(model.parameters()).device))
    return logprobs_from_logits(logits, batch.tokens.to(logits.device), batch.completion_mask.to(logits.device)).per_token


# --- tasks: prompts plus a scorer ---------------------------------------------------------------------------

Scorer = Callable[[Sequence[int], Sequence[list[int]]], Tensor]  # (prompt indices, completions) -> rewards [N]


@dataclass
class RLTask:
    """What an RL trainer optimises: prompt ids, a scorer of sampled completions, the end and pad ids."""

    prompts: list[list[int]]
    score: Scorer
    end_ids: set[int]
    pad_id: int


def verifiable_reward(item: Mapping, text: str) -> float:
    """1.0 when the reply's final answer (after any "Answer:") equals item["answer"] after SQuAD
    normalisation (genlab.data.world), else 0.0."""
    return float(normalize_answer(final_answer(text)) == normalize_answer(str(item["answer"])))


def decode_completion(tokenizer, completion: Sequence[int], end_ids: set[int]) -> str:
    """Completion text without its end token, stripped (as the evals read replies)."""
    ids = list(completion[:-1]) if completion and completion[-1] in end_ids else list(completion)
    return tokenizer.decode(ids).strip()


def chat_task(tokenizer, items: Sequence[Mapping], reward_fn: Callable[[Mapping, str], float] = verifiable_reward,
              missing_end_penalty: float = 0.0) -> RLTask:
    """Chat prompts from items ({"messages", ...}, e.g. the world's verifiable prompts) scored by reward_fn(item, reply).

    `missing_end_penalty` is subtracted from completions that never emitted `<|end|>` (trl's missing_eos_penalty)."""
    end = tokenizer.special_tokens[END]
    prompts = [render_chat(item["messages"], tokenizer, add_generation_prompt=True)[0] for item in items]

    def score(indices: Sequence[int], completions: Sequence[list[int]]) -> Tensor:
        rewards = [reward_fn(items[i], decode_completion(tokenizer, c, {end})) for i, c in zip(indices, completions)]
        penalties = [missing_end_penalty * (not c or c[-1] != end) for c in completions]
        return torch.tensor(rewards, dtype=torch.float32) - torch.tensor(penalties, dtype=torch.float32)

    return RLTask(prompts, score, {end}, end)


@torch.no_grad()
def sampled_rewards(model, task: RLTask, samples_per_prompt: int = 4, max_new_tokens: int = 64,
                    temperature: float = 1.0, seed: int = 0) -> Tensor:
    """Per prompt of `task`, the mean score of `samples_per_prompt` completions sampled at `temperature` [P].

    With a 0/1 verifiable reward its mean is pass@1 estimated from k samples, as DeepSeek-R1 (2025) reports
    it: the success rate of the policy's own samples, which is what RL optimises (greedy reads only the mode).
    """
    if samples_per_prompt < 1:
        raise ConfigError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    indices = [i for i in range(len(task.prompts)) for _ in range(samples_per_prompt)]
    generator = torch.Generator().manual_seed(seed)
    completions = sample_completions(model, [task.prompts[i] for i in indices], max_new_tokens, temperature,
                                     task.end_ids, generator)
    return task.score(indices, completions).view(len(task.prompts), samples_per_prompt).mean(1)


class FrozenReference:
    """The reference policy of RLHF: a frozen copy of the starting policy (or the given `ref_model`), or, for a
    LoRA policy, the policy itself with its adapters switched off (mode "adapters"; "auto" picks it when the
    policy has LoRA layers). Call the reference model inside `context()`."""

    def __init__(self, policy: nn.Module, mode: str = "auto", ref_model: nn.Module | None = None) -> None:
        if mode not in ("auto", "copy", "adapters"):
            raise ConfigError(f"reference must be auto, copy or adapters, got {mode!r}")
        has_lora = bool(lora_layers(policy))
        if mode == "auto":
            mode = "adapters" if has_lora and ref_model is None else "copy"
        if mode == "adapters" and not has_lora:
            raise ConfigError("reference='adapters' needs a model with LoRA adapters")
        self.mode, self.policy = mode, policy
        self.model = policy if mode == "adapters" else (ref_model if ref_model is not None else copy.deepcopy(policy))
        if mode == "copy":
            self.model.requires_grad_(False).eval()

    def context(self) -> ContextManager:
        return adapters_disabled(self.policy) if self.mode == "adapters" else contextlib.nullcontext()

    @torch.no_grad()
    def token_logprobs(self, batch: RolloutBatch) -> Tensor:
        with self.context():
            return token_logprobs_of(self.model, batch)


@dataclass
class RLResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step, as written to metrics.jsonl
    steps: int = 0
    elapsed_s: float = 0.0
    stopped_early: bool = False
