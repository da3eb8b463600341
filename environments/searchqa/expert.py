"""The expert searcher, its ReAct demonstrations, attempt replay, critiques and flawed attempts.

The expert knows what the question asks (its subject and the relation of each hop, as anyone
who reads it does) but not the answer: it searches the subject's name, reads the next name off
the passage it finds, searches that, and answers with what the last passage says. Each step
goes through the episode, so the expert solves a question only if retrieval lets it.
"""

from __future__ import annotations

import random
import re

from environments.base import EnvError, Step, Task, react_action, render_steps
from environments.searchqa.answers import exact_match
from environments.searchqa.episode import SearchQAEpisode, parse_command
from environments.searchqa.world import RELATIONS, World

_RESULT = re.compile(r"^\[\d+\] (.+?): (.*)$")
_BARE = re.compile(r"^(search|answer)\[", re.IGNORECASE)

__all__ = ["Step", "critique", "flawed_steps", "parse_actions", "render_steps", "solve"]


def read_fact(observation: str, name: str, relation: str) -> str | None:
    """The object of ``relation`` in the passage titled ``name`` among search results, or None
    when no such passage (or sentence) was shown."""
    before, after = RELATIONS[relation].says(name, "\0").split("\0")
    sentence = re.compile(re.escape(before) + r"(.+?)" + re.escape(after))
    for line in observation.splitlines():
        result = _RESULT.match(line)
        if result and result.group(1) == name:
            found = sentence.search(result.group(2))
            return found.group(1) if found else None
    return None


def hops_of(task: Task) -> tuple[str, tuple[str, ...]]:
    """What the question asks: its subject and the relation of each hop."""
    return task.metadata["subject"], tuple(task.metadata["relations"])


def solve(episode: SearchQAEpisode, task: Task) -> list[Step]:
    """Thought/action pairs that answer ``task``, played through ``episode`` (a fresh one)."""
    subject, relations = hops_of(task)
    name, steps = subject, []
    thought = f"The question is about {subject}. I search for {subject}."
    for hop, relation in enumerate(relations):
        action = f"search[{name}]"
        observation = episode.step(action).observation
        steps.append((thought, action))
        obj = read_fact(observation, name, relation)
        if obj is None:
            raise EnvError(
                f"the expert found no {relation} fact of {name} in the search results for task "
                f"{task.id}; passage_chars={episode.passage_chars} may cut it off"
            )
        said = RELATIONS[relation].says(name, obj)
        if hop == len(relations) - 1:
            steps.append((f"{said} The answer is {obj}.", f"answer[{obj}]"))
        else:
            thought = f"{said} I search for {obj}."
        name = obj
    return steps


def parse_actions(attempt: str) -> list[str]:
    """The actions in an attempt: "Action: X" segments, "> X" transcript lines, or bare
    search[…]/answer[…] lines; observation lines are skipped."""
    actions = []
    for raw in attempt.splitlines():
        line = raw.strip()
        if "Action:" in line:
            action = react_action(line)
            if action:  # "Action:" alone: the command is on the next line
                actions.append(action)
        elif line.startswith(">"):
            actions.append(line[1:].strip())
        elif _BARE.match(line):
            actions.append(line)
    return actions


def transcript(episode: SearchQAEpisode, actions: list[str]) -> str:
    """Replay ``actions`` (until the episode ends) as "> action" / observation lines."""
    lines = []
    for action in actions[: episode.max_steps]:
        result = episode.step(action)
        lines += [f"> {action}", result.observation]
        if result.done:
            break
    return "\n".join(lines)


def critique(episode: SearchQAEpisode, task: Task, world: World, actions: list[str]) -> str | None:
    """A short tip naming the first thing ``actions`` got wrong, or None if they answer right.
    The tip uses only what the attempt saw: the subject (named in the question), then each name
    the passages it retrieved led to."""
    subject, relations = hops_of(task)
    hops = world.follow(subject, relations)
    seen: set[str] = set()
    invalid = answered = None
    for action in actions[: episode.max_steps]:
        command = parse_command(action)
        if command is None:
            invalid = action if invalid is None else invalid
        elif command.verb == "search":
            seen.update(passage.title for passage in episode.search(command.text))
        result = episode.step(action)
        if result.reward == 1.0:
            return None
        if command is not None and command.verb == "answer":
            answered = command.text
        if result.done:
            break
    if invalid is not None:
        shown = invalid if len(invalid) <= 60 else invalid[:60] + "…"
        return f'"{shown}" is not an action; reply with search[query] or answer[text].'
    for hop, (name, _, _) in enumerate(hops):
        if name not in seen:
            if hop == 0:
                return f"You never searched for {subject}; search for {subject} first."
            before, relation, _ = hops[hop - 1]
            return f"{RELATIONS[relation].says(before, name)[:-1]}; search for {name} next."
    name, relation, _ = hops[-1]
    wanted = RELATIONS[relation].phrase.format(s=name)
    if answered is None:
        return f"You found the passage on {name} but never answered; it names {wanted}."
    return f'The passage on {name} names {wanted}; "{answered}" is not it.'


def flawed_steps(
    episode: SearchQAEpisode, task: Task, world: World, rng: random.Random
) -> list[Step]:
    """A plausible failing trajectory, for critic warm-starts: the expert's with one slip. The
    slip is drawn from: no answer; the answer written without its brackets; another fact of
    the last passage given as the answer; a two-hop question answered after one hop.
    ``episode`` must be fresh."""
    steps = solve(episode, task)
    subject, relations = hops_of(task)
    hops = world.follow(subject, relations)
    name, relation, gold = hops[-1]
    thought, _ = steps[-1]
    slips = [steps[:-1], steps[:-1] + [(thought, gold)]]
    others = [(r, obj) for r, obj in world.by_name[name].facts if not exact_match(obj, gold)]
    if others:
        other, obj = rng.choice(others)
        said = RELATIONS[other].says(name, obj)
        slips.append(steps[:-1] + [(f"{said} The answer is {obj}.", f"answer[{obj}]")])
    first, relation, obj = hops[0]
    if len(hops) > 1 and not exact_match(obj, gold):
        said = RELATIONS[relation].says(first, obj)
        slips.append(steps[:1] + [(f"{said} The answer is {obj}.", f"answer[{obj}]")])
    return rng.choice(slips)
