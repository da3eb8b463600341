"""torchrun and FSDP2 on CPUs (gloo): two ranks take the step one process takes, and a run
over two ranks trains, checkpoints and resumes exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from icrl_cli.components import train_on
from icrl_cli.config import ConfigError, resolve
from icrl_cli.trainer.distributed import World

WORKER = Path(__file__).with_name("distributed_worker.py")


def run(*args: str, ranks: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    """``args`` in one process, or in ``ranks`` processes under torchrun."""
    launch = [sys.executable]
    if ranks > 1:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_two_ranks_take_the_step_one_process_takes(tmp_path):
    run(str(WORKER), str(tmp_path / "one.pt"))
    run(str(WORKER), str(tmp_path / "two.pt"), ranks=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    # Rank 0 played 2 of the 4 queries (18 of the 30 samples), yet the loss was normalised by
    # all of them: the same loss, gradient norm, calibration statistics and new weights.
    assert (one["rows"], two["rows"]) == (30, 18)
    for key in ("loss_policy", "grad_norm", "entropy", "w_mean_revision", "w_clip_frac"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-5), key
    moved = max((one["weights"][k] - one["initial"][k]).abs().max() for k in one["weights"])
    assert moved > 1e-2
    for name, weight in one["weights"].items():
        assert torch.allclose(two["weights"][name], weight, atol=1e-6), name


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_torchrun_run_trains_checkpoints_and_resumes_exactly(tiny_dir, tmp_path):
    # tiny_dir: the tiny model is built before the ranks start, not inside the timed run.
    def train(run_dir: Path, *extra: str) -> None:
        settings = ["--set", "train.queries_per_step=4", "--set", "algo.sessions_per_query=4"]
        command = ["-m", "icrl_cli", "train", "--preset", "tiny-math", "--algo", "grpo"]
        run(*command, *settings, "--set", "train.save_every=1", *extra, ranks=2)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, "--steps", "3", "--output-dir", str(straight))
    train(resumed, "--steps", "2", "--output-dir", str(resumed))
    run("-m", "icrl_cli", "train", "--resume", str(resumed), "--set", "train.steps=3", ranks=2)
    rows = metrics(straight)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # 4 queries × 4 sessions, 2 queries a rank, all of them in the metrics.
    assert all(r["throughput/samples"] == 16 and r["world/ranks"] == 2 for r in rows)
    # Sampler, per-rank random states and the sharded optimizer's state came back whole.
    again = metrics(resumed)
    assert [r["step"] for r in again] == [1, 2, 3]
    for key in ("solver/reward_mean", "grad_norm", "loss/policy", "entropy"):
        assert again[2][key] == pytest.approx(rows[2][key], rel=1e-5), key
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["step-2", "step-3"]
    from safetensors.torch import load_file

    final = load_file(straight / "final" / "model.safetensors")
    other = load_file(resumed / "final" / "model.safetensors")
    assert all(torch.allclose(final[k], other[k], atol=1e-6) for k in final)


def test_queries_must_split_evenly_over_the_ranks(tmp_path):
    config = resolve("tiny-math", ["train.queries_per_step=3"])
    with pytest.raises(ConfigError, match=r"queries_per_step \(3\) must be a multiple .* \(2\)"):
        train_on(World(0, 2, 0), config, tmp_path, False, Console())
