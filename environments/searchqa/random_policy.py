"""The random policy: the baseline any learned searcher must beat.

Each turn it flips a coin: search one to three words drawn from the question, or answer with a
name drawn from every entity of the world. It never reads what it retrieves.
"""

from __future__ import annotations

import random
import re

from environments.base import Task
from environments.searchqa.episode import SearchQAEpisode


def random_actions(question: str, names: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` random actions for ``question``."""
    words = re.findall(r"[\w']+", question)
    actions = []
    for _ in range(count):
        if rng.random() < 0.5:
            query = " ".join(rng.sample(words, rng.randint(1, min(3, len(words)))))
            actions.append(f"search[{query}]")
        else:
            actions.append(f"answer[{rng.choice(names)}]")
    return actions


def play_randomly(
    episode: SearchQAEpisode, task: Task, names: list[str], rng: random.Random
) -> float:
    """The reward of one random episode (``episode`` fresh)."""
    question = task.metadata["question"]
    for action in random_actions(question, names, episode.max_steps, rng):
        result = episode.step(action)
        if result.done:
            return result.reward
    return 0.0
