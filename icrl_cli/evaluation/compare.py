"""`icrl critique-compare`: one solver's round-1 attempts, generated once, critiqued by each
critic in turn; what each critic's critiques fixed, broke and cost.

Every critic sees the same attempts (the same sessions, sampled once with the seed) and its
revisions are sampled from the same seed, so the critics differ only by their critiques.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from environments import Environment
from icrl_cli.components import build_critic, load_policy
from icrl_cli.config import ConfigError
from icrl_cli.evaluation.evaluate import (
    gate_label,
    measurement_config,
    require_positive,
    select_tasks,
    success_by_round,
)
from icrl_cli.rollout.critics import CriticSpec, parse_critic_spec
from icrl_cli.rollout.metrics import session_metrics
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.sessions import continue_sessions, open_sessions
from icrl_cli.trainer.step import score_critiques


def parse_named_critics(items: Sequence[str]) -> list[tuple[str, CriticSpec]]:
    """``NAME=SPEC`` items, each name once."""
    if not items:
        raise ConfigError("name at least one critic: --critic NAME=SPEC (e.g. --critic self=self)")
    named: list[tuple[str, CriticSpec]] = []
    for item in items:
        name, sep, spec = item.partition("=")
        name = name.strip()
        if not sep or not name or not spec.strip():
            raise ConfigError(f"--critic expects NAME=SPEC (e.g. frozen=Qwen3-8B), not '{item}'")
        if name in {n for n, _ in named}:
            raise ConfigError(f"critic name '{name}' is given twice; give each --critic its own")
        named.append((name, parse_critic_spec(spec)))
    return named


@dataclass
class CriticComparison:
    """What one critic's critiques did to the shared round-1 attempts."""

    name: str
    spec: str
    revisions: int
    success_round1: float
    success_final: float
    delta_success: float  # success_final − success_round1
    fix_rate: float | None  # revisions of a failed attempt that succeeded
    break_rate: float | None  # ungated only: revisions of a success that failed
    critique_tokens_mean: float | None  # generated tokens per critique (None: rule)
    # fix_rate per 100 tokens of the mean critique (None without tokens); under the oracle gate,
    # where every critique reads a failed attempt, the fixes per 100 critique tokens
    fix_rate_per_100_tokens: float | None
    critic_reward_mean: float | None
    success_by_round: list[float]
    wall_s: float  # critiques and revisions, round-1 attempts excluded


def critic_comparison(
    name: str, spec: CriticSpec, samples: list[Sample], rounds: int, gate: str, wall_s: float
) -> CriticComparison:
    """``samples``: the shared round-1 attempts and this critic's critiques and revisions."""
    metrics = session_metrics(samples, gate)
    first, final = metrics["solver/success_round1"], metrics["solver/success_final"]
    assert first is not None and final is not None
    return CriticComparison(
        name=name,
        spec=spec.text,
        revisions=int(metrics["sessions/revisions"] or 0),
        success_round1=first,
        success_final=final,
        delta_success=final - first,
        fix_rate=metrics["sessions/fix_rate"],
        break_rate=metrics["sessions/break_rate"],
        critique_tokens_mean=metrics["critic/tokens_mean"],
        fix_rate_per_100_tokens=per_100_tokens(
            metrics["sessions/fix_rate"], metrics["critic/tokens_mean"]
        ),
        critic_reward_mean=metrics["critic/reward_mean"],
        success_by_round=success_by_round(samples, rounds),
        wall_s=wall_s,
    )


def per_100_tokens(rate: float | None, tokens_mean: float | None) -> float | None:
    """``rate`` per 100 tokens of a mean critique of ``tokens_mean`` tokens."""
    if rate is None or not tokens_mean:
        return None
    return 100.0 * rate / tokens_mean


