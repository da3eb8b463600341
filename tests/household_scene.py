"""A small hand-laid household scene the world and expert tests share."""

from environments.household.world import Scene


def small_scene() -> Scene:
    """A hand-built kitchen corner, so every feedback string can be checked word for word."""
    return Scene(
        receptacles=(
            ("cabinet", 1, 1, True),
            ("cabinet", 2, 1, True),  # shares location 1 with cabinet 1
            ("countertop", 1, 2, False),
            ("fridge", 1, 3, True),
            ("microwave", 1, 4, True),
            ("sinkbasin", 1, 5, False),
            ("drawer", 1, 6, False),  # a drawer that does not open
            ("sidetable", 1, 7, False),
        ),
        objects=(
            ("apple", 1, "countertop 1"),
            ("knife", 2, "countertop 1"),
            ("cup", 1, "fridge 1"),
            ("egg", 1, "fridge 1"),
            ("mug", 1, "cabinet 2"),
            ("soapbar", 3, "sidetable 1"),
            ("soapbar", 4, "sidetable 1"),
            ("desklamp", 1, "sidetable 1"),
        ),
    )
