"""Tests of the "agentgym" environment against a real household AgentGym server on loopback."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI, Request, Response

import environments
from environments import EnvError, EpisodeFailed, Task, opening, react_action
from environments.agentgym import create_app
from environments.household import HouseholdEnvironment

# The server's game index runs over every household train task, then the eval tasks.
LOCAL = HouseholdEnvironment(seed=0)
TRAIN = len(LOCAL.tasks("train"))
EVAL = LOCAL.tasks("eval_out_of_distribution")
SPLITS = {"train": [0, TRAIN], "test": [TRAIN, TRAIN + len(EVAL)]}
QUICK = {"timeout": 2.0, "retries": 1, "backoff": 0.05}


def household_app() -> tuple[FastAPI, list[str]]:
    """The household server, and the paths of the requests it receives, in order."""
    app = create_app("household", seed=0)
    paths: list[str] = []

    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        paths.append(request.url.path)
        return await call_next(request)

    return app, paths


@pytest.fixture(scope="module")
def server(serve_app) -> tuple[str, FastAPI, list[str]]:
    app, paths = household_app()
    return serve_app(app).url, app, paths


def remote(urls: list[str] | str, **options) -> environments.Environment:
    return environments.make("agentgym", urls=urls, env_name="household", splits=SPLITS, **options)


def play(env: environments.Environment, index: int) -> list[tuple[float, bool]]:
    """The expert's ReAct replies for eval task ``index``: (reward, done) after each step."""
    episode = env.start(env.tasks("test")[index])
    replies = [f"Thought: next.\nAction:\n{a}\n" for a in LOCAL.expert_actions(EVAL[index])]
    return [(r.reward, r.done) for r in map(episode.step, replies)]


@pytest.mark.parametrize(
    ("reply", "command"),
    [
        (
            "Thought: the mug is here. Action: take mug 1 from countertop 2",
            "take mug 1 from countertop 2",
        ),
        (
            "Thought:\nfirst\n\nAction:\n go to sinkbasin 1 \nObservation: you see",
            "go to sinkbasin 1",
        ),
        ("Action: look Action: inventory\n", "inventory"),
        ("  open fridge 1\n", "open fridge 1"),
        ("Thought: unsure. Action:", ""),
    ],
)
def test_react_action_takes_the_first_line_after_the_last_action(reply: str, command: str) -> None:
    assert react_action(reply) == command


def test_expert_plays_a_task_to_success(server: tuple[str, FastAPI, list[str]]) -> None:
    url, app, paths = server
    env = remote([url])
    task = env.tasks("test")[3]
    assert task == Task(f"household-{TRAIN + 3}", "", None, {"game": TRAIN + 3})
    episode = env.start(task)
    assert opening(task, episode) == EVAL[3].prompt
    local = LOCAL.start(EVAL[3])
    assert episode.admissible_commands() == sorted(set(local.admissible_commands()))

    actions = LOCAL.expert_actions(EVAL[3])
    results = [episode.step(f"Thought: next. Action: {a}") for a in actions]
    assert [(r.reward, r.done) for r in results] == [(0.0, False)] * (len(actions) - 1) + [
        (1.0, True)
    ]
    assert [r.observation for r in results] == [local.step(a).observation for a in actions]
    # A finished episode is freed on its server at once.
    assert episode.remote.env_id not in app.state.registry.slots
    assert paths[-1] == "/close"
    with pytest.raises(EnvError, match="is over"):
        episode.step("look")
    env.close()


def test_episodes_from_several_threads(server: tuple[str, FastAPI, list[str]]) -> None:
    env = remote([server[0], server[0]])
    with ThreadPoolExecutor(4) as pool:
        finals = [steps[-1] for steps in pool.map(lambda i: play(env, i), range(4))]
    assert finals == [(1.0, True)] * 4
    env.close()