@dataclass
class CompareResult:
    model: str
    env: str
    data: str
    split: str
    n: int  # tasks
    samples: int  # sessions per task
    rounds: int
    gate: str
    temperature: float
    seed: int
    round1_wall_s: float
    critics: list[CriticComparison] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_critics(
    model_name: str,
    env: Environment,
    env_name: str,
    data: str,
    split: str,
    critics: Sequence[str],
    limit: int | None = None,
    rounds: int = 2,
    gate: str = "oracle",
    samples: int = 1,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
    critic_max_new_tokens: int | None = None,
    backend: str = "hf",
) -> CompareResult:
    """Round 1 once (seeded), then each critic in turn continues the same sessions; every
    critic's revisions of round r are sampled from the same seed (``seed + r``)."""
    named = parse_named_critics(critics)
    require_positive(rounds=rounds, samples=samples)
    if rounds < 2:
        raise ConfigError("--rounds must be at least 2: a critique is read only by a revision")
    tasks = select_tasks(env, f"{env_name}:{data}", split, limit)
    config = measurement_config(
        model_name,
        rounds,
        gate,
        max_new_tokens,
        temperature,
        critic_max_new_tokens=critic_max_new_tokens,
        generation={"backend": backend},
    )
    policy = load_policy(config)
    backend, tokenizer, prompts = policy.backend, policy.tokenizer, policy.prompts
    settings = replace(policy.settings, sessions_per_query=samples)
    # Every critic is made before any attempt, so a wrong spec or server fails at once.
    built = []
    for name, spec in named:
        made = build_critic(config, policy, spec, settings)
        assert made is not None  # rounds > 1 is an ICRL config
        built.append((name, spec, made))
    torch.manual_seed(seed)
    started = time.perf_counter()
    sessions = open_sessions(backend, tokenizer, env, tasks, settings, prompts)
    result = CompareResult(
        model=model_name,
        env=env_name,
        data=data,
        split=split,
        n=len(tasks),
        samples=samples,
        rounds=rounds,
        gate=settings.gate,
        temperature=temperature,
        seed=seed,
        round1_wall_s=time.perf_counter() - started,
    )
    attempts = [s.last for s in sessions if s.last is not None]
    for name, spec, critic in built:
        torch.manual_seed(seed + 1)  # the critic's own sampling, where it samples
        started = time.perf_counter()
        continued = continue_sessions(
            backend, tokenizer, env, sessions, settings, prompts, critic, revision_seed=seed
        )
        wall = time.perf_counter() - started
        score_critiques(continued, config.algo.critic_reward)
        result.critics.append(
            critic_comparison(name, spec, attempts + continued, rounds, settings.gate, wall)
        )
    return result


def _cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def compare_table(result: CompareResult) -> Table:
    """One row a critic; the specs that are not their critic's name go in the caption (a URL
    would crowd the columns)."""
    first = result.critics[0].success_round1
    specs = [f"{c.name} = {c.spec}" for c in result.critics if c.spec != c.name]
    table = Table(
        "critic",
        "revised",
        "fix rate",
        "break rate",
        "Δ success",
        "final",
        "critique tokens",
        "fix rate / 100 tokens",
        "wall s",
        title=(
            f"{result.model} on {result.env}:{result.data} ({result.split}, {result.n} tasks × "
            f"{result.samples}), {result.rounds} rounds {gate_label(result.gate)}; "
            f"round-1 success {first:.3f}"
        ),
        caption="; ".join(specs) or None,
    )
    for c in result.critics:
        table.add_row(
            c.name,
            str(c.revisions),
            _cell(c.fix_rate),
            _cell(c.break_rate),
            f"{c.delta_success:+.3f}",
            f"{c.success_final:.3f}",
            _cell(c.critique_tokens_mean, 1),
            _cell(c.fix_rate_per_100_tokens, 2),
            f"{c.wall_s:.1f}",
        )
    return table


def plot_comparison(result: CompareResult, path: Path) -> None:
    """Two panels: each critic's fix rate, break rate (ungated) and change in success; and its
    mean critique length in tokens."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [c.name for c in result.critics]
    series = {"fix rate": [c.fix_rate for c in result.critics]}
    if result.gate == "ungated":
        series["break rate"] = [c.break_rate for c in result.critics]
    series["Δ success"] = [c.delta_success for c in result.critics]
    fig, (rates, tokens) = plt.subplots(1, 2, figsize=(4 + 2.2 * len(names), 4.2))
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        bars = rates.bar(xs, [v or 0.0 for v in values], width, label=label)
        rates.bar_label(bars, labels=[_cell(v, 2) for v in values], fontsize=8)
    rates.set_xticks(range(len(names)), names)
    rates.axhline(0.0, color="black", linewidth=0.8)
    rates.set_title(f"revisions ({gate_label(result.gate)})")
    rates.legend(fontsize=8)
    lengths = [c.critique_tokens_mean for c in result.critics]
    bars = tokens.bar(range(len(names)), [v or 0.0 for v in lengths], 0.6, color="tab:gray")
    tokens.bar_label(bars, labels=[_cell(v, 1) for v in lengths], fontsize=8)
    tokens.set_xticks(range(len(names)), names)
    tokens.set_title("critique tokens (mean)")
    fig.suptitle(
        f"{result.model} on {result.env}:{result.data}, {result.n} tasks × {result.samples}; "
        f"round-1 success {result.critics[0].success_round1:.3f}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
