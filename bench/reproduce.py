"""Reproduce the tiny comparisons: every algorithm and two ICRL ablations, or the leaky-critic
testbed, over seeds, with bootstrap confidence intervals.

What is measured, for each preset (``tiny-math``, ``tiny-household``, ``tiny-searchqa``),
configuration and seed:

* critique-free round-1 success on the preset's held-out split (``env.eval_split``), measured on
  the checkpoints a run writes every ``--eval-every`` steps (and on the untrained model at step
  0), with ``icrl_cli.evaluation.evaluate.evaluate``: one sample per task at the training
  temperature and ``max_new_tokens``, evaluation seed 0;
* per step, from the run's ``metrics.jsonl``: the samples generated, the step's time, the mean
  calibration weight on revision tokens and where it bites (``calib/w_at_divergence``,
  ``calib/w_below_half``);
* the wall time of each training run.

Two comparisons come out of the same runs: at **equal optimizer steps** (every configuration's
checkpoint at the plan's step count) and at **equal generated samples** (success interpolated
between checkpoints at the fewest samples any run reached; GRPO trains twice the steps so that
its curve gets there). Each cell is a mean over seeds with a 95% bootstrap interval, and each
configuration's difference from the first one has its own interval.

Experiments (``--experiment``): ``main``, the five configurations ``icrl``, ``grpo``,
``critique-grpo``, ICRL with ``algo.calibration=none`` and ICRL with
``algo.advantage_grouping=query``; ``leaky``, ICRL with a frozen critic that hands over the
answer half the time (``leaky:0.5``) or only gives hints (``expert``), calibration on and off,
on the tiny model's copy_leaks variant (built on first use into the output folder).

Each run (an ``icrl train`` subprocess, then its evaluations) is a process of its own with
``--threads`` torch threads, ``--jobs`` of them at a time. The script is resumable: a run with a
``result.json`` is skipped, an interrupted one continues from its last checkpoint (``icrl train
--resume``), and evaluations already made are kept in the run's ``evals.json``. Checkpoints are
deleted once evaluated. ``--summarise-only`` tabulates whatever is complete.

Outputs in ``--out``: ``results.json`` (every number), ``results.md`` (the table, also printed)
and, per preset, ``PRESET-success.png`` (against steps), ``PRESET-success-samples.png`` (against
samples) and ``PRESET-w_revision.png``.

    python bench/reproduce.py --quick                  # 1 seed, 10 steps: minutes on 2 cores
    python bench/reproduce.py                          # 5 seeds × 5 configurations: about an hour
    python bench/reproduce.py --experiment leaky       # 5 seeds × 4 configurations
    python bench/reproduce.py --presets tiny-math --seeds 0 1 2 --configs icrl grpo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from reproduce_plans import (
    ALL_CONFIGS,
    EXPERIMENTS,
    FULL,
    QUICK,
    copy_leaks_model,
    run_steps,
)
from reproduce_report import Plan, markdown, plot, summarise


def slug(config: str) -> str:
    return config.replace(" ", "-").replace("=", "-").replace("_", "-")


def run_overrides(config: str, plan: Plan, seed: int, model: str | None = None) -> list[str]:
    return [
        *ALL_CONFIGS[config],
        *([f"model.name='{model}'"] if model else []),
        f"train.steps={run_steps(config, plan)}",
        f"train.seed={seed}",
        f"train.save_every={plan.eval_every}",
        "train.keep_checkpoints=1000",
        "train.samples_every=0",
    ]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def write_json(path: Path, data: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def train_run(preset: str, run_dir: Path, overrides: list[str], threads: int) -> float:
    """Train (or continue) one run in a subprocess; returns the wall seconds it took now."""
    command = [sys.executable, "-m", "icrl_cli", "train"]
    if (run_dir / "config.toml").exists():
        command += ["--resume", str(run_dir)]
    else:
        command += ["--preset", preset, "--output-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (run_dir / "train.log").open("a") as log:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, env=env)
    return time.perf_counter() - started


class Evaluator:
    """Critique-free success of model directories on one preset's held-out split (and the
    plan's ``also_splits``), ``eval_samples`` sessions a task."""

    def __init__(self, preset: str, plan: Plan, model: str | None = None) -> None:
        from icrl_cli.components import environment
        from icrl_cli.config import resolve

        self.config = resolve(preset, [f"model.name='{model}'"] if model else [])
        self.env = environment(self.config)
        self.plan = plan
        self.splits = [self.config.env.eval_split, *plan.also_splits]

    def measure(self, model: str) -> dict[str, float]:
        """Success on each of ``splits``, the preset's eval_split first."""
        from icrl_cli.evaluation.evaluate import evaluate, preset_measurement

        # As ``icrl eval --preset`` measures: the preset's generation settings and its turn
        # limits (a multi-turn episode's budget).
        preset = preset_measurement(self.config, None, None)
        env = self.config.env
        return {
            split: evaluate(
                model,
                self.env,
                env.name,
                env.data or "default",
                split,
                self.plan.eval_limit,
                preset.max_new_tokens,
                preset.temperature,
                0,
                samples=self.plan.eval_samples,
                turns=preset.turns,
                generation=preset.generation,
            ).success_round1
            for split in self.splits
        }


