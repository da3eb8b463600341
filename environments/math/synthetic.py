"""Seeded synthetic addition problems with fixed, disjoint train and test splits."""

from __future__ import annotations

import random
import re

from environments.base import EnvError, Task

_STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")

# Beyond this many problems the train split is a seeded sample rather than everything left over.
MAX_TRAIN = 20_000


class SyntheticArithmetic:
    """Sums of ``terms`` numbers of ``digits`` digits each (no leading zero), e.g. ``23+45``.

    The problem space is numbered in mixed radix; a generator seeded only by
    ``(digits, terms, test_size, seed)`` picks ``test_size`` problems for the test split and up to
    :data:`MAX_TRAIN` different ones for the train split, so both splits are fixed and disjoint.
    """

    def __init__(self, digits: int = 2, terms: int = 2, test_size: int = 500, seed: int = 0):
        if digits < 1 or terms < 2 or test_size < 1:
            raise EnvError("synthetic arithmetic needs digits >= 1, terms >= 2 and test_size >= 1")
        self.digits, self.terms, self.test_size, self.seed = digits, terms, test_size, seed
        self.name = f"synthetic-{digits}d{terms}t"
        self._low = 10 ** (digits - 1)
        self._base = 9 * self._low  # how many numbers have exactly `digits` digits
        self.size = self._base**terms
        if self.size <= test_size:
            raise EnvError(
                f"{self.name} has only {self.size} problems; test_size {test_size} leaves none "
                "to train on"
            )
        train_size = min(self.size - test_size, MAX_TRAIN)
        order = self._draw(test_size + train_size)
        self._splits = {
            "train": [self._task("train", i, n) for i, n in enumerate(order[test_size:])],
            "test": [self._task("test", i, n) for i, n in enumerate(order[:test_size])],
        }

    def _draw(self, count: int) -> list[int]:
        # A string seed hashes the same in every run (unlike hash()), so the splits never drift.
        rng = random.Random(f"synthetic-{self.digits}-{self.terms}-{self.test_size}-{self.seed}")
        if self.size <= 4 * count:
            everything = list(range(self.size))
            rng.shuffle(everything)
            return everything[:count]
        chosen: dict[int, None] = {}  # insertion-ordered set
        while len(chosen) < count:
            chosen[rng.randrange(self.size)] = None
        return list(chosen)

    def _task(self, split: str, index: int, number: int) -> Task:
        operands = []
        for _ in range(self.terms):
            number, digit = divmod(number, self._base)
            operands.append(self._low + digit)
        return Task(
            id=f"{self.name}-{split}-{index:05d}",
            prompt="+".join(map(str, operands)),
            answer=str(sum(operands)),
            metadata={"operands": operands},
        )

    def splits(self) -> list[str]:
        return ["train", "test"]

    def tasks(self, split: str) -> list[Task]:
        if split not in self._splits:
            raise EnvError(f"unknown split '{split}'; valid splits: train, test")
        return self._splits[split]

    @staticmethod
    def demonstration(task: Task) -> str:
        """The expert answer: the running sums written out (for 3+ terms), then the boxed total."""
        operands = task.metadata["operands"]
        total = operands[0]
        steps = []
        for operand in operands[1:]:
            steps.append(f"{total}+{operand}={total + operand}")
            total += operand
        box = f"\\boxed{{{total}}}"
        if len(steps) == 1:
            return box
        return ", ".join(steps) + ". " + box

    @staticmethod
    def critique(task: Task, attempt: str) -> str:
        """An expert critique: the first running sum the attempt gets wrong, written out right.

        It names something the solver could have produced itself (one correct step), so a
        revision that uses it writes the remaining steps out — the gap ICRL has to close.
        """
        operands = task.metadata["operands"]
        written = {(int(a), int(b)): int(c) for a, b, c in _STEP.findall(attempt)}
        total = operands[0]
        for operand in operands[1:]:
            if written.get((total, operand)) != total + operand:
                return f"{total}+{operand}={total + operand}"
            total += operand
        return f"\\boxed{{{total}}}"

    @staticmethod
    def flawed_attempt(task: Task, rng: random.Random) -> str:
        """A plausible wrong attempt (used to demonstrate critiques): half the time a direct
        answer that is a little off, otherwise running sums where one slips and the error
        carries through."""
        operands = task.metadata["operands"]
        if rng.random() < 0.5:
            return f"\\boxed{{{sum(operands) + rng.choice([-10, -2, -1, 1, 2, 10])}}}"
        slip_at = rng.randrange(len(operands) - 1)
        slip = rng.choice([-10, -2, -1, 1, 2, 10])
        total = operands[0]
        steps = []
        for i, operand in enumerate(operands[1:]):
            result = total + operand + (slip if i == slip_at else 0)
            steps.append(f"{total}+{operand}={result}")
            total = result
        box = f"\\boxed{{{total}}}"
        return box if len(steps) == 1 else ", ".join(steps) + ". " + box
