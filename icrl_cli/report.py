"""Plots and a markdown summary of one or more run directories (``icrl report``).

Each run's ``metrics.jsonl`` is read, its ``config.toml`` names the algorithm, and every plot
overlays the runs: a thin line per step and a thick trailing moving average over it. A metric a
run does not log (GRPO has no critic) or logs as null on some steps (no revisions that step) is
left out of that run's line, never plotted as zero.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message is one line for the user."""


@dataclass(frozen=True)
class Panel:
    """One plotted quantity: the metric, its axis label, and its matplotlib line style."""

    metric: str
    label: str
    style: str = "-"


@dataclass(frozen=True)
class Plot:
    """One PNG: its file name, title, y-axis label and the panels overlaid on one axis."""

    name: str
    title: str
    ylabel: str
    panels: tuple[Panel, ...]


PLOTS = (
    Plot(
        "success",
        "Solver success: round 1 (critique-free, solid) and final attempt (dashed)",
        "success rate",
        (
            Panel("solver/success_round1", "round 1"),
            Panel("solver/success_final", "final", "--"),
        ),
    ),
    Plot(
        "critic_reward",
        "Critic reward",
        "mean reward",
        (Panel("critic/reward_mean", "critic reward"),),
    ),
    Plot(
        "calibration_weight",
        "Mean calibration weight on revision tokens (paper Fig. 4)",
        "w",
        (Panel("calib/w_mean_revision", "w mean"),),
    ),
    Plot(
        "divergence",
        "Where w bites: at divergence (solid), before (dash-dot), after (dashed), w < 0.5 (dots)",
        "w, or share of tokens",
        (
            Panel("calib/w_at_divergence", "w at"),
            Panel("calib/w_before_divergence", "w before", "-."),
            Panel("calib/w_after_divergence", "w after", "--"),
            Panel("calib/w_below_half", "share w < 0.5", ":"),
        ),
    ),
    Plot(
        "clip_fraction",
        "Clipped fractions: calibration ratio outside [w_min, w_max] (solid), "
        "policy ratio (dashed)",
        "fraction of tokens",
        (
            Panel("calib/w_clip_frac", "calibration"),
            Panel("loss/clip_frac", "policy", "--"),
        ),
    ),
    Plot("entropy", "Policy entropy", "nats per token", (Panel("entropy", "entropy"),)),
    Plot(
        "throughput",
        "Throughput (response tokens per second of step time)",
        "tokens/s",
        (Panel("throughput/tokens_per_s", "tokens/s"),),
    ),
)

# The summary table: metric, and whether larger (max), smaller (min) or neither is better.
SUMMARY_METRICS: tuple[tuple[str, str | None], ...] = (
    ("solver/success_round1", "max"),
    ("solver/success_final", "max"),
    ("critic/reward_mean", "max"),
    ("calib/w_mean_revision", None),
    ("calib/w_clip_frac", None),
    ("calib/w_at_divergence", None),
    ("calib/w_below_half", None),
    ("loss/clip_frac", None),
    ("entropy", None),
    ("throughput/tokens_per_s", "max"),
)


