"""The plans and summaries of ``bench/reproduce.py``: how long each preset trains and how it is
evaluated; per-configuration numbers over seeds with bootstrap confidence intervals, at equal
optimizer steps and at equal generated samples; the markdown of ``results.md`` and each
preset's plots.
"""

from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOOTSTRAP_DRAWS = 10_000


@dataclass(frozen=True)
class Plan:
    """How long each run of a preset trains and how it is evaluated."""

    steps: int
    eval_every: int
    eval_limit: int
    seeds: tuple[int, ...]
    # Sessions per held-out task (success is their mean), and more held-out splits measured at
    # each checkpoint beside the preset's eval_split, each reported as a curve of its own.
    eval_samples: int = 1
    also_splits: tuple[str, ...] = ()


def bootstrap_ci(
    values: Sequence[float],
    other: Sequence[float] | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of the mean of ``values`` over seeds, or with
    ``other`` of the difference of means (each resampled on its own: the runs of two
    configurations share a seed number, not a trajectory). With five seeds the interval is
    narrower than it should be (the bootstrap's small-sample bias), which favours finding a
    difference; read a gap whose interval barely excludes 0 as weak evidence."""
    rng = random.Random(seed)
    means = []
    for _ in range(draws):
        mean = statistics.fmean(rng.choices(values, k=len(values)))
        if other is not None:
            mean -= statistics.fmean(rng.choices(other, k=len(other)))
        means.append(mean)
    means.sort()
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def cumulative_samples(run: dict[str, Any]) -> list[int]:
    """Samples generated (attempts, critiques, revisions) up to and including each step."""
    total, out = 0, []
    for count in run["samples"]:
        total += count or 0
        out.append(total)
    return out


def success_at_samples(run: dict[str, Any], base: float, budget: float) -> float | None:
    """Held-out success after ``budget`` generated samples, interpolated linearly between the
    run's evaluated checkpoints (step 0 is the base model at 0 samples); None if the run had not
    generated that many by its last evaluation."""
    seen = cumulative_samples(run)
    points = [(0.0, base)] + [
        (float(seen[step - 1]), run["success"][step])
        for step in sorted(run["success"])
        if step <= len(seen)
    ]
    xs = [x for x, _ in points]
    if budget > xs[-1]:
        return None
    right = bisect.bisect_left(xs, budget)
    if xs[right] == budget:
        return points[right][1]
    (x0, y0), (x1, y1) = points[right - 1], points[right]
    return y0 + (y1 - y0) * (budget - x0) / (x1 - x0)


def tail_mean(series: list[float | None], last_fraction: float = 0.2) -> float | None:
    """Mean of a per-step series over the last ``last_fraction`` of the steps (None skipped)."""
    tail = [v for v in series[int(len(series) * (1 - last_fraction)) :] if v is not None]
    return statistics.fmean(tail) if tail else None


def mean_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def compare(values: list[float], reference: list[float] | None) -> dict[str, Any]:
    """Mean, 95% CI and per-seed values; with ``reference`` the difference from its mean and
    that difference's 95% CI."""
    row: dict[str, Any] = {"per_seed": values}
    if not values:
        return row
    row["mean"] = statistics.fmean(values)
    row["ci"] = bootstrap_ci(values)
    if reference:
        row["diff"] = row["mean"] - statistics.fmean(reference)
        row["diff_ci"] = bootstrap_ci(values, reference)
    return row


def sample_budget(runs: list[dict[str, Any]]) -> float:
    """The equal-samples point: the fewest samples any run had generated at its last
    evaluation, so every run's success there is interpolated, never extrapolated."""
    return float(min(cumulative_samples(r)[max(r["success"]) - 1] for r in runs))


def summarise(
    runs: list[dict[str, Any]],
    bases: dict[str, float],
    plans: dict[str, Plan],
    models: dict,
    order: Iterable[str],
    split_bases: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Each preset's plan, model and one row per configuration, configurations in ``order``;
    differences are against the first configuration of ``order`` that has runs. With
    ``split_bases`` (preset → split → the base model's success, the preset's eval_split
    first), each row also has a curve per split."""
    presets: dict[str, Any] = {}
    for preset, plan in plans.items():
        chosen = {
            config: [r for r in runs if (r["preset"], r["config"]) == (preset, config)]
            for config in order
        }
        chosen = {config: rows for config, rows in chosen.items() if rows}
        if not chosen:
            continue
        base = bases[preset]
        evaluated = [r for rows in chosen.values() for r in rows if r["success"]]
        budget = sample_budget(evaluated) if evaluated else 0.0
        at_steps = {
            config: [r["success"][plan.steps] for r in rows if plan.steps in r["success"]]
            for config, rows in chosen.items()
        }
        at_samples = {
            config: [
                v for v in (success_at_samples(r, base, budget) for r in rows) if v is not None
            ]
            for config, rows in chosen.items()
        }
        reference = next(iter(chosen))
        configs: dict[str, Any] = {}
        for config, rows in chosen.items():
            is_reference = config == reference
            configs[config] = {
                "seeds": [r["seed"] for r in rows],
                "curve": curve(rows, base),
                "equal_steps": compare(
                    at_steps[config], None if is_reference else at_steps[reference]
                ),
                "equal_samples": compare(
                    at_samples[config], None if is_reference else at_samples[reference]
                ),
                "samples_at_plan_steps": mean_of(
                    cumulative_samples(r)[plan.steps - 1]
                    for r in rows
                    if len(r["samples"]) >= plan.steps
                ),
                "steps_done": min(r.get("steps_done", r["steps"]) for r in rows),
                "steps": max(r["steps"] for r in rows),
                "w_mean_revision_tail": mean_of(tail_mean(r["w_mean_revision"]) for r in rows),
                "w_at_divergence_tail": mean_of(tail_mean(r["w_at_divergence"]) for r in rows),
                "w_below_half_tail": mean_of(tail_mean(r["w_below_half"]) for r in rows),
                "wall_s_mean": mean_of(r["wall_s"] for r in rows),
                "curves_by_split": split_curves(rows, (split_bases or {}).get(preset, {})),
            }
        presets[preset] = {
            "plan": vars(plan),
            "model": models.get(preset),
            "base_success": base,
            "reference": reference,
            "sample_budget": budget,
            "configs": configs,
        }
    return {"presets": presets}


def split_curves(
    runs: list[dict[str, Any]], bases: dict[str, float]
) -> dict[str, dict[int, dict[str, float]]]:
    """``curve`` on each split of ``bases`` (the first is the preset's eval_split, the runs'
    ``success``; the others are read from their ``success_by_split``)."""
    curves = {}
    for index, (split, base) in enumerate(bases.items()):
        if index == 0:
            curves[split] = curve(runs, base)
        else:
            on_split = [
                {**r, "success": r.get("success_by_split", {}).get(split, {})} for r in runs
            ]
            curves[split] = curve(on_split, base)
    return curves


def curve(runs: list[dict[str, Any]], base: float) -> dict[int, dict[str, float]]:
    """Per evaluated step: mean success over seeds and mean samples generated by then."""
    steps = sorted({s for r in runs for s in r["success"]})
    points = {0: {"success": base, "samples": 0.0}}
    for step in steps:
        having = [r for r in runs if step in r["success"] and len(r["samples"]) >= step]
        if having:
            points[step] = {
                "success": statistics.fmean(r["success"][step] for r in having),
                "samples": statistics.fmean(cumulative_samples(r)[step - 1] for r in having),
            }
    return points


def _interval(row: dict[str, Any], key: str = "ci") -> str:
    if key not in row:
        return "–"
    lo, hi = row[key]
    return f"[{lo:+.3f}, {hi:+.3f}]" if key == "diff_ci" else f"[{lo:.3f}, {hi:.3f}]"


def _cell(row: dict[str, Any]) -> str:
    if "mean" not in row:
        return "–"
    return f"{row['mean']:.3f} {_interval(row)}"


def _diff(row: dict[str, Any]) -> str:
    if "diff" not in row:
        return "–"
    return f"{row['diff']:+.3f} {_interval(row, 'diff_ci')}"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = []
    for preset, block in summary["presets"].items():
        plan, reference = block["plan"], block["reference"]
        budget = block["sample_budget"]
        samples = plan.get("eval_samples", 1)
        sessions = f" × {samples} sessions" if samples > 1 else ""
        n = "up to " if plan.get("also_splits") else ""  # a split may hold fewer
        lines += [
            f"### {preset}: {plan['steps']} steps, seeds {list(plan['seeds'])}, "
            f"held-out n = {n}{plan['eval_limit']}{sessions}, base model "
            f"{block['base_success']:.3f}",
            "",
            f"Critique-free held-out success, mean over seeds [95% bootstrap CI]; Δ is the "
            f"difference from `{reference}` [its 95% CI]. Equal steps: after {plan['steps']} "
            f"optimizer steps. Equal samples: after {budget:.0f} generated samples (attempts, "
            "critiques and revisions), interpolated between checkpoints.",
            "",
            f"| configuration | step {plan['steps']} | Δ | per seed | samples by step "
            f"{plan['steps']} | {budget:.0f} samples | Δ | w̄ revision | w at divergence "
            "| w < 0.5 | run wall (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for config, row in block["configs"].items():
            steps, samples = row["equal_steps"], row["equal_samples"]
            name = config
            if row["steps_done"] < row["steps"]:
                name += f" (unfinished: step {row['steps_done']} of {row['steps']})"
            per_seed = ", ".join(f"{v:.3f}" for v in steps["per_seed"])
            lines.append(
                f"| {name} | {_cell(steps)} | {_diff(steps)} | {per_seed} "
                f"| {_number(row['samples_at_plan_steps'], 0)} | {_cell(samples)} "
                f"| {_diff(samples)} | {_number(row['w_mean_revision_tail'])} "
                f"| {_number(row['w_at_divergence_tail'])} | {_number(row['w_below_half_tail'])} "
                f"| {_number(row['wall_s_mean'], 0)} |"
            )
        lines += split_table(block)
        lines += [
            "",
            "w̄ revision, w at divergence and w < 0.5 (the share of revision tokens with a weight "
            "below 0.5) are means over the last 20% of steps, logged whatever the calibration "
            "mode.",
            "",
        ]
    return "\n".join(lines)


def split_table(block: dict[str, Any]) -> list[str]:
    """Markdown lines: per configuration and held-out split, the mean success over seeds at
    every evaluated step (none when a single split was measured)."""
    rows = [(c, row["curves_by_split"]) for c, row in block["configs"].items()]
    if not rows or len(rows[0][1]) < 2:
        return []
    steps = sorted({int(s) for _, curves in rows for c in curves.values() for s in c})
    samples = block["plan"].get("eval_samples", 1)
    lines = [
        "",
        f"Critique-free success on each held-out split ({samples} session(s) a task), mean "
        "over seeds; step 0 is the base model:",
        "",
        "| configuration | split | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for config, curves in rows:
        for split, points in curves.items():
            by_step = {int(k): v["success"] for k, v in points.items()}
            cells = [_number(by_step.get(s)) for s in steps]
            lines.append(f"| {config} | {split} | " + " | ".join(cells) + " |")
    return lines


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for preset, block in summary["presets"].items():
        seeds = len(block["plan"]["seeds"])
        for axis_key, xlabel in (("step", "training step"), ("samples", "samples generated")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for i, (config, row) in enumerate(block["configs"].items()):
                # The preset's eval_split solid; any other split measured, dashed.
                curves = row.get("curves_by_split") or {"": row["curve"]}
                for k, (split, on_split) in enumerate(curves.items()):
                    points = sorted((int(step), v) for step, v in on_split.items())
                    xs = [s if axis_key == "step" else p["samples"] for s, p in points]
                    ys = [p["success"] for _, p in points]
                    label = f"{config} ({split})" if split else config
                    style = "-" if k == 0 else "--"
                    ax.plot(xs, ys, style, color=f"C{i}", marker="o", ms=3, label=label)
            if axis_key == "samples":
                ax.axvline(block["sample_budget"], color="grey", lw=0.8, ls="--")
            title = f"{preset}: mean of {seeds} seed(s)"
            name = "success" if axis_key == "step" else "success-samples"
            written.append(
                save(fig, ax, xlabel, "critique-free success (held-out)", title, out, preset, name)
            )

        fig, ax = plt.subplots(figsize=(6, 4))
        for i, config in enumerate(block["configs"]):
            for key, style in (("w_mean_revision", "-"), ("w_at_divergence", "--")):
                series = [r[key] for r in runs if (r["preset"], r["config"]) == (preset, config)]
                longest = max(map(len, series))
                padded = [s + [None] * (longest - len(s)) for s in series]
                means = [mean_of(values) for values in zip(*padded, strict=True)]
                if any(m is not None for m in means):
                    ys = [float("nan") if m is None else m for m in means]
                    label = f"{config}: {'w mean' if style == '-' else 'w at divergence'}"
                    ax.plot(range(1, longest + 1), ys, style, color=f"C{i}", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        title = f"{preset}: w on revisions, mean (solid) and at divergence (dashed)"
        written.append(save(fig, ax, "training step", "w", title, out, preset, "w_revision"))
    return written


def save(
    fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, out: Path, preset: str, name: str
) -> Path:
    import matplotlib.pyplot as plt

    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{preset}-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
