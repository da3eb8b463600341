"""Both HTTP servers under abuse, on loopback: oversized, deep and malformed bodies, too many
sequences or environments, and many clients at once. Each is refused in the API's own error
shape (never a 500), quickly, without the server's memory growing, and the server keeps
answering."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from environments.agentgym import create_app as env_app
from icrl_cli.components import load_model
from icrl_cli.server.serve import Limits, ServedModel, create_app

MIB = 2**20


def rss_mb() -> float:
    """This process's resident memory now (the servers run in its threads)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


@pytest.fixture(scope="module")
def model_url(tiny_dir, serve_app):
    served = ServedModel("tiny", *load_model("tiny", device="cpu"), Limits(MIB, 32))
    return serve_app(create_app(served)).url


@pytest.fixture(scope="module")
def env_url(serve_app):
    app = env_app("household", seed=0, max_envs=4, idle_seconds=3600, max_body_bytes=MIB)
    return serve_app(app).url


def test_a_20_mb_body_is_refused_unread_in_under_a_second(model_url):
    prompt = "1+" * (10 * MIB)  # 20 MiB of text: tokenising it took 42 s and 4.5 GB
    before = rss_mb()
    started = time.monotonic()
    response = httpx.post(f"{model_url}/v1/completions", json={"prompt": prompt}, timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "larger than 1 MiB" in error["message"]
    assert elapsed < 1.0
    del prompt
    assert rss_mb() - before < 100
    assert httpx.post(f"{model_url}/v1/completions", json={"prompt": "1+2"}).status_code == 200


def test_a_streamed_body_is_cut_off_at_the_limit(model_url):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB in all, no Content-Length

    response = httpx.post(f"{model_url}/v1/completions", content=chunks(), timeout=30)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": ["1+2"] * 9, "n": 4}, "n", "too_many_sequences"),  # 36 > 32
        ({"prompt": "1+2", "seed": 2**64}, "seed", None),
        ({"prompt": "1+2", "seed": -(2**63) - 1}, "seed", None),
    ],
)
def test_requests_over_the_bounds_are_400s(model_url, body, param, code):
    response = httpx.post(f"{model_url}/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_the_largest_seed_and_the_most_sequences_are_served(model_url):
    body = {"prompt": ["1+2"] * 8, "n": 4, "max_tokens": 2, "seed": 2**64 - 1}
    response = httpx.post(f"{model_url}/v1/completions", json=body)
    assert response.status_code == 200 and len(response.json()["choices"]) == 32


def test_a_deeply_nested_body_is_a_400_not_a_500(model_url, env_url):
    deep = b"[" * 100_000 + b"]" * 100_000
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{model_url}/v1/completions", content=deep, headers=headers)
    assert response.status_code == 400 and "error" in response.json()
    response = httpx.post(f"{env_url}/step", content=deep, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"error": "Malformed JSON body: nested too deeply."}


def test_env_serve_bounds_open_environments_and_reclaims_idle_ones(serve_app):
    url = serve_app(env_app("household", seed=0, max_envs=3, idle_seconds=0.5)).url
    ids = [httpx.post(f"{url}/create").json()["id"] for _ in range(3)]
    full = httpx.post(f"{url}/create").json()
    assert "3 environments are open" in full["error"]
    httpx.post(f"{url}/close", json={"id": ids[0]})
    assert httpx.post(f"{url}/create").json()["id"] == 3
    time.sleep(0.6)  # ids 1, 2 and 3 are now idle past the timeout
    httpx.post(f"{url}/reset", json={"id": 3, "game": 0, "world_type": "Text"})  # 3 is used
    assert httpx.post(f"{url}/create").json()["id"] == 4
    assert (
        "not valid" in httpx.post(f"{url}/step", json={"id": 1, "action": "look"}).json()["error"]
    )
    assert "done" in httpx.post(f"{url}/step", json={"id": 3, "action": "look"}).json()


def test_env_serve_refuses_an_oversized_body(env_url):
    response = httpx.post(f"{env_url}/step", json={"id": 0, "action": "x" * (2 * MIB)})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_both_servers_hold_up_under_concurrent_abuse(model_url, env_url):
    """8 clients × 12 requests each, valid and invalid mixed, against both servers at once:
    every answer is the expected status (no 500, no dropped connection), both still answer
    /health, and memory stays within 200 MB of where it started."""
    big = {"prompt": "1+" * MIB}
    requests = [
        (f"{model_url}/v1/completions", {"prompt": "1+2", "max_tokens": 3}, 200),
        (f"{model_url}/v1/completions", big, 413),
        (f"{model_url}/v1/completions", {"prompt": "1+2", "temperature": 9}, 400),
        (f"{model_url}/v1/completions", {"prompt": ["1"] * 40}, 400),
        (f"{env_url}/create", None, 200),
        (f"{env_url}/step", {"id": 10**9, "action": "look"}, 200),
    ]
    before = rss_mb()
    statuses: list[tuple[int, int]] = []

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for i in range(12):
                url, body, expected = requests[i % len(requests)]
                statuses.append((http.post(url, json=body).status_code, expected))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(statuses) == 96
    assert all(got == expected for got, expected in statuses), statuses
    assert httpx.get(f"{model_url}/health").status_code == 200
    assert httpx.get(f"{env_url}/health").status_code == 200
    assert rss_mb() - before < 200
