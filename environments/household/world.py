"""The household world's state, its admissible commands and ALFWorld's exact feedback text."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from environments.household.catalog import CAN_CONTAIN, CAPABLE, LAMPS, PICKUPABLE

NOTHING_HAPPENS = "Nothing happens."


@dataclass(frozen=True)
class Scene:
    """An initial layout: receptacles as (kind, number, location, openable) and objects as
    (kind, number, receptacle name)."""

    receptacles: tuple[tuple[str, int, int, bool], ...]
    objects: tuple[tuple[str, int, str], ...]


@dataclass(frozen=True)
class Goal:
    """A task type with its object kind and its receptacle kind (the lamp kind for looking)."""

    task_type: str
    obj: str
    recep: str


@dataclass
class Receptacle:
    kind: str
    number: int
    loc: int
    openable: bool
    opened: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind} {self.number}"


@dataclass
class Thing:
    kind: str
    number: int
    where: str | None  # a receptacle's name; None while the agent holds it
    hot: bool = False
    cool: bool = False
    clean: bool = False
    on: bool = False
    toggled: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind} {self.number}"


def _order(items: Iterable[Receptacle | Thing]) -> list[str]:
    # Grouped by type alphabetically, instance numbers descending (reference §3.2).
    return [item.name for item in sorted(items, key=lambda item: (item.kind, -item.number))]


def render_list(names: list[str]) -> str:
    """ALFWorld's list text: always "a", an Oxford ", and" even for two, "nothing" when empty."""
    items = [f"a {name}" for name in names]
    if not items:
        return "nothing"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + ", and " + items[-1]


