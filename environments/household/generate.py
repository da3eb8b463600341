"""Seeded floor plans, scenes and goals, and the three fixed splits built from them."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import cache, lru_cache

from environments.household.catalog import (
    CAN_CONTAIN,
    CAPABLE,
    LAMP_HOSTS,
    OPENABLE,
    ROOM_LAMPS,
    ROOM_OBJECTS,
    ROOM_RECEPTACLES,
    ROOMS,
    TASK_TYPES,
    TEMPLATES,
    TRANSFORMS,
    TYPE_ROOMS,
)
from environments.household.world import Goal, Scene

SPLITS = ("train", "eval_in_distribution", "eval_out_of_distribution")
# ALFWorld's sizes: train, valid_seen and valid_unseen (reference §8).
SPLIT_SIZES = {"train": 3553, "eval_in_distribution": 140, "eval_out_of_distribution": 134}
# Task-type mix of ALFWorld's training games (AgentGym's train counts, reference §8).
TYPE_WEIGHTS = {
    "pick_and_place_simple": 672,
    "pick_clean_then_place_in_recep": 448,
    "pick_cool_then_place_in_recep": 394,
    "pick_two_obj_and_place": 389,
    "pick_heat_then_place_in_recep": 321,
    "look_at_obj_in_light": 196,
}
FLOORPLANS = 30  # per room family, like ALFRED's FloorPlan1-30, 201-230, …
UNSEEN_FLOORPLANS = range(26, 31)  # only in the out-of-distribution split, like valid_unseen
HELD_OUT_SHARE = 0.15  # of each (task type, room) stratum's object/receptacle combinations


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to rebuild a task's world: its scene and its goal."""

    task_type: str
    obj: str
    recep: str  # the lamp kind for look_at_obj_in_light
    room: str
    floorplan: int
    scene_seed: int
    template: int

    @property
    def goal(self) -> Goal:
        return Goal(self.task_type, self.obj, self.recep)

    @property
    def goal_text(self) -> str:
        return TEMPLATES[self.task_type][self.template].format(obj=self.obj, recep=self.recep)

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.obj, self.recep, self.room)

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def floorplan(seed: int, room: str, number: int) -> tuple[tuple[tuple[str, int], ...], tuple]:
    """Receptacle counts, a few pairs that share a location, and the lamp kinds of one plan."""
    rng = random.Random(f"household-plan-{seed}-{room}-{number}")
    counts = tuple(
        (kind, rng.randint(low, high)) for kind, (low, high) in ROOM_RECEPTACLES[room].items()
    )
    lamps = ROOM_LAMPS.get(room, ())
    chosen = tuple(lamp for lamp in lamps if rng.random() < 0.6) or lamps[:1]
    return counts, chosen


@lru_cache(maxsize=4096)
def build_scene(seed: int, room: str, number: int, scene_seed: int) -> Scene:
    """The layout of one game: floor-plan receptacles, shuffled locations, placed objects."""
    counts, lamps = floorplan(seed, room, number)
    rng = random.Random(scene_seed)
    groups: list[list[tuple[str, int, bool]]] = []
    for kind, count in counts:
        for n in range(1, count + 1):
            # Some drawers are plain shelves you cannot open, as in some ALFRED scenes.
            openable = kind in OPENABLE and not (kind == "drawer" and rng.random() < 0.1)
            # Neighbouring cabinets and drawers sometimes share a spot ("cabinet 2, and 1").
            shares = kind in ("cabinet", "drawer") and n > 1 and rng.random() < 0.25
            if shares and groups[-1][-1][0] == kind and len(groups[-1]) == 1:
                groups[-1].append((kind, n, openable))
            else:
                groups.append([(kind, n, openable)])
    locs = list(range(1, len(groups) + 1))
    rng.shuffle(locs)
    receptacles = tuple(
        (kind, n, loc, openable)
        for group, loc in zip(groups, locs, strict=True)
        for kind, n, openable in group
    )
    names_by_kind: dict[str, list[str]] = {}
    for kind, n, _, _ in receptacles:
        names_by_kind.setdefault(kind, []).append(f"{kind} {n}")
    objects: list[tuple[str, int, str]] = []
    pool = ROOM_OBJECTS[room]
    for kind in sorted(rng.sample(pool, k=max(3, int(len(pool) * 0.6)))):
        hosts = [
            name for k, names in names_by_kind.items() if kind in CAN_CONTAIN[k] for name in names
        ]
        if not hosts:
            continue
        for n in range(1, rng.choice((1, 1, 2, 2, 3)) + 1):
            objects.append((kind, n, rng.choice(hosts)))
    for lamp in lamps:
        hosts = [name for k in LAMP_HOSTS[lamp] for name in names_by_kind.get(k, [])]
        objects.append((lamp, 1, rng.choice(hosts)))
    return Scene(receptacles, tuple(objects))


