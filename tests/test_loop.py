"""End-to-end training on the tiny model: the run directory, resume after SIGKILL, faults."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from icrl_cli.config import resolve
from icrl_cli.models import load_model
from icrl_cli.trainer import checkpoints

SMALL = [
    "train.queries_per_step=4",
    "algo.sessions_per_query=4",
    "train.save_every=2",
    "train.samples_every=2",
]
REQUIRED_METRICS = {
    "step",
    "solver/reward_mean",
    "solver/success_round1",
    "loss/policy",
    "loss/clip_frac",
    "entropy",
    "time/rollout",
    "time/update",
    "throughput/tokens_per_s",
    "memory/peak_mb",
    "train/skipped_steps",
}
# Wall-clock and memory readings differ between any two runs; everything else must not.
NOT_REPRODUCIBLE = ("time/", "throughput/", "memory/")


def icrl(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "icrl_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def wait_until(proc: subprocess.Popen, ready, what: str, seconds: float = 300) -> None:
    """Poll ``ready()`` while the run ``proc`` is still going, up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def train_args(run_dir: Path, steps: int) -> list[str]:
    args = ["train", "--preset", "tiny-math", "--steps", str(steps), "--output-dir", str(run_dir)]
    for item in SMALL:
        args += ["--set", item]
    return args


def reproducible(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(NOT_REPRODUCIBLE)} for r in rows]


def test_run_directory_layout_and_final_model(tiny_dir, tmp_path):
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 3), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert REQUIRED_METRICS <= set(rows[0])
    assert 'name = "tiny"' in (run / "config.toml").read_text()
    assert (run / "checkpoints" / "step-2" / "optimizer.pt").is_file()
    samples = [json.loads(x) for x in (run / "samples" / "step-2.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {"text", "reward", "advantage", "role"} <= set(samples[0])
    # Step 2's metrics are those of the samples it wrote (GRPO: 16 first attempts).
    rewards = [s["reward"] for s in samples]
    assert rows[1]["solver/success_round1"] == sum(r == 1.0 for r in rewards) / 16
    assert rows[1]["solver/reward_mean"] == pytest.approx(sum(rewards) / 16)
    assert rows[1]["throughput/samples"] == 16
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.model_type == "qwen3"
    # The run's prompt templates travel with the model, so `icrl eval` prompts it the same way.
    assert json.loads((run / "final" / "icrl_prompts.json").read_text())["solver_user"] == "{task}"


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tiny_dir, tmp_path):
    steps = 6
    reference = tmp_path / "reference"
    proc = icrl(*train_args(reference, steps))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    killed = tmp_path / "killed"
    proc = icrl(*train_args(killed, steps))
    wait_until(proc, (killed / "checkpoints" / "step-2").is_dir, "its first checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < steps

    proc = icrl("train", "--resume", str(killed))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert reproducible(killed / "metrics.jsonl") == reproducible(reference / "metrics.jsonl")


def test_multi_turn_training_on_the_household_world(tiny_dir, tmp_path):
    preset = tmp_path / "household.toml"
    preset.write_text(
        '[env]\nname = "household"\nmax_turns = 3\n'
        '[algo]\nname = "icrl"\nsessions_per_query = 2\ncritic_max_new_tokens = 8\n'
        "[generation]\nmax_new_tokens = 12\n"
        "[train]\nsteps = 2\nqueries_per_step = 2\nsamples_every = 1\n"
    )
    run = tmp_path / "run"
    proc = icrl("train", "--preset", str(preset), "--output-dir", str(run))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 1 <= row["env/turns_mean"] <= 3
        assert row["env/failed_episodes"] == 0 and row["env/stop_failed"] == 0
        stops = sum(row[f"env/stop_{s}"] for s in ("done", "turns", "repeat", "context"))
        assert math.isclose(stops, 1.0)
    samples = [json.loads(x) for x in (run / "samples" / "step-1.jsonl").read_text().splitlines()]
    first = [s for s in samples if s["role"] == "solver" and s["round"] == 1]
    assert len(first) == 4
    for s in first:
        meta = s["metadata"]
        assert meta["turns"] == len(meta["trajectory"]) <= 3
        # The critic reads "> action" / observation lines of this very trajectory.
        assert meta["summary"].startswith(f"> {meta['trajectory'][0][0]}")
        assert meta["task"].endswith(".") and "Your task is to: " in meta["task"]


def test_training_goes_on_when_the_environment_server_dies(tiny_dir, tmp_path):
    """The household world over HTTP through the AgentGym client; the server is killed after
    the first step, and every episode after that is counted as failed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = icrl("env", "serve", "household", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "icrl env serve did not come up"
            time.sleep(0.2)
    preset = tmp_path / "remote.toml"
    preset.write_text(
        '[env]\nname = "agentgym"\ntrain_split = "train"\nmax_turns = 2\n'
        f'[env.options]\nurls = ["{url}"]\nenv_name = "household"\n'
        "retries = 1\nbackoff = 0.05\ntimeout = 5.0\n"
        '[algo]\nname = "grpo"\nsessions_per_query = 2\n'
        "[generation]\nmax_new_tokens = 8\n"
        "[train]\nsteps = 3\nqueries_per_step = 2\nsamples_every = 0\n"
    )
    run = tmp_path / "run"
    proc = icrl("train", "--preset", str(preset), "--output-dir", str(run))
    metrics = run / "metrics.jsonl"
    wait_until(proc, lambda: lines_in(metrics) >= 1, "its first metrics line", 240)
    server.kill()
    server.communicate()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["env/failed_episodes"] == 0 and 1 <= rows[0]["env/turns_mean"] <= 2
    # The server died during step 2 (some of its episodes may have finished first); every
    # episode of step 3 failed, and a step with nothing left to train on is skipped.
    assert rows[2]["env/failed_episodes"] == 4 and rows[2]["env/stop_failed"] == 1.0
    failed = [r["env/failed_episodes"] for r in rows]
    assert rows[-1]["env/failed_episodes_total"] == sum(failed) >= 4
    assert rows[-1]["train/skipped_steps"] == (failed[1] == 4) + 1
    assert (run / "final" / "config.json").is_file()


def test_icrl_run_logs_the_session_and_calibration_metrics(tiny_dir, tmp_path):
    run = tmp_path / "icrl"
    proc = icrl(*train_args(run, 2), "--algo", "icrl")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        # Some attempt fails at this size, so every step critiques and revises; the measured
        # quantities are then numbers, not the None of a step that had nothing to measure.
        assert row["sessions/revisions"] > 0
        assert row["solver/success_final"] >= row["solver/success_round1"]  # oracle gate
        assert 0.0 < row["calib/w_mean_revision"] <= 2.0  # clamped to [w_min, w_max]
        assert 0.0 <= row["calib/w_clip_frac"] <= 1.0
        assert 0.0 <= row["sessions/fix_rate"] <= 1.0
        assert -1.0 <= row["critic/reward_mean"] <= 1.0
        assert row["critic/tokens_mean"] >= 1.0
        assert row["sessions/break_rate"] is None  # only measured ungated
    samples = [json.loads(x) for x in (run / "samples" / "step-2.jsonl").read_text().splitlines()]
    roles = {(s["role"], s["round"]) for s in samples}
    assert ("critic", 1) in roles and ("solver", 2) in roles
    revision = next(s for s in samples if s["role"] == "solver" and s["round"] == 2)
    assert revision["metadata"]["critique"]


class WritesAFile:
    """Unpickled, this would write ``path``: what a hostile checkpoint could carry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "ran"))


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt"])
def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_dir, tmp_path, name):
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 2), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    planted, checkpoint = tmp_path / "planted", run / "checkpoints" / "step-2"
    torch.save([WritesAFile(planted)], checkpoint / name)
    # A whole forged checkpoint: its manifest matches the planted file.
    checkpoints.write_manifest(checkpoint)
    proc = icrl("train", "--resume", str(run), "--steps", "3")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"step-2/{name}: refused to load" in lines[0]
    assert not planted.exists()


