"""Static ALFWorld facts: task types, goal templates, object capabilities, receptacles, rooms."""

from __future__ import annotations

# Ordered by ALFWorld's task-type ids 1..6.
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

TEMPLATES = {
    "pick_and_place_simple": ("put a {obj} in {recep}", "put some {obj} on {recep}"),
    "pick_clean_then_place_in_recep": (
        "put a clean {obj} in {recep}",
        "clean some {obj} and put it in {recep}",
    ),
    "pick_heat_then_place_in_recep": (
        "put a hot {obj} in {recep}",
        "heat some {obj} and put it in {recep}",
    ),
    "pick_cool_then_place_in_recep": (
        "put a cool {obj} in {recep}",
        "cool some {obj} and put it in {recep}",
    ),
    "pick_two_obj_and_place": (
        "put two {obj} in {recep}",
        "find two {obj} and put them in {recep}",
    ),
    "look_at_obj_in_light": (
        "look at {obj} under the {recep}",
        "examine the {obj} with the {recep}",
    ),
}

# Which appliance does the transformation, and the verb of its command.
TRANSFORMS = {
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin"),
    "pick_heat_then_place_in_recep": ("heat", "microwave"),
    "pick_cool_then_place_in_recep": ("cool", "fridge"),
}

HEATABLE = frozenset("apple bread cup egg mug plate potato tomato".split())
COOLABLE = frozenset(
    "apple bowl bread cup egg lettuce mug pan plate pot potato tomato winebottle".split()
)
CLEANABLE = frozenset(
    "apple bowl butterknife cloth cup dishsponge egg fork kettle knife ladle lettuce mug pan "
    "plate pot potato soapbar spatula spoon tomato".split()
)
CAPABLE = {"clean": CLEANABLE, "heat": HEATABLE, "cool": COOLABLE}
LAMPS = frozenset({"desklamp", "floorlamp"})
OPENABLE = frozenset({"fridge", "cabinet", "microwave", "drawer", "safe"})

# Objects each scene family stocks; a scene draws a subset of them.
ROOM_OBJECTS = {
    "kitchen": (
        "apple bowl bread butterknife cup dishsponge egg fork glassbottle kettle knife ladle "
        "lettuce mug pan peppershaker plate pot potato saltshaker soapbottle spatula spoon "
        "tomato winebottle"
    ).split(),
    "bathroom": (
        "candle cloth dishsponge handtowel plunger soapbar soapbottle spraybottle tissuebox "
        "toiletpaper towel"
    ).split(),
    "bedroom": (
        "alarmclock baseballbat basketball book bowl box cd cellphone creditcard keychain laptop "
        "mug pen pencil pillow remotecontrol statue tennisracket vase watch"
    ).split(),
    "livingroom": (
        "book box cellphone creditcard keychain laptop newspaper pillow plate remotecontrol "
        "statue tissuebox vase watch wateringcan"
    ).split(),
}
PICKUPABLE = frozenset(name for names in ROOM_OBJECTS.values() for name in names)

_TABLE = PICKUPABLE - {"towel", "plunger"}  # "almost everything" in the reference
_SOFA = frozenset(
    "basketball book box cellphone cloth creditcard keychain laptop newspaper pillow "
    "remotecontrol".split()
)
_DESK = frozenset(
    "alarmclock baseballbat basketball book bowl box cd candle cellphone creditcard cup keychain "
    "laptop mug newspaper pen pencil plate remotecontrol soapbottle spraybottle statue "
    "tennisracket tissuebox vase watch".split()
)