def metrics_series(run_dir: Path, key: str) -> list[float | None]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line).get(key) for line in lines if line]


# Per-step series kept from each run's metrics.jsonl: result key → metric name.
SERIES = {
    "w_mean_revision": "calib/w_mean_revision",
    "w_at_divergence": "calib/w_at_divergence",
    "w_below_half": "calib/w_below_half",
    "train_success_round1": "solver/success_round1",
    "samples": "throughput/samples",
    "rollout_s": "time/rollout",
    "update_s": "time/update",
}


def step_series(run_dir: Path) -> dict[str, list[float | None]]:
    return {key: metrics_series(run_dir, metric) for key, metric in SERIES.items()}


def read_result(run_dir: Path) -> dict[str, Any] | None:
    done = read_json(run_dir / "result.json")
    if done is not None:
        # JSON keys are text; steps are ints.
        done["success"] = {int(k): v for k, v in done["success"].items()}
        done["success_by_split"] = {
            split: {int(k): v for k, v in by_step.items()}
            for split, by_step in done.get("success_by_split", {}).items()
        }
    return done


def complete_run(job: dict[str, Any]) -> None:
    """Train one run, evaluate each of its checkpoints and write its ``result.json``; runs in
    its own process (``--run``) with ``job["threads"]`` torch threads."""
    import torch

    torch.set_num_threads(job["threads"])
    preset, config, seed = job["preset"], job["config"], job["seed"]
    plan, run_dir = Plan(**job["plan"]), Path(job["run_dir"])
    evaluator = Evaluator(preset, plan, job.get("model"))
    overrides = run_overrides(config, plan, seed, job.get("model"))
    wall_path = run_dir / "wall.json"
    if not (run_dir / "final").is_dir():
        spent = train_run(preset, run_dir, overrides, job["threads"])
        wall_path.write_text(json.dumps((read_json(wall_path) or 0.0) + spent))
    steps = range(plan.eval_every, run_steps(config, plan) + 1, plan.eval_every)
    evals = evaluate_checkpoints(run_dir, steps, evaluator)
    result = {
        "preset": preset,
        "config": config,
        "seed": seed,
        "steps": run_steps(config, plan),
        "overrides": overrides,
        "wall_s": read_json(wall_path),
        **success_series(evals, evaluator.splits),
        **step_series(run_dir),
    }
    write_json(run_dir / "result.json", result)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def evaluate_checkpoints(
    run_dir: Path, steps: Iterable[int], evaluator: Evaluator
) -> dict[str, dict[str, float]]:
    """Each step's checkpoint measured on every split (kept in ``evals.json`` as it goes, so a
    stopped run is not measured twice): step → split → success."""
    evals: dict[str, dict[str, float]] = read_json(run_dir / "evals.json") or {}
    for step in steps:
        if set(evaluator.splits) - set(evals.get(str(step), {})):
            checkpoint = run_dir / "checkpoints" / f"step-{step}"
            evals[str(step)] = evaluator.measure(str(checkpoint))
            write_json(run_dir / "evals.json", evals)
    return evals


def success_series(evals: dict[str, dict[str, float]], splits: list[str]) -> dict[str, Any]:
    """A result's ``success`` (step → success on the preset's eval_split) and its
    ``success_by_split`` (each other split → step → success)."""
    first, *others = splits
    return {
        "success": {int(step): by_split[first] for step, by_split in evals.items()},
        "success_by_split": {
            split: {int(step): by_split[split] for step, by_split in evals.items()}
            for split in others
        },
    }


