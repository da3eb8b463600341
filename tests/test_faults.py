"""Faults a long run must survive, caused on purpose: a disk that fills up mid-checkpoint, and a
kill while a checkpoint is being written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from test_loop import icrl, reproducible, train_args, wait_until

from icrl_cli.trainer import checkpoints


@pytest.fixture()
def small_disk(tmp_path):
    """A 60 MiB tmpfs: room for one tiny-model checkpoint (about 38 MiB with its optimizer
    state) but not for a second beside it. Skipped where mounting is not allowed."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tiny_dir, small_disk, tmp_path):
    run = small_disk / "run"
    proc = icrl(*train_args(run, 4), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (and the bar)
    assert len(errors) == 1
    assert errors[0].startswith("error: no space left on the device writing ")
    assert errors[0].endswith(
        "step-4; every checkpoint already written is intact: free space, "
        "then continue with --resume"
    )
    # Step 2's checkpoint is whole; step 4's half-written one is gone.
    assert [p.name for p in checkpoints.list_checkpoints(run)] == ["step-2"]
    assert checkpoints.damage(run / "checkpoints" / "step-2") is None
    assert not list((run / "checkpoints").glob(".*.partial"))
    # With room again, --resume finishes the run as if nothing had happened.
    moved = shutil.copytree(run, tmp_path / "moved")
    proc = icrl("train", "--resume", str(moved), "--steps", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    straight = tmp_path / "straight"
    proc = icrl(*train_args(straight, 4), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert reproducible(moved / "metrics.jsonl") == reproducible(straight / "metrics.jsonl")
    assert Path(moved / "final" / "model.safetensors").is_file()


def test_a_kill_during_a_checkpoint_write_loses_nothing(tiny_dir, tmp_path):
    """SIGKILL the moment step 2's checkpoint starts being written: the half-written directory
    is never taken for a checkpoint, --resume clears it, and the run ends as a straight one."""
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 4), "--algo", "grpo")
    partial = run / "checkpoints" / ".step-2.partial"
    wait_until(proc, partial.exists, "step 2's checkpoint being written", seconds=300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert checkpoints.list_checkpoints(run) in ([], [run / "checkpoints" / "step-2"])
    proc = icrl("train", "--resume", str(run), "--steps", "4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not partial.exists()
    straight = tmp_path / "straight"
    proc = icrl(*train_args(straight, 4), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert reproducible(run / "metrics.jsonl") == reproducible(straight / "metrics.jsonl")