CAN_CONTAIN: dict[str, frozenset[str]] = {
    "countertop": _TABLE,
    "diningtable": _TABLE,
    "sidetable": _TABLE,
    "coffeetable": _TABLE,
    "cabinet": frozenset(
        "book bowl box cd candle cloth cup dishsponge glassbottle handtowel kettle ladle mug "
        "newspaper pan peppershaker plate plunger pot saltshaker soapbar soapbottle spraybottle "
        "tissuebox toiletpaper vase wateringcan winebottle".split()
    ),
    "drawer": frozenset(
        "book butterknife cd candle cellphone cloth creditcard dishsponge fork handtowel keychain "
        "knife ladle newspaper pen pencil peppershaker remotecontrol saltshaker soapbar "
        "soapbottle spatula spoon spraybottle tissuebox toiletpaper watch wateringcan".split()
    ),
    "fridge": frozenset(
        "apple bowl bread cup egg glassbottle lettuce mug pan plate pot potato tomato "
        "winebottle".split()
    ),
    "microwave": frozenset("apple bowl bread cup egg glassbottle mug plate potato tomato".split()),
    "sinkbasin": frozenset(
        "apple bowl butterknife cloth cup dishsponge egg fork glassbottle handtowel kettle knife "
        "ladle lettuce mug pan plate pot potato soapbar spatula spoon tomato".split()
    ),
    "bathtubbasin": frozenset("cloth dishsponge handtowel soapbar".split()),
    "stoveburner": frozenset("kettle pan pot".split()),
    "coffeemachine": frozenset({"mug"}),
    "toaster": frozenset(),
    "garbagecan": frozenset(
        "apple bread cd cloth dishsponge egg handtowel lettuce newspaper pen pencil potato "
        "soapbar soapbottle spraybottle tissuebox toiletpaper tomato winebottle".split()
    ),
    "shelf": frozenset(
        "alarmclock book bowl box cd candle cellphone cloth creditcard cup glassbottle kettle "
        "keychain mug pen pencil plate pot remotecontrol soapbottle spraybottle statue tissuebox "
        "vase watch winebottle".split()
    ),
    "desk": _DESK,
    "dresser": _DESK,
    "bed": frozenset(
        "baseballbat basketball book cellphone laptop newspaper pillow tennisracket".split()
    ),
    "sofa": _SOFA,
    "armchair": _SOFA,
    "safe": frozenset("cd cellphone creditcard keychain statue vase watch".split()),
    "toilet": frozenset(
        "candle cloth dishsponge handtowel newspaper soapbar soapbottle spraybottle tissuebox "
        "toiletpaper".split()
    ),
    "toiletpaperhanger": frozenset({"toiletpaper"}),
    "towelholder": frozenset({"towel"}),
    "handtowelholder": frozenset({"handtowel"}),
    "laundryhamper": frozenset({"cloth"}),
}

# Receptacle kinds per scene family with (fewest, most) instances; a floor plan draws counts.
ROOM_RECEPTACLES: dict[str, dict[str, tuple[int, int]]] = {
    "kitchen": {
        "cabinet": (4, 16),
        "coffeemachine": (1, 1),
        "countertop": (1, 3),
        "diningtable": (0, 1),
        "drawer": (1, 9),
        "fridge": (1, 1),
        "garbagecan": (1, 1),
        "microwave": (1, 1),
        "shelf": (0, 3),
        "sinkbasin": (1, 1),
        "stoveburner": (4, 4),
        "toaster": (1, 1),
    },
    "bathroom": {
        "bathtubbasin": (0, 1),
        "cabinet": (2, 4),
        "countertop": (1, 1),
        "drawer": (0, 4),
        "dresser": (0, 1),
        "garbagecan": (1, 1),
        "handtowelholder": (1, 1),
        "shelf": (0, 3),
        "sinkbasin": (1, 2),
        "toilet": (1, 1),
        "toiletpaperhanger": (1, 1),
        "towelholder": (1, 1),
    },
    "bedroom": {
        "bed": (1, 1),
        "desk": (0, 1),
        "drawer": (3, 10),
        "dresser": (0, 1),
        "garbagecan": (1, 1),
        "laundryhamper": (0, 1),
        "safe": (0, 1),
        "shelf": (1, 9),
        "sidetable": (1, 2),
    },
    "livingroom": {
        "armchair": (0, 1),
        "cabinet": (0, 4),
        "coffeetable": (1, 1),
        "diningtable": (0, 1),
        "drawer": (0, 4),
        "dresser": (0, 1),
        "garbagecan": (1, 1),
        "shelf": (0, 3),
        "sidetable": (1, 2),
        "sofa": (1, 1),
    },
}
ROOMS = tuple(ROOM_RECEPTACLES)

# Where a lamp may stand; every room that offers look tasks has a sidetable.
LAMP_HOSTS = {
    "desklamp": ("desk", "sidetable", "dresser"),
    "floorlamp": ("sidetable", "armchair", "sofa"),
}
ROOM_LAMPS = {"bedroom": ("desklamp", "floorlamp"), "livingroom": ("floorlamp", "desklamp")}

# The rooms each task type can be posed in (the transforming appliance must exist there).
TYPE_ROOMS = {
    "pick_and_place_simple": ROOMS,
    "pick_two_obj_and_place": ROOMS,
    "pick_clean_then_place_in_recep": ("kitchen", "bathroom"),
    "pick_heat_then_place_in_recep": ("kitchen",),
    "pick_cool_then_place_in_recep": ("kitchen",),
    "look_at_obj_in_light": ("bedroom", "livingroom"),
}