def straight_and_resumed(tmp_path: Path, args: list[str]) -> tuple[Path, Path]:
    """Three steps straight (a checkpoint at 2), and two steps resumed for a third."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run, steps in ((straight, 3), (resumed, 2)):
        proc = icrl(*train_args(run, steps), *args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    proc = icrl("train", "--resume", str(resumed), "--steps", "3")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return straight, resumed


def test_bfloat16_trains_float32_masters_and_resumes_exactly(tiny_dir, tmp_path):
    """At lr 1e-6 an Adam step is far below bfloat16's resolution for these weights; the
    float32 masters take it (nearly every weight moves in two steps), the sampler computes in
    bfloat16, final/ is saved in it, and a run resumed from step 2 repeats a straight one."""
    from safetensors.torch import load_file

    args = ["--set", "model.dtype='bfloat16'", "--set", "train.lr=1e-6", "--algo", "grpo"]
    straight, resumed = straight_and_resumed(tmp_path, args)
    start = load_file(tiny_dir / "model.safetensors")
    master = load_file(straight / "checkpoints" / "step-2" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in master.values())
    changed = sum((start[k] != master[k]).sum().item() for k in start)
    assert changed / sum(t.numel() for t in start.values()) > 0.9
    final = load_file(straight / "final" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in final.values())
    assert reproducible(resumed / "metrics.jsonl") == reproducible(straight / "metrics.jsonl")
    other = load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(final[k], other[k]) for k in final)


def test_lora_trains_adapters_writes_merged_weights_and_resumes_exactly(tiny_dir, tmp_path):
    """Rank-4 adapters: the base stays as it was, final/ holds the merged weights (equal to the
    base with adapter/ applied), and a run resumed at step 2 repeats a straight one."""
    from peft import PeftModel
    from safetensors.torch import load_file

    args = ["--set", "model.lora.rank=4", "--set", "train.lr=1e-3", "--algo", "grpo"]
    straight, resumed = straight_and_resumed(tmp_path, args)
    assert reproducible(resumed / "metrics.jsonl") == reproducible(straight / "metrics.jsonl")
    base, final = (
        load_file(tiny_dir / "model.safetensors"),
        load_file(straight / "final" / "model.safetensors"),
    )
    moved = {k for k in base if not torch.equal(base[k], final[k])}
    assert moved and all(k.endswith("_proj.weight") for k in moved)  # only adapted layers
    other = load_file(resumed / "final" / "model.safetensors")
    assert all(torch.equal(final[k], other[k]) for k in final)
    merged = AutoModelForCausalLM.from_pretrained(straight / "final")
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_dir), straight / "final" / "adapter"
    )
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        gap = (merged(ids).logits - adapted(ids).logits).abs().max().item()
    assert gap < 1e-4


def test_lora_without_peft_is_one_clear_line(monkeypatch, tiny_dir):
    from icrl_cli import adapters
    from icrl_cli.config import ConfigError

    monkeypatch.setitem(sys.modules, "peft", None)
    model, _ = load_model(str(tiny_dir))
    with pytest.raises(ConfigError, match=r"model.lora needs the 'peft' extra"):
        adapters.attach(model, resolve("tiny-math", ["model.lora.rank=4"]).model.lora)


def test_final_is_saved_in_the_models_own_dtype(tiny_dir, tmp_path):
    """A bfloat16 model trained on a CPU computes in float32 (model.dtype auto) and comes back
    in bfloat16, its own dtype; model.dtype, when given, decides instead."""
    import shutil

    from safetensors.torch import load_file

    own = tmp_path / "tiny-bf16"
    shutil.copytree(tiny_dir, own)
    AutoModelForCausalLM.from_pretrained(tiny_dir).to(torch.bfloat16).save_pretrained(own)
    for dtype, expected in (("auto", torch.bfloat16), ("float32", torch.float32)):
        run = tmp_path / dtype
        proc = icrl(*train_args(run, 1), "--model", str(own), "--set", f"model.dtype='{dtype}'")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        final = load_file(run / "final" / "model.safetensors")
        assert {t.dtype for t in final.values()} == {expected}
        assert AutoModelForCausalLM.from_pretrained(run / "final").dtype == expected


def test_resume_skips_a_damaged_checkpoint_and_a_half_written_line(tiny_dir, tmp_path):
    """The newest checkpoint truncated, a kill's half line at the end of metrics.jsonl and a
    stale partial checkpoint: --resume says which checkpoint it skipped and why, goes on from
    the one before, and ends with the uninterrupted run's metrics."""
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 4), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    reference = reproducible(run / "metrics.jsonl")
    weights = run / "checkpoints" / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "solver/rew')
    (run / "checkpoints" / ".step-6.partial").mkdir()
    proc = icrl("train", "--resume", str(run))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "skipping" in err and "step-4: model.safetensors has 1000 bytes" in err
    assert "resuming from" in err and "step-2 (step 2)" in err
    assert reproducible(run / "metrics.jsonl") == reference
    assert not (run / "checkpoints" / ".step-6.partial").exists()


