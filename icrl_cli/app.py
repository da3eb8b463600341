"""The `icrl` command line: one small function per subcommand, wiring only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import environments
from icrl_cli.app_support import (
    BACKEND_HELP,
    CRITIC_BUDGET_HELP,
    CRITIC_HELP,
    DATA_HELP,
    ENV_HELP,
    MODEL_HELP,
    SPLIT_HELP,
    Host,
    MaxRequestMb,
    errors,
    user_errors,
)
from icrl_cli.config import ConfigError, RunConfig, list_presets, load_run_config, resolve, to_toml

app = typer.Typer(
    name="icrl",
    help="Reinforcement learning of language models that learn to be solver and critic, "
    "and to do without the critic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
DEFAULT_PRESET = "tiny-math"
# Without --preset, --env E starts from E's embedded tiny preset, or from the bare defaults
# for an environment that has none (a preset's env options belong to its own environment).
ENV_PRESETS = {"math": "tiny-math", "household": "tiny-household", "searchqa": "tiny-searchqa"}


def base_preset(preset: str | None, env: str | None) -> str | None:
    """The preset a command starts from: --preset, else --env's tiny preset, else tiny-math."""
    if preset is not None:
        return preset
    return DEFAULT_PRESET if env is None else ENV_PRESETS.get(env)


def flag_overrides(set_: list[str] | None, flags: dict[str, Any]) -> list[str]:
    """The --set overrides, then a dotted.key=value override for each flag that was given."""
    overrides = list(set_ or [])
    overrides += [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return overrides


@app.command()
@user_errors
def train(
    preset: Annotated[
        str | None,
        typer.Option(
            help=f"Preset name or TOML path (default: --env's tiny preset, else {DEFAULT_PRESET})."
        ),
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
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start over in a run directory that holds a run.")
    ] = False,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code",
            help="Allow --resume of a run whose config runs the model repository's own code.",
        ),
    ] = False,
) -> None:
    """Train with GRPO, ICRL or Critique-GRPO (default: the tiny model on synthetic math)."""

    overrides = flag_overrides(
        set_,
        {
            "env.name": env,
            "model.name": model,
            "algo.name": algo,
            "train.steps": steps,
            "train.seed": seed,
        },
    )
    if resume is not None:
        config = resumed_config(resume, overrides, trust_remote_code)
        run_dir = resume
    else:
        config = resolve(base_preset(preset, env), overrides)
        from icrl_cli.trainer.loop import default_run_dir

        run_dir = output_dir or (
            Path(config.train.output_dir) if config.train.output_dir else default_run_dir(config)
        )
    from icrl_cli import components

    if dry_run:
        # The environment is built (options checked, splits known) but never contacted.
        components.environment(config)
        print_plan(config, run_dir)
        return

    final = components.train(config, run_dir, resume is not None, errors, overwrite)
    if final is None:  # stopped by a signal, checkpointed; the advice was printed
        return
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        console.print(f"done: {final}")


def resumed_config(resume: Path, overrides: list[str], trust_remote_code: bool) -> RunConfig:
    """The configuration of the run in ``resume``, with ``overrides``; a run directory may come
    from someone else, so one whose config runs a model repository's code must be trusted."""
    from icrl_cli.config import with_overrides

    if not (resume / "config.toml").is_file():
        raise ConfigError(f"--resume {resume}: no config.toml there (not a run directory)")
    saved = load_run_config(resume / "config.toml")
    if saved.model.trust_remote_code and not trust_remote_code:
        raise ConfigError(
            f"{resume / 'config.toml'} sets model.trust_remote_code, which runs code from the "
            f"model's repository ({saved.model.name}); add --trust-remote-code to continue it"
        )
    return with_overrides(saved.model_dump(mode="json", exclude_none=True), overrides)


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
            f"{algo.critic} ({algo.critic_gate} gate), calibration {algo.token_weight} "
            f"in [{algo.w_min:g}, {algo.w_max:g}]",
        )
        table.add_row("revisions", f"{algo.revision_loss} loss, {algo.revision_context} context")
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


