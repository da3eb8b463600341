"""Tests of the household environment: text, rules, splits, the expert and a random baseline."""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
from household_scene import small_scene

import environments
from environments.base import EnvError
from environments.household import HouseholdEnvironment, expert, spec_of
from environments.household.catalog import TASK_TYPES
from environments.household.generate import build_splits, held_out, split_summary
from environments.household.world import NOTHING_HAPPENS, Goal, World, render_list

EVAL_SPLITS = ("eval_in_distribution", "eval_out_of_distribution")


@pytest.fixture(scope="module")
def env() -> HouseholdEnvironment:
    return HouseholdEnvironment(seed=0)


def run(world: World, *commands: str) -> str:
    return [world.act(c) for c in commands][-1]


def test_lists_use_a_oxford_and_and_descending_numbers() -> None:
    assert render_list([]) == "nothing"
    assert render_list(["pineapple 1"]) == "a pineapple 1"
    assert render_list(["soapbar 4", "soapbar 3"]) == "a soapbar 4, and a soapbar 3"
    world = World(small_scene())
    assert world.intro() == (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 2, "
        "a cabinet 1, a countertop 1, a drawer 1, a fridge 1, a microwave 1, a sidetable 1, "
        "and a sinkbasin 1."
    )
    assert world.act("look") == world.intro()
    assert world.act("go to sidetable 1") == (
        "On the sidetable 1, you see a desklamp 1, a soapbar 4, and a soapbar 3."
    )


def test_receptacle_feedback() -> None:
    world = World(small_scene())
    assert (
        world.act("go to countertop 1") == "On the countertop 1, you see a apple 1, and a knife 2."
    )
    assert world.act("examine countertop 1") == (
        "On the countertop 1, you see a apple 1, and a knife 2."
    )
    assert world.act("go to drawer 1") == "On the drawer 1, you see nothing."
    assert world.act("go to fridge 1") == "The fridge 1 is closed."
    assert world.act("examine fridge 1") == "The fridge 1 is closed."
    assert world.act("open fridge 1") == (
        "You open the fridge 1. The fridge 1 is open. In it, you see a cup 1, and a egg 1."
    )
    world.act("go to drawer 1")
    assert (
        world.act("go to fridge 1") == "The fridge 1 is open. In it, you see a cup 1, and a egg 1."
    )
    assert world.act("close fridge 1") == "You close the fridge 1."
    assert "open fridge 1" in world.admissible() and "close fridge 1" not in world.admissible()


def test_shared_location_look_and_go_to_here() -> None:
    world = World(small_scene())
    world.act("go to cabinet 1")
    assert "go to cabinet 2" not in world.admissible()
    assert world.act("go to cabinet 2") == NOTHING_HAPPENS
    assert (
        world.act("look")
        == "You are facing the cabinet 2, and cabinet 1. Next to it, you see nothing."
    )
    world.act("go to countertop 1")
    assert world.act("look") == "You are facing the countertop 1. Next to it, you see nothing."


def test_closed_receptacles_hide_contents_and_hands_hold_one() -> None:
    world = World(small_scene())
    world.act("go to cabinet 2")
    assert world.act("take mug 1 from cabinet 2") == NOTHING_HAPPENS  # closed
    assert world.act("examine mug 1") == NOTHING_HAPPENS
    world.act("open cabinet 2")
    assert world.act("take mug 1 from cabinet 2") == "You pick up the mug 1 from the cabinet 2."
    world.act("go to countertop 1")
    assert not any(c.startswith("take ") for c in world.admissible())  # hands are full
    assert world.act("take apple 1 from countertop 1") == NOTHING_HAPPENS


def test_object_feedback_and_appliances() -> None:
    world = World(small_scene())
    assert world.act("inventory") == "You are not carrying anything."
    world.act("go to countertop 1")
    assert world.act("examine apple 1") == "There's nothing special about apple 1."
    assert (
        world.act("take apple 1 from countertop 1")
        == "You pick up the apple 1 from the countertop 1."
    )
    assert world.act("inventory") == "You are carrying: a apple 1."
    world.act("go to microwave 1")  # closed: appliances work closed
    assert (
        world.act("heat apple 1 with microwave 1") == "You heat the apple 1 using the microwave 1."
    )
    assert world.act("examine apple 1") == "This is a hot apple 1."
    world.act("go to sinkbasin 1")
    assert (
        world.act("clean apple 1 with sinkbasin 1")
        == "You clean the apple 1 using the sinkbasin 1."
    )
    assert world.act("examine apple 1") == "This is a hot and clean apple 1."
    world.act("go to fridge 1")
    assert world.act("cool apple 1 with fridge 1") == "You cool the apple 1 using the fridge 1."
    assert world.act("examine apple 1") == "This is a cool and clean apple 1."
    assert world.act("put apple 1 in/on fridge 1") == NOTHING_HAPPENS  # the fridge is closed
    world.act("go to countertop 1")
    assert (
        world.act("put apple 1 in/on countertop 1") == "You put the apple 1 in/on the countertop 1."
    )
    world.act("go to fridge 1")
    world.act("open fridge 1")
    world.act("take cup 1 from fridge 1")
    assert world.act("cool cup 1 with fridge 1") == "You cool the cup 1 using the fridge 1."
    assert world.act("examine cup 1") == "This is a cold cup 1."
    world.act("put cup 1 in/on fridge 1")
    world.act("take egg 1 from fridge 1")
    world.act("go to sinkbasin 1")
    world.act("clean egg 1 with sinkbasin 1")
    assert world.act("examine egg 1") == "This is a clean egg 1."
    world.act("put egg 1 in/on sinkbasin 1")
    world.act("go to countertop 1")
    world.act("take knife 2 from countertop 1")
    world.act("go to microwave 1")
    assert not any(c.startswith("heat ") for c in world.admissible())  # a knife is not heatable