def _combinations(task_type: str, room: str) -> list[tuple[str, str, str]]:
    """Every (object, receptacle-or-lamp, room) a task of this type could name in this room."""
    objects = ROOM_OBJECTS[room]
    if task_type == "look_at_obj_in_light":
        return [(o, lamp, room) for o in objects for lamp in ROOM_LAMPS[room]]
    able = CAPABLE[TRANSFORMS[task_type][0]] if task_type in TRANSFORMS else None
    return [
        (o, r, room)
        for o in objects
        if able is None or o in able
        for r in ROOM_RECEPTACLES[room]
        if o in CAN_CONTAIN[r]
    ]


@cache
def held_out(seed: int) -> frozenset[tuple[str, str, str]]:
    """Object/receptacle/room combinations reserved for the out-of-distribution split."""
    rng = random.Random(f"household-held-out-{seed}")
    chosen: set[tuple[str, str, str]] = set()
    for task_type in TASK_TYPES:
        for room in TYPE_ROOMS[task_type]:
            combos = _combinations(task_type, room)
            chosen.update(rng.sample(combos, k=max(1, round(HELD_OUT_SHARE * len(combos)))))
    return frozenset(chosen)


def candidates(scene: Scene, task_type: str, room: str) -> list[tuple[str, str]]:
    """(object, receptacle) goals that are solvable and not already met in ``scene``."""
    counts: dict[str, int] = {}
    hosts: dict[str, set[str]] = {}
    rec_kind = {f"{kind} {n}": kind for kind, n, _, _ in scene.receptacles}
    for kind, _, where in scene.objects:
        counts[kind] = counts.get(kind, 0) + 1
        hosts.setdefault(kind, set()).add(rec_kind[where])
    present = set(rec_kind.values())
    if task_type == "look_at_obj_in_light":
        lamps = [k for k in counts if k in LAMP_HOSTS]
        return [(o, lamp) for o in ROOM_OBJECTS[room] if o in counts for lamp in lamps]
    if task_type in TRANSFORMS:
        verb, appliance = TRANSFORMS[task_type]
        if appliance not in present:
            return []
    need = 2 if task_type == "pick_two_obj_and_place" else 1
    able = CAPABLE[TRANSFORMS[task_type][0]] if task_type in TRANSFORMS else None
    return [
        (o, r)
        for o in ROOM_OBJECTS[room]
        if counts.get(o, 0) >= need and (able is None or o in able)
        for r in sorted(present)
        if o in CAN_CONTAIN[r] and r not in hosts[o]  # the goal must not hold from the start
    ]


def _quotas(total: int) -> dict[str, int]:
    weight_sum = sum(TYPE_WEIGHTS.values())
    exact = {t: total * w / weight_sum for t, w in TYPE_WEIGHTS.items()}
    quotas = {t: int(x) for t, x in exact.items()}
    # Largest remainders get the leftover tasks, so the quotas sum to ``total`` exactly.
    for t in sorted(exact, key=lambda t: quotas[t] - exact[t])[: total - sum(quotas.values())]:
        quotas[t] += 1
    return quotas


