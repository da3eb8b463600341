"""Serve icrl environments over AgentGym's HTTP API, and talk to AgentGym servers."""

from environments.agentgym.client import AgentGymClient, RemoteEpisode
from environments.agentgym.environment import AgentGymEnvironment, AgentGymEpisode, expand_urls
from environments.agentgym.server import create_app, serve

__all__ = [
    "AgentGymClient",
    "AgentGymEnvironment",
    "AgentGymEpisode",
    "RemoteEpisode",
    "create_app",
    "expand_urls",
    "serve",
]
