"""The "searchqa" environment: multi-turn retrieval QA over a seeded world of invented
entities, searched with BM25; one- and two-hop questions, each with one gold answer."""

from __future__ import annotations

import random
from functools import cached_property

from environments.base import EnvError, Task, register
from environments.searchqa import expert
from environments.searchqa.episode import SearchQAEpisode
from environments.searchqa.random_policy import play_randomly
from environments.searchqa.retriever import Passage, Retriever
from environments.searchqa.world import SPLITS, World, build_world

INSTRUCTIONS = (
    "Answer the question from the passages you find. Each turn, reply with one line: "
    "'Thought: <reasoning> Action: <action>', where the action is search[<query>] or "
    "answer[<text>]."
)
HOP_TYPES = {1: "one_hop", 2: "two_hop"}
MAX_TOP_K = 20
MIN_PASSAGE_CHARS = 40


def _check(name: str, value: object, low: int | None = None, high: int | None = None) -> None:
    """One line for an option that is not an integer in [low, high] (None: no bound)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if is_int and (low is None or value >= low) and (high is None or value <= high):
        return
    if low is None:
        wanted = "an integer"
    elif high is None:
        wanted = f"an integer of at least {low}"
    else:
        wanted = f"an integer from {low} to {high}"
    raise EnvError(f"searchqa option {name} must be {wanted}, not {value!r}")


@register("searchqa")
class SearchQAEnvironment:
    """Questions about invented people, organisations, cities and countries, answered by
    searching their passages. ``seed`` fixes the world and the splits; ``top_k`` is how many
    passages a search shows; ``max_steps`` caps an episode's actions (an episode that has not
    answered by then scores 0); ``passage_chars`` cuts each shown passage (none can be longer than
    213 characters, so the default cuts none; the expert needs whole passages)."""

    name = "searchqa"
    multi_turn = True

    def __init__(self, seed: int = 0, top_k: int = 3, max_steps: int = 6, passage_chars: int = 300):
        _check("seed", seed)
        _check("top_k", top_k, 1, MAX_TOP_K)
        _check("max_steps", max_steps, 1)
        _check("passage_chars", passage_chars, MIN_PASSAGE_CHARS)
        self.seed, self.top_k, self.max_steps = seed, top_k, max_steps
        self.passage_chars = passage_chars
        self._cache: dict[str, list[Task]] = {}

    @property
    def world(self) -> World:
        return build_world(self.seed)

    @cached_property
    def retriever(self) -> Retriever:
        """BM25 over every entity's passage; indexed on the first search."""
        return Retriever([Passage(e.name, e.passage) for e in self.world.entities])

    def retrieve(self, query: str) -> list[Passage]:
        """The ``top_k`` passages for ``query``, best first."""
        return self.retriever.search(query, self.top_k)

    def splits(self) -> list[str]:
        return list(SPLITS)

    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise EnvError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
        if split not in self._cache:
            self._cache[split] = [
                Task(
                    f"searchqa-{split}-{index:05d}",
                    f"Question: {q.text}\nEach turn, act with search[query] to read the "
                    f"{self.top_k} passages that best match the query, or answer[text] to give "
                    "your final answer.",
                    q.answer,
                    {
                        "question": q.text,
                        "subject": q.subject,
                        "relations": list(q.relations),
                        # eval's per-type table: one-hop and two-hop questions apart
                        "task_type": HOP_TYPES[len(q.relations)],
                    },
                )
                for index, q in enumerate(self.world.splits[split])
            ]
        return self._cache[split]

    def start(self, task: Task) -> SearchQAEpisode:
        if task.metadata.get("subject") not in self.world.by_name or task.answer is None:
            raise EnvError(f"task '{task.id}' is not a searchqa task of seed {self.seed}")
        return SearchQAEpisode(task, self.retrieve, self.max_steps, self.passage_chars)

    def solver_instructions(self) -> str:
        return INSTRUCTIONS

    def expert_actions(self, task: Task) -> list[str]:
        """Actions that answer ``task``, found by searching as the episode shows."""
        return [action for _, action in expert.solve(self.start(task), task)]

    def demonstration(self, task: Task) -> str:
        return expert.render_steps(expert.solve(self.start(task), task))

    def render_attempt(self, task: Task, attempt: str) -> str:
        """The attempt's actions replayed from the start: "> action" then the observation."""
        return expert.transcript(self.start(task), expert.parse_actions(attempt))

    def critique_demonstration(self, task: Task, attempt: str) -> str | None:
        """A tip naming the first thing ``attempt`` got wrong; None if it answers right."""
        actions = expert.parse_actions(attempt)
        return expert.critique(self.start(task), task, self.world, actions)

    def flawed_attempt(self, task: Task, rng: random.Random) -> str:
        """The expert's trajectory with one slip, in ReAct form (to demonstrate critiques)."""
        return expert.render_steps(expert.flawed_steps(self.start(task), task, self.world, rng))

    def random_reward(self, task: Task, rng: random.Random) -> float:
        """The reward of one episode of the random policy (the baseline to beat)."""
        names = [entity.name for entity in self.world.entities]
        return play_randomly(self.start(task), task, names, rng)


__all__ = ["SearchQAEnvironment", "SearchQAEpisode"]