models_app = typer.Typer(help="The embedded models: where they are, and their builds.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list() -> None:
    """Each embedded model: whether its weights ship with the package, whether it is in the
    cache, and how long building it takes."""
    from icrl_cli.tiny import cache

    table = Table(
        "model", "weights", "cached", "a build takes", caption=f"cache: {cache.cache_root()}"
    )
    for name, (dirname, _, duration) in cache.EMBEDDED.items():
        shipped = "shipped" if cache.shipped_dir(name) else "built on first use"
        table.add_row(name, shipped, dirname if cache.cached_dir(name) else "-", duration)
    console.print(table)


@models_app.command("build")
@user_errors
def models_build(
    name: Annotated[str, typer.Argument(help="An embedded model, e.g. tiny-household.")],
    out: Annotated[Path, typer.Option(help="A new directory to build into.")],
) -> None:
    """Build NAME into OUT, whether or not its weights ship with the package (the build the
    shipped weights came from; tiny-household's starts from its shipped first stage, v6; on two
    cores it takes what `icrl models list` says)."""
    from icrl_cli.tiny import cache

    if name not in cache.EMBEDDED:
        raise ConfigError(
            f"unknown embedded model '{name}'; choose from: {', '.join(cache.EMBEDDED)}"
        )
    if out.exists():
        raise ConfigError(f"{out} exists; name a new directory")
    cache.rebuild(name, out)
    console.print(f"built {name} into {out}")


env_app = typer.Typer(help="Serve an environment over AgentGym's HTTP API.", no_args_is_help=True)
app.add_typer(env_app, name="env")


@env_app.command("serve")
@user_errors
def env_serve(
    name: Annotated[str, typer.Argument(help="A registered environment, e.g. household.")],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 36001,
    max_envs: Annotated[
        int, typer.Option(min=1, help="Environment ids open at once; /create refuses more.")
    ] = 1024,
    idle_timeout: Annotated[
        float, typer.Option(min=0.0, help="Seconds after which an unused id may be reclaimed.")
    ] = 600.0,
    max_request_mb: MaxRequestMb = 1.0,
) -> None:
    """Serve NAME over AgentGym's original API (create / reset / step, /close, /health)."""
    from environments.agentgym import serve

    environments.make(name)  # an unknown name fails here, with the valid ones listed
    errors.print(f"serving {name} on http://{host}:{port}")
    limits = {"max_envs": max_envs, "idle_seconds": idle_timeout}
    serve(name, host=host, port=port, max_body_bytes=int(max_request_mb * 2**20), **limits)


@app.command("serve")
@user_errors
def serve_model(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1…")] = "auto",
    max_request_mb: MaxRequestMb = 8.0,
    max_sequences: Annotated[
        int, typer.Option(min=1, help="Refuse requests for more sequences (prompts × n).")
    ] = 256,
) -> None:
    """Serve MODEL over OpenAI's API: /v1/models, /v1/completions, /v1/chat/completions."""
    from icrl_cli.components import load_model
    from icrl_cli.server.serve import Limits, ServedModel, serve

    loaded, tokenizer = load_model(model, device=device)
    limits = Limits(int(max_request_mb * 2**20), max_sequences)
    serve(ServedModel(model, loaded, tokenizer, limits), host=host, port=port)


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


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@app.command("eval")
@user_errors
def eval_(
    model: Annotated[str | None, typer.Option(help=MODEL_HELP + " (default: the preset's)")] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Measure under this preset's environment, turn limits and generation settings "
            "(flags given here win)."
        ),
    ] = None,
    env: Annotated[str | None, typer.Option(help=ENV_HELP + " (default: math)")] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    split: Annotated[str | None, typer.Option(help=SPLIT_HELP)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N tasks.")] = None,
    rounds: Annotated[
        int, typer.Option(help="Attempts per session; after round 1 the critic's tips are read.")
    ] = 1,
    critic: Annotated[str, typer.Option(help=f"Who critiques: {CRITIC_HELP}")] = "self",
    gate: Annotated[
        str, typer.Option(help="oracle (critique failed attempts only) or ungated.")
    ] = "oracle",
    samples: Annotated[int, typer.Option(help="k sessions per task (pass@k).")] = 1,
    output: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="0 is greedy (default: 1, or the preset's).")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Per attempt or turn (default: 512, or the preset's).")
    ] = None,
    critic_max_new_tokens: Annotated[int | None, typer.Option(min=1, help=CRITIC_BUDGET_HELP)] = (
        None
    ),
    seed: Annotated[int, typer.Option()] = 0,
    backend: Annotated[
        str | None, typer.Option(help=BACKEND_HELP + " (default: the preset's, else hf)")
    ] = None,
) -> None:
    """Critique-free success and pass@k; with --rounds R, success after each round of critique."""
    from icrl_cli.components import make_environment
    from icrl_cli.evaluation.evaluate import (
        default_split,
        eval_tables,
        evaluate,
        preset_measurement,
    )

    chosen = preset_measurement(resolve(preset, []) if preset else None, env, data)
    model = model or chosen.model
    if model is None:
        raise ConfigError("give --model, or a --preset whose model is measured")
    env = chosen.env
    data = data or chosen.data
    environment = make_environment(env, data, chosen.options)
    split = split or chosen.split or default_split(environment)
    result = evaluate(
        model,
        environment,
        env,
        data or "default",
        split,
        limit,
        max_new_tokens or chosen.max_new_tokens,
        chosen.temperature if temperature is None else temperature,
        seed,
        rounds=rounds,
        critic=critic,
        gate=gate,
        samples=samples,
        critic_max_new_tokens=critic_max_new_tokens or chosen.critic_max_new_tokens,
        turns=chosen.turns,
        generation={**chosen.generation, **({"backend": backend} if backend else {})},
    )
    for table in eval_tables(result):
        console.print(table)
    if output is not None:
        write_json(output, result.to_json())