def launch_run(job: dict[str, Any]) -> dict[str, Any] | None:
    """``complete_run`` in a fresh interpreter (its log in the run directory); the result, or
    None if it failed."""
    run_dir = Path(job["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--run", json.dumps(job)]
    with (run_dir / "run.log").open("a") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=thread_env(job))
    return read_result(run_dir) if done.returncode == 0 else None


def partial_result(job: dict[str, Any], evaluator: Evaluator) -> dict[str, Any] | None:
    """A run that has not finished (still going, or stopped): its checkpoints so far are
    evaluated (and kept in ``evals.json``) and its metrics read up to the last step logged."""
    run_dir, plan = Path(job["run_dir"]), Plan(**job["plan"])
    steps = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")]
    if not steps:
        return None
    evals = evaluate_checkpoints(
        run_dir, [s for s in sorted(steps) if s % plan.eval_every == 0], evaluator
    )
    weights = metrics_series(run_dir, "calib/w_mean_revision")
    return {
        "preset": job["preset"],
        "config": job["config"],
        "seed": job["seed"],
        "steps": run_steps(job["config"], plan),
        "partial": True,
        "steps_done": len(weights),
        "wall_s": None,
        **success_series(evals, evaluator.splits),
        **step_series(run_dir),
    }


def thread_env(job: dict[str, Any]) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))


def base_success(preset: str, out: Path, evaluator: Evaluator) -> dict[str, float]:
    """Step 0: the untrained model on each split, the same for every configuration and
    seed."""
    path = out / preset / "base_eval.json"
    plan = evaluator.plan
    measured = {"limit": plan.eval_limit, "samples": plan.eval_samples}
    cached = read_json(path)
    if cached is not None and all(cached.get(k) == v for k, v in measured.items()):
        # (A cache from before splits were measured has no "samples": it never gets here.)
        if set(evaluator.splits) <= set(cached["by_split"]):
            return {split: cached["by_split"][split] for split in evaluator.splits}
    model = evaluator.config.model.name
    success = evaluator.measure(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = success[evaluator.splits[0]]
    write_json(path, {"model": model, **measured, "success": first, "by_split": success})
    return success


def warm_start_report(preset: str, model: str | None = None) -> dict[str, Any] | None:
    """The model's warm_start.json (the cached embedded model's, or a built variant's): which
    model the numbers belong to."""
    from icrl_cli.config import resolve
    from icrl_cli.tiny import EMBEDDED_NAMES, tiny_model_dir

    name = model or resolve(preset, []).model.name
    if model is not None:
        directory = Path(model)
    elif name in EMBEDDED_NAMES:
        directory = tiny_model_dir(name)
    else:
        return None
    return {
        "model": name,
        "dir": str(directory),
        "warm_start": read_json(directory / "warm_start.json"),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed and a few steps per preset")
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["tiny-math"],
        choices=list(FULL),
        help="tiny-math (default), tiny-household and/or tiny-searchqa.",
    )
    parser.add_argument(
        "--experiment",
        choices=list(EXPERIMENTS),
        default="main",
        help="main: every algorithm and two ICRL ablations; leaky: the leaky-critic testbed "
        "(tiny-math only, on the copy_leaks variant of the tiny model, built on first use).",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(ALL_CONFIGS),
        help="A subset of the experiment's configurations (default: all of them).",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="Override the plan's seeds.")
    parser.add_argument("--steps", type=int, help="Override the plan's training steps.")
    parser.add_argument("--eval-every", type=int, help="Override the checkpoint interval.")
    parser.add_argument("--eval-limit", type=int, help="Override the held-out tasks evaluated.")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="Runs at once, each on --threads torch threads (2 × 1 thread uses 2 cores better "
        "than 1 × 2 threads for a model this small).",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run.")
    parser.add_argument(
        "--summarise-only", action="store_true", help="Tabulate the runs already complete."
    )
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="Also tabulate runs that have not finished, up to their last checkpoint.",
    )
    parser.add_argument("--out", type=Path, help="Output folder (default bench/out/reproduce…).")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    return parser.parse_args()