@dataclass
class Run:
    """One run's per-step records, and the label its lines carry."""

    path: Path
    algo: str
    label: str
    records: list[dict[str, object]]

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) where the metric was logged as a finite number."""
        steps, values = [], []
        for record in self.records:
            value = record.get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                steps.append(int(record["step"]))  # type: ignore[call-overload]
                values.append(float(value))
        return steps, values

    def wall_time(self) -> float:
        return sum(self.series("time/rollout")[1]) + sum(self.series("time/update")[1])


def load_run(run_dir: Path) -> Run:
    """The run in ``run_dir``; a ReportError when it is not a run directory with metrics."""
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such directory")
    if not metrics.is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl (not a run directory, or no step done)")
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ReportError(f"{metrics}: not UTF-8 text (byte {err.start})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a run still writing its last line
                break
            raise ReportError(f"{metrics}:{number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ReportError(f"{metrics}:{number}: a record without an integer 'step'")
        records.append(record)
    if not records:
        raise ReportError(f"{metrics}: no steps recorded")
    algo = "unknown"
    config = run_dir / "config.toml"
    if config.is_file():
        try:
            text = config.read_text(encoding="utf-8")
            algo = str(tomllib.loads(text).get("algo", {}).get("name", algo))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            raise ReportError(f"{config}: not valid TOML") from None
    return Run(run_dir, algo, algo, records)


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The runs, labelled by algorithm; runs of the same algorithm add their directory name."""
    runs = [load_run(path) for path in run_dirs]
    for run in runs:
        if sum(other.algo == run.algo for other in runs) > 1:
            run.label = f"{run.algo} ({run.path.resolve().name})"
    return runs


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(n_steps: int) -> int:
    """About a tenth of the run, at least 1: light enough that the raw line stays readable."""
    return max(1, n_steps // 10)


def draw(plot: Plot, runs: list[Run], path: Path) -> bool:
    """Write ``plot`` for ``runs`` to ``path``; False (nothing written) when no run has data."""
    # A bare Figure renders with Agg and touches no global pyplot state; imported here so that
    # the command line does not load matplotlib for every command.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4), layout="constrained")
    axis = figure.subplots()
    colours = [f"C{i}" for i in range(len(runs))]
    drawn = False
    for run, colour in zip(runs, colours, strict=True):
        for panel in plot.panels:
            steps, values = run.series(panel.metric)
            if not steps:
                continue
            drawn = True
            style = panel.style
            name = run.label if len(plot.panels) == 1 else f"{run.label}: {panel.label}"
            axis.plot(steps, values, style, color=colour, alpha=0.3, linewidth=0.8)
            window = smoothing_window(len(values))
            smooth = moving_average(values, window)
            axis.plot(steps, smooth, style, color=colour, linewidth=2, label=name)
    if not drawn:
        return False
    axis.set_title(plot.title, fontsize=10)
    axis.set_ylabel(plot.ylabel)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    axis.set_xlabel("step (thin: per step; thick: trailing mean over a tenth of the run)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return True


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_rows(run: Run) -> list[str]:
    """Markdown table rows: metric | first | last | best (step) for one run."""
    rows = []
    for metric, better in SUMMARY_METRICS:
        steps, values = run.series(metric)
        if not steps:
            rows.append(f"| `{metric}` | – | – | – |")
            continue
        if better is None:
            best = "–"
        else:
            pick = max if better == "max" else min
            index = pick(range(len(values)), key=values.__getitem__)
            best = f"{fmt(values[index])} (step {steps[index]})"
        rows.append(f"| `{metric}` | {fmt(values[0])} | {fmt(values[-1])} | {best} |")
    return rows


def write_report(run_dirs: list[Path], output: Path) -> Path:
    """Plots and ``report.md`` for ``run_dirs`` in ``output``; returns the markdown's path."""
    runs = load_runs(run_dirs)
    output.mkdir(parents=True, exist_ok=True)
    drawn = [plot for plot in PLOTS if draw(plot, runs, output / f"{plot.name}.png")]
    lines = ["# Training report", "", "| run | algorithm | steps | last step | wall time (s) |"]
    lines.append("|---|---|---|---|---|")
    for run in runs:
        last = run.records[-1]["step"]
        lines.append(
            f"| {run.label} | {run.algo} | {len(run.records)} | {last} | {run.wall_time():.1f} |"
        )
    lines.append("")
    lines.append("Wall time is the sum of `time/rollout` and `time/update` over the steps.")
    for run in runs:
        lines += ["", f"## {run.label}", "", f"`{run.path}`", ""]
        lines += ["| metric | first | last | best |", "|---|---|---|---|", *summary_rows(run)]
    lines += ["", "## Plots", ""]
    lines.append(
        "Thin lines are per-step values; thick lines their trailing mean over a tenth of the run."
    )
    for plot in drawn:
        lines += ["", f"### {plot.title}", "", f"![{plot.name}]({plot.name}.png)"]
    missing = [plot.name for plot in PLOTS if plot not in drawn]
    if missing:
        lines += ["", f"No data in any run for: {', '.join(missing)}."]
    report = output / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
