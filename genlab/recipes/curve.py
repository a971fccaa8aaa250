"""Accuracy versus training time: probe the report card's sets while the model trains.

Handbook III (pretraining: what the model knows as a function of compute), V (evaluation). The
speedrun mixes chat conversations into pretraining, so the base model already answers in the chat
format; every `every` steps (and at the steps in `at`) this callback scores a small seeded sample of
each eval set with greedy decoding (the paged engine, on a copy of the model) and records the
accuracies against *training* seconds (the probe's own time is excluded, so the curve shows what the
training budget buys; an SFT curve continues pretraining's clock through `time_offset`). The points come from one
cosine-scheduled run, so a middle point is a partly-annealed model, not a shorter run's endpoint.

    python -m pytest -q tests/recipes/test_curve.py
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from genlab.evals.suite import EvalConfig, run_eval_suite


@dataclass
class AccuracyCurve:
    """A trainer callback: `curve(row)` after each step; `points` holds {"step", "train_seconds", task: acc}."""

    model: Any
    tokenizer: Any
    items: Mapping[str, Sequence[Mapping]]
    every: int  # probe every this many steps (0: only at `at`)
    phase: str = "pretrain"
    at: frozenset[int] = frozenset()  # further steps to probe at (e.g. the phase's last step)
    time_offset: float = 0.0  # training seconds spent before this phase (SFT continues pretraining's clock)
    max_tokens: int = 64  # room for a worked answer (genlab.data.world.worked)
    engine: bool = True  # decode with the paged engine (plain nn.Linear models; False for unmerged adapters)
    points: list[dict[str, Any]] = field(default_factory=list)
    probe_seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def __call__(self, row: Mapping[str, Any]) -> bool:
        step = int(row["step"])
        if (self.every > 0 and step % self.every == 0) or step in self.at:
            self.probe(step)
        return False  # never stops training

    def probe(self, step: int) -> dict[str, Any]:
        """Score the sets now; the model goes back to training mode afterwards if it was training."""
        began = time.perf_counter()
        was_training = self.model.training
        config = EvalConfig(mode="chat", max_tokens=self.max_tokens, engine=self.engine, max_samples=0)
        result = run_eval_suite(self.model, self.tokenizer, self.items, config=config)
        self.model.train(was_training)
        point = {"phase": self.phase, "step": step, **result["accuracy"],
                 "train_seconds": round(self.time_offset + began - self._start - self.probe_seconds, 1)}
        self.points.append(point)
        self.probe_seconds += time.perf_counter() - began
        return point
