"""What ``bench/reproduce.py`` runs: the configurations of each experiment (``--set``
overrides of ``icrl train``), each preset's plan (steps, evaluation, seeds), and the model the
leaky-critic experiment trains.
"""

from __future__ import annotations

from pathlib import Path

from reproduce_report import Plan

# ``--set`` overrides of ``icrl train`` per configuration (values are TOML).
CONFIGS: dict[str, list[str]] = {
    "icrl": ["algo.name='icrl'"],
    "grpo": ["algo.name='grpo'"],
    "critique-grpo": ["algo.name='critique-grpo'"],
    "icrl calibration=none": ["algo.name='icrl'", "algo.calibration='none'"],
    "icrl advantage_grouping=query": ["algo.name='icrl'", "algo.advantage_grouping='query'"],
}

# The leaky-critic experiment (``--experiment leaky``): ICRL with a frozen expert critic that
# hands over the gold answer half the time ("no:N") and otherwise names the first wrong running
# sum, on the tiny build's copy_leaks variant, whose revisions copy a leaked answer into a
# direct one. A copied answer is something the solver cannot write alone, so its calibration
# weight should be small; without the weight it is trained into the critique-free prompt at
# full strength. The hint-only critic is the control: there both arms should be alike.
LEAKY_CONFIGS: dict[str, list[str]] = {
    "leaky, calibrated": ["algo.name='icrl'", "algo.critic='leaky:0.5'"],
    "leaky, calibration=none": [
        "algo.name='icrl'",
        "algo.critic='leaky:0.5'",
        "algo.calibration='none'",
    ],
    "hints, calibrated": ["algo.name='icrl'", "algo.critic='expert'"],
    "hints, calibration=none": [
        "algo.name='icrl'",
        "algo.critic='expert'",
        "algo.calibration='none'",
    ],
}
# Run only when named with --configs. Advantages normalised per (query, round, role): a
# revision that succeeds after a critique then raises no bar for the same query's first
# attempts, which under per-(query, role) grouping are pushed down even when all of them fail.
ABLATIONS: dict[str, list[str]] = {
    "icrl advantage_grouping=query_round_role": [
        "algo.name='icrl'",
        "algo.advantage_grouping='query_round_role'",
    ],
}
EXPERIMENTS = {"main": CONFIGS, "leaky": LEAKY_CONFIGS}
ALL_CONFIGS = {**CONFIGS, **LEAKY_CONFIGS, **ABLATIONS}


def copy_leaks_model(out: Path) -> Path:
    """The copy_leaks variant of the tiny model (built once, a few minutes, into ``out``)."""
    from icrl_cli.tiny.math_build import build

    target = out / "model"
    if not (target / "model.safetensors").exists():
        print(f"building the copy_leaks variant of tiny into {target}", flush=True)
        build(target, copy_leaks=True)
    return target


# The full plans. tiny-math: 30 of the preset's 100 steps (where the algorithms still differ;
# by step 100 most runs are near 0.85–0.9), 5 seeds, 500 held-out problems every 5 steps, so
# that 25 runs fit in about an hour on two cores. tiny-searchqa: 30 steps, the whole dev split
# (110 questions) every 10, 3 seeds. tiny-household: 30 steps, 3 seeds, every 10 steps both
# held-out splits whole (eval_out_of_distribution's 37 tasks, the preset's, and
# eval_in_distribution's 39), 4 sessions a task: one session a task read the base model
# anywhere from 0.21 to 0.28 in distribution, and the two splits move apart under RL.
HOUSEHOLD_SPLITS = ("eval_in_distribution",)
FULL = {
    "tiny-math": Plan(steps=30, eval_every=5, eval_limit=500, seeds=(0, 1, 2, 3, 4)),
    "tiny-household": Plan(
        steps=30,
        eval_every=10,
        eval_limit=39,
        seeds=(0, 1, 2),
        eval_samples=4,
        also_splits=HOUSEHOLD_SPLITS,
    ),
    "tiny-searchqa": Plan(steps=30, eval_every=10, eval_limit=110, seeds=(0, 1, 2)),
}
QUICK = {
    "tiny-math": Plan(steps=10, eval_every=5, eval_limit=200, seeds=(0,)),
    "tiny-household": Plan(
        steps=2, eval_every=2, eval_limit=4, seeds=(0,), also_splits=HOUSEHOLD_SPLITS
    ),
    "tiny-searchqa": Plan(steps=2, eval_every=2, eval_limit=8, seeds=(0,)),
}


# A GRPO step generates about half the samples of an ICRL step (no critiques, no revisions), so
# GRPO trains this many times the plan's steps: its curve then reaches the sample count the
# others end at, and the equal-samples comparison needs no extrapolation. Its equal-steps point
# is its checkpoint at the plan's step count.
STEP_FACTOR = {"grpo": 2}


def run_steps(config: str, plan: Plan) -> int:
    return plan.steps * STEP_FACTOR.get(config, 1)