def test_lamp_feedback() -> None:
    world = World(small_scene())
    world.act("go to sidetable 1")
    assert world.act("examine desklamp 1") == "This desklamp 1 is off."
    assert world.act("use desklamp 1") == "You turn on the desklamp 1."
    assert world.act("examine desklamp 1") == "This desklamp 1 is on."
    assert world.act("take desklamp 1 from sidetable 1") == NOTHING_HAPPENS  # not pickupable


def test_arrival_prefix_and_move_grammar() -> None:
    world = World(small_scene(), arrival=True)
    assert world.act("go to countertop 1") == (
        "You arrive at loc 2. On the countertop 1, you see a apple 1, and a knife 2."
    )
    world = World(small_scene(), version="0.5", arrival=True)
    assert world.act("go to fridge 1") == "You arrive at fridge 1. The fridge 1 is closed."
    world.act("go to countertop 1")
    world.act("take apple 1 from countertop 1")
    assert "put apple 1 in/on countertop 1" not in world.admissible()
    assert world.act("move apple 1 to countertop 1") == "You move the apple 1 to the countertop 1."


def test_admissible_rule() -> None:
    world = World(small_scene())
    commands = world.admissible()
    assert commands == sorted(set(commands))
    assert "look" in commands and "inventory" in commands
    assert world.act("  go to countertop 1  ").startswith("On the countertop 1")  # stripped
    assert world.act("Go to fridge 1") == NOTHING_HAPPENS  # case-sensitive
    assert world.act("go to the fridge 1") == NOTHING_HAPPENS  # no articles
    assert world.act("take apple from countertop 1") == NOTHING_HAPPENS  # numbers required


def test_goal_conditions() -> None:
    world = World(small_scene())
    simple = Goal("pick_and_place_simple", "apple", "sinkbasin")
    hot = Goal("pick_heat_then_place_in_recep", "apple", "sinkbasin")
    look = Goal("look_at_obj_in_light", "apple", "desklamp")
    run(world, "go to countertop 1", "take apple 1 from countertop 1", "go to sinkbasin 1")
    world.act("put apple 1 in/on sinkbasin 1")
    assert world.satisfied(simple) and not world.satisfied(hot)
    run(world, "take apple 1 from sinkbasin 1", "go to sidetable 1")
    assert not world.satisfied(look)
    world.act("use desklamp 1")
    assert world.satisfied(look)


def test_episode_reward_cap_and_prompt(env: HouseholdEnvironment) -> None:
    task = env.tasks("eval_in_distribution")[0]
    episode = env.start(task)
    intro, goal_line = task.prompt.split("\n")
    assert episode.initial_observation() == intro
    assert re.fullmatch(r"Your task is to: .+\.", goal_line)
    for n in range(1, env.max_steps + 1):
        result = episode.step("jump")
        assert result.observation == NOTHING_HAPPENS and result.reward == 0.0
        assert result.done == (n == env.max_steps)
        assert result.info["admissible_commands"] == sorted(result.info["admissible_commands"])
    with pytest.raises(environments.EnvError):
        episode.step("look")
    episode = env.start(task)
    actions = env.expert_actions(task)
    results = [episode.step(f"Thought: go on. Action: {a}") for a in actions]
    assert [r.reward for r in results] == [0.0] * (len(actions) - 1) + [1.0]
    assert results[-1].done


