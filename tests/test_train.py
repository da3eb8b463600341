"""End-to-end training on the tiny model: the run directory, resume after SIGKILL, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from icrl_cli.config import resolve
from icrl_cli.models import load_model
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.loop import policy_update

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
    proc = icrl(*train_args(run, 3))
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


@pytest.mark.parametrize("micro", [1, 3])
def test_micro_batching_does_not_change_the_update(tiny_dir, micro):
    """The gradient of 4 samples is the same whether they go through in 1, 2 or 4 pieces."""
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

    def gradients(micro_batch_size):
        config.train.micro_batch_size = micro_batch_size
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
        return [p.grad.clone() for p in model.parameters()]

    full = gradients(4)
    split = gradients(micro)
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


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
