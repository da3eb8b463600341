"""Shared fixtures: the real tiny model (built once and cached) and an untrained twin, and
loopback HTTP servers for the AgentGym tests."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
import uvicorn

from icrl_cli.tiny import build_model, build_tokenizer, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir():
    """The warm-started tiny model directory (built on first use, then cached)."""
    return tiny_model_dir()


@pytest.fixture()
def random_tiny():
    """An untrained tiny model and its tokenizer: fast, for tests of mechanics."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    return build_model(tokenizer, seed=0).eval(), tokenizer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A uvicorn server running in a background thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def serve_app() -> Iterator[Callable[[Any], LiveServer]]:
    """Starts an ASGI app under uvicorn on a free loopback port in a background thread; servers
    still running at the end of the session are stopped then."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start within 10 s"
        servers.append(LiveServer(f"http://127.0.0.1:{port}", server, thread))
        return servers[-1]

    yield start
    for live in servers:
        live.stop()


@pytest.fixture()
def dead_url() -> str:
    """A loopback URL where nothing listens (a port bound, then released)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def no_load_bars():
    """`icrl` (main) turns transformers' progress bars off; CliRunner calls the app directly."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


# Each test file that uses these defines its own ``env``; they build on it.
@pytest.fixture()
def task(env):
    """The first training task of the file's environment."""
    return env.tasks("train")[0]


@pytest.fixture()
def typed_tasks(env):
    """The first two test tasks, of two made-up types."""
    first, second = env.tasks("test")[:2]
    return [
        replace(first, metadata={"task_type": "alpha"}),
        replace(second, metadata={"task_type": "beta"}),
    ]
