"""The "household" environment: seeded ALFWorld-like text worlds with six kinds of chores."""

from __future__ import annotations

import random

from environments.base import EnvError, StepResult, Task, react_action, register
from environments.household import expert
from environments.household.catalog import TASK_TYPES
from environments.household.generate import (
    SPLITS,
    TaskSpec,
    build_splits,
    held_out,
    scene_for,
    split_summary,
    training_like,
)
from environments.household.world import Goal, World, render_list

INSTRUCTIONS = (
    "You are in a household. Each turn, reply with one line: 'Thought: <reasoning> Action: "
    "<command>', where the command is exactly one of the admissible commands."
)


def spec_of(task: Task) -> TaskSpec:
    fields = {k: task.metadata[k] for k in TaskSpec.__dataclass_fields__}
    return TaskSpec(**fields)


class HouseholdEpisode:
    """One attempt at one task: up to ``max_steps`` commands, reward 1.0 when the goal holds."""

    def __init__(self, task: Task, world: World, goal: Goal, max_steps: int):
        self.task, self.world, self.goal, self.max_steps = task, world, goal, max_steps
        self.steps = 0
        self.done = False

    def initial_observation(self) -> str:
        return self.world.intro()

    def admissible_commands(self) -> list[str]:
        return self.world.admissible()

    def step(self, action: str) -> StepResult:
        if self.done:
            raise EnvError(f"episode for task {self.task.id} is over; start a new one")
        observation = self.world.act(react_action(action))
        self.steps += 1
        won = self.world.satisfied(self.goal)
        self.done = won or self.steps >= self.max_steps
        info = {"admissible_commands": self.world.admissible(), "won": won, "steps": self.steps}
        return StepResult(observation, 1.0 if won else 0.0, self.done, info)


@register("household")
class HouseholdEnvironment:
    """ALFWorld's six task types in procedurally generated kitchens, bathrooms, bedrooms and
    living rooms. ``seed`` fixes the splits; ``max_steps`` caps an episode; ``version`` is
    "0.3.3" (``put O in/on R``) or "0.5" (``move O to R``); ``arrival`` keeps the
    "You arrive at …" prefix of "go to" feedback that the original AgentGym server strips;
    ``task_types`` keeps only tasks of those types (ids keep their place in the full split)."""

    name = "household"
    multi_turn = True

    def __init__(
        self,
        seed: int = 0,
        max_steps: int = 50,
        version: str = "0.3.3",
        arrival: bool = False,
        task_types: list[str] | None = None,
    ):
        if version not in ("0.3.3", "0.5"):
            raise EnvError(f"household version must be '0.3.3' or '0.5', not '{version}'")
        unknown = sorted(set(task_types or ()) - set(TASK_TYPES))
        if unknown:
            raise EnvError(
                f"unknown household task type(s) {', '.join(unknown)}; "
                f"choose from: {', '.join(TASK_TYPES)}"
            )
        self.seed, self.max_steps, self.version, self.arrival = seed, max_steps, version, arrival
        self.task_types = list(task_types) if task_types else None
        self._cache: dict[str, list[Task]] = {}

    def splits(self) -> list[str]:
        return list(SPLITS)

    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise EnvError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        if split not in self._cache:
            self._cache[split] = [
                self._task(split, i, spec)
                for i, spec in enumerate(build_splits(self.seed)[split])
                if self.task_types is None or spec.task_type in self.task_types
            ]
        return self._cache[split]

    def training_like(self, count: int, draw: int = 0) -> list[Task]:
        """``count`` tasks from the train split's distribution that are in no split (of this
        environment's task types), for warm starts that need more worlds than the train split
        holds; the evaluation splits stay unseen."""
        types = self.task_types or list(TASK_TYPES)
        specs = training_like(self.seed, count, types, draw)
        return [self._task(f"extra{draw}", i, spec) for i, spec in enumerate(specs)]

    def _task(self, split: str, index: int, spec: TaskSpec) -> Task:
        intro = self.world(spec).intro()
        prompt = f"{intro}\nYour task is to: {spec.goal_text}."
        return Task(f"household-{split}-{index:05d}", prompt, None, spec.to_dict())

    def world(self, spec: TaskSpec) -> World:
        """A fresh world in the task's initial state."""
        return World(scene_for(self.seed, spec), self.version, self.arrival)

    def start(self, task: Task) -> HouseholdEpisode:
        spec = spec_of(task)
        return HouseholdEpisode(task, self.world(spec), spec.goal, self.max_steps)

    def solver_instructions(self) -> str:
        return INSTRUCTIONS

    def expert_actions(self, task: Task) -> list[str]:
        """Commands that solve ``task`` (checked admissible as the planner goes)."""
        return [action for _, action in self._plan(task)]

    def _plan(self, task: Task) -> list[expert.Step]:
        spec = spec_of(task)
        return expert.plan(self.world(spec), spec.goal)

    def demonstration(self, task: Task) -> str:
        return expert.render_steps(self._plan(task))

    def render_attempt(self, task: Task, attempt: str) -> str:
        """The attempt's commands replayed from the start: "> command" then the observation."""
        spec = spec_of(task)
        actions = expert.parse_actions(attempt)
        return expert.transcript(self.world(spec), spec.goal, actions, self.max_steps)

    def critique_demonstration(self, task: Task, attempt: str) -> str | None:
        """A tip naming the first thing ``attempt`` got wrong; None if it succeeds."""
        spec = spec_of(task)
        actions = expert.parse_actions(attempt)
        return expert.critique(self.world(spec), spec.goal, actions, self.max_steps)

    def flawed_attempt(self, task: Task, rng: random.Random) -> str:
        """The expert's trajectory with one slip, in ReAct form (to demonstrate critiques)."""
        spec = spec_of(task)
        return expert.render_steps(expert.flawed_steps(self.world(spec), spec.goal, rng))

    def split_summary(self) -> dict[str, dict[str, int]]:
        return split_summary(self.seed)


__all__ = [
    "TASK_TYPES",
    "HouseholdEnvironment",
    "HouseholdEpisode",
    "World",
    "held_out",
    "render_list",
    "split_summary",
]
