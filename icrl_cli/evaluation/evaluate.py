"""`icrl eval`: what a model does on held-out tasks. The headline is critique-free success of
k samples per task (and pass@k); with R > 1 rounds and a critic, success after each round,
overall and per task type, and what the revisions and critiques cost in tokens."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from rich.table import Table

from environments import EnvError, Environment, Task
from icrl_cli.components import build_critic, load_policy
from icrl_cli.config import ConfigError, RunConfig, build_config
from icrl_cli.rollout.critics import parse_critic_spec
from icrl_cli.rollout.metrics import session_metrics
from icrl_cli.rollout.samples import Sample, is_failed
from icrl_cli.rollout.sessions import run_sessions


def default_split(env: Environment) -> str:
    """``test`` when there is one, else the first evaluation split (household's
    ``eval_in_distribution``), else the first split (a lone file's only one)."""
    splits = env.splits()
    if "test" in splits:
        return "test"
    return next((s for s in splits if s.startswith("eval")), splits[0])


def select_tasks(env: Environment, label: str, split: str, limit: int | None) -> list[Task]:
    """The first ``limit`` tasks of ``split``; none at all is the user's mistake."""
    tasks = list(env.tasks(split))[:limit]
    if not tasks:
        raise EnvError(f"split '{split}' of {label} has no tasks")
    return tasks


def require_positive(**counts: int) -> None:
    """Flags that count something (rounds, samples, tasks) must be at least 1."""
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"--{name} must be at least 1, got {value}")


@dataclass
class PresetMeasurement:
    """What ``icrl eval --preset`` takes from a preset where no flag says otherwise."""

    model: str | None = None
    env: str = "math"
    data: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    max_new_tokens: int = 512
    temperature: float = 1.0
    critic_max_new_tokens: int | None = None
    turns: dict[str, int] = field(default_factory=dict)
    # [generation]'s other settings: the backend and its engine settings.
    generation: dict[str, Any] = field(default_factory=dict)


def preset_measurement(
    config: RunConfig | None, env: str | None, data: str | None
) -> PresetMeasurement:
    """A preset's model, environment (``env`` where given; the preset's data, options and eval
    split only where ``env`` and ``data`` do not name others), generation settings, critique
    budget and multi-turn limits; without a preset, eval's own defaults."""
    if config is None:
        return PresetMeasurement(env=env or "math")
    own = env in (None, config.env.name)
    own_data = own and data in (None, config.env.data)
    return PresetMeasurement(
        model=config.model.name,
        env=env or config.env.name,
        data=config.env.data if own else None,
        options=dict(config.env.options) if own_data else {},
        split=config.env.eval_split if own_data else None,
        max_new_tokens=config.generation.max_new_tokens,
        temperature=config.generation.temperature,
        critic_max_new_tokens=config.algo.critic_max_new_tokens,
        turns=config.env.turn_limits(),
        generation=config.generation.model_dump(
            exclude={"max_new_tokens", "temperature", "context_tokens"}
        ),
    )


def measurement_config(
    model_name: str,
    rounds: int,
    gate: str,
    max_new_tokens: int,
    temperature: float,
    batch_size: int = 256,
    device: str = "auto",
    enable_thinking: bool = False,
    critic_max_new_tokens: int | None = None,
    turns: dict[str, int] | None = None,
    generation: dict[str, Any] | None = None,
) -> RunConfig:
    """The run settings a measurement samples under: the defaults of a run, with this model,
    these rounds and gate, these generation settings (``generation``: any other
    ``[generation]`` key, such as the backend; the critique budget is the run default,
    ``algo.critic_max_new_tokens``, unless given) and multi-turn limits (``turns``: ``env``
    keys)."""
    budget = {"critic_max_new_tokens": critic_max_new_tokens} if critic_max_new_tokens else {}
    return build_config(
        {
            "env": dict(turns or {}),
            "model": {"name": model_name, "device": device, "enable_thinking": enable_thinking},
            "algo": {
                "name": "icrl" if rounds > 1 else "grpo",
                "max_rounds": rounds,
                "critic_gate": gate,
                **budget,
            },
            "generation": {
                "batch_size": batch_size,
                **(generation or {}),
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
            },
        }
    )


def _solver_attempts(samples: list[Sample]) -> list[Sample]:
    # An episode its environment lost says nothing about the model.
    return [s for s in samples if s.role == "solver" and not is_failed(s)]


