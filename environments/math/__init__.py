"""The "math" environment: one-step problems whose reward is whether the final answer is right."""

from __future__ import annotations

import glob
import random
import re
from pathlib import Path

from environments.base import EnvError, StepResult, Task, register
from environments.math import datasets
from environments.math.grading import grade
from environments.math.synthetic import SyntheticArithmetic

# Fed character by character to a tiny model, so every character costs; keep it under 60.
SYNTHETIC_INSTRUCTIONS = "Add the numbers. Answer as \\boxed{N}."
INSTRUCTIONS = (
    "Solve the problem. Reason step by step, then give the final answer in \\boxed{}, "
    "e.g. \\boxed{42}."
)


class MathEpisode:
    """One attempt at one problem: a single step graded against the gold answer."""

    def __init__(self, task: Task, timeout: float = 5.0):
        self.task = task
        self.timeout = timeout
        self.done = False

    def initial_observation(self) -> str:
        return ""

    def step(self, action: str) -> StepResult:
        if self.done:
            raise EnvError(f"episode for task {self.task.id} is over; start a new one")
        self.done = True
        gold = self.task.answer
        reward = 0.0 if gold is None else grade(action, gold, self.timeout)
        return StepResult("", reward, True, {"answer": gold})


@register("math")
class MathEnvironment:
    """Math problems from ``data``: ``synthetic`` (addition), ``gsm8k``, ``math500``, a local
    ``.jsonl``/``.parquet`` path (a ``{split}`` placeholder in it names one file per split), or
    ``hf:REPO[:CONFIG]``. ``question_field``/``answer_field`` map the columns of files and hub
    datasets; ``digits``, ``terms``, ``test_size`` and ``seed`` shape the synthetic problems;
    ``timeout`` bounds each math-verify check in seconds."""

    name = "math"
    multi_turn = False

    def __init__(
        self,
        data: str = "synthetic",
        question_field: str = "question",
        answer_field: str = "answer",
        digits: int = 1,
        terms: int = 4,
        test_size: int = 500,
        seed: int = 0,
        timeout: float = 5.0,
    ):
        self.data = data
        self.question_field = question_field
        self.answer_field = answer_field
        self.timeout = timeout
        self._synthetic = (
            SyntheticArithmetic(digits, terms, test_size, seed) if data == "synthetic" else None
        )
        self._splits: list[str] | None = None
        self._cache: dict[str, list[Task]] = {}

    def splits(self) -> list[str]:
        if self._splits is None:
            self._splits = self._find_splits()
        return list(self._splits)

    def _find_splits(self) -> list[str]:
        if self._synthetic is not None:
            return self._synthetic.splits()
        if self.data in datasets.named_datasets():
            return datasets.named_splits(self.data)
        if self.data.startswith("hf:"):
            return datasets.hf_splits(self.data)
        if "{split}" in self.data:
            head, tail = self.data.split("{split}", 1)
            pattern = re.escape(head) + "(.+)" + re.escape(tail)
            found = [
                re.fullmatch(pattern, path)
                for path in glob.glob(glob.escape(head) + "*" + glob.escape(tail))
            ]
            names = sorted(match.group(1) for match in found if match)
            if not names:
                raise EnvError(f"no data files match {self.data}")
            return names
        if not Path(self.data).is_file():
            raise EnvError(
                f"math data '{self.data}' is not synthetic, "
                f"{', '.join(datasets.named_datasets())}, hf:REPO[:CONFIG] or an existing file"
            )
        return ["train"]  # a lone file is one split

    def tasks(self, split: str) -> list[Task]:
        if split not in self._cache:
            valid = self.splits()
            if split not in valid:
                raise EnvError(
                    f"unknown split '{split}' for math data '{self.data}'; "
                    f"valid splits: {', '.join(valid)}"
                )
            self._cache[split] = self._load(split)
        return self._cache[split]

    def _load(self, split: str) -> list[Task]:
        if self._synthetic is not None:
            return self._synthetic.tasks(split)
        if self.data in datasets.named_datasets():
            return datasets.load_named(self.data, split)
        if self.data.startswith("hf:"):
            return datasets.load_hf(self.data, split, self.question_field, self.answer_field)
        path = self.data.replace("{split}", split)
        return datasets.load_file(path, self.question_field, self.answer_field)

    def start(self, task: Task) -> MathEpisode:
        return MathEpisode(task, self.timeout)

    def solver_instructions(self) -> str:
        return SYNTHETIC_INSTRUCTIONS if self._synthetic is not None else INSTRUCTIONS

    def demonstration(self, task: Task) -> str | None:
        if self._synthetic is not None:
            return self._synthetic.demonstration(task)
        if self.data == "gsm8k" and "solution" in task.metadata:
            return datasets.gsm8k_demonstration(task.metadata["solution"])
        return None

    def render_attempt(self, task: Task, attempt: str) -> str:
        """What the critic sees of an attempt: for a one-step problem, the response itself."""
        return attempt

    def critique_demonstration(self, task: Task, attempt: str) -> str | None:
        """An expert critique of ``attempt`` (synthetic problems only)."""
        if self._synthetic is None:
            return None
        return self._synthetic.critique(task, attempt)

    def flawed_attempt(self, task: Task, rng: random.Random) -> str | None:
        """A plausible wrong attempt to demonstrate critiques on (synthetic problems only)."""
        if self._synthetic is None:
            return None
        return self._synthetic.flawed_attempt(task, rng)


__all__ = ["MathEnvironment", "MathEpisode", "SyntheticArithmetic", "grade"]
