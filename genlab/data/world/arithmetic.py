"""Arithmetic problems with exact answers, and a fixed partition that keeps eval problems unseen.

Handbook IV/V. A problem (op, a, b) is *reserved for evaluation* when a stable hash of
(seed, op, sorted operands for + and *) falls in a tenth of the hash space; training generators
(SFT, preference pairs, verifiable prompts) refuse reserved problems and eval draws only from them,
so no module has to know what another one generated. Commutative twins share the decision.

    python -c "from genlab.data.world.arithmetic import *; import random; print(sample_problem(random.Random(0), 0, 'add2', for_eval=True))"
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

# kind -> (operator, range of a, range of b); subtraction keeps a >= b so answers are >= 0
# (the SQuAD normaliser strips a minus sign).
KINDS = {
    "add2": ("+", (10, 99), (10, 99)),
    "add3": ("+", (100, 999), (10, 999)),
    "sub2": ("-", (10, 99), (10, 99)),
    "sub3": ("-", (100, 999), (10, 999)),
    "mul": ("*", (2, 12), (2, 99)),
}
TRAIN_KINDS = ("add2", "add2", "add3", "sub2", "sub3", "mul")  # 2-digit addition twice as often

QUESTION_TEMPLATES = {
    "+": ("What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
          "Calculate {a} + {b}.", "{a} + {b} = ?"),
    "-": ("What is {a} - {b}?", "What is {a} minus {b}?", "Compute {a} - {b}.",
          "Subtract {b} from {a}.", "Calculate {a} - {b}."),
    "*": ("What is {a} * {b}?", "What is {a} times {b}?", "Multiply {a} by {b}.",
          "Compute {a} * {b}."),
}
EVAL_TEMPLATE = {"+": "What is {a} + {b}?", "-": "What is {a} - {b}?", "*": "What is {a} * {b}?"}


@dataclass(frozen=True)
class Problem:
    kind: str
    op: str
    a: int
    b: int

    @property
    def answer(self) -> int:
        return OPS[self.op](self.a, self.b)

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"


def is_reserved(seed: int, op: str, a: int, b: int) -> bool:
    """True for the tenth of problems that only evaluation may use.

    Sums with a multiple of ten in them are never reserved (an earlier worked-answer format wrote such
    sums as steps, so training had to see them); the rule stays so eval sets keep their problems.
    """
    if op == "+" and (a % 10 == 0 or b % 10 == 0):
        return False
    x, y = (min(a, b), max(a, b)) if op in "+*" else (a, b)
    return zlib.crc32(f"{seed}:{op}:{x}:{y}".encode()) % 10 == 0


def sample_problem(rng: random.Random, seed: int, kind: str, for_eval: bool) -> Problem:
    """A random problem of `kind`, from the eval-reserved part iff `for_eval`."""
    op, (lo_a, hi_a), (lo_b, hi_b) = KINDS[kind]
    while True:
        a, b = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
        if op == "-" and b > a:
            a, b = b, a
        if is_reserved(seed, op, a, b) == for_eval:
            return Problem(kind, op, a, b)


def question(rng: random.Random, problem: Problem) -> str:
    template = rng.choice(QUESTION_TEMPLATES[problem.op])
    return template.format(a=problem.a, b=problem.b)