def success_by_round(samples: list[Sample], rounds: int) -> list[float]:
    """For r = 1…rounds, the success of each session's latest attempt after round r.

    Under the oracle gate a solved session stops, so its latest attempt stays solved and the
    curve can only rise; ungated, a revision can break a success."""
    by_session: dict[tuple[str, int], dict[int, bool]] = {}
    for s in _solver_attempts(samples):
        by_session.setdefault((s.query_id, s.session), {})[s.round] = s.success
    opened = [attempts for attempts in by_session.values() if 1 in attempts]
    curve = []
    for r in range(1, rounds + 1):
        latest = [attempts[max(k for k in attempts if k <= r)] for attempts in opened]
        curve.append(sum(latest) / len(latest))
    return curve


def pass_at_k(samples: list[Sample]) -> float:
    """The share of tasks that at least one of their k critique-free attempts solved."""
    solved: dict[str, bool] = {}
    for s in _solver_attempts(samples):
        if s.round == 1:
            solved[s.query_id] = solved.get(s.query_id, False) or s.success
    return sum(solved.values()) / len(solved)


@dataclass
class SuccessCurve:
    """Success of one group of tasks: critique-free (the mean over k samples), pass@k, and
    after each round (``success_by_round[0]`` is ``success_round1``)."""

    tasks: int
    success_round1: float
    pass_at_k: float
    success_by_round: list[float]


def success_curve(samples: list[Sample], rounds: int) -> SuccessCurve:
    curve = success_by_round(samples, rounds)
    tasks = {s.query_id for s in _solver_attempts(samples)}
    return SuccessCurve(len(tasks), curve[0], pass_at_k(samples), curve)


def by_task_type(samples: list[Sample], tasks: list[Task], rounds: int) -> dict[str, SuccessCurve]:
    """The success curve of each task type (tasks that carry ``metadata['task_type']``, as
    household's do), in the order the types first appear; empty when no task has a type."""
    types = {t.id: t.metadata.get("task_type") for t in tasks}
    order = list(dict.fromkeys(kind for kind in types.values() if kind is not None))
    curves = {}
    for kind in order:
        chosen = [s for s in samples if types.get(s.query_id) == kind]
        if _solver_attempts(chosen):
            curves[kind] = success_curve(chosen, rounds)
    return curves


@dataclass
class EvalResult:
    model: str
    env: str
    data: str
    split: str
    n: int  # tasks
    samples: int  # k sessions per task
    rounds: int
    critic: str | None  # None with one round: nothing was critiqued
    gate: str
    success_round1: float
    pass_at_k: float
    success_by_round: list[float]
    response_tokens_mean: float  # over every solver attempt, revisions included
    critique_tokens_mean: float | None  # generated tokens per critique; None: no model wrote one
    fix_rate: float | None  # revisions of a failed attempt that succeeded
    break_rate: float | None  # ungated only: revisions of a success that failed
    temperature: float
    seed: int
    backend: str = "hf"
    overlong_prompts: int = 0  # attempts not sampled: the prompt filled the context
    seconds: float = 0.0  # the sessions' wall time, model loading excluded
    tokens_per_s: float = 0.0  # every generated token (attempts and critiques) per second
    by_task_type: dict[str, SuccessCurve] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    outcome: list[Sample], tasks: list[Task], rounds: int, gate: str, **labels: Any
) -> EvalResult:
    """The measurements of one eval's sessions (``outcome``, all their samples); ``labels``
    name what was measured."""
    if not _solver_attempts(outcome):
        raise EnvError("every episode was lost to its environment; there is nothing to measure")
    curve = success_curve(outcome, rounds)
    metrics = session_metrics(outcome, gate)
    return EvalResult(
        n=len(tasks),
        rounds=rounds,
        gate=gate,
        success_round1=curve.success_round1,
        pass_at_k=curve.pass_at_k,
        success_by_round=curve.success_by_round,
        response_tokens_mean=metrics["solver/response_tokens_mean"] or 0.0,
        critique_tokens_mean=metrics["critic/tokens_mean"],
        fix_rate=metrics["sessions/fix_rate"],
        break_rate=metrics["sessions/break_rate"],
        overlong_prompts=int(metrics["env/overlong_prompts"] or 0),
        by_task_type=by_task_type(outcome, tasks, rounds),
        **labels,
    )


