"""Serve icrl environments over AgentGym's HTTP API, and talk to AgentGym servers."""

from environments.agentgym.client import AgentGymClient, RemoteEpisode
from environments.agentgym.environment import AgentGymEnvironment, AgentGymEpisode, expand_urls


def __getattr__(name: str):
    # The server pulls in FastAPI (half a second); only `icrl env serve` and tests need it.
    if name in ("create_app", "serve"):
        from environments.agentgym import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AgentGymClient",
    "AgentGymEnvironment",
    "AgentGymEpisode",
    "RemoteEpisode",
    "create_app",
    "expand_urls",
    "serve",
]