@app.command()
@user_errors
def rollout(
    preset: Annotated[
        str | None,
        typer.Option(
            help=f"Preset name or TOML path (default: --env's tiny preset, else {DEFAULT_PRESET})."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    env: Annotated[str | None, typer.Option(help="Environment name (env.name).")] = None,
    algo: Annotated[str | None, typer.Option(help="grpo | icrl | critique-grpo.")] = None,
    n: Annotated[int, typer.Option(help="Queries; each gets G sessions.")] = 4,
    split: Annotated[str | None, typer.Option(help="Split (default: env.train_split).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (train.seed).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config key, as in icrl train (repeatable)."),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write JSON lines here.")] = None,
    format_: Annotated[
        str, typer.Option("--format", help="jsonl, or pretty (rich panels on screen).")
    ] = "jsonl",
) -> None:
    """A training step's sessions without the update: samples, rewards, advantages, weights."""
    from icrl_cli.evaluation.dump import print_pretty, rollout, write_jsonl

    if format_ not in ("jsonl", "pretty"):
        raise ConfigError(f"--format must be jsonl or pretty, not '{format_}'")
    overrides = flag_overrides(
        set_, {"env.name": env, "model.name": model, "algo.name": algo, "train.seed": seed}
    )
    records = rollout(resolve(base_preset(preset, env), overrides), n, split)
    if output is not None:
        write_jsonl(records, output)
        errors.print(f"wrote {len(records)} samples to {output}")
    if format_ == "pretty":
        print_pretty(records, console)
    elif output is None:
        for record in records:
            print(json.dumps(record.to_json()))


@app.command("critique-compare")
@user_errors
def critique_compare(
    model: Annotated[
        str | None, typer.Option(help="The solver. " + MODEL_HELP + " (default: the preset's)")
    ] = None,
    critic: Annotated[
        list[str] | None, typer.Option(help=f"NAME=SPEC, repeatable; SPEC is {CRITIC_HELP}")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Compare under this preset's environment, data, options, eval split and "
            "generation settings (flags given here win)."
        ),
    ] = None,
    env: Annotated[str | None, typer.Option(help=ENV_HELP)] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    split: Annotated[str | None, typer.Option(help=SPLIT_HELP)] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="The first N tasks.")] = None,
    rounds: Annotated[int, typer.Option(help="Attempts per session (at least 2).")] = 2,
    gate: Annotated[
        str, typer.Option(help="oracle (critique failed attempts only) or ungated.")
    ] = "oracle",
    samples: Annotated[int, typer.Option(help="Sessions per task.")] = 1,
    output: Annotated[
        Path | None, typer.Option(help="Write the result as JSON here, and a bar chart beside it.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="0 is greedy (default: 1, or the preset's).")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Per attempt (default: 512, or the preset's).")
    ] = None,
    critic_max_new_tokens: Annotated[int | None, typer.Option(min=1, help=CRITIC_BUDGET_HELP)] = (
        None
    ),
    seed: Annotated[int, typer.Option()] = 0,
    backend: Annotated[
        str | None, typer.Option(help=BACKEND_HELP + " (default: the preset's, else hf)")
    ] = None,
) -> None:
    """Critics on the same attempts: fix and break rates, Δ success, critique tokens, time."""
    from icrl_cli.components import make_environment
    from icrl_cli.evaluation.compare import compare_critics, compare_table, plot_comparison
    from icrl_cli.evaluation.evaluate import default_split, preset_measurement

    chosen = preset_measurement(resolve(preset, []) if preset else None, env, data)
    model = model or chosen.model
    if model is None:
        raise ConfigError("give --model, or a --preset whose model is the solver")
    data = data or chosen.data
    environment = make_environment(chosen.env, data, chosen.options)
    result = compare_critics(
        model,
        environment,
        chosen.env,
        data or "default",
        split or chosen.split or default_split(environment),
        critic or [],
        limit,
        rounds,
        gate,
        samples,
        max_new_tokens or chosen.max_new_tokens,
        chosen.temperature if temperature is None else temperature,
        seed,
        critic_max_new_tokens or chosen.critic_max_new_tokens,
        backend or chosen.generation.get("backend", "hf"),
    )
    console.print(compare_table(result))
    if output is not None:
        write_json(output, result.to_json())
        plot_comparison(result, output.with_suffix(".png"))
        errors.print(f"wrote {output} and {output.with_suffix('.png')}")


def main() -> None:
    from transformers.utils import logging as hf_logging

    # Our own progress bar reports training; per-file load/save bars would only interleave with it.
    hf_logging.disable_progress_bar()
    app()
