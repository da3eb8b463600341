"""The expert planner, its ReAct demonstrations, attempt replay, critiques and flawed attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from environments.base import Step, react_action, render_steps  # noqa: F401 (re-exported)
from environments.household.catalog import CAN_CONTAIN, TRANSFORMS
from environments.household.world import NOTHING_HAPPENS, Goal, Thing, World

PAST = {"clean": "cleaned", "heat": "heated", "cool": "cooled"}
_VERBS = ("go to ", "take ", "put ", "move ", "open ", "close ", "clean ", "heat ", "cool ")
_VERBS += ("use ", "examine ")


def plan(world: World, goal: Goal, search_from: str | None = None) -> list[Step]:
    """Thought/action pairs that reach ``goal``; each action is checked admissible as it runs,
    and ``world`` ends in the solved state. The expert goes straight to where things are; with
    ``search_from`` (a receptacle name) it knows only what it sees, and looks for each object
    in the receptacles in the order the room lists them, from that one on. Not knowing where
    receptacles stand, it walks to each; when "go to" does nothing, the receptacle stands at its
    place (ALFWorld: going to where you are is not admissible), and it examines it instead."""
    return _Planner(world, goal, search_from).run()


class _Planner:
    """One run of ``plan``: the world it acts in, and the steps taken so far."""

    def __init__(self, world: World, goal: Goal, search_from: str | None) -> None:
        self.world, self.goal, self.search_from = world, goal, search_from
        self.steps: list[Step] = []
        self.found_at: list[str] = []

    def do(self, thought: str, action: str) -> None:
        if action not in self.world.commands():  # a planner bug, not a user error
            raise AssertionError(f"expert action '{action}' is not admissible")
        self.world.act(action)
        self.steps.append((thought, action))

    def walk_nowhere(self, thought: str, rec_name: str) -> None:
        """A "go to" the searcher cannot know is pointless: the feedback tells it so."""
        if self.world.act(f"go to {rec_name}") != NOTHING_HAPPENS:  # a planner bug
            raise AssertionError(f"expert expected 'go to {rec_name}' to do nothing")
        self.steps.append((thought, f"go to {rec_name}"))

    def reach(self, rec_name: str, thought: str) -> None:
        rec = self.world.receptacles[rec_name]
        if self.world.loc != rec.loc:
            self.do(thought, f"go to {rec_name}")
        if rec.openable and not rec.opened:
            self.do(f"The {rec_name} is closed, so I open it.", f"open {rec_name}")

    def fetch(self, thing: Thing, first: bool) -> Thing:
        """Take ``thing``, or, searching, the first object of its kind the search finds."""
        host = thing.where or ""
        obj = self.goal.obj
        # The thought carries the receptacle the object goes to: when the object is in hand,
        # where it goes is then a few tokens back, not in the task line a dozen turns ago.
        kind = self.goal.recep
        need = (
            f"I need a {obj} for the {kind}"
            if first
            else f"Now I need a second {obj} for the {kind}"
        )
        if self.search_from is not None:
            # A second object may sit where the first one was found.
            thing = self.search(need, self.search_from if first else self.found_at[-1])
            host = thing.where or ""
            self.found_at.append(host)
            # The thought says what the last look showed before it acts on it (so does each
            # "I look in" after the first): what to do next is read off the observation.
            thought = f"{need}; the {thing.name} is here. I take it."
        else:
            self.reach(host, f"{need}. There is one at the {host}, so I go there.")
            thought = f"I take the {thing.name}."
        self.do(thought, f"take {thing.name} from {host}")
        return thing

    def search(self, need: str, start: str) -> Thing:
        world, goal = self.world, self.goal
        names = world.listing()
        at = names.index(start)
        for index, name in enumerate(names[at:] + names[:at]):
            rec = world.receptacles[name]
            look = f"{need}{'; none here' if index else ''}. I look in the {name}."
            if world.loc != rec.loc:
                self.do(look, f"go to {name}")
            else:  # a receptacle beside the last one
                self.walk_nowhere(look, name)
                self.do(f"Nothing happens: the {name} is here, so I examine it.", f"examine {name}")
            if rec.openable and not rec.opened:
                self.do(f"The {name} is closed, so I open it.", f"open {name}")
            found = [t for t in world.contents(rec) if t.kind == goal.obj]
            if found and rec.kind != goal.recep:
                return min(found, key=_key)
        raise LookupError(f"no {goal.obj} to find outside a {goal.recep}")

    def targets(self) -> list[Thing]:
        """The objects of the goal's kind outside a receptacle of the goal's kind."""
        world, goal = self.world, self.goal
        return sorted(
            (
                t
                for t in world.things.values()
                if t.kind == goal.obj
                and t.where is not None
                and world.receptacles[t.where].kind != goal.recep
            ),
            key=lambda t: (world.receptacles[t.where or ""].kind, t.where, t.number),
        )

    def look_in_light(self, target: Thing) -> None:
        world, goal = self.world, self.goal
        self.fetch(target, first=True)
        lamp = min((t for t in world.things.values() if t.kind == goal.recep), key=_key)
        host = lamp.where or ""
        if world.loc != world.receptacles[host].loc:
            self.do(f"Now I need the {goal.recep}. It is on the {host}.", f"go to {host}")
        self.do(f"I turn on the {lamp.name} to look at the {goal.obj}.", f"use {lamp.name}")

    def transform(self, thing: Thing) -> None:
        """Clean, heat or cool ``thing`` with the appliance the task type names."""
        verb, kind = TRANSFORMS[self.goal.task_type]
        receptacles = self.world.receptacles.values()
        appliance = min((r for r in receptacles if r.kind == kind), key=_key)
        if self.world.loc != appliance.loc:
            self.do(
                f"Next I {verb} the {thing.name} with the {appliance.name}.",
                f"go to {appliance.name}",
            )
        self.do(
            f"I {verb} the {thing.name} with the {appliance.name}.",
            f"{verb} {thing.name} with {appliance.name}",
        )

    def run(self) -> list[Step]:
        world, goal = self.world, self.goal
        targets = self.targets()
        if goal.task_type == "look_at_obj_in_light":
            self.look_in_light(targets[0])
            return self.steps
        dest = min((r for r in world.receptacles.values() if r.kind == goal.recep), key=_key)
        count = 2 if goal.task_type == "pick_two_obj_and_place" else 1
        for index, thing in enumerate(targets[:count]):
            thing = self.fetch(thing, first=index == 0)
            if goal.task_type in TRANSFORMS:
                self.transform(thing)
            self.reach(dest.name, f"Now I put the {thing.name} in the {dest.name}.")
            put = put_command(world, thing, dest.name)
            self.do(f"I put the {thing.name} in the {dest.name}.", put)
        return self.steps


def _key(item) -> tuple[str, int]:
    return (item.kind, item.number)


def put_command(world: World, thing: Thing, rec_name: str) -> str:
    if world.version == "0.3.3":
        return f"put {thing.name} in/on {rec_name}"
    return f"move {thing.name} to {rec_name}"


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


@dataclass
class Review:
    """A tip naming an attempt's first mistake, and the receptacle it says to look in first
    (None when it names no place)."""

    tip: str
    search_from: str | None = None


@dataclass
class _Sightings:
    """What an attempt has seen so far: the receptacles it looked into, in order, and the
    first receptacle that showed each kind of object."""

    listing: list[str]
    looked: list[str] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)

    def note(self, world: World, action: str) -> None:
        verb, _, name = action.partition(" ")
        name = name.removeprefix("to ")
        rec = world.receptacles.get(name)
        if verb not in ("go", "examine", "open") or rec is None:
            return
        if rec.openable and not rec.opened:
            return  # a closed receptacle shows nothing
        self.looked.append(name)
        for thing in world.contents(rec):
            self.first_seen.setdefault(thing.kind, name)

    def next_unseen(self) -> str:
        """Where a search in the room's order goes on: the first receptacle in that order
        the attempt has not looked into."""
        return next((name for name in self.listing if name not in self.looked), self.listing[0])


def critique(
    world: World, goal: Goal, actions: list[str], max_steps: int, observed: bool = False
) -> str | None:
    """A short tip naming the first thing ``actions`` got wrong, or None if they succeed."""
    found = review(world, goal, actions, max_steps, observed)
    return found.tip if found else None


def review(
    world: World, goal: Goal, actions: list[str], max_steps: int, observed: bool = False
) -> Review | None:
    """The first thing ``actions`` got wrong, or None if they succeed. With ``observed`` the
    tip uses only what the attempt itself saw (what a critic reading its trajectory could
    know): a place where it passed an object by, or where to continue the search; otherwise
    it names where an object is."""
    transform = TRANSFORMS.get(goal.task_type)
    seen = _Sightings(world.listing()) if observed else None
    for raw in actions[:max_steps]:
        action = raw.strip()
        if seen is not None and _beside(world, action):
            continue  # how a search learns that a receptacle stands where it is: no mistake
        if action not in world.commands():
            words = action.split()
            if (
                action.startswith("take ")
                and " from " in action
                and words[1] == goal.obj
                and world.held is None
            ):
                place = action.split(" from ", 1)[1]
                where, start = _where(world, goal.obj, seen)
                return Review(f"There is no {goal.obj} at the {place}; {where}.", start)
            return Review(f'"{action}" was not an admissible command then, so nothing happened.')
        if action.startswith("take "):
            name = action[len("take ") :].split(" from ")[0]
            if world.things[name].kind != goal.obj:
                return Review(f"You picked up the {name}, but the task needs a {goal.obj}.")
        if world.held and action.startswith(("put ", "move ")):
            tip = _put_mistake(world, goal, world.things[world.held], action.rsplit(" ", 2))
            if tip:
                return Review(tip)
        world.act(action)
        if seen is not None:
            seen.note(world, action)
        if world.satisfied(goal):
            return None
    return _missing_step(world, goal, transform, seen)


def _beside(world: World, action: str) -> bool:
    """Whether ``action`` is "go to R" for a receptacle R at the agent's own place."""
    rec = (
        world.receptacles.get(action.removeprefix("go to "))
        if action.startswith("go to ")
        else None
    )
    return rec is not None and rec.loc == world.loc


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


