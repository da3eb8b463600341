"""bench/reproduce_report.py's statistics: success at a sample budget, interpolated between
checkpoints, and the bootstrap intervals, against numbers worked out by hand."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from reproduce_report import (  # noqa: E402 (bench/ is not a package)
    bootstrap_ci,
    cumulative_samples,
    sample_budget,
    split_curves,
    split_table,
    success_at_samples,
)

# Four steps of 100, 80, 60 and 60 samples, evaluated at steps 2 and 4.
RUN = {"samples": [100, 80, 60, 60], "success": {2: 0.5, 4: 0.7}}


def test_success_at_a_sample_budget_is_interpolated_between_checkpoints():
    assert cumulative_samples(RUN) == [100, 180, 240, 300]
    # Base 0.3 at 0 samples, 0.5 at 180, 0.7 at 300.
    assert success_at_samples(RUN, 0.3, 90) == pytest.approx(0.3 + 0.2 * 90 / 180)
    assert success_at_samples(RUN, 0.3, 180) == pytest.approx(0.5)
    assert success_at_samples(RUN, 0.3, 270) == pytest.approx(0.5 + 0.2 * 90 / 120)
    assert success_at_samples(RUN, 0.3, 301) is None  # never extrapolated
    other = {"samples": [128] * 4, "success": {2: 0.4, 4: 0.6}}
    assert sample_budget([RUN, other]) == 300  # the fewer samples at a last evaluation


def test_bootstrap_intervals():
    assert bootstrap_ci([0.5] * 5) == (0.5, 0.5)
    values = [0.6, 0.7, 0.8, 0.9, 1.0]
    lo, hi = bootstrap_ci(values)
    # The mean of 5 draws with replacement: sd = sqrt(0.02 / 5) = 0.063, so about ±0.124.
    assert lo == pytest.approx(0.8 - 0.124, abs=0.02) and hi == pytest.approx(0.8 + 0.124, abs=0.02)
    # A difference: both spreads add, sd = sqrt(2) · 0.063 = 0.089, about ±0.175 around 0.1.
    lo, hi = bootstrap_ci([v + 0.1 for v in values], values)
    assert lo == pytest.approx(0.1 - 0.175, abs=0.025) and hi == pytest.approx(
        0.1 + 0.175, abs=0.025
    )


@pytest.mark.parametrize(
    ("preset", "turns"),
    [
        # presets/tiny-household.toml and presets/tiny-searchqa.toml, read by hand.
        ("tiny-household", {"max_turns": 10, "repeat_limit": 3, "summary_observation_chars": 120}),
        ("tiny-searchqa", {"max_turns": 4, "repeat_limit": 3, "summary_observation_chars": 220}),
    ],
)
def test_the_curves_measure_a_checkpoint_within_the_presets_turn_budget(monkeypatch, preset, turns):
    """bench/reproduce.py's held-out success is measured as ``icrl eval --preset`` measures:
    an episode gets the preset's turns, not the schema's default of 30."""
    import reproduce
    from reproduce_report import Plan

    from icrl_cli.evaluation import evaluate

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs, split=args[4], limit=args[5], temperature=args[7])
        return type("Result", (), {"success_round1": 0.25})()

    monkeypatch.setattr(evaluate, "evaluate", record)
    evaluator = reproduce.Evaluator(preset, Plan(steps=1, eval_every=1, eval_limit=7, seeds=(0,)))
    first = {"tiny-household": "eval_out_of_distribution"}.get(preset, "dev")
    assert evaluator.measure("some/checkpoint") == {first: 0.25}
    assert seen["turns"] == turns
    assert seen["limit"] == 7 and seen["temperature"] == 1.0 and seen["samples"] == 1
    assert seen["split"] == first

    splits = []
    monkeypatch.setattr(
        evaluate, "evaluate", lambda *a, **k: splits.append((a[4], k["samples"])) or record(*a, **k)
    )
    plan = Plan(steps=1, eval_every=1, eval_limit=7, seeds=(0,), eval_samples=3, also_splits=("x",))
    assert reproduce.Evaluator(preset, plan).measure("m") == {first: 0.25, "x": 0.25}
    assert splits == [(first, 3), ("x", 3)]


def test_each_held_out_split_gets_a_curve_of_its_own():
    """The preset's split is the runs' ``success``; another split is read from
    ``success_by_split``; each point is the mean over seeds, step 0 the base model's."""
    runs = [
        {"samples": [10] * 4, "success": {2: 0.2, 4: 0.3}, "success_by_split": {"in": {2: 0.4}}},
        {"samples": [10] * 4, "success": {2: 0.4, 4: 0.1}, "success_by_split": {"in": {2: 0.6}}},
    ]
    curves = split_curves(runs, {"out": 0.25, "in": 0.5})
    assert list(curves) == ["out", "in"]
    assert {s: p["success"] for s, p in curves["out"].items()} == pytest.approx(
        {0: 0.25, 2: 0.3, 4: 0.2}
    )
    assert {s: p["success"] for s, p in curves["in"].items()} == pytest.approx({0: 0.5, 2: 0.5})
    assert curves["in"][2]["samples"] == 20  # two steps of 10
    block = {"plan": {"eval_samples": 4}, "configs": {"icrl": {"curves_by_split": curves}}}
    table = split_table(block)
    assert "| icrl | out | 0.250 | 0.300 | 0.200 |" in table
    assert "| icrl | in | 0.500 | 0.500 | – |" in table
    assert any("4 session(s) a task" in line for line in table)
    # One split measured: the main table says it all.
    assert split_table({**block, "configs": {"icrl": {"curves_by_split": {"out": {}}}}}) == []


def test_a_checkpoint_is_measured_on_each_split_once(tmp_path):
    """A stopped run's evals.json is kept: a checkpoint is measured again only when a split is
    missing from it."""
    import json

    import reproduce

    class Counting:
        splits = ["out", "in"]

        def __init__(self):
            self.measured = []

        def measure(self, model):
            self.measured.append(Path(model).name)
            return {"out": 0.1, "in": 0.2}

    (tmp_path / "evals.json").write_text(
        json.dumps({"10": {"out": 0.5, "in": 0.6}, "20": {"out": 0.7}})
    )
    evaluator = Counting()
    evals = reproduce.evaluate_checkpoints(tmp_path, [10, 20, 30], evaluator)
    assert evaluator.measured == ["step-20", "step-30"]
    series = reproduce.success_series(evals, evaluator.splits)
    assert series["success"] == {10: 0.5, 20: 0.1, 30: 0.1}
    assert series["success_by_split"] == {"in": {10: 0.6, 20: 0.2, 30: 0.2}}
    assert json.loads((tmp_path / "evals.json").read_text())["30"] == {"out": 0.1, "in": 0.2}
