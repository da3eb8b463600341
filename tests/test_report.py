"""`icrl report`: plots for synthetic runs, and a summary whose numbers were worked out by hand."""

import json
import math

import pytest
from typer.testing import CliRunner

from icrl_cli.app import app
from icrl_cli.report import ReportError, load_run, moving_average, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ICRL_STEPS = [
    {
        "step": 1,
        "solver/success_round1": 0.25,
        "solver/success_final": 0.5,
        "critic/reward_mean": 0.125,
        "calib/w_mean_revision": 0.9,
        "calib/w_clip_frac": 0.0,
        "calib/w_at_divergence": 0.2,
        "calib/w_before_divergence": None,
        "calib/w_after_divergence": 0.95,
        "calib/w_below_half": 0.05,
        "loss/clip_frac": 0.0,
        "entropy": 1.5,
        "throughput/tokens_per_s": 100.0,
        "time/rollout": 2.0,
        "time/update": 1.0,
    },
    {
        "step": 2,
        "solver/success_round1": 0.5,
        "solver/success_final": 0.75,
        "critic/reward_mean": 0.25,
        "calib/w_mean_revision": 1.1,
        "calib/w_clip_frac": 0.25,
        "calib/w_at_divergence": 0.4,
        "calib/w_before_divergence": 1.0,
        "calib/w_after_divergence": 1.05,
        "calib/w_below_half": 0.025,
        "loss/clip_frac": 0.125,
        "entropy": 1.25,
        "throughput/tokens_per_s": 150.0,
        "time/rollout": 2.5,
        "time/update": 0.5,
    },
    {  # no failed attempt this step: no critic and no revisions
        "step": 3,
        "solver/success_round1": 0.375,
        "solver/success_final": 0.875,
        "critic/reward_mean": None,
        "calib/w_mean_revision": None,
        "calib/w_clip_frac": None,
        "loss/clip_frac": 0.0625,
        "entropy": 1.0,
        "throughput/tokens_per_s": 125.0,
        "time/rollout": 1.5,
        "time/update": 0.5,
    },
]

GRPO_STEPS = [
    {
        "step": 1,
        "solver/success_round1": 0.125,
        "solver/success_final": 0.125,
        "critic/reward_mean": None,
        "loss/clip_frac": 0.5,
        "entropy": 2.0,
        "throughput/tokens_per_s": 80.0,
        "time/rollout": 1.0,
        "time/update": 1.0,
    },
    {
        "step": 2,
        "solver/success_round1": 0.625,
        "solver/success_final": 0.625,
        "critic/reward_mean": None,
        "loss/clip_frac": 0.0,
        "entropy": math.nan,  # a non-finite value is not plotted
        "throughput/tokens_per_s": 90.0,
        "time/rollout": 1.0,
        "time/update": 1.0,
    },
]


def write_run(path, algo, steps):
    path.mkdir()
    (path / "config.toml").write_text(f'[algo]\nname = "{algo}"\n')
    (path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    return path


@pytest.fixture()
def runs(tmp_path):
    return (
        write_run(tmp_path / "icrl-run", "icrl", ICRL_STEPS),
        write_run(tmp_path / "grpo-run", "grpo", GRPO_STEPS),
    )


def section(markdown: str, heading: str) -> str:
    return markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_two_runs_overlaid_and_summarised(runs, tmp_path):
    out = tmp_path / "report"
    report = write_report(list(runs), out)
    names = [
        "success",
        "critic_reward",
        "calibration_weight",
        "divergence",
        "clip_fraction",
        "entropy",
    ]
    for name in [*names, "throughput"]:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
        assert f"![{name}]({name}.png)" in report.read_text()
    markdown = report.read_text()
    # wall time: (2 + 1) + (2.5 + 0.5) + (1.5 + 0.5) = 8.0 and (1 + 1) * 2 = 4.0
    assert "| icrl | icrl | 3 | 3 | 8.0 |" in markdown
    assert "| grpo | grpo | 2 | 2 | 4.0 |" in markdown
    icrl = section(markdown, "icrl")
    assert "| `solver/success_round1` | 0.250 | 0.375 | 0.500 (step 2) |" in icrl
    assert "| `solver/success_final` | 0.500 | 0.875 | 0.875 (step 3) |" in icrl
    # Step 3 logged no critic: the last value is step 2's.
    assert "| `critic/reward_mean` | 0.125 | 0.250 | 0.250 (step 2) |" in icrl
    assert "| `calib/w_mean_revision` | 0.900 | 1.100 | – |" in icrl
    assert "| `calib/w_at_divergence` | 0.200 | 0.400 | – |" in icrl
    assert "| `calib/w_below_half` | 0.050 | 0.025 | – |" in icrl
    assert "| `loss/clip_frac` | 0.000 | 0.062 | – |" in icrl
    assert "| `throughput/tokens_per_s` | 100.000 | 125.000 | 150.000 (step 2) |" in icrl
    grpo = section(markdown, "grpo")
    assert "| `critic/reward_mean` | – | – | – |" in grpo
    assert "| `calib/w_mean_revision` | – | – | – |" in grpo
    assert "| `entropy` | 2.000 | 2.000 | – |" in grpo
    assert "| `solver/success_round1` | 0.125 | 0.625 | 0.625 (step 2) |" in grpo


def test_plots_without_data_are_left_out(runs, tmp_path):
    out = tmp_path / "grpo-only"
    markdown = write_report([runs[1]], out).read_text()
    assert not (out / "critic_reward.png").exists()
    assert not (out / "calibration_weight.png").exists()
    assert not (out / "divergence.png").exists()
    assert (out / "clip_fraction.png").exists()  # loss/clip_frac alone is enough
    assert "No data in any run for: critic_reward, calibration_weight, divergence." in markdown


def test_same_algorithm_twice_is_told_apart_by_directory(tmp_path):
    a = write_run(tmp_path / "a", "icrl", ICRL_STEPS)
    b = write_run(tmp_path / "b", "icrl", ICRL_STEPS)
    markdown = write_report([a, b], tmp_path / "out").read_text()
    assert "## icrl (a)" in markdown and "## icrl (b)" in markdown


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([4.0, 2.0, 0.0], 5) == [4.0, 3.0, 2.0]


def test_a_run_cut_off_mid_line_keeps_its_whole_steps(tmp_path):
    run = write_run(tmp_path / "live", "icrl", ICRL_STEPS[:2])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "solver/succ')
    assert [r["step"] for r in load_run(run).records] == [1, 2]
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:2: not a JSON object"):
        load_run(run)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "missing", "missing: no such directory"),
        (lambda tmp: tmp, "no metrics.jsonl"),
    ],
)
def test_bad_run_directories_are_one_line_and_exit_2(tmp_path, make, expected):
    result = CliRunner().invoke(app, ["report", str(make(tmp_path))])
    assert result.exit_code == 2
    assert expected in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
