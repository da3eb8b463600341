"""One search-QA episode: the two actions, what each shows, and the reward of an answer.

``search[query]`` shows the top-k passages for the query; ``answer[text]`` ends the episode
with reward 1 for an exact match after normalisation. Anything else is an invalid action: it
costs a step and shows the valid ones. The episode ends unanswered, with reward 0, after
``max_steps`` actions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from environments.base import EnvError, StepResult, Task, react_action
from environments.searchqa.answers import exact_match, token_f1
from environments.searchqa.retriever import Passage

ACTION_FORMS = ("answer[<text>]", "search[<query>]")
INVALID = (
    "Invalid action. Reply with search[query] to read the passages that best match a query, "
    "or answer[text] to give your final answer."
)
# \b keeps "research[x]" from reading as a search.
_COMMAND = re.compile(r"\b(search|answer)\[([^\]]*)\]", re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """A valid action: ``verb`` is "search" or "answer", ``text`` its non-empty argument."""

    verb: str
    text: str


def parse_command(reply: str) -> Command | None:
    """The command in a reply (a ReAct "Thought: … Action: search[…]" line or a bare one):
    the first ``search[…]`` or ``answer[…]`` on its action line; None when there is none or
    its brackets are empty."""
    found = _COMMAND.search(react_action(reply))
    if found is None or not found.group(2).strip():
        return None
    return Command(found.group(1).lower(), found.group(2).strip())


def render_passages(query: str, passages: list[Passage], chars: int) -> str:
    """Search results as the agent reads them: "[rank] title: text", each text cut to
    ``chars`` characters."""
    if not passages:
        return f'No passage matches "{query}".'
    lines = []
    for rank, passage in enumerate(passages, 1):
        text = passage.text
        if len(text) > chars:
            text = text[:chars].rstrip() + " …"
        lines.append(f"[{rank}] {passage.title}: {text}")
    return "\n".join(lines)


class SearchQAEpisode:
    """One attempt at one question. ``search`` is the environment's retriever (query → the
    top-k passages)."""

    def __init__(
        self,
        task: Task,
        search: Callable[[str], list[Passage]],
        max_steps: int,
        passage_chars: int,
    ):
        self.task, self.search = task, search
        self.max_steps, self.passage_chars = max_steps, passage_chars
        self.steps = 0
        self.done = False

    def initial_observation(self) -> str:
        return self.task.prompt

    def admissible_commands(self) -> list[str]:
        """The two action forms (the arguments are free text, so there is no finite list)."""
        return list(ACTION_FORMS)

    def step(self, action: str) -> StepResult:
        if self.done:
            raise EnvError(f"episode for task {self.task.id} is over; start a new one")
        self.steps += 1
        command = parse_command(action)
        info: dict[str, Any] = {"steps": self.steps, "won": False}
        reward = 0.0
        if command is None:
            observation = INVALID
        elif command.verb == "search":
            found = self.search(command.text)
            observation = render_passages(command.text, found, self.passage_chars)
        else:
            gold = self.task.answer or ""
            won = exact_match(command.text, gold)
            reward = 1.0 if won else 0.0
            info.update(won=won, f1=token_f1(command.text, gold), answer=command.text)
            observation = f"You answered: {command.text}"
            self.done = True
        self.done = self.done or self.steps >= self.max_steps
        return StepResult(observation, reward, self.done, info)
