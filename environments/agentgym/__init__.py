"""Serve icrl environments over AgentGym's HTTP API, and talk to AgentGym servers."""

from environments.agentgym.client import AgentGymClient, RemoteEpisode
from environments.agentgym.server import create_app, serve

__all__ = ["AgentGymClient", "RemoteEpisode", "create_app", "serve"]
