"""The household expert: it solves every task, searching or not; its demonstrations, critiques
and reviews name what an attempt did and saw."""

from __future__ import annotations

import random
import re

import pytest
from household_scene import small_scene

from environments.household import HouseholdEnvironment, expert, spec_of
from environments.household.world import NOTHING_HAPPENS, Goal, World

EVAL_SPLITS = ("eval_in_distribution", "eval_out_of_distribution")


@pytest.fixture(scope="module")
def env() -> HouseholdEnvironment:
    return HouseholdEnvironment(seed=0)


def test_expert_solves_every_task(env: HouseholdEnvironment) -> None:
    for split in env.splits():
        solved = 0
        for task in env.tasks(split):
            episode = env.start(task)
            results = [episode.step(action) for action in env.expert_actions(task)]
            solved += results[-1].reward == 1.0 and len(results) <= env.max_steps
        expected = {"train": 3553, "eval_in_distribution": 140, "eval_out_of_distribution": 134}
        assert solved == expected[split] == len(env.tasks(split))


def test_demonstration_render_and_critique(env: HouseholdEnvironment) -> None:
    rng = random.Random(0)
    for task in env.tasks("eval_out_of_distribution")[:40]:
        demo = env.demonstration(task)
        lines = demo.splitlines()
        assert all(re.fullmatch(r"Thought: .+ Action: .+", line) for line in lines)
        assert env.critique_demonstration(task, demo) is None
        assert env.render_attempt(task, demo).count("\n> ") == len(lines) - 1
        flawed = env.flawed_attempt(task, rng)
        tip = env.critique_demonstration(task, flawed)
        assert isinstance(tip, str) and tip


def test_critique_names_the_first_mistake(env: HouseholdEnvironment) -> None:
    task = next(
        t
        for t in env.tasks("eval_in_distribution")
        if t.metadata["task_type"] == "pick_heat_then_place_in_recep"
    )
    actions = env.expert_actions(task)
    unheated = [a for a in actions if not a.startswith("heat ")]
    tip = env.critique_demonstration(task, "\n".join(unheated))
    assert tip is not None and "never heated" in tip
    assert env.render_attempt(task, "> fly away") == f"> fly away\n{NOTHING_HAPPENS}"
    assert env.critique_demonstration(task, "") is not None


def test_searching_expert_looks_in_listed_order_and_takes_what_it_sees() -> None:
    goal = Goal("pick_and_place_simple", "soapbar", "countertop")
    world = World(small_scene())
    steps = expert.plan(world, goal, search_from="cabinet 2")
    # The room lists cabinet 2, cabinet 1, countertop 1, drawer 1, fridge 1, microwave 1,
    # sidetable 1; cabinet 1 shares cabinet 2's place, which the searcher learns when walking
    # there does nothing; it examines it instead.
    assert [action for _, action in steps] == [
        "go to cabinet 2",
        "open cabinet 2",
        "go to cabinet 1",
        "examine cabinet 1",
        "open cabinet 1",
        "go to countertop 1",
        "go to drawer 1",
        "go to fridge 1",
        "open fridge 1",
        "go to microwave 1",
        "open microwave 1",
        "go to sidetable 1",
        "take soapbar 3 from sidetable 1",
        "go to countertop 1",
        "put soapbar 3 in/on countertop 1",
    ]
    # Each look after the first says the last one showed no soapbar; the take says what it saw.
    # Each names where the soapbar goes, so that is a few tokens back once it is in hand.
    assert steps[0][0] == "I need a soapbar for the countertop. I look in the cabinet 2."
    assert steps[2][0] == "I need a soapbar for the countertop; none here. I look in the cabinet 1."
    assert steps[3][0] == "Nothing happens: the cabinet 1 is here, so I examine it."
    assert (
        steps[5][0] == "I need a soapbar for the countertop; none here. I look in the countertop 1."
    )
    assert steps[12][0] == "I need a soapbar for the countertop; the soapbar 3 is here. I take it."
    assert world.satisfied(goal)
    later = expert.plan(World(small_scene()), goal, search_from="microwave 1")
    assert [action for _, action in later][:3] == [
        "go to microwave 1",
        "open microwave 1",
        "go to sidetable 1",
    ]


def test_observed_review_names_only_what_the_attempt_saw() -> None:
    goal = Goal("pick_and_place_simple", "soapbar", "countertop")
    actions = [a for _, a in expert.plan(World(small_scene()), goal, search_from="cabinet 2")]

    def review(attempt: list[str], observed: bool = True) -> expert.Review | None:
        return expert.review(World(small_scene()), goal, attempt, 50, observed=observed)

    # Walking to cabinet 1, which stands at cabinet 2's place, did nothing: not a mistake, but
    # cabinet 1 was not looked into.
    assert review(actions[:3]) == expert.Review(
        "You never picked up a soapbar; search on from the cabinet 1.", "cabinet 1"
    )
    # The environment's own tip calls that walk inadmissible.
    assert review(actions[:3], observed=False) == expert.Review(
        '"go to cabinet 1" was not an admissible command then, so nothing happened.'
    )
    # Out of turns at the closed fridge: cabinets, countertop and drawer were looked into.
    assert review(actions[:8]) == expert.Review(
        "You never picked up a soapbar; search on from the fridge 1.", "fridge 1"
    )
    # It saw soapbars on the sidetable and walked on.
    assert review(actions[:12]) == expert.Review(
        "You never picked up a soapbar; there is one in the sidetable 1.", "sidetable 1"
    )
    guess = actions[:2] + ["take soapbar 1 from cabinet 2"]
    assert review(guess) == expert.Review(
        "There is no soapbar at the cabinet 2; search on from the cabinet 1.", "cabinet 1"
    )
    # The environment's own tip knows where things are.
    assert review(guess, observed=False) == expert.Review(
        "There is no soapbar at the cabinet 2; there is one in the sidetable 1.", "sidetable 1"
    )
    assert review([]) == expert.Review(
        "You never picked up a soapbar; search on from the cabinet 2.", "cabinet 2"
    )
    assert review(actions) is None


def test_searching_expert_solves_every_eval_task(env: HouseholdEnvironment) -> None:
    for split in EVAL_SPLITS:
        for task in env.tasks(split):
            spec = spec_of(task)
            world = env.world(spec)
            expert.plan(world, spec.goal, search_from=world.listing()[0])
            assert world.satisfied(spec.goal), task.id
