"""What the CLI's commands share: the decorator that turns a user's mistake into one line, and
the help texts and option types of options several commands take."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from environments import EnvError
from icrl_cli.config import ConfigError
from icrl_cli.models import ModelLoadError
from icrl_cli.report import ReportError
from icrl_cli.trainer.checkpoints import CheckpointError

errors = Console(stderr=True)

MODEL_HELP = "Model: tiny, a run's final/, a hub id or a directory."
ENV_HELP = "Environment name (math, household, …)."
DATA_HELP = "Math data: synthetic (default), gsm8k, math500, a file or hf:REPO."
SPLIT_HELP = "Split (default: test, else the first eval split, else the only one)."
CRITIC_HELP = (
    "self, rule, expert (the environment's expert critique), leaky:P (expert, handing over the "
    "answer with probability P), a model id or directory, or http(s)://HOST:PORT/v1#MODEL."
)
CRITIC_BUDGET_HELP = "Tokens per critique (default: algo.critic_max_new_tokens, 1024)."
BACKEND_HELP = "Generation backend: hf or vllm (generation.backend; the vllm extra)."

Host = Annotated[str, typer.Option(help="Address to bind; loopback unless you mean it.")]
MaxRequestMb = Annotated[
    float, typer.Option(min=0.001, help="Refuse larger request bodies (HTTP 413).")
]


F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """A user's mistake becomes one red line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, EnvError, ModelLoadError, ReportError, CheckpointError) as err:
            errors.print(Text("error: ", style="red") + Text(str(err)), soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {err.filename}" if err.filename else ""
            line = f"no space left on the device{where}"
            if fn.__name__ == "train":
                line += "; every checkpoint already written is intact: free space, then continue "
                line += "with --resume"
            errors.print(Text("error: ", style="red") + Text(line), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