def test_defaults_and_port_ranges() -> None:
    env = environments.make("agentgym")
    assert env.urls == ["http://127.0.0.1:36001"]
    assert env.splits() == ["train", "test"]
    assert [len(env.tasks("train")), len(env.tasks("test"))] == [2420, 200]
    assert env.tasks("test")[0] == Task("alfworld-2420", "", None, {"game": 2420})
    assert env.tasks("test")[-1].metadata == {"game": 2619}
    assert env.demonstration(env.tasks("train")[0]) is None

    ranged = environments.make("agentgym", urls="http://127.0.0.1:36001-36003")
    assert ranged.urls == [f"http://127.0.0.1:{p}" for p in (36001, 36002, 36003)]
    mixed = environments.make("agentgym", urls=["https://gym.example/a", "http://[::1]:5-6/x"])
    assert mixed.urls == ["https://gym.example/a", "http://[::1]:5/x", "http://[::1]:6/x"]
    with pytest.raises(EnvError, match="unknown split 'valid'; valid splits: train, test"):
        env.tasks("valid")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"urls": "http://127.0.0.1:36003-36001"}, "reversed port range \\(36003 > 36001\\)"),
        ({"urls": "ftp://127.0.0.1:36001"}, "url 'ftp://127.0.0.1:36001' is neither a URL"),
        ({"urls": "http://127.0.0.1:99999"}, "is neither a URL"),
        ({"urls": "127.0.0.1:36001-x"}, "is neither a URL"),
        ({"urls": []}, "at least one server URL"),
        ({"urls": 36001}, "urls must be strings, not 36001"),
        ({"protocol": "grpc"}, "protocol must be 'original' or 'fork', not 'grpc'"),
        ({"splits": {"train": [5, 5]}}, "split 'train' = \\[5, 5\\) is empty or reversed"),
        ({"splits": {"train": [9, 3]}}, "split 'train' = \\[9, 3\\) is empty or reversed"),
        ({"splits": {"train": [1]}}, "split 'train' must be \\[start, end\\) indices"),
        ({"retries": -1}, "retries >= 0"),
        ({"world_type": "Mars"}, "world_type must be one of Text, Embody, Hybrid"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(EnvError, match=message) as caught:
        environments.make("agentgym", **options)
    assert "\n" not in str(caught.value)


def test_a_server_dying_mid_episode_fails_the_episode(serve_app) -> None:
    live = serve_app(household_app()[0])
    env = remote(live.url, **QUICK)
    episode = env.start(env.tasks("test")[3])
    actions = LOCAL.expert_actions(EVAL[3])
    assert episode.step(actions[0]).done is False
    live.stop()
    began = time.monotonic()
    with pytest.raises(EpisodeFailed) as caught:
        episode.step(actions[1])
    assert time.monotonic() - began < 3
    message = str(caught.value)
    assert message.startswith(f"household server {live.url} failed to step: ")
    assert "\n" not in message
    # The episode is abandoned: no more steps, and closing it asks nothing of the dead server.
    with pytest.raises(EnvError, match="is over"):
        episode.step(actions[1])
    episode.close()
    with pytest.raises(EpisodeFailed, match=f"server {live.url} failed to start game {TRAIN}"):
        env.start(env.tasks("test")[0])
    env.close()


def test_servers_take_turns_and_a_dead_one_is_named(
    server: tuple[str, FastAPI, list[str]], dead_url: str
) -> None:
    env = remote([server[0], dead_url], **QUICK)
    task = env.tasks("test")[3]
    assert env.start(task).initial_observation() == EVAL[3].prompt
    with pytest.raises(EpisodeFailed) as caught:
        env.start(task)
    assert str(caught.value).startswith(f"household server {dead_url} failed to start game")
    assert "unreachable" in str(caught.value) and "2 times" in str(caught.value)
    assert env.start(task).initial_observation() == EVAL[3].prompt
    env.close()


def test_a_malformed_reply_fails_the_episode(server: tuple[str, FastAPI, list[str]]) -> None:
    """This server speaks the original protocol; a fork client misses the reply's env_id."""
    env = remote(server[0], protocol="fork", **QUICK)
    with pytest.raises(EpisodeFailed) as caught:
        env.start(env.tasks("test")[0])
    assert str(caught.value) == (
        f"household server {server[0]} failed to start game {TRAIN}: "
        "malformed reply (KeyError: 'env_id')"
    )
    env.close()


def test_a_server_without_close_is_not_asked_again(serve_app) -> None:
    """The original AgentGym server has no /close: its 404 is swallowed, once."""
    app, paths = household_app()
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/close"]
    env = remote(serve_app(app).url, **QUICK)
    assert play(env, 0)[-1] == (1.0, True)
    assert play(env, 1)[-1] == (1.0, True)
    assert paths.count("/close") == 1
    assert paths.count("/step") == len(LOCAL.expert_actions(EVAL[0])) + len(
        LOCAL.expert_actions(EVAL[1])
    )
    env.close()
