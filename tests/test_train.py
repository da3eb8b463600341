"""End-to-end training on the tiny model: the run directory, resume after SIGKILL, faults."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from icrl_cli.config import resolve
from icrl_cli.models import load_model
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.batch import collate, micro_batches
from icrl_cli.trainer.logprobs import recompute_behavior_logprobs, response_logprobs
from icrl_cli.trainer.policy import policy_update

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
    assert 0.0 <= rows[0]["solver/success_round1"] <= 1.0
    assert 'name = "tiny"' in (run / "config.toml").read_text()
    assert (run / "checkpoints" / "step-2" / "optimizer.pt").is_file()
    samples = [json.loads(x) for x in (run / "samples" / "step-2.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {"text", "reward", "advantage", "role"} <= set(samples[0])
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
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-2").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
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
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline + 240
        time.sleep(0.05)
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


def test_a_non_finite_loss_skips_the_step_and_keeps_the_weights(tiny_dir):
    config = resolve("tiny-math", [])
    model, tokenizer = load_model(str(tiny_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prompt = tokenizer.encode("<|user|>1+2<|end|><|assistant|>")
    response = tokenizer.encode(r"\boxed{3}") + [tokenizer.eos_token_id]
    samples = [
        Sample("q", i, 1, "solver", prompt, prompt, response, [1] * len(response), [0.0] * 10)
        for i in range(2)
    ]
    samples[0].advantage, samples[1].advantage = float("nan"), 1.0
    before = [p.detach().clone() for p in model.parameters()]
    stats = policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
    assert stats.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    samples[0].advantage = -1.0
    stats = policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
    assert not stats.skipped
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("micro, longest", [(1, None), (3, None), (4, 2), (4, 1)])
def test_micro_batching_does_not_change_the_update(tiny_dir, micro, longest):
    """The gradient of 4 samples is the same whether they go through in 1, 2 or 4 pieces, in
    rollout order or sorted by length under a cap of ``longest`` × the longest sample's
    tokens."""
    config = resolve("tiny-math", [])
    model, tokenizer = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    responses = [r"\boxed{42}", r"\boxed{41}", r"\boxed{4}", r"\boxed{420}"]
    samples = []
    for i, text in enumerate(responses):
        ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
        samples.append(
            Sample("q", i, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))
        )
        samples[-1].advantage = [1.5, -0.5, -0.5, -0.5][i]

    def gradients(micro_batch_size, micro_batch_tokens=None):
        config.train.micro_batch_size = micro_batch_size
        config.train.micro_batch_tokens = micro_batch_tokens
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
        return [p.grad.clone() for p in model.parameters()]

    full = gradients(4)
    most = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    split = gradients(micro, longest and longest * most)
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_micro_batches_sort_by_length_under_a_token_cap():
    lengths = [30, 10, 12, 50, 11, 29]
    # In rollout order, 4 rows at a time.
    assert micro_batches(lengths, 4, None) == [[0, 1, 2, 3], [4, 5]]
    # Sorted: 10, 11, 12 (3 × 12 = 36 ≤ 40); 29 (2 × 29 > 40); 30; 50 alone over the cap.
    assert micro_batches(lengths, 4, 40) == [[1, 4, 2], [5], [0], [3]]
    # The row limit still holds: 10, 11 | 12, 29 | 30, 50 under a cap of 100 and 2 rows.
    assert micro_batches(lengths, 2, 100) == [[1, 4], [2, 5], [0, 3]]
    # 4 × 29 = 116 > 90 starts a second; 29 and 30 fit (2 × 30); 50 does not (3 × 50).
    assert micro_batches(lengths, 8, 90) == [[1, 4, 2], [5, 0], [3]]


def test_k3_penalty_is_zero_against_itself_and_positive_against_another_model(tiny_dir):
    config = resolve("tiny-math", ["algo.kl_coef=0.1"])
    model, tokenizer = load_model(str(tiny_dir))
    reference, _ = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    ids = tokenizer.encode(r"\boxed{42}") + [tokenizer.eos_token_id]
    samples = [Sample("q", 0, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    assert policy_update(model, reference, optimizer, samples, config, 0).loss_kl == 0.0
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert policy_update(model, reference, optimizer, samples, config, 0).loss_kl > 1e-4


def _revision(tokenizer, critique="45"):
    free = tokenizer.encode("<|user|>12+30+3<|end|><|assistant|>")
    behavior = tokenizer.encode(f"<|user|>12+30+3|{critique}<|end|><|assistant|>")
    ids = tokenizer.encode(r"12+30=42, 42+3=45. \boxed{45}") + [tokenizer.eos_token_id]
    sample = Sample("q", 0, 2, "solver", free, behavior, ids, [1] * len(ids), [0.0] * len(ids))
    sample.advantage = 1.0
    return sample


def _logprobs(model, tokenizer, sample, context):
    batch = collate([replace(sample, prompt_ids=context)], tokenizer.pad_token_id, model.device)
    with torch.no_grad():
        return response_logprobs(model, batch)[0][0].tolist()


@pytest.mark.parametrize(
    ("calibration", "shift", "expected_loss", "expected_w", "clip_frac"),
    [
        ("token_tis", math.log(4.0), -0.25, 0.25, 0.0),  # the critique made tokens 4× likelier
        ("none", math.log(4.0), -1.0, 0.25, 0.0),  # w ≡ 1; the diagnostic still reads 0.25
        ("token_tis", -math.log(4.0), -2.0, 2.0, 1.0),  # 4× less likely: clamped at w_max = 2
        ("icepop_mask", -math.log(4.0), 0.0, 2.0, 1.0),  # outside the band: zeroed
    ],
)
def test_calibration_switch_weighs_revision_tokens(
    tiny_dir, calibration, shift, expected_loss, expected_w, clip_frac
):
    config = resolve("tiny-math", [f'algo.calibration="{calibration}"'])
    model, tokenizer = load_model(str(tiny_dir))
    sample = _revision(tokenizer)
    old = _logprobs(model, tokenizer, sample, sample.prompt_ids)
    sample.behavior_logprobs = [x + shift for x in old]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = policy_update(model, None, optimizer, [sample], config, tokenizer.pad_token_id)
    # ρ ≡ 1 and Â = 1, so the per-token loss is −w and the sample's token mean is −mean(w).
    assert stats.loss_policy == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    assert stats.w_mean_revision == pytest.approx(expected_w, rel=1e-4)
    assert stats.w_clip_frac == clip_frac


def test_luffy_shaping_replaces_the_surrogate_on_revision_tokens(tiny_dir):
    config = resolve("tiny-math", ['algo.calibration="luffy_shaping"'])
    model, tokenizer = load_model(str(tiny_dir))
    sample = _revision(tokenizer)
    probs = torch.tensor(_logprobs(model, tokenizer, sample, sample.prompt_ids)).exp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = policy_update(model, None, optimizer, [sample], config, tokenizer.pad_token_id)
    expected = -(probs / (probs + 0.1)).mean().item()
    assert stats.loss_policy == pytest.approx(expected, rel=1e-4)


def test_recompute_takes_behavior_logprobs_from_a_trainer_forward(tiny_dir):
    model, tokenizer = load_model(str(tiny_dir))
    revision, first = _revision(tokenizer), _revision(tokenizer)
    first.round, first.behavior_prompt_ids = 1, first.prompt_ids
    recompute_behavior_logprobs(model, [revision, first], tokenizer.pad_token_id, 8)
    expected = _logprobs(model, tokenizer, revision, revision.behavior_prompt_ids)
    assert revision.behavior_logprobs == pytest.approx(expected, abs=1e-5)
    assert first.behavior_logprobs == [0.0] * len(first.response_ids)  # untouched
    under_free = _logprobs(model, tokenizer, revision, revision.prompt_ids)
    assert revision.behavior_logprobs != pytest.approx(under_free, abs=1e-3)


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
