"""The "agentgym" environment: tasks played on remote AgentGym servers (ALFWorld by default)."""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit

from environments.agentgym.client import WORLD_TYPES, AgentGymClient, RemoteEpisode
from environments.base import EnvError, EpisodeFailed, StepResult, Task, react_action, register
from environments.household import INSTRUCTIONS

DEFAULT_URL = "http://127.0.0.1:36001"
# AgentGym's ALFWorld game list (reference alfworld.md §8): 2420 train games, then the 200 test
# games ("AgentEval", drawn from ALFWorld's valid_train, not from valid_seen or valid_unseen).
ALFWORLD_SPLITS = {"train": [0, 2420], "test": [2420, 2620]}
# "scheme://host:first-last[/path]"; the host may be a bracketed IPv6 address.
_PORT_RANGE = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://(?:\[[^\]]*\]|[^/:\[\]]+)):(?P<first>\d+)-(?P<last>\d+)"
    r"(?P<tail>/.*)?"
)
# The client indexes the decoded JSON directly, so a reply that lacks a field or has the wrong
# shape surfaces as one of these rather than as an EnvError.
SERVER_FAILURES = (EnvError, KeyError, TypeError, ValueError, AttributeError)


def _checked_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        # .port raises ValueError on a port that is not a number in 0..65535.
        port_ok = parts.port is None or parts.port > 0
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
    except ValueError:
        valid = False
    if not valid:
        raise EnvError(
            f"agentgym url '{url}' is neither a URL like {DEFAULT_URL} "
            "nor a port range like http://127.0.0.1:36001-36032"
        )
    return url


def expand_urls(urls: list[str] | str) -> list[str]:
    """Server URLs with every port range "http://host:36001-36032" written out, one per port
    (both ends included)."""
    entries = list(urls) if isinstance(urls, (list, tuple)) else [urls]
    expanded: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise EnvError(f"agentgym urls must be strings, not {entry!r}")
        entry = entry.strip()
        match = _PORT_RANGE.fullmatch(entry)
        if match is None:
            expanded.append(_checked_url(entry))
            continue
        first, last = int(match["first"]), int(match["last"])
        if first > last:
            raise EnvError(f"agentgym url '{entry}' has a reversed port range ({first} > {last})")
        tail = match["tail"] or ""
        expanded += [_checked_url(f"{match['head']}:{p}{tail}") for p in range(first, last + 1)]
    if not expanded:
        raise EnvError("agentgym needs at least one server URL in urls")
    return expanded


