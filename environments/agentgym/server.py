"""An AgentGym-compatible HTTP server (original ALFWorld API) for any multi-turn environment.

Bounded: at most ``max_envs`` environment ids are open at once (ids idle for ``idle_seconds``
are given back when a new one is asked for), and request bodies over ``max_body_bytes`` are
refused unread (HTTP 413). Errors keep the original API's shape, ``{"error": message}``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from environments.agentgym.client import WORLD_TYPES
from environments.agentgym.limits import BodyLimit
from environments.base import EnvError, Environment, Episode, Task, make, opening

DEFAULT_PORT = 36001  # the port base of ICRL's README and AgentGym's launch line
MAX_ENVS = 1024
IDLE_SECONDS = 600.0
MAX_BODY_BYTES = 2**20


@dataclass
class Slot:
    """One environment id: its episode (None before the first reset) and its cached state."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    episode: Episode | None = None
    info: dict[str, Any] = field(
        default_factory=lambda: {"done": False, "reward": 0, "deleted": False}
    )
    used: float = field(default_factory=time.monotonic)  # when a request last named it


def game_list(env: Environment, eval_split: str | None = None) -> list[Task]:
    """The fixed task list ``game`` indexes: train tasks first, then the eval tasks (AgentGym's
    layout, where 0..2419 are train games and 2420..2619 the test games)."""
    splits = env.splits()
    if eval_split is None:
        evals = [s for s in splits if s != "train"]
        # ALFWorld's AgentGym config evaluates out of distribution; prefer that split when present.
        eval_split = (
            "eval_out_of_distribution" if "eval_out_of_distribution" in evals else evals[-1]
        )
    train = list(env.tasks("train")) if "train" in splits else []
    return train + list(env.tasks(eval_split))


def actions_of(episode: Episode, info: dict[str, Any] | None = None) -> list[str]:
    """Admissible commands, deduplicated and sorted as the original server sends them."""
    if info and "admissible_commands" in info:
        commands = info["admissible_commands"]
    elif hasattr(episode, "admissible_commands"):
        commands = episode.admissible_commands()
    else:
        commands = []
    return sorted(set(commands))


class BadRequest(Exception):
    """A request the original API answers with HTTP 200 and {"error": message}."""