def test_a_fresh_run_never_mixes_with_an_old_one(tiny_dir, tmp_path):
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 2), "--algo", "grpo")
    assert proc.communicate(timeout=300) and proc.returncode == 0
    proc = icrl(*train_args(run, 1), "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [
        f"error: {run} already holds a run (config.toml, metrics.jsonl, checkpoints, samples, "
        f"final); continue it with --resume {run}, or start over with --overwrite"
    ]
    proc = icrl(*train_args(run, 1), "--algo", "grpo", "--overwrite")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run / "checkpoints").exists()  # the old run's step-2 went with it


def test_sigterm_finishes_the_step_checkpoints_and_resume_repeats_the_run(tiny_dir, tmp_path):
    """SIGTERM during step 2 of 4 (no checkpoint schedule): the run finishes step 2, writes a
    checkpoint, exits 0 with how to continue; --resume then ends with the uninterrupted run's
    metrics."""
    args = ["--algo", "grpo", "--set", "train.save_every=0"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    proc = icrl(*train_args(reference, 4), *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    proc = icrl(*train_args(stopped, 4), *args)
    wait_until(proc, lambda: lines_in(stopped / "metrics.jsonl") >= 1, "its first metrics line")
    proc.send_signal(signal.SIGTERM)  # step 2 is under way (or step 1 is just ending)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (line,) = [x for x in err.splitlines() if x.startswith("stopped by SIGTERM")]
    step = int(line.split("after step ")[1].split(",")[0])
    assert step in (1, 2)
    assert line.endswith(f"checkpointed; continue with: icrl train --resume {stopped}")
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == [f"step-{step}"]
    assert not (stopped / "final").exists()
    proc = icrl("train", "--resume", str(stopped))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert reproducible(stopped / "metrics.jsonl") == reproducible(reference / "metrics.jsonl")