@lru_cache(maxsize=8)
def build_splits(seed: int = 0) -> dict[str, tuple[TaskSpec, ...]]:
    """The three splits, disjoint and fixed by ``seed``; out-of-distribution tasks use only
    held-out combinations and unseen floor plans, the other two never do."""
    rng = random.Random(f"household-splits-{seed}")
    reserved = held_out(seed)
    seen: set[tuple] = set()
    splits: dict[str, tuple[TaskSpec, ...]] = {}
    for split in SPLITS:
        ood = split == "eval_out_of_distribution"
        plans = list(UNSEEN_FLOORPLANS) if ood else list(range(1, UNSEEN_FLOORPLANS[0]))
        specs: list[TaskSpec] = []
        for task_type, quota in _quotas(SPLIT_SIZES[split]).items():
            made = 0
            while made < quota:
                room = rng.choice(TYPE_ROOMS[task_type])
                number, scene_seed = rng.choice(plans), rng.getrandbits(32)
                scene = build_scene(seed, room, number, scene_seed)
                options = [
                    (o, r)
                    for o, r in candidates(scene, task_type, room)
                    if ((o, r, room) in reserved) == ood
                ]
                if not options:
                    continue
                obj, recep = rng.choice(options)
                spec = TaskSpec(task_type, obj, recep, room, number, scene_seed, rng.randrange(2))
                key = (task_type, obj, recep, room, number, scene_seed)  # template aside
                if key in seen:
                    continue
                seen.add(key)
                specs.append(spec)
                made += 1
        rng.shuffle(specs)
        splits[split] = tuple(specs)
    return splits


def training_like(seed: int, count: int, task_types: list[str], draw: int = 0) -> list[TaskSpec]:
    """``count`` more tasks drawn as the train split's are (seen floor plans, combinations
    that are not held out), none of them in any split: demonstrations for a warm start that
    needs more worlds than the train split has. ``draw`` picks another, disjoint-in-practice
    sample."""
    rng = random.Random(f"household-training-like-{seed}-{draw}")
    reserved = held_out(seed)
    taken = {
        (s.task_type, s.obj, s.recep, s.room, s.floorplan, s.scene_seed)
        for specs in build_splits(seed).values()
        for s in specs
    }
    plans = list(range(1, UNSEEN_FLOORPLANS[0]))
    specs: list[TaskSpec] = []
    while len(specs) < count:
        task_type = task_types[len(specs) % len(task_types)]
        room = rng.choice(TYPE_ROOMS[task_type])
        number, scene_seed = rng.choice(plans), rng.getrandbits(32)
        scene = build_scene(seed, room, number, scene_seed)
        options = [
            (o, r) for o, r in candidates(scene, task_type, room) if (o, r, room) not in reserved
        ]
        if not options:
            continue
        obj, recep = rng.choice(options)
        key = (task_type, obj, recep, room, number, scene_seed)
        if key in taken:
            continue
        taken.add(key)
        specs.append(TaskSpec(task_type, obj, recep, room, number, scene_seed, rng.randrange(2)))
    return specs


def split_summary(seed: int = 0) -> dict[str, dict[str, int]]:
    """Per split: its size under "total" and its task count per type (for the README)."""
    summary = {}
    for split, specs in build_splits(seed).items():
        row = {"total": len(specs)}
        for task_type in TASK_TYPES:
            row[task_type] = sum(spec.task_type == task_type for spec in specs)
        summary[split] = row
    return summary


def scene_for(seed: int, spec: TaskSpec) -> Scene:
    return build_scene(seed, spec.room, spec.floorplan, spec.scene_seed)


__all__ = [
    "ROOMS",
    "SPLITS",
    "TaskSpec",
    "build_splits",
    "held_out",
    "scene_for",
    "split_summary",
    "training_like",
]