def _missing_step(
    world: World, goal: Goal, transform: tuple[str, str] | None, seen: _Sightings | None
) -> Review:
    held = world.things[world.held] if world.held else None
    if goal.task_type == "look_at_obj_in_light":
        lamp = next(t for t in world.things.values() if t.kind == goal.recep)
        if held is None:
            where, start = _where(world, goal.obj, seen)
            return Review(f"You never picked up a {goal.obj}; {where}.", start)
        return Review(
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
                return Review(
                    f"The {held.name} was never {PAST[verb]}; {verb} it with the {appliance}."
                )
        return Review(f"You never put the {held.name} in a {goal.recep}.")
    if goal.task_type == "pick_two_obj_and_place" and placed:
        where, start = _where(world, goal.obj, seen, exclude=placed[0].where)
        return Review(
            f"Only one {goal.obj} is in the {placed[0].where}; find a second one "
            f"({where}) and put it there too.",
            start,
        )
    where, start = _where(world, goal.obj, seen)
    return Review(f"You never picked up a {goal.obj}; {where}.", start)


def _where(
    world: World, kind: str, seen: _Sightings | None, exclude: str | None = None
) -> tuple[str, str | None]:
    """Where to find a ``kind`` (text, and the receptacle to go to first): where one is, or,
    from what the attempt saw, where it passed one by or where to go on searching."""
    if seen is not None:
        place = seen.first_seen.get(kind)
        if place is not None and place != exclude:
            return f"there is one in the {place}", place
        start = seen.next_unseen()
        return f"search on from the {start}", start
    for thing in sorted(world.things.values(), key=_key):
        if thing.kind == kind and thing.where and thing.where != exclude:
            return f"there is one in the {thing.where}", thing.where
    return f"look for a {kind}", None


def flawed_steps(
    world: World, goal: Goal, rng: random.Random, search_from: str | None = None
) -> list[Step]:
    """A plausible failing trajectory: the expert's (searching from ``search_from``, if given)
    with one slip, for critic warm-starts. ``world`` must be fresh; it is consumed."""
    snapshot = _clone(world)
    steps = plan(world, goal, search_from)
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
        return plan(snapshot, wrong, search_from)
    except LookupError:  # every such object already sits in the wrong kind: just stop short
        return steps[:-1]


def _clone(world: World) -> World:
    copy = World.__new__(World)
    copy.__dict__.update(world.__dict__)
    copy.receptacles = {k: type(v)(**v.__dict__) for k, v in world.receptacles.items()}
    copy.things = {k: type(v)(**v.__dict__) for k, v in world.things.items()}
    return copy


__all__ = ["Review", "critique", "flawed_steps", "parse_actions", "plan", "render_steps", "review"]
