"""The plans and summaries of ``bench/reproduce.py``: how long each preset trains and how it is
evaluated; per-configuration numbers over seeds, the markdown table of ``results.md`` and each
preset's ``PRESET-success.png`` and ``PRESET-w_revision.png``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Plan:
    """How long each run of a preset trains and how it is evaluated."""

    steps: int
    eval_every: int
    eval_limit: int
    seeds: tuple[int, ...]


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd, min(values), max(values)


def curve(runs: list[dict[str, Any]], base: float) -> dict[int, tuple[float, float, float, float]]:
    steps = sorted({s for r in runs for s in r["success"]})
    points = {0: (base, 0.0, base, base)}
    for step in steps:
        points[step] = spread([r["success"][step] for r in runs if step in r["success"]])
    return points


def revision_weight(run: dict[str, Any], last_fraction: float = 0.2) -> float | None:
    """Mean ``calib/w_mean_revision`` over the last ``last_fraction`` of the steps."""
    series = run["w_mean_revision"]
    tail = [w for w in series[int(len(series) * (1 - last_fraction)) :] if w is not None]
    return statistics.fmean(tail) if tail else None


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    for preset, block in summary["presets"].items():
        plan = block["plan"]
        lines += [
            f"### {preset}: {plan['steps']} steps, seeds {plan['seeds']}, "
            f"held-out n = {plan['eval_limit']}",
            "",
            "| configuration | success, step 0 | success, last step (mean ± sd) | per seed "
            "| best step (mean) | w_mean_revision, last 20% | run wall time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for config, row in block["configs"].items():
            points = {int(k): v for k, v in row["curve"].items()}
            last = max(points)
            mean, sd, _, _ = points[last]
            best = max(points, key=lambda s: points[s][0])
            per_seed = ", ".join(f"{v:.3f}" for v in row["final_per_seed"])
            weight, wall = row["w_mean_revision_tail"], row["wall_s_mean"]
            name = config
            if row["steps_done"] < plan["steps"]:
                name += f" (unfinished: step {row['steps_done']}, evaluated to {last})"
            lines.append(
                f"| {name} | {points[0][0]:.3f} | {mean:.3f} ± {sd:.3f} | {per_seed} "
                f"| {points[best][0]:.3f} @ {best} "
                f"| {'–' if weight is None else f'{weight:.3f}'} "
                f"| {'–' if wall is None else f'{wall:.0f}'} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for preset, block in summary["presets"].items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for config, row in block["configs"].items():
            points = sorted((int(k), v) for k, v in row["curve"].items())
            steps = [s for s, _ in points]
            ax.plot(steps, [p[0] for _, p in points], marker="o", label=config)
            ax.fill_between(steps, [p[2] for _, p in points], [p[3] for _, p in points], alpha=0.2)
        seeds = len(block["plan"]["seeds"])
        title = f"{preset}: mean of {seeds} seed(s), band = min..max"
        written.append(
            save(fig, ax, "critique-free success (held-out)", title, out, preset, "success")
        )

        fig, ax = plt.subplots(figsize=(6, 4))
        for config in block["configs"]:
            series = [
                r["w_mean_revision"] for r in runs if (r["preset"], r["config"]) == (preset, config)
            ]
            longest = max(map(len, series))
            steps = range(1, longest + 1)
            means = []
            for values in zip(*(w + [None] * (longest - len(w)) for w in series), strict=True):
                known = [v for v in values if v is not None]
                means.append(statistics.fmean(known) if known else float("nan"))
            if any(m == m for m in means):  # NaN != NaN: skip configurations without revisions
                ax.plot(steps, means, label=config)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        title = f"{preset}: mean calibration weight on revisions (seed mean)"
        written.append(save(fig, ax, "calib/w_mean_revision", title, out, preset, "w_revision"))
    return written


def save(fig: Any, ax: Any, ylabel: str, title: str, out: Path, preset: str, name: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{preset}-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarise(
    runs: list[dict[str, Any]],
    bases: dict[str, float],
    plans: dict[str, Plan],
    models: dict,
    order: Iterable[str],
) -> dict[str, Any]:
    """Each preset's plan, model and one row per configuration, configurations in ``order``."""
    presets: dict[str, Any] = {}
    for preset, plan in plans.items():
        configs: dict[str, Any] = {}
        for config in order:
            chosen = [r for r in runs if (r["preset"], r["config"]) == (preset, config)]
            if not chosen:
                continue
            weights = [w for w in map(revision_weight, chosen) if w is not None]
            walls = [r["wall_s"] for r in chosen if r["wall_s"] is not None]
            configs[config] = {
                "curve": curve(chosen, bases[preset]),
                "final_per_seed": [r["success"][max(r["success"])] for r in chosen],
                "seeds": [r["seed"] for r in chosen],
                "steps_done": min(r.get("steps_done", r["steps"]) for r in chosen),
                "w_mean_revision_tail": statistics.fmean(weights) if weights else None,
                "wall_s_mean": statistics.fmean(walls) if walls else None,
            }
        presets[preset] = {"plan": vars(plan), "model": models[preset], "configs": configs}
    return {"presets": presets}
