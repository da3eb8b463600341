"""Tests of the AgentGym HTTP server and client against the household environment, on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from environments.agentgym import AgentGymClient, create_app
from environments.base import EnvError
from environments.household import HouseholdEnvironment

# Game indices follow AgentGym: every train task first, then the eval tasks.
ENV = HouseholdEnvironment(seed=0)
TRAIN = len(ENV.tasks("train"))
GAME = TRAIN + 3
TASK = ENV.tasks("eval_out_of_distribution")[3]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(create_app("household", seed=0)) as client:
        yield client


@pytest.fixture(scope="module")
def live_url(serve_app) -> str:
    """A real uvicorn server on a free loopback port, in a background thread."""
    return serve_app(create_app("household", seed=0)).url


def reset(http: TestClient, game: int = GAME) -> int:
    env_id = http.post("/create").json()["id"]
    body = {"id": env_id, "game": game, "world_type": "Text"}
    data = http.post("/reset", json=body).json()
    assert data["id"] == env_id
    assert data["observation"] == TASK.prompt
    assert data["observation"].split("\n")[-1].startswith("Your task is to: ")
    assert data["available_actions"] == sorted(set(data["available_actions"]))
    assert data["task_type"].startswith(TASK.metadata["task_type"])
    return env_id


def test_expert_episode_over_http(http: TestClient) -> None:
    assert http.get("/health").json()["status"] == "ok"
    env_id = reset(http)
    actions = ENV.expert_actions(TASK)
    for i, action in enumerate(actions):
        data = http.post("/step", json={"id": env_id, "action": action}).json()
        assert set(data) == {"observation", "reward", "available_actions", "done"}
        assert data["done"] == (i == len(actions) - 1)
    assert data["reward"] == 1.0 and data["done"] is True

    after = http.post("/step", json={"id": env_id, "action": actions[0]})
    assert after.status_code == 200
    assert after.json() == {"error": f"The task with environment {env_id} has finished."}
    # A reset makes the id playable again, as in the original server.
    reset(http)
    assert http.post("/close", json={"id": env_id}).json() == {"closed": True, "env_id": env_id}


def test_errors_are_http_200_with_an_error_field(http: TestClient) -> None:
    unknown = http.post("/step", json={"id": 10**6, "action": "look"})
    assert unknown.status_code == 200
    assert unknown.json() == {"error": f"The id {10**6} is not valid."}
    env_id = http.post("/create").json()["id"]
    bad_bodies = [
        b"{not json",
        json.dumps([1, 2]).encode(),
        json.dumps({"id": env_id}).encode(),  # no action
        json.dumps({"id": "zero", "action": "look"}).encode(),
    ]
    for raw in bad_bodies:
        response = http.post("/step", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 200 and "error" in response.json(), raw
    bad_reset = [
        {"id": env_id, "game": GAME, "world_type": "Mars"},
        {"id": env_id, "game": 10**7, "world_type": "Text"},
        {"id": env_id, "world_type": "Text"},
    ]
    for body in bad_reset:
        response = http.post("/reset", json=body)
        assert response.status_code == 200 and "error" in response.json(), body


def test_many_episodes_at_once(http: TestClient) -> None:
    ids = [reset(http) for _ in range(3)]
    assert len(set(ids)) == 3
    first = ENV.expert_actions(TASK)[0]
    for env_id in ids:
        data = http.post("/step", json={"id": env_id, "action": first}).json()
        assert data["done"] is False


def test_client_runs_an_expert_episode(live_url: str) -> None:
    with AgentGymClient([live_url, live_url], "household", retries=0) as client:
        episode = client.start(GAME)
        assert episode.initial_observation() == TASK.prompt
        for action in ENV.expert_actions(TASK):
            result = episode.step(action)
        assert result.reward == 1.0 and result.done
        with pytest.raises(EnvError, match="has finished"):
            episode.step("look")
        episode.close()


def test_client_speaks_the_fork_protocol() -> None:
    """A stand-in fork server: env_id/task_id keys, info-nested actions, typed HTTP errors."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/create":
            return httpx.Response(200, json={"env_id": 7})
        if request.url.path == "/reset":
            assert body == {"env_id": 7, "task_id": 5, "world_type": "Text"}
            info = {"env_id": 7, "available_actions": ["look"], "task_type": "x"}
            return httpx.Response(200, json={"observation": "hello", "info": info})
        if body["action"] == "look":
            info = {"available_actions": ["look"]}
            return httpx.Response(
                200, json={"observation": "ok", "reward": 1.0, "done": True, "info": info}
            )
        error = {"code": "EPISODE_FINISHED", "message": "done", "retryable": False, "details": {}}
        return httpx.Response(409, json={"error": error})

    transport = httpx.MockTransport(handler)
    client = AgentGymClient(["http://127.0.0.1:1"], "household", "fork", transport=transport)
    episode = client.start(5)
    assert episode.initial_observation() == "hello"
    assert episode.admissible_commands() == ["look"]
    result = episode.step("look")
    assert (result.reward, result.done, result.info["admissible_commands"]) == (1.0, True, ["look"])
    with pytest.raises(EnvError, match="409: EPISODE_FINISHED"):
        episode.step("again")


def test_unreachable_server_gives_one_line_error(dead_url: str) -> None:
    client = AgentGymClient([dead_url], "household", timeout=2.0, retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(EnvError) as caught:
        client.start(GAME)
    message = str(caught.value)
    assert "\n" not in message
    assert dead_url in message and "POST" in message
    assert "/create" in message and "3 times" in message
    assert time.monotonic() - start < 5
