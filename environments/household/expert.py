"""The expert planner, its ReAct demonstrations, attempt replay, critiques and flawed attempts."""

from __future__ import annotations

import random

from environments.base import react_action
from environments.household.catalog import CAN_CONTAIN, TRANSFORMS
from environments.household.world import Goal, Thing, World

PAST = {"clean": "cleaned", "heat": "heated", "cool": "cooled"}
_VERBS = ("go to ", "take ", "put ", "move ", "open ", "close ", "clean ", "heat ", "cool ")
_VERBS += ("use ", "examine ")

Step = tuple[str, str]  # (thought, action)


def plan(world: World, goal: Goal) -> list[Step]:
    """Thought/action pairs that reach ``goal``; each action is checked admissible as it runs,
    and ``world`` ends in the solved state."""
    steps: list[Step] = []

    def do(thought: str, action: str) -> None:
        if action not in world.commands():  # a planner bug, not a user error
            raise AssertionError(f"expert action '{action}' is not admissible")
        world.act(action)
        steps.append((thought, action))

    def reach(rec_name: str, thought: str) -> None:
        rec = world.receptacles[rec_name]
        if world.loc != rec.loc:
            do(thought, f"go to {rec_name}")
        if rec.openable and not rec.opened:
            do(f"The {rec_name} is closed, so I open it.", f"open {rec_name}")

    def fetch(thing: Thing, first: bool) -> None:
        host = thing.where or ""
        need = f"I need a {goal.obj}" if first else f"Now I need a second {goal.obj}"
        reach(host, f"{need}. There is one at the {host}, so I go there.")
        do(f"I take the {thing.name}.", f"take {thing.name} from {host}")

    targets = sorted(
        (
            t
            for t in world.things.values()
            if t.kind == goal.obj
            and t.where is not None
            and world.receptacles[t.where].kind != goal.recep
        ),
        key=lambda t: (world.receptacles[t.where or ""].kind, t.where, t.number),
    )
    if goal.task_type == "look_at_obj_in_light":
        fetch(targets[0], first=True)
        lamp = min((t for t in world.things.values() if t.kind == goal.recep), key=_key)
        host = lamp.where or ""
        if world.loc != world.receptacles[host].loc:
            do(f"Now I need the {goal.recep}. It is on the {host}.", f"go to {host}")
        do(f"I turn on the {lamp.name} to look at the {goal.obj}.", f"use {lamp.name}")
        return steps
    dest = min((r for r in world.receptacles.values() if r.kind == goal.recep), key=_key)
    count = 2 if goal.task_type == "pick_two_obj_and_place" else 1
    for index, thing in enumerate(targets[:count]):
        fetch(thing, first=index == 0)
        if goal.task_type in TRANSFORMS:
            verb, kind = TRANSFORMS[goal.task_type]
            appliance = min((r for r in world.receptacles.values() if r.kind == kind), key=_key)
            if world.loc != appliance.loc:
                do(
                    f"Next I {verb} the {thing.name} with the {appliance.name}.",
                    f"go to {appliance.name}",
                )
            do(
                f"I {verb} the {thing.name} with the {appliance.name}.",
                f"{verb} {thing.name} with {appliance.name}",
            )
        reach(dest.name, f"Now I put the {thing.name} in the {dest.name}.")
        do(f"I put the {thing.name} in the {dest.name}.", put_command(world, thing, dest.name))
    return steps


def _key(item) -> tuple[str, int]:
    return (item.kind, item.number)


def put_command(world: World, thing: Thing, rec_name: str) -> str:
    if world.version == "0.3.3":
        return f"put {thing.name} in/on {rec_name}"
    return f"move {thing.name} to {rec_name}"


def render_steps(steps: list[Step]) -> str:
    """The ReAct text of a trajectory: one "Thought: … Action: …" line per step."""
    return "\n".join(f"Thought: {thought} Action: {action}" for thought, action in steps)


def parse_actions(attempt: str) -> list[str]:
    """The commands in an attempt: "Action: X" segments, "> X" transcript lines, or bare
    command lines; observation lines are skipped."""
    actions = []
    for raw in attempt.splitlines():
        line = raw.strip()
        if "Action:" in line:
            actions.append(react_action(line))
        elif line.startswith(">"):
            actions.append(line[1:].strip())
        elif line in ("look", "inventory") or line.startswith(_VERBS):
            actions.append(line)
    return actions


def transcript(world: World, goal: Goal, actions: list[str], max_steps: int) -> str:
    """Replay ``actions`` (up to the step cap or success) as "> action" / observation lines."""
    lines = []
    for action in actions[:max_steps]:
        lines += [f"> {action}", world.act(action)]
        if world.satisfied(goal):
            break
    return "\n".join(lines)


def critique(world: World, goal: Goal, actions: list[str], max_steps: int) -> str | None:
    """A short tip naming the first thing ``actions`` got wrong, or None if they succeed."""
    transform = TRANSFORMS.get(goal.task_type)
    for raw in actions[:max_steps]:
        action = raw.strip()
        if action not in world.commands():
            words = action.split()
            if (
                action.startswith("take ")
                and " from " in action
                and words[1] == goal.obj
                and world.held is None
            ):
                place = action.split(" from ", 1)[1]
                return f"There is no {goal.obj} at the {place}; {_where(world, goal.obj)}."
            return f'"{action}" was not an admissible command then, so nothing happened.'
        if action.startswith("take "):
            name = action[len("take ") :].split(" from ")[0]
            if world.things[name].kind != goal.obj:
                return f"You picked up the {name}, but the task needs a {goal.obj}."
        if world.held and action.startswith(("put ", "move ")):
            tip = _put_mistake(world, goal, world.things[world.held], action.rsplit(" ", 2))
            if tip:
                return tip
        world.act(action)
        if world.satisfied(goal):
            return None
    return _missing_step(world, goal, transform)