def choose_plans(args: argparse.Namespace) -> dict[str, Plan]:
    """Each preset's quick or full plan with the command line's overrides."""
    plans = {}
    for preset in args.presets:
        plan = (QUICK if args.quick else FULL)[preset]
        plans[preset] = replace(
            plan,
            steps=args.steps or plan.steps,
            eval_every=args.eval_every or plan.eval_every,
            eval_limit=args.eval_limit or plan.eval_limit,
            seeds=tuple(args.seeds) if args.seeds else plan.seeds,
        )
    return plans


def plan_jobs(
    plans: dict[str, Plan], configs: list[str], out: Path, threads: int, model: str | None
) -> list[dict[str, Any]]:
    jobs = []
    for preset, plan in plans.items():
        for seed in plan.seeds:  # seed-major: a cut-short run still covers every configuration
            for config in configs:
                run_dir = out / preset / slug(config) / f"seed-{seed}"
                job = {"preset": preset, "config": config, "seed": seed, "plan": asdict(plan)}
                jobs.append({**job, "run_dir": str(run_dir), "threads": threads, "model": model})
    return jobs


def run_pending(
    pending: list[dict[str, Any]], at_once: int, started: float
) -> list[dict[str, Any]]:
    """Launch the runs not yet complete, ``at_once`` at a time; the results of those that worked."""
    runs = []
    with ThreadPoolExecutor(at_once) as pool:
        futures = {pool.submit(launch_run, job): job for job in pending}
        for future in as_completed(futures):
            job, result = futures[future], future.result()
            status = "done" if result is not None else f"FAILED (see {job['run_dir']}/run.log)"
            print(
                f"[{time.perf_counter() - started:6.0f} s] {job['preset']} {job['config']} "
                f"seed {job['seed']}: {status}",
                flush=True,
            )
            if result is not None:
                runs.append(result)
    return runs


def unfinished_results(
    jobs: list[dict[str, Any]], plans: dict[str, Plan], model: str | None
) -> list[dict[str, Any]]:
    """``partial_result`` of each run without a ``result.json`` that has written a checkpoint."""
    evaluators = {preset: Evaluator(preset, plan, model) for preset, plan in plans.items()}
    runs = []
    for job in jobs:
        if read_result(Path(job["run_dir"])) is None:
            partial = partial_result(job, evaluators[job["preset"]])
            if partial is not None:
                runs.append(partial)
    return runs


def main() -> None:
    args = parse_args()
    if args.run:
        complete_run(json.loads(args.run))
        return

    leaky = args.experiment == "leaky"
    if leaky:
        args.presets = ["tiny-math"]
    configs = args.configs or list(EXPERIMENTS[args.experiment])
    plans = choose_plans(args)
    name = "reproduce-quick" if args.quick else "reproduce"
    out = args.out or Path("bench/out") / (f"{name}-leaky" if leaky else name)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    model = str(copy_leaks_model(out)) if leaky else None
    bases, split_bases, models = {}, {}, {}
    for preset, plan in plans.items():
        models[preset] = warm_start_report(preset, model)
        split_bases[preset] = base_success(preset, out, Evaluator(preset, plan, model))
        bases[preset] = next(iter(split_bases[preset].values()))  # the preset's eval_split
    jobs = plan_jobs(plans, configs, out, args.threads, model)
    runs = [r for r in (read_result(Path(j["run_dir"])) for j in jobs) if r is not None]
    pending = [j for j in jobs if read_result(Path(j["run_dir"])) is None]
    print(f"{len(runs)} runs complete, {len(pending)} to go", flush=True)
    if pending and not args.summarise_only:
        runs += run_pending(pending, args.jobs, started)
    if args.include_unfinished:
        runs += unfinished_results(jobs, plans, model)
    order = {(j["preset"], j["config"], j["seed"]): i for i, j in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["preset"], r["config"], r["seed"])])
    summary = summarise(runs, bases, plans, models, configs, split_bases)
    summary["experiment"] = args.experiment
    summary["runs"] = runs
    summary["elapsed_s"] = time.perf_counter() - started
    write_json(out / "results.json", summary)
    table = markdown(summary)
    (out / "results.md").write_text(table)
    for path in plot(summary, runs, out):
        print(f"wrote {path}")
    print(table)


if __name__ == "__main__":
    main()
