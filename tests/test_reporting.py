"""Experiment tracking: TensorBoard's own reader and W&B's offline run log hold the metrics of
metrics.jsonl; a resumed run logs each step once; a missing package is one line."""

import json
import signal
import struct
import sys
from pathlib import Path

import pytest
from test_loop import icrl, train_args, wait_until

from icrl_cli.config import ConfigError, resolve
from icrl_cli.trainer import reporting


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_holds_every_metric_of_every_step(tiny_dir, tmp_path):
    run = tmp_path / "run"
    report = ["--set", 'train.report_to=["tensorboard"]', "--algo", "grpo"]
    proc = icrl(*train_args(run, 5), *report)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows, scalars = metrics(run), tensorboard_scalars(run)
    numeric = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, int | float)}
    assert numeric == set(scalars)
    logged = scalars["solver/success_round1"]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5]
    expected = [r["solver/success_round1"] for r in rows]
    assert [value for _, value in logged] == pytest.approx(expected, abs=1e-6)


def test_a_resumed_run_logs_each_step_once(tiny_dir, tmp_path):
    run = tmp_path / "run"
    args = [*train_args(run, 6), "--set", 'train.report_to=["tensorboard"]', "--algo", "grpo"]
    args += ["--set", "train.save_every=3"]
    proc = icrl(*args)
    wait_until(proc, (run / "checkpoints" / "step-3").is_dir, "its step-3 checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = icrl("train", "--resume", str(run))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    logged = tensorboard_scalars(run)["solver/success_round1"]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6]
    expected = [r["solver/success_round1"] for r in metrics(run)]
    assert [value for _, value in logged] == pytest.approx(expected, abs=1e-6)


def wandb_history(run_log: Path) -> list[dict[str, str]]:
    """The history records of an offline run's log (LevelDB framing: 32 KiB blocks of records
    with a 7-byte header each; the payload is W&B's own Record protobuf)."""
    from wandb.proto import wandb_internal_pb2

    raw, position, pending, payloads = run_log.read_bytes(), 7, b"", []
    while position + 7 <= len(raw):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            payloads.append(pending)
            pending = b""
    history = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            history.append({i.key or "/".join(i.nested_key): i.value_json for i in items})
    return history


def test_wandb_runs_offline_in_the_run_directory(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "run"
    proc = icrl(*train_args(run, 2), "--set", 'train.report_to=["wandb"]', "--algo", "grpo")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    history = [h for h in wandb_history(log) if "solver/success_round1" in h]
    rows = metrics(run)
    assert [int(h["_step"]) for h in history] == [1, 2]
    assert [float(h["solver/success_round1"]) for h in history] == pytest.approx(
        [r["solver/success_round1"] for r in rows]
    )
    assert {"loss/policy", "entropy", "grad_norm"} <= set(history[0])
    tables = [h for h in wandb_history(log) if h.get("samples/_type") == '"table-file"']
    assert [int(h["_step"]) for h in tables] == [2]  # samples_every = 2
    assert int(tables[0]["samples/ncols"]) == len(reporting.SAMPLE_COLUMNS)
    assert int(tables[0]["samples/nrows"]) == 16  # 4 queries × 4 sessions, one attempt each


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_missing_tracker_is_one_clear_line(monkeypatch, tmp_path, tracker):
    missing = "torch.utils.tensorboard" if tracker == "tensorboard" else "wandb"
    monkeypatch.setitem(sys.modules, missing, None)
    config = resolve("tiny-math", [f'train.report_to=["{tracker}"]'])
    with pytest.raises(ConfigError, match=f"'{tracker}' needs the '{tracker}' package"):
        reporting.open_reporters(config, tmp_path, 0)