def evaluate(
    model_name: str,
    env: Environment,
    env_name: str,
    data: str,
    split: str,
    limit: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    enable_thinking: bool = False,
    *,
    rounds: int = 1,
    critic: str = "self",
    gate: str = "oracle",
    samples: int = 1,
    critic_max_new_tokens: int | None = None,
    turns: dict[str, int] | None = None,
    generation: dict[str, Any] | None = None,
) -> EvalResult:
    """k = ``samples`` sessions on each of the first ``limit`` tasks of ``split``, each with up
    to ``rounds`` attempts; after a failed attempt (every attempt, ungated) ``critic`` writes a
    critique and the solver tries again. ``turns`` sets the multi-turn limits (``env`` keys:
    max_turns, repeat_limit, summary_observation_chars)."""
    require_positive(rounds=rounds, samples=samples)
    spec = parse_critic_spec(critic)
    tasks = select_tasks(env, f"{env_name}:{data}", split, limit)
    config = measurement_config(
        model_name,
        rounds,
        gate,
        max_new_tokens,
        temperature,
        batch_size,
        device,
        enable_thinking,
        critic_max_new_tokens,
        turns,
        generation,
    )
    policy = load_policy(config)
    settings = replace(policy.settings, sessions_per_query=samples)
    critic_ = build_critic(config, policy, spec, settings)
    torch.manual_seed(seed)
    started = time.perf_counter()
    outcome = run_sessions(
        policy.backend, policy.tokenizer, env, tasks, settings, policy.prompts, critic_
    )
    seconds = time.perf_counter() - started
    generated = sum(len(s.response_ids) for s in outcome)
    return summarize(
        outcome,
        tasks,
        rounds,
        settings.gate,
        model=model_name,
        env=env_name,
        data=data,
        split=split,
        samples=samples,
        critic=spec.text if rounds > 1 else None,
        temperature=temperature,
        seed=seed,
        backend=config.generation.backend,
        seconds=round(seconds, 3),
        tokens_per_s=round(generated / seconds, 1) if seconds > 0 else 0.0,
    )


def gate_label(gate: str) -> str:
    return "oracle-gated" if gate == "oracle" else "ungated"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def eval_tables(result: EvalResult) -> list[Table]:
    """The result on screen: the headline table, and a per-task-type table when tasks have
    types."""
    k = result.samples
    title = (
        f"{result.model} on {result.env}:{result.data} ({result.split}, "
        f"{result.n} tasks × {k} sample{'s' if k > 1 else ''})"
    )
    table = Table("metric", "value", title=title)
    table.add_row("success_round1 (critique-free)", f"{result.success_round1:.3f}")
    table.add_row(f"pass@{k}", f"{result.pass_at_k:.3f}")
    if result.rounds > 1:
        label = gate_label(result.gate)
        for r, value in enumerate(result.success_by_round, start=1):
            table.add_row(f"success after round {r} ({label})", f"{value:.3f}")
        table.add_row("critic", str(result.critic))
        table.add_row("fix_rate (failed → solved)", _fraction(result.fix_rate))
        if result.gate == "ungated":
            table.add_row("break_rate (solved → failed)", _fraction(result.break_rate))
        tokens = result.critique_tokens_mean
        table.add_row("critique_tokens_mean", "–" if tokens is None else f"{tokens:.1f}")
    table.add_row("response_tokens_mean", f"{result.response_tokens_mean:.1f}")
    table.add_row(f"generated tokens/s ({result.backend})", f"{result.tokens_per_s:.1f}")
    if result.overlong_prompts:
        table.add_row("skipped: prompt longer than the context", str(result.overlong_prompts))
    tables = [table]
    if result.by_task_type:
        columns = ["task type", "tasks", "round 1", f"pass@{k}"]
        columns += [f"after round {r}" for r in range(2, result.rounds + 1)]
        by_type = Table(*columns, title=f"per task type ({gate_label(result.gate)})")
        for kind, curve in result.by_task_type.items():
            row = [kind, str(curve.tasks), f"{curve.success_round1:.3f}", f"{curve.pass_at_k:.3f}"]
            row += [f"{v:.3f}" for v in curve.success_by_round[1:]]
            by_type.add_row(*row)
        tables.append(by_type)
    return tables