async def body_of(request: Request, fields: dict[str, type]) -> dict[str, Any]:
    """The JSON body with ``fields`` present and typed; FastAPI's own 422 would break the
    original API's "always HTTP 200" error style, so bodies are checked here."""
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise BadRequest(f"Malformed JSON body: {exc}.") from None
    except RecursionError:
        raise BadRequest("Malformed JSON body: nested too deeply.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    for name, kind in fields.items():
        value = body.get(name)
        # bool is an int subclass; an id of true is a malformed body, not id 1.
        if value is None or not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest(f"Field '{name}' is required and must be {kind.__name__}.")
    return body


class Registry:
    """Every live environment id, allocated from 0 under a lock as the original server does; at
    most ``max_envs`` at once, the ones idle for ``idle_seconds`` given back to make room."""

    def __init__(
        self,
        env: Environment,
        games: list[Task],
        max_envs: int = MAX_ENVS,
        idle_seconds: float = IDLE_SECONDS,
    ):
        self.env, self.games = env, games
        self.max_envs, self.idle_seconds = max_envs, idle_seconds
        self.slots: dict[int, Slot] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.expired = 0

    def create(self) -> int:
        with self.lock:
            if len(self.slots) >= self.max_envs:
                self._expire_idle()
            if len(self.slots) >= self.max_envs:
                raise BadRequest(
                    f"{len(self.slots)} environments are open, the most this server keeps; "
                    "close some with /close (ids idle for "
                    f"{self.idle_seconds:g} s are closed to make room)."
                )
            env_id = next(self.ids)
            self.slots[env_id] = Slot()
        return env_id

    def _expire_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_seconds
        idle = [env_id for env_id, slot in self.slots.items() if slot.used < cutoff]
        for env_id in idle:
            del self.slots[env_id]
        self.expired += len(idle)

    def slot(self, env_id: int) -> Slot:
        with self.lock:
            slot = self.slots.get(env_id)
            if slot is not None:
                slot.used = time.monotonic()
        if slot is None:
            raise BadRequest(f"The id {env_id} is not valid.")
        return slot

    def close(self, env_id: int) -> None:
        with self.lock:
            if self.slots.pop(env_id, None) is None:
                raise BadRequest(f"The id {env_id} is not valid.")

    def reset(self, env_id: int, game: int, world_type: str) -> dict[str, Any]:
        slot = self.slot(env_id)
        if world_type not in WORLD_TYPES:
            raise BadRequest(f"world_type must be one of {', '.join(WORLD_TYPES)}.")
        if not 0 <= game < len(self.games):
            raise BadRequest(f"The game {game} is out of range [0, {len(self.games)}).")
        task = self.games[game]
        with slot.lock:
            slot.episode = self.env.start(task)
            observation = opening(task, slot.episode)
            actions = actions_of(slot.episode)
            kind = task.metadata.get("task_type")
            task_type = f"{kind}/{task.id}" if kind else task.id
            slot.info = {
                "world_type": world_type,
                "game": game,
                "observation": observation,
                "available_actions": actions,
                "done": False,
                "reward": 0,
                "deleted": False,
            }
        return {
            "id": env_id,
            "observation": observation,
            "available_actions": actions,
            "task_type": task_type,
        }

    def step(self, env_id: int, action: str) -> dict[str, Any]:
        slot = self.slot(env_id)
        with slot.lock:
            if slot.episode is None or slot.info["done"]:
                # The original says "finished" for a fresh id too: a /reset must come first.
                raise BadRequest(f"The task with environment {env_id} has finished.")
            try:
                result = slot.episode.step(action)
            except EnvError as exc:
                raise BadRequest(str(exc)) from None
            payload = {
                "observation": result.observation,
                "reward": float(result.reward),
                "available_actions": actions_of(slot.episode, result.info),
                "done": bool(result.done),
            }
            slot.info.update(payload)
        return payload

    def cached(self, env_id: int, key: str | None) -> Any:
        slot = self.slot(env_id)
        with slot.lock:
            if slot.info["done"]:
                raise BadRequest(f"The task with environment {env_id} has finished.")
            return dict(slot.info) if key is None else slot.info.get(key)


def create_app(
    env_name: str,
    eval_split: str | None = None,
    *,
    max_envs: int = MAX_ENVS,
    idle_seconds: float = IDLE_SECONDS,
    max_body_bytes: int = MAX_BODY_BYTES,
    **env_options: Any,
) -> FastAPI:
    """``env_name`` (built with ``env_options``) over AgentGym's API, within the limits."""
    env = make(env_name, **env_options)
    registry = Registry(env, game_list(env, eval_split), max_envs, idle_seconds)
    app = FastAPI(title=f"AgentGym {env_name}")
    app.state.registry = registry
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, error_body=lambda m: {"error": m})

    async def guarded(request: Request, fields: dict[str, type], handle: Any) -> Any:
        try:
            body = await body_of(request, fields)
            # Environment code blocks; a worker thread keeps other ids' requests moving.
            return await run_in_threadpool(handle, body)
        except BadRequest as exc:
            return {"error": str(exc)}

    @app.get("/")
    def root() -> str:
        return f"This is environment {env_name}."

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "service": env_name}

    @app.post("/create")
    def create() -> dict[str, Any]:
        try:
            return {"id": registry.create()}
        except BadRequest as exc:
            return {"error": str(exc)}

    @app.post("/reset")
    async def reset(request: Request) -> Any:
        fields = {"id": int, "game": int, "world_type": str}
        return await guarded(
            request, fields, lambda b: registry.reset(b["id"], b["game"], b["world_type"])
        )

    @app.post("/step")
    async def step(request: Request) -> Any:
        fields = {"id": int, "action": str}
        return await guarded(request, fields, lambda b: registry.step(b["id"], b["action"]))

    @app.post("/close")
    async def close(request: Request) -> Any:
        async def closing() -> Any:
            body = await body_of(request, {})
            # The fork names the id env_id; accept either so both clients can free episodes.
            env_id = body.get("id", body.get("env_id"))
            if not isinstance(env_id, int) or isinstance(env_id, bool):
                raise BadRequest("Field 'id' (or 'env_id') is required and must be int.")
            registry.close(env_id)
            return {"closed": True, "env_id": env_id}

        try:
            return await closing()
        except BadRequest as exc:
            return {"error": str(exc)}

    def cached_route(key: str | None) -> Any:
        def read(id: int) -> Any:  # the original names its query parameter id
            try:
                return registry.cached(id, key)
            except BadRequest as exc:
                return {"error": str(exc)}

        return read

    app.get("/observation")(cached_route("observation"))
    app.get("/available_actions")(cached_route("available_actions"))
    app.get("/detail")(cached_route(None))
    return app


def serve(env_name: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **options: Any) -> None:
    """Run the server with uvicorn; loopback by default so nothing is exposed by accident."""
    import uvicorn

    uvicorn.run(create_app(env_name, **options), host=host, port=port, log_level="warning")
