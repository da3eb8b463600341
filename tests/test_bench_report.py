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
    assert evaluator.success("some/checkpoint") == 0.25
    assert seen["turns"] == turns
    assert seen["limit"] == 7 and seen["temperature"] == 1.0
    assert seen["split"] == {"tiny-household": "eval_out_of_distribution"}.get(preset, "dev")