def random_policy_rates(env: HouseholdEnvironment, seed: int = 0) -> dict[str, float]:
    """Success rate per task type of uniformly random admissible commands on both eval splits."""
    rng = random.Random(seed)
    wins, totals = Counter(), Counter()
    for split in EVAL_SPLITS:
        for task in env.tasks(split):
            episode = env.start(task)
            commands, done, reward = episode.admissible_commands(), False, 0.0
            while not done:
                result = episode.step(rng.choice(commands))
                commands, done, reward = (
                    result.info["admissible_commands"],
                    result.done,
                    result.reward,
                )
            kind = task.metadata["task_type"]
            totals[kind] += 1
            wins[kind] += reward
    rates = {kind: wins[kind] / totals[kind] for kind in TASK_TYPES}
    rates["overall"] = sum(wins.values()) / sum(totals.values())
    return rates


def test_random_policy_rarely_succeeds(env: HouseholdEnvironment) -> None:
    rates = random_policy_rates(env)
    print("random policy success:", {k: round(v, 3) for k, v in rates.items()})
    assert rates["overall"] < 0.2


def test_splits_deterministic_disjoint_and_sized() -> None:
    first, second = HouseholdEnvironment(seed=0), HouseholdEnvironment(seed=0)
    keys = {}
    for split in first.splits():
        a, b = first.tasks(split), second.tasks(split)
        assert [(t.id, t.prompt, t.metadata) for t in a] == [
            (t.id, t.prompt, t.metadata) for t in b
        ]
        keys[split] = {tuple(sorted(t.metadata.items())) for t in a}
        assert len(keys[split]) == len(a)
    assert len(keys["train"]) >= 3000
    names = list(keys)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert not keys[x] & keys[y]
    assert first.tasks("train")[0].prompt != HouseholdEnvironment(seed=1).tasks("train")[0].prompt


def test_out_of_distribution_combinations_are_held_out() -> None:
    splits = build_splits(0)
    train = {spec.combination for spec in splits["train"]}
    in_dist = {spec.combination for spec in splits["eval_in_distribution"]}
    ood = {spec.combination for spec in splits["eval_out_of_distribution"]}
    assert ood and not ood & train and not ood & in_dist
    assert ood <= held_out(0)
    ood_plans = {spec.floorplan for spec in splits["eval_out_of_distribution"]}
    assert not ood_plans & {spec.floorplan for spec in splits["train"]}


def test_split_generation_is_fast_and_summarised() -> None:
    start = time.perf_counter()
    build_splits.__wrapped__(7)  # bypass the cache
    assert time.perf_counter() - start < 5.0
    summary = split_summary(0)
    assert summary["train"]["total"] == 3553
    for row in summary.values():
        assert sum(row[t] for t in TASK_TYPES) == row["total"]
        assert all(row[t] > 0 for t in TASK_TYPES)


def test_registered(env: HouseholdEnvironment) -> None:
    made = environments.make("household", seed=0, max_steps=50)
    assert "household" in environments.available()
    assert (
        made.tasks("eval_in_distribution")[0].prompt == env.tasks("eval_in_distribution")[0].prompt
    )


def test_task_types_keep_only_those_tasks_with_their_ids() -> None:
    full = HouseholdEnvironment()
    only = HouseholdEnvironment(task_types=["look_at_obj_in_light"])
    kept = only.tasks("eval_out_of_distribution")
    # The README's split table: 11 look-in-light tasks out of distribution.
    assert len(kept) == 11
    by_id = {t.id: t for t in full.tasks("eval_out_of_distribution")}
    assert all(by_id[t.id] == t for t in kept)
    with pytest.raises(EnvError, match="unknown household task type"):
        HouseholdEnvironment(task_types=["juggle"])


def test_training_like_tasks_come_from_the_train_distribution_and_no_split():
    from environments.household.generate import UNSEEN_FLOORPLANS, build_splits, held_out

    env = HouseholdEnvironment(
        task_types=["pick_and_place_simple", "pick_heat_then_place_in_recep"]
    )
    extra = env.training_like(60)
    assert len(extra) == 60 and len({t.id for t in extra}) == 60
    specs = [spec_of(t) for t in extra]
    assert {s.task_type for s in specs} == {
        "pick_and_place_simple",
        "pick_heat_then_place_in_recep",
    }
    assert all(s.floorplan < UNSEEN_FLOORPLANS[0] for s in specs)
    assert not {(s.obj, s.recep, s.room) for s in specs} & held_out(0)
    in_splits = {s for split in build_splits(0).values() for s in split}
    assert not set(specs) & in_splits
    # Fixed by the draw; another draw gives other worlds.
    assert [t.prompt for t in env.training_like(60)] == [t.prompt for t in extra]
    assert not {spec_of(t) for t in env.training_like(60, draw=1)} & set(specs)
    # Each one is solvable: the expert plans it from the task alone.
    for task in extra[:10]:
        spec = spec_of(task)
        world = env.world(spec)
        expert.plan(world, spec.goal)
        assert world.satisfied(spec.goal)
