"""A synthetic multi-step reasoning task with checkable answers and graded difficulty.

Chained modular arithmetic, evaluated left to right:

    question   a0 op1 d1 op2 d2 ... opk dk =        (op in {+, -, *}, digits mod M)
    reasoning  r1 r2 ... rk <eos>                   r_i = (r_{i-1} op_i d_i) mod M, r_0 = a0
    answer     r_k

For example with M = 7, ``3+4*2-5=`` is continued ``002``: (3+4) mod 7 = 0,
0*2 = 0, (0-5) mod 7 = 2; the model writes every intermediate result (a chain of
thought of k tokens) and the last one, 2, is the answer. A multiplier is never 0 and
M is prime by default (7), so every step is a bijection of Z_M and the final
answer is uniform on Z_M: guessing scores 1/M and no answer is a shortcut.

Difficulty is the number of steps k: an error at any step carries to the answer,
so a model with per-step accuracy s answers a k-step question right with
probability about s**k, and accuracy falls with k (graded difficulty).

Generation is deterministic given the seed (numpy ``default_rng``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError, check

OPS = ("+", "-", "*")
SPECIAL = ("<pad>", "<bos>", "<eos>", "=")

DIFFICULTY_BUCKETS = {"easy": (1, 3), "medium": (4, 6), "hard": (7, 99)}


def difficulty_of(steps: int) -> str:
    """The bucket name of a question with ``steps`` steps (easy 1-3, medium 4-6, hard 7+)."""
    for name, (lo, hi) in DIFFICULTY_BUCKETS.items():
        if lo <= steps <= hi:
            return name
    raise ValidationError(f"The number of steps must be at least 1; got {steps!r}.")


@dataclass(frozen=True)
class Question:
    """``start`` followed by ``steps`` operations ``(op, operand)``, modulo ``modulus``."""

    start: int
    ops: tuple[tuple[str, int], ...]
    modulus: int = 7

    @property
    def steps(self) -> int:
        return len(self.ops)

    @property
    def difficulty(self) -> str:
        return difficulty_of(self.steps)

    @property
    def text(self) -> str:
        return str(self.start) + "".join(f"{op}{d}" for op, d in self.ops)

    def intermediate(self) -> tuple[int, ...]:
        """r_1..r_k: the chain of results, the last one is the answer."""
        r, out = self.start, []
        for op, d in self.ops:
            if op == "+":
                r = (r + d) % self.modulus
            elif op == "-":
                r = (r - d) % self.modulus
            else:
                r = (r * d) % self.modulus
            out.append(r)
        return tuple(out)

    @property
    def answer(self) -> int:
        return self.intermediate()[-1]

    def to_dict(self) -> dict:
        return {"text": self.text, "modulus": self.modulus, "steps": self.steps,
                "difficulty": self.difficulty, "answer": self.answer}


def generate_questions(n: int, seed: int = 0, min_steps: int = 1, max_steps: int = 8,
                       modulus: int = 7) -> list[Question]:
    """``n`` questions with a number of steps uniform in [min_steps, max_steps]."""
    check(isinstance(n, (int, np.integer)) and n >= 0, "The 'n' parameter of generate_questions",
          "a non-negative integer", n)
    check(1 <= min_steps <= max_steps, "The step range [min_steps, max_steps]",
          "1 <= min_steps <= max_steps", (min_steps, max_steps))
    check(2 <= modulus <= 10, "The 'modulus' parameter", "in [2, 10] (one digit token per residue)",
          modulus)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(int(n)):
        k = int(rng.integers(min_steps, max_steps + 1))
        start = int(rng.integers(0, modulus))
        ops = []
        for _ in range(k):
            op = OPS[int(rng.integers(0, 3))]
            d = int(rng.integers(1, modulus)) if op == "*" else int(rng.integers(0, modulus))
            ops.append((op, d))
        out.append(Question(start, tuple(ops), modulus))
    return out


def parse_question(text: str, modulus: int = 7) -> Question:
    """Parse ``"3+4*2-5"`` (a trailing ``=`` is allowed) into a Question."""
    s = str(text).replace(" ", "").rstrip("=")
    if not re.fullmatch(rf"[0-{modulus - 1}]([+\-*][0-{modulus - 1}])+", s):
        raise ValidationError(
            f"The question must be a digit in [0, {modulus - 1}] followed by one or more "
            f"'+d', '-d' or '*d' steps with digits in [0, {modulus - 1}] (e.g. '3+4*2-5'); "
            f"got {text!r}."
        )
    ops = tuple((s[i], int(s[i + 1])) for i in range(1, len(s), 2))
    for op, d in ops:
        if op == "*" and d == 0:
            raise ValidationError(f"Multipliers must be non-zero (the task's steps are "
                                  f"bijections of Z_{modulus}); got '*0' in {text!r}.")
    return Question(int(s[0]), ops, modulus)


class Tokenizer:
    """Token ids: <pad>=0, <bos>=1, <eos>=2, '='=3, '+','-','*' = 4..6, digits 7..7+M-1."""

    def __init__(self, modulus: int = 7) -> None:
        self.modulus = modulus
        self.vocab = list(SPECIAL) + list(OPS) + [str(d) for d in range(modulus)]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.pad, self.bos, self.eos, self.eq = 0, 1, 2, 3
        self.digit0 = len(SPECIAL) + len(OPS)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def max_len(self, max_steps: int) -> int:
        """<bos> a0 (op d)*k = r*k <eos>."""
        return 3 * max_steps + 4

    def prompt(self, q: Question) -> list[int]:
        ids = [self.bos, self.digit0 + q.start]
        for op, d in q.ops:
            ids += [self.index[op], self.digit0 + d]
        return ids + [self.eq]

    def target(self, q: Question) -> list[int]:
        return [self.digit0 + r for r in q.intermediate()] + [self.eos]

    def answer_of(self, generated: list[int] | np.ndarray, steps: int) -> int:
        """The answer in a generated continuation, or -1 if it is malformed.

        Well-formed means ``steps`` digit tokens then <eos>; the answer is the last digit.
        """
        g = [int(t) for t in generated]
        if len(g) < steps + 1 or g[steps] != self.eos:
            return -1
        digits = g[:steps]
        if not all(self.digit0 <= t < self.digit0 + self.modulus for t in digits):
            return -1
        return digits[-1] - self.digit0

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] if self.vocab[int(i)] not in SPECIAL[:3] else ""
                       for i in ids)
