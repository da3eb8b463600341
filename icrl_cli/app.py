"""The `icrl` command line: one small function per subcommand, wiring only."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import environments
from environments import EnvError
from icrl_cli.config import ConfigError, RunConfig, list_presets, load_run_config, resolve, to_toml
from icrl_cli.models import ModelLoadError
from icrl_cli.report import ReportError

app = typer.Typer(
    name="icrl",
    help="Reinforcement learning of language models that learn to be solver and critic, "
    "and to do without the critic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
DEFAULT_PRESET = "tiny-math"
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """A user's mistake becomes one red line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, EnvError, ModelLoadError, ReportError) as err:
            errors.print(Text("error: ", style="red") + Text(str(err)), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def not_built(command: str, issue: str) -> None:
    errors.print(f"icrl {command} is not built yet (it arrives with {issue}).")
    raise typer.Exit(2)


@app.command()
@user_errors
def train(
    preset: Annotated[
        str | None, typer.Option(help=f"Preset name or TOML path (default {DEFAULT_PRESET}).")
    ] = None,
    env: Annotated[str | None, typer.Option(help="Environment name (env.name).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model: tiny, hub id, short name or local directory.")
    ] = None,
    algo: Annotated[str | None, typer.Option(help="grpo | icrl | critique-grpo.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (train.steps).")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (train.seed).")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory from its last checkpoint."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config key: --set train.lr=1e-5 (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved configuration and stop.")
    ] = False,
) -> None:
    """Train with GRPO, ICRL or Critique-GRPO (default: the tiny model on synthetic math)."""
    from icrl_cli.config import with_overrides

    overrides = list(set_ or [])
    for key, value in (
        ("env.name", env),
        ("model.name", model),
        ("algo.name", algo),
        ("train.steps", steps),
        ("train.seed", seed),
    ):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if resume is not None:
        if not (resume / "config.toml").is_file():
            raise ConfigError(f"--resume {resume}: no config.toml there (not a run directory)")
        saved = load_run_config(resume / "config.toml")
        config = with_overrides(saved.model_dump(mode="json", exclude_none=True), overrides)
        run_dir = resume
    else:
        config = resolve(preset or DEFAULT_PRESET, overrides)
        from icrl_cli.trainer.loop import default_run_dir

        run_dir = output_dir or (
            Path(config.train.output_dir) if config.train.output_dir else default_run_dir(config)
        )
    from icrl_cli.trainer.loop import make_environment
    from icrl_cli.trainer.loop import train as run_training

    if dry_run:
        # The environment is built (options checked, splits known) but never contacted.
        make_environment(config.env.name, config.env.data, config.env.options)
        print_plan(config, run_dir)
        return

    final = run_training(config, run_dir, resume=resume is not None, console=errors)
    console.print(f"done: {final}")


def print_plan(config: RunConfig, run_dir: Path) -> None:
    """What a run would do, then its full configuration; nothing is loaded."""
    algo, train = config.algo, config.train
    rounds = 1 if algo.name == "grpo" else algo.max_rounds
    table = Table("", "", show_header=False, title="plan")
    table.add_row("run directory", str(run_dir))
    table.add_row("model", config.model.name)
    data = config.env.data or "default data"
    table.add_row("environment", f"{config.env.name} ({data}, {config.env.train_split})")
    table.add_row("algorithm", algo.name)
    table.add_row(
        "sessions",
        f"{train.queries_per_step} queries × G={algo.sessions_per_query}, up to K={rounds} rounds",
    )
    if algo.name != "grpo":
        table.add_row(
            "critic",
            f"{algo.critic} ({algo.critic_gate} gate), calibration {algo.calibration} "
            f"in [{algo.w_min:g}, {algo.w_max:g}]",
        )
    table.add_row("steps", f"{train.steps} at lr {train.lr:g}, checkpoint every {train.save_every}")
    console.print(table)
    console.print(to_toml(config), highlight=False, markup=False)


@app.command()
def presets() -> None:
    """List the bundled presets."""
    table = Table("preset", "file")
    for name, path in list_presets().items():
        table.add_row(name, str(path))
    console.print(table)


@app.command()
def envs() -> None:
    """List the registered environments."""
    for name in environments.available():
        console.print(name)


env_app = typer.Typer(help="Serve an environment over AgentGym's HTTP API.", no_args_is_help=True)
app.add_typer(env_app, name="env")


@env_app.command("serve")
@user_errors
def env_serve(
    name: Annotated[str, typer.Argument(help="A registered environment, e.g. household.")],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 36001,
) -> None:
    """Serve NAME over AgentGym's original API (create / reset / step, /close, /health)."""
    from environments.agentgym import serve

    environments.make(name)  # an unknown name fails here, with the valid ones listed
    errors.print(f"serving {name} on http://{host}:{port}")
    serve(name, host=host, port=port)


@app.command("serve")
@user_errors
def serve_model(
    model: Annotated[
        str, typer.Option(help="Model: tiny, a run's final/, a hub id or a directory.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless you mean it.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1…")] = "auto",
) -> None:
    """Serve MODEL over OpenAI's API: /v1/models, /v1/completions, /v1/chat/completions."""
    from icrl_cli.serve import serve

    serve(model, host=host, port=port, device=device)


@app.command()
@user_errors
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to overlay.")],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Where the plots and report.md go (default: RUN_DIR/report for one "
            "run, ./report for several)."
        ),
    ] = None,
) -> None:
    """Plot a run's metrics (several runs overlaid) and summarise them in report.md."""
    from icrl_cli.report import write_report

    if output is None:
        output = run_dirs[0] / "report" if len(run_dirs) == 1 else Path("report")
    console.print(f"wrote {write_report(run_dirs, output)}")


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[
        str, typer.Option(help="Model: tiny, a run's final/, a hub id or a directory.")
    ],
    env: Annotated[str, typer.Option(help="Environment name.")] = "math",
    data: Annotated[
        str | None,
        typer.Option(help="Math data: synthetic (default), gsm8k, math500, a file or hf:REPO."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to evaluate on (default: test, or the only one).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N tasks.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Critique-free success of one attempt per task (success_round1)."""
    from icrl_cli.evaluation.evaluate import evaluate
    from icrl_cli.trainer.loop import make_environment

    environment = make_environment(env, data, {})
    if split is None:
        splits = environment.splits()
        split = "test" if "test" in splits else splits[0]
    label = data or "default"
    result = evaluate(
        model, environment, env, label, split, limit, max_new_tokens, temperature, seed
    )
    table = Table("metric", "value", title=f"{model} on {env}:{label} ({split}, n={result.n})")
    table.add_row("success_round1", f"{result.success_round1:.3f}")
    table.add_row("reward_mean", f"{result.reward_mean:.3f}")
    table.add_row("response_tokens_mean", f"{result.response_tokens_mean:.1f}")
    console.print(table)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result.to_json(), indent=2) + "\n")


@app.command()
def rollout() -> None:
    """Run sessions without training and dump every sample as JSON lines (not built yet)."""
    not_built("rollout", "the measuring issue")


@app.command("critique-compare")
def critique_compare() -> None:
    """Compare critics by the fixes they bring and the tokens they spend (not built yet)."""
    not_built("critique-compare", "the measuring issue")


def main() -> None:
    from transformers.utils import logging as hf_logging

    # Our own progress bar reports training; per-file load/save bars would only interleave with it.
    hf_logging.disable_progress_bar()
    app()
