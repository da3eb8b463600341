"""An httpx client for AgentGym servers (original or fork API) with remote episodes."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Literal

import httpx

from environments.base import EnvError, StepResult

# The original API's world types (the reset body's "world_type").
WORLD_TYPES = ("Text", "Embody", "Hybrid")

Protocol = Literal["original", "fork"]


class RemoteEpisode:
    """An episode living on one AgentGym server, used like a local :class:`Episode`."""

    def __init__(self, client: AgentGymClient, url: str, env_id: int, observation: str):
        self.client, self.url, self.env_id = client, url, env_id
        self._observation = observation
        self.available_actions: list[str] = []
        self.task_type: str | None = None
        self.done = False

    def initial_observation(self) -> str:
        return self._observation

    def admissible_commands(self) -> list[str]:
        return list(self.available_actions)

    def step(self, action: str) -> StepResult:
        return self.client.step(self, action)

    def close(self) -> None:
        self.client.close_episode(self)


class AgentGymClient:
    """Talks to AgentGym servers at ``base_urls``, giving each new episode the next URL in turn.

    ``protocol`` picks the API: "original" (``id``/``game``, errors as HTTP 200 with an
    "error" string) or "fork" (``env_id``/``task_id``, typed non-200 errors). Connection
    failures are retried ``retries`` times with exponential back-off from ``backoff`` seconds.
    """

    def __init__(
        self,
        base_urls: list[str],
        env_name: str,
        protocol: Protocol = "original",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        world_type: str = "Text",
        transport: httpx.BaseTransport | None = None,
    ):
        if not base_urls:
            raise EnvError("AgentGymClient needs at least one server URL")
        if protocol not in ("original", "fork"):
            raise EnvError(f"protocol must be 'original' or 'fork', not '{protocol}'")
        self.urls = [url.rstrip("/") for url in base_urls]
        self.env_name, self.protocol, self.world_type = env_name, protocol, world_type
        self.retries, self.backoff = retries, backoff
        self._turn = itertools.cycle(self.urls)
        self._turn_lock = threading.Lock()
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def _key(self) -> str:
        return "id" if self.protocol == "original" else "env_id"

    def _next_url(self) -> str:
        with self._turn_lock:
            return next(self._turn)

    def _post(self, url: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` and return the decoded JSON, raising one-line EnvErrors."""
        what = f"POST {url}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(url + path, json=body)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Only failures before the request reached the server are retried: resending a
                # step that may have run would act twice.
                if attempt == self.retries:
                    raise EnvError(
                        f"{self.env_name} server {url} unreachable: {what} failed "
                        f"{self.retries + 1} times ({type(exc).__name__}: {exc})"
                    ) from None
                time.sleep(self.backoff * 2**attempt)
            except httpx.HTTPError as exc:
                raise EnvError(f"{what} failed: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            raise EnvError(
                f"{what} gave HTTP {response.status_code} with a non-JSON body"
            ) from None
        error = data.get("error") if isinstance(data, dict) else None
        if error is not None or response.status_code != 200:
            if isinstance(error, dict):  # the fork's typed error
                error = f"{error.get('code')}: {error.get('message')}"
            raise EnvError(f"{what} gave HTTP {response.status_code}: {error or data}")
        return data

    def start(self, game: int) -> RemoteEpisode:
        """Create an environment on the next server and reset it to task index ``game``."""
        url = self._next_url()
        created = self._post(url, "/create")
        env_id = created[self._key()]
        if self.protocol == "original":
            body = {"id": env_id, "game": game, "world_type": self.world_type}
            data = self._post(url, "/reset", body)
            info = data
        else:
            body = {"env_id": env_id, "task_id": game, "world_type": self.world_type}
            data = self._post(url, "/reset", body)
            # The fork nests available_actions under info; accept the top level as well.
            info = {**data, **(data.get("info") or {})}
        episode = RemoteEpisode(self, url, env_id, data["observation"])
        episode.available_actions = list(info.get("available_actions") or [])
        episode.task_type = info.get("task_type")
        return episode

    def step(self, episode: RemoteEpisode, action: str) -> StepResult:
        """Send ``action`` for ``episode`` and return the server's result."""
        data = self._post(episode.url, "/step", {self._key(): episode.env_id, "action": action})
        info = {**data, **(data.get("info") or {})} if self.protocol == "fork" else data
        episode.available_actions = list(info.get("available_actions") or [])
        episode.done = bool(data["done"])
        extra = {"admissible_commands": episode.available_actions, "url": episode.url}
        return StepResult(data["observation"], float(data["reward"]), episode.done, extra)

    def close_episode(self, episode: RemoteEpisode) -> None:
        """Free the episode on its server (fork-style /close, which this package's server has)."""
        self._post(episode.url, "/close", {self._key(): episode.env_id})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentGymClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