class World:
    """Mutable state of one episode. ``version`` picks the 0.3.3 ``put O in/on R`` command or
    the ≥0.4 ``move O to R``; ``arrival`` keeps the "You arrive at …" prefix that the original
    AgentGym server strips."""

    def __init__(self, scene: Scene, version: str = "0.3.3", arrival: bool = False):
        self.version = version
        self.arrival = arrival
        self.receptacles = {
            f"{kind} {number}": Receptacle(kind, number, loc, openable)
            for kind, number, loc, openable in scene.receptacles
        }
        self.things = {
            f"{kind} {number}": Thing(kind, number, where) for kind, number, where in scene.objects
        }
        self.loc: int | None = None  # None: the middle of the room, before the first "go to"
        self.held: str | None = None

    # -- text -------------------------------------------------------------------------------

    def contents(self, rec: Receptacle) -> list[Thing]:
        return [t for t in self.things.values() if t.where == rec.name]

    def describe(self, rec: Receptacle) -> str:
        """What arriving at or examining ``rec`` shows."""
        listing = render_list(_order(self.contents(rec)))
        if not rec.openable:
            return f"On the {rec.name}, you see {listing}."
        if not rec.opened:
            return f"The {rec.name} is closed."
        return f"The {rec.name} is open. In it, you see {listing}."

    def listing(self) -> list[str]:
        """Receptacle names in the order the room lists them on arrival."""
        return _order(self.receptacles.values())

    def intro(self) -> str:
        listing = render_list(self.listing())
        return f"You are in the middle of a room. Looking quickly around you, you see {listing}."

    def look(self) -> str:
        if self.loc is None:
            return self.intro()
        here = _order(self.here())
        facing = here[0] if len(here) == 1 else ", ".join(here[:-1]) + ", and " + here[-1]
        return f"You are facing the {facing}. Next to it, you see nothing."

    def examine_thing(self, thing: Thing) -> str:
        if thing.kind in LAMPS:
            return f"This {thing.name} is {'on' if thing.on else 'off'}."
        if thing.hot and thing.clean:
            return f"This is a hot and clean {thing.name}."
        if thing.cool and thing.clean:
            return f"This is a cool and clean {thing.name}."
        if thing.hot:
            return f"This is a hot {thing.name}."
        if thing.cool:  # "cold" here but "cool" above is ALFWorld's own inconsistency
            return f"This is a cold {thing.name}."
        if thing.clean:
            return f"This is a clean {thing.name}."
        return f"There's nothing special about {thing.name}."

    def inventory(self) -> str:
        if self.held is None:
            return "You are not carrying anything."
        return f"You are carrying: {render_list([self.held])}."

    # -- commands ---------------------------------------------------------------------------

    def here(self) -> list[Receptacle]:
        return [r for r in self.receptacles.values() if r.loc == self.loc]

    def commands(self) -> dict[str, Callable[[], str]]:
        """Every admissible command mapped to the function that performs it."""
        table: dict[str, Callable[[], str]] = {"look": self.look, "inventory": self.inventory}
        for rec in self.receptacles.values():
            if rec.loc != self.loc:
                table[f"go to {rec.name}"] = lambda r=rec: self._go(r)
        held = self.things[self.held] if self.held else None
        for rec in self.here():
            table[f"examine {rec.name}"] = lambda r=rec: self.describe(r)
            if rec.openable:
                if rec.opened:
                    table[f"close {rec.name}"] = lambda r=rec: self._close(r)
                else:
                    table[f"open {rec.name}"] = lambda r=rec: self._open(r)
            if held is not None:
                self._held_commands(table, held, rec)
            if rec.openable and not rec.opened:
                continue  # a closed receptacle hides its contents
            for thing in self.contents(rec):
                table[f"examine {thing.name}"] = lambda t=thing: self.examine_thing(t)
                if thing.kind in LAMPS:
                    table[f"use {thing.name}"] = lambda t=thing: self._use(t)
                elif held is None and thing.kind in PICKUPABLE:
                    table[f"take {thing.name} from {rec.name}"] = lambda t=thing, r=rec: self._take(
                        t, r
                    )
        if held is not None:
            table[f"examine {held.name}"] = lambda: self.examine_thing(held)
        return table

    def _held_commands(
        self, table: dict[str, Callable[[], str]], held: Thing, rec: Receptacle
    ) -> None:
        if (not rec.openable or rec.opened) and held.kind in CAN_CONTAIN.get(rec.kind, ()):
            if self.version == "0.3.3":
                table[f"put {held.name} in/on {rec.name}"] = lambda: self._put(held, rec)
            else:
                table[f"move {held.name} to {rec.name}"] = lambda: self._put(held, rec)
        # Appliances work closed (reference §4.2); a bathtubbasin does not clean.
        for verb, appliance in (("heat", "microwave"), ("cool", "fridge"), ("clean", "sinkbasin")):
            if rec.kind == appliance and held.kind in CAPABLE[verb]:
                table[f"{verb} {held.name} with {rec.name}"] = lambda v=verb: self._transform(
                    v, held, rec
                )

    def admissible(self) -> list[str]:
        return sorted(self.commands())

    def act(self, command: str) -> str:
        """Run ``command`` if it is exactly admissible (after strip), else "Nothing happens."."""
        perform = self.commands().get(command.strip())
        return perform() if perform else NOTHING_HAPPENS

    def _go(self, rec: Receptacle) -> str:
        self.loc = rec.loc
        if not self.arrival:
            return self.describe(rec)
        where = f"loc {rec.loc}" if self.version == "0.3.3" else rec.name
        return f"You arrive at {where}. {self.describe(rec)}"

    def _open(self, rec: Receptacle) -> str:
        rec.opened = True
        listing = render_list(_order(self.contents(rec)))
        return f"You open the {rec.name}. The {rec.name} is open. In it, you see {listing}."

    def _close(self, rec: Receptacle) -> str:
        rec.opened = False
        return f"You close the {rec.name}."

    def _take(self, thing: Thing, rec: Receptacle) -> str:
        thing.where = None
        self.held = thing.name
        return f"You pick up the {thing.name} from the {rec.name}."

    def _put(self, thing: Thing, rec: Receptacle) -> str:
        thing.where = rec.name
        self.held = None
        if self.version == "0.3.3":
            return f"You put the {thing.name} in/on the {rec.name}."
        return f"You move the {thing.name} to the {rec.name}."

    def _transform(self, verb: str, thing: Thing, rec: Receptacle) -> str:
        if verb == "heat":
            thing.hot, thing.cool = True, False
        elif verb == "cool":
            thing.cool, thing.hot = True, False
        else:
            thing.clean = True
        return f"You {verb} the {thing.name} using the {rec.name}."

    def _use(self, lamp: Thing) -> str:
        lamp.on = not lamp.on
        lamp.toggled = True
        # 0.3.3 always prints "turn on", whatever the new state (reference §3.4).
        return f"You turn on the {lamp.name}."

    # -- goal -------------------------------------------------------------------------------

    def satisfied(self, goal: Goal) -> bool:
        """ALFWorld's goal condition for ``goal`` in the current state."""
        if goal.task_type == "look_at_obj_in_light":
            if self.held is None or self.things[self.held].kind != goal.obj:
                return False
            here = {r.name for r in self.here()}
            return any(
                t.kind == goal.recep and t.toggled and t.where in here for t in self.things.values()
            )
        placed: dict[str, int] = {}
        for thing in self.things.values():
            if thing.kind != goal.obj or thing.where is None:
                continue
            if self.receptacles[thing.where].kind != goal.recep:
                continue
            if goal.task_type == "pick_clean_then_place_in_recep" and not thing.clean:
                continue
            if goal.task_type == "pick_heat_then_place_in_recep" and not thing.hot:
                continue
            if goal.task_type == "pick_cool_then_place_in_recep" and not thing.cool:
                continue
            placed[thing.where] = placed.get(thing.where, 0) + 1
        need = 2 if goal.task_type == "pick_two_obj_and_place" else 1
        return any(count >= need for count in placed.values())
