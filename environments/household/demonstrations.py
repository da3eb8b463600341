"""Household warm-start demonstrations as text: a searching expert's episodes, slips and tips."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from environments.base import Task, react_action
from environments.household import HouseholdEnvironment, expert, spec_of
from environments.household.world import World

Turn = tuple[str, str]  # (ReAct turn, observation)

# The turn budget an episode is cut to: the one the model is measured and trained with, so a
# search runs out of it and a tip helps.
MAX_TURNS = 10
# A take is one turn in ten, and spotting the object in what a look showed is the hardest
# thing a searcher does: its tokens weigh this much more in the supervised loss.
TAKE_WEIGHT = 5.0
# Sampled, the model slips (a receptacle that is not in the room, an object that is not where
# it stands) and then repeats itself on "Nothing happens.". This share of the solver's and the
# revision's demonstrations carries one such slip: the slip is context (weight 0), the turn
# after it is the expert's own, so the model learns to go on from a failed action.
SLIP_SHARE = 0.5
# The share of revisions told the rule critic's verdict instead of a tip: it names no place, so
# the revision searches from the start.
RULE_SHARE = 0.2


class Played(NamedTuple):
    """An episode as played: its turns, its reward, and the index of its slip (None without)."""

    turns: list[Turn]
    reward: float
    slip: int | None


@dataclass(frozen=True)
class Demonstration:
    """One task's demonstrations. ``solver``: the critique-free search. Where a failed episode
    earns a tip, ``failed`` ((action, observation) of each of its turns) and ``tip`` for the
    critic, and ``revision``: the search after the tip or, with ``ruled``, after the rule
    critic's verdict."""

    task: Task
    solver: Played
    failed: list[tuple[str, str]] | None = None
    tip: str | None = None
    revision: Played | None = None
    ruled: bool = False


def searched(env: HouseholdEnvironment, task: Task, start: str | None = None) -> list[expert.Step]:
    """The searching expert's steps for ``task``, looking from ``start`` (default: the first
    receptacle the room lists)."""
    spec = spec_of(task)
    world = env.world(spec)
    return expert.plan(world, spec.goal, start or world.listing()[0])


def episode(
    env: HouseholdEnvironment, task: Task, steps: list[expert.Step]
) -> tuple[list[Turn], float]:
    """(ReAct turn, observation) for each step played in a fresh episode, up to done or
    MAX_TURNS, and the reward."""
    playing = env.start(task)
    turns, reward = [], 0.0
    for thought, action in steps[:MAX_TURNS]:
        turn = f"Thought: {thought} Action: {action}"
        result = playing.step(turn)
        turns.append((turn, result.observation))
        reward = result.reward
        if result.done:
            break
    return turns, reward


def slip(world: World, goal_obj: str, rng: random.Random) -> expert.Step:
    """A turn of the kind the sampled model gets wrong, inadmissible where ``world`` stands:
    a walk to a receptacle the room does not have, or a take of the object it looks for
    from where it is (an instance that is not there)."""
    here = world.here()
    if here and rng.random() < 0.5:
        rec = rng.choice(here).name
        taken = {t.name for t in world.things.values() if t.kind == goal_obj and t.where == rec}
        number = rng.choice([n for n in range(1, 5) if f"{goal_obj} {n}" not in taken])
        thing = f"{goal_obj} {number}"
        return f"I need a {goal_obj}; the {thing} is here. I take it.", f"take {thing} from {rec}"
    kind = rng.choice(sorted({r.kind for r in world.receptacles.values()}))
    top = max(r.number for r in world.receptacles.values() if r.kind == kind)
    name = f"{kind} {top + rng.randint(1, 3)}"
    return f"I need a {goal_obj}; none here. I look in the {name}.", f"go to {name}"


