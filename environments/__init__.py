"""Pluggable environments for icrl: the protocol, the registry and the built-in task families."""

# Importing the built-in families registers them.
from environments import agentgym as _agentgym  # noqa: E402,F401
from environments import household as _household  # noqa: E402,F401
from environments import math as _math  # noqa: E402,F401
from environments import searchqa as _searchqa  # noqa: E402,F401
from environments.base import (
    EnvError,
    Environment,
    Episode,
    EpisodeFailed,
    StepResult,
    Task,
    available,
    make,
    opening,
    react_action,
    register,
)

__all__ = [
    "Environment",
    "EnvError",
    "EpisodeFailed",
    "Episode",
    "StepResult",
    "Task",
    "available",
    "make",
    "opening",
    "react_action",
    "register",
]
