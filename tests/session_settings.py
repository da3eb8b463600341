"""Session settings for tests: a run's defaults, read from ``RunConfig`` as every command reads
them, with the changes a test names."""

from dataclasses import replace

from icrl_cli.config import RunConfig
from icrl_cli.rollout.settings import SessionSettings


def session_settings(**changes: object) -> SessionSettings:
    return replace(SessionSettings.from_config(RunConfig()), **changes)  # type: ignore[arg-type]
