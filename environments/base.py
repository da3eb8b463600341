"""The environment protocol every task family implements, and the registry that finds them.

An environment yields :class:`Task` records for a split and starts :class:`Episode` objects;
an episode takes an action string and returns a :class:`StepResult`. A math problem is an
episode of one step. Third-party packages register environments through the entry-point
group ``icrl.environments`` (the entry point names a factory taking keyword options).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "icrl.environments"


class EnvError(ValueError):
    """A user-facing problem with an environment or its data (unknown name, bad row, …)."""


class EpisodeFailed(RuntimeError):
    """An episode could not go on for reasons outside the policy (its server died, timed out,
    or answered nonsense). Sessions drop such an episode from training and count it."""


@dataclass(frozen=True)
class Task:
    """One problem: ``prompt`` is the task text the solver sees, ``answer`` the gold (if any)."""

    id: str
    prompt: str
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Episode(Protocol):
    """A running attempt at one task."""

    def initial_observation(self) -> str:
        """Text shown to the solver before its first action ('' for single-step tasks)."""
        ...

    def step(self, action: str) -> StepResult: ...


@runtime_checkable
class Environment(Protocol):
    """A family of tasks with fixed splits."""

    name: str
    multi_turn: bool  # episodes of several actions (the solver acts turn by turn)

    def splits(self) -> list[str]: ...

    def tasks(self, split: str) -> Sequence[Task]: ...

    def start(self, task: Task) -> Episode: ...

    def solver_instructions(self) -> str:
        """The solver's system prompt: how to act and how to format the answer."""
        ...

    def demonstration(self, task: Task) -> str | None:
        """An expert response for ``task`` (used to warm-start the tiny model), or None."""
        ...

    def render_attempt(self, task: Task, attempt: str) -> str:
        """The attempt as the critic sees it (a multi-turn episode: actions and observations)."""
        ...

    def critique_demonstration(self, task: Task, attempt: str) -> str | None:
        """An expert critique of a failed ``attempt`` (to warm-start the critic), or None."""
        ...


def opening(task: Task, episode: Episode) -> str:
    """What the solver sees first in a multi-turn episode: the look text, a newline, "Your task
    is to: …" (AgentGym's reset observation). A task prompt that already extends the episode's
    first observation (household's does) is used as it is; a remote task has no prompt of its
    own, and its first observation is the whole opening."""
    first = episode.initial_observation()
    if not task.prompt or task.prompt.startswith(first):
        return task.prompt or first
    return f"{first}\n{task.prompt}"


Step = tuple[str, str]  # (thought, action): one turn of a ReAct trajectory


def render_steps(steps: list[Step]) -> str:
    """The ReAct text of a trajectory: one "Thought: … Action: …" line per step."""
    return "\n".join(f"Thought: {thought} Action: {action}" for thought, action in steps)


def react_action(reply: str) -> str:
    """The command in a ReAct reply ("Thought: … Action: <command>"): the first line after the
    last "Action:", stripped. AgentGym's parser keeps every line after it, so any chatter the
    model adds would turn a valid command into "Nothing happens.". A reply without "Action:" is
    taken as a bare command."""
    if "Action:" not in reply:
        return reply.strip()
    return reply.rsplit("Action:", 1)[1].strip().partition("\n")[0].strip()


EnvironmentFactory = Callable[..., Environment]
_REGISTRY: dict[str, EnvironmentFactory] = {}


def register(name: str) -> Callable[[EnvironmentFactory], EnvironmentFactory]:
    """Class/function decorator adding an environment factory under ``name``."""

    def decorate(factory: EnvironmentFactory) -> EnvironmentFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available() -> list[str]:
    """Names of every registered environment, built-in and from entry points."""
    _load_entry_points()
    return sorted(_REGISTRY)


def make(name: str, **options: Any) -> Environment:
    """Build the environment ``name``; an unknown name raises :class:`EnvError` listing them."""
    _load_entry_points()
    if name not in _REGISTRY:
        valid = ", ".join(available())
        raise EnvError(f"unknown environment '{name}'; choose one of: {valid}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        # Checked before the call, so a TypeError raised inside a constructor stays a bug report.
        raise EnvError(f"environment '{name}' rejects its options: {err}") from None
    return factory(**options)