def slipped_episode(
    env: HouseholdEnvironment, task: Task, steps: list[expert.Step], rng: random.Random
) -> Played:
    """``episode`` with, in SLIP_SHARE of the draws, one ``slip`` before a step after the
    first (its feedback is "Nothing happens."; the world does not change)."""
    last = min(len(steps), MAX_TURNS - 1)  # a slip leaves a turn for what follows
    at = rng.randrange(1, last) if last > 1 and rng.random() < SLIP_SHARE else None
    if at is None:
        return Played(*episode(env, task, steps), None)
    playing = env.start(task)
    for thought, action in steps[:at]:
        playing.step(f"Thought: {thought} Action: {action}")
    bad = slip(playing.world, spec_of(task).goal.obj, rng)
    if bad[1] in playing.world.commands():  # a slip must do nothing
        return Played(*episode(env, task, steps), None)
    return Played(*episode(env, task, [*steps[:at], bad, *steps[at:]]), at)


def failed_episode(
    env: HouseholdEnvironment, task: Task, rng: random.Random
) -> tuple[list[Turn], float]:
    """A failing episode of the kind the solver plays: its own search run out of turns, or
    the search with one slip (a wrong object, a wrong place, a missed step)."""
    spec = spec_of(task)
    world = env.world(spec)
    played, reward = episode(env, task, searched(env, task))
    if reward == 1.0 or rng.random() < 0.5:
        slipped = expert.flawed_steps(world, spec.goal, rng, world.listing()[0])
        played, reward = episode(env, task, slipped)
    return played, reward


def review(env: HouseholdEnvironment, task: Task, turns: list[Turn]) -> expert.Review | None:
    """The tip on a played episode, from what the episode itself saw (None if it succeeds)."""
    spec = spec_of(task)
    actions = [react_action(turn) for turn, _ in turns]
    return expert.review(env.world(spec), spec.goal, actions, env.max_steps, observed=True)


def turn_weights(turns: list[Turn], skip: int | None = None) -> list[float]:
    """Each turn's weight in a supervised loss: 0 for the turn at index ``skip`` (a slip),
    TAKE_WEIGHT for a take, else 1."""
    return [
        0 if index == skip else TAKE_WEIGHT if react_action(turn).startswith("take ") else 1
        for index, (turn, _) in enumerate(turns)
    ]


def corpus(env: HouseholdEnvironment, tasks: list[Task]) -> list[str]:
    """Text of the kind the model will read and write: openings, searching and failed
    episodes with their observations, and tips."""
    rng = random.Random(0)
    texts = []
    for task in tasks:
        failed, _ = failed_episode(env, task, rng)
        for played in (episode(env, task, searched(env, task))[0], failed):
            texts.append("\n".join([task.prompt] + [line for turn in played for line in turn]))
        found = review(env, task, failed)
        texts.append(found.tip if found else "")
    return texts


def demonstrate(env: HouseholdEnvironment, tasks: list[Task]) -> Iterator[Demonstration]:
    """The demonstrations of every task in turn, from a searching expert that knows only what
    it has seen. The critique-free solver looks into the receptacles in the order the room lists
    them until it sees the object, so within MAX_TURNS it finds only what lies early in the list.
    The critic reads a failed episode and writes a tip from what that episode saw (where it
    passed the object by, or where to go on searching), and the revision searches from there. A
    tip therefore carries what the solver could not know in time: the gap ICRL internalises."""
    rng = random.Random(0)
    for task in tasks:
        solver = slipped_episode(env, task, searched(env, task), rng)
        failed, reward = failed_episode(env, task, rng)
        found = review(env, task, failed)
        if found is None or reward == 1.0:  # a slip the episode recovered from needs no tip
            yield Demonstration(task, solver)
            continue
        ruled = rng.random() < RULE_SHARE
        start = None if ruled else found.search_from
        revision = slipped_episode(env, task, searched(env, task, start), rng)
        attempt = [(react_action(turn), observation) for turn, observation in failed]
        yield Demonstration(task, solver, attempt, found.tip, revision, ruled)