def checked_splits(splits: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """``splits`` as name → (start, end) game indices, end excluded; bad bounds raise EnvError."""
    if not isinstance(splits, dict) or not splits:
        raise EnvError(f"agentgym splits must map split names to [start, end), not {splits!r}")
    checked = {}
    for name, bounds in splits.items():
        if (
            not isinstance(bounds, (list, tuple))
            or len(bounds) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        ):
            raise EnvError(f"agentgym split '{name}' must be [start, end) indices, not {bounds!r}")
        start, end = bounds
        if start < 0 or start >= end:
            raise EnvError(f"agentgym split '{name}' = [{start}, {end}) is empty or reversed")
        checked[name] = (start, end)
    return checked


def episode_failed(env_name: str, url: str, doing: str, exc: Exception) -> EpisodeFailed:
    """A one-line EpisodeFailed naming the server and what failed there."""
    if isinstance(exc, EnvError):
        detail = str(exc)
    else:
        detail = f"malformed reply ({type(exc).__name__}: {exc})"
    return EpisodeFailed(" ".join(f"{env_name} server {url} failed to {doing}: {detail}".split()))


class _Client(AgentGymClient):
    """The shared client, remembering per thread the server its last start() went to: a
    malformed reply fails before the episode that knows its URL exists."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._picked = threading.local()

    def _next_url(self) -> str:
        self._picked.url = super()._next_url()
        return self._picked.url

    def last_url(self) -> str:
        return getattr(self._picked, "url", "(no server picked)")


class AgentGymEpisode:
    """One episode on a remote server. A failing server raises EpisodeFailed; a finished
    episode is freed on its server at once. Safe to step from any thread."""

    def __init__(self, environment: AgentGymEnvironment, remote: RemoteEpisode):
        self.environment, self.remote = environment, remote
        self._lock = threading.Lock()
        self._closed = False

    def initial_observation(self) -> str:
        return self.remote.initial_observation()

    def admissible_commands(self) -> list[str]:
        return self.remote.admissible_commands()

    def step(self, action: str) -> StepResult:
        """Send the command in ``action`` (a ReAct reply or a bare command) to the server."""
        with self._lock:
            if self.remote.done or self._closed:
                raise EnvError(
                    f"episode {self.remote.env_id} on {self.remote.url} is over; start a new one"
                )
            try:
                result = self.remote.step(react_action(action))
                if not isinstance(result.observation, str):
                    raise TypeError(f"observation is {type(result.observation).__name__}")
            except SERVER_FAILURES as exc:
                # Abandoned: freeing it would only wait on the server that just failed.
                self._closed = True
                env_name = self.environment.env_name
                raise episode_failed(env_name, self.remote.url, "step", exc) from exc
        if result.done:
            self.close()
        return result

    def close(self) -> None:
        """Free the episode on its server, best effort; closing twice does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.environment.release(self.remote)


@register("agentgym")
class AgentGymEnvironment:
    """Tasks played on AgentGym servers over HTTP, ALFWorld's by default.

    Options (from ``[env.options]``):

    - ``urls``: server URLs, each a URL or a port range ``http://127.0.0.1:36001-36032`` (32
      servers); episodes go to them in turn. Default ``http://127.0.0.1:36001``.
    - ``env_name``: the server's environment, for messages and task ids. Default "alfworld".
    - ``protocol``: "original" (WooooDyy/AgentGym) or "fork" (brick-pid/AgentGym's API).
    - ``splits``: split name → [start, end) of game indices. Default AgentGym's ALFWorld list:
      train [0, 2420), test [2420, 2620) (the 200 test games).
    - ``timeout``: seconds per HTTP request (60); ``retries``: retries of a failed connection
      (3), waiting ``backoff`` seconds (0.5), doubled each time; ``world_type``: "Text".

    A server that fails mid-episode raises :class:`EpisodeFailed`, so training drops the
    episode and goes on. Nothing contacts a server until :meth:`start`.
    """

    name = "agentgym"
    multi_turn = True

    def __init__(
        self,
        urls: list[str] | str = DEFAULT_URL,
        env_name: str = "alfworld",
        protocol: str = "original",
        splits: dict[str, list[int]] | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        world_type: str = "Text",
    ):
        if not (timeout > 0 and retries >= 0 and backoff >= 0):
            raise EnvError(
                f"agentgym needs timeout > 0, retries >= 0 and backoff >= 0, "
                f"not {timeout}, {retries} and {backoff}"
            )
        if world_type not in WORLD_TYPES:
            raise EnvError(f"agentgym world_type must be one of {', '.join(WORLD_TYPES)}")
        self.urls = expand_urls(urls)
        self.env_name, self.protocol = env_name, protocol
        self._splits = checked_splits(ALFWORLD_SPLITS if splits is None else splits)
        self._client = _Client(self.urls, env_name, protocol, timeout, retries, backoff, world_type)
        self._without_close: set[str] = set()

    def splits(self) -> list[str]:
        return list(self._splits)

    def tasks(self, split: str) -> list[Task]:
        """One task per game index; its text arrives with the episode's first observation."""
        if split not in self._splits:
            raise EnvError(f"unknown split '{split}'; valid splits: {', '.join(self._splits)}")
        start, end = self._splits[split]
        return [Task(f"{self.env_name}-{g}", "", None, {"game": g}) for g in range(start, end)]

    def start(self, task: Task) -> AgentGymEpisode:
        """Create and reset an environment for ``task`` on the next server."""
        game = task.metadata.get("game")
        if not isinstance(game, int):
            raise EnvError(f"task {task.id} has no AgentGym game index; take tasks from tasks()")
        try:
            remote = self._client.start(game)
            if not isinstance(remote.initial_observation(), str):
                raise TypeError(f"observation is {type(remote.initial_observation()).__name__}")
        except SERVER_FAILURES as exc:
            url = self._client.last_url()
            raise episode_failed(self.env_name, url, f"start game {game}", exc) from exc
        return AgentGymEpisode(self, remote)

    def release(self, remote: RemoteEpisode) -> None:
        """Free ``remote`` on its server, best effort. The original AgentGym server has no
        /close, so under that protocol a URL whose /close failed once is not asked again."""
        if self.protocol == "original" and remote.url in self._without_close:
            return
        try:
            remote.close()
        except EnvError:
            if self.protocol == "original":
                self._without_close.add(remote.url)  # a race only costs one more /close

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def solver_instructions(self) -> str:
        return INSTRUCTIONS

    def demonstration(self, task: Task) -> None:
        return None

    def render_attempt(self, task: Task, attempt: str) -> str:
        return attempt

    def critique_demonstration(self, task: Task, attempt: str) -> None:
        return None