def _put_mistake(world: World, goal: Goal, thing: Thing, words: list[str]) -> str | None:
    dest = f"{words[-2]} {words[-1]}"
    kind = world.receptacles[dest].kind
    if goal.task_type == "look_at_obj_in_light":
        return f"You put the {thing.name} down; keep holding it and turn on the {goal.recep}."
    if kind != goal.recep:
        return f"You put the {thing.name} in the {dest}, but it belongs in a {goal.recep}."
    if goal.task_type in TRANSFORMS:
        verb, appliance = TRANSFORMS[goal.task_type]
        done = {"clean": thing.clean, "heat": thing.hot, "cool": thing.cool}[verb]
        if not done:
            return (
                f"The {thing.name} was never {PAST[verb]}; {verb} it with the {appliance} "
                f"before putting it in the {goal.recep}."
            )
    if goal.task_type == "pick_two_obj_and_place":
        elsewhere = [
            t.where
            for t in world.things.values()
            if t.kind == goal.obj and t.where and t.where != dest
            if world.receptacles[t.where].kind == goal.recep
        ]
        if elsewhere:
            return (
                f"Both {goal.obj}s must go in the same {goal.recep}; one is in the {elsewhere[0]}."
            )
    return None


def _missing_step(world: World, goal: Goal, transform: tuple[str, str] | None) -> str:
    held = world.things[world.held] if world.held else None
    if goal.task_type == "look_at_obj_in_light":
        lamp = next(t for t in world.things.values() if t.kind == goal.recep)
        if held is None:
            return f"You never picked up a {goal.obj}; {_where(world, goal.obj)}."
        return (
            f"You never turned on the {goal.recep} while holding the {held.name}; take it to "
            f"the {lamp.where} and use the {lamp.name}."
        )
    placed = [
        t
        for t in world.things.values()
        if t.kind == goal.obj and t.where and world.receptacles[t.where].kind == goal.recep
    ]
    if held is not None and held.kind == goal.obj:
        if transform:
            verb, appliance = transform
            done = {"clean": held.clean, "heat": held.hot, "cool": held.cool}[verb]
            if not done:
                return f"The {held.name} was never {PAST[verb]}; {verb} it with the {appliance}."
        return f"You never put the {held.name} in a {goal.recep}."
    if goal.task_type == "pick_two_obj_and_place" and placed:
        return (
            f"Only one {goal.obj} is in the {placed[0].where}; find a second one "
            f"({_where(world, goal.obj, exclude=placed[0].where)}) and put it there too."
        )
    return f"You never picked up a {goal.obj}; {_where(world, goal.obj)}."


def _where(world: World, kind: str, exclude: str | None = None) -> str:
    for thing in sorted(world.things.values(), key=_key):
        if thing.kind == kind and thing.where and thing.where != exclude:
            return f"there is one in the {thing.where}"
    return f"look for a {kind}"


def flawed_steps(world: World, goal: Goal, rng: random.Random) -> list[Step]:
    """A plausible failing trajectory: the expert's with one slip (for critic warm-starts).
    ``world`` must be fresh; it is consumed."""
    snapshot = _clone(world)
    steps = plan(world, goal)
    flaws = ["truncate", "invalid"]
    if goal.task_type in TRANSFORMS:
        flaws.append("skip_transform")
    others = sorted(
        {
            r.kind
            for r in snapshot.receptacles.values()
            if r.kind != goal.recep and goal.obj in CAN_CONTAIN[r.kind]
        }
    )
    if goal.task_type != "look_at_obj_in_light" and others:
        flaws.append("wrong_receptacle")
    empty = sorted(
        (
            r
            for r in snapshot.receptacles.values()
            if goal.obj in CAN_CONTAIN[r.kind]
            and not any(t.kind == goal.obj for t in snapshot.contents(r))
        ),
        key=_key,
    )
    if empty:
        flaws.append("wrong_place")
    flaw = rng.choice(flaws)
    if flaw == "wrong_place":
        # Looking for the object where there is none, and trying to take it anyway.
        place = rng.choice(empty)
        wrong = [(f"I need a {goal.obj}. I try the {place.name}.", f"go to {place.name}")]
        if place.openable:
            wrong.append((f"The {place.name} is closed, so I open it.", f"open {place.name}"))
        wrong.append((f"I take the {goal.obj}.", f"take {goal.obj} 1 from {place.name}"))
        return wrong
    if flaw == "truncate":
        return steps[: rng.randrange(1, len(steps))]
    if flaw == "invalid":
        at = rng.randrange(len(steps))
        bad = ("I grab it.", f"take {goal.obj} from {goal.recep}")
        return steps[:at] + [bad] + steps[at:]
    if flaw == "skip_transform":
        verb = TRANSFORMS[goal.task_type][0]
        return [s for s in steps if not s[1].startswith(verb) and not s[0].startswith("Next I")]
    wrong = Goal(goal.task_type, goal.obj, rng.choice(others))
    try:
        return plan(snapshot, wrong)
    except IndexError:  # every such object already sits in the wrong kind: just stop short
        return steps[:-1]


def _clone(world: World) -> World:
    copy = World.__new__(World)
    copy.__dict__.update(world.__dict__)
    copy.receptacles = {k: type(v)(**v.__dict__) for k, v in world.receptacles.items()}
    copy.things = {k: type(v)(**v.__dict__) for k, v in world.things.items()}
    return copy


__all__ = ["critique", "flawed_steps", "parse_actions", "plan", "render_steps"]
