"""The command line: commands are listed, bad input gets one line and exit 2, never a traceback."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from icrl_cli.app import app

runner = CliRunner()


def test_help_lists_the_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("rollout", "train", "eval", "critique-compare", "presets"):
        assert command in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'; choose one of: "),
        (["train", "--set", "train.nope=1"], "unknown config key 'train.nope'"),
        (["train", "--algo", "ppo"], "'grpo', 'icrl' or 'critique-grpo'"),
        (
            ["train", "--env", "nope"],
            "unknown environment 'nope'; choose one of: agentgym, household, math",
        ),
        (["train", "--set", "train"], "--set expects dotted.key=value"),
        (
            ["train", "--env", "household", "--set", "env.options={rooms=3}"],
            "environment 'household' rejects its options",
        ),
        (["eval", "--model", "./no/such/dir"], "model path './no/such/dir' does not exist"),
        (["eval"], "give --model, or a --preset whose model is measured"),
        (["eval", "--preset", "nope"], "nope"),
        (["eval", "--model", "tiny", "--data", "/no/file.jsonl"], "/no/file.jsonl"),
        (["eval", "--model", "tiny", "--split", "validation"], "validation"),
    ],
)
def test_user_errors_are_one_line(args, expected):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_presets_command_lists_tiny_math():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "tiny-math" in result.output


def test_dry_run_prints_the_resolved_plan_without_loading_weights(tmp_path):
    result = runner.invoke(
        app, ["train", "--model", "Qwen3-4B", "--dry-run", "--output-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert 'name = "Qwen3-4B"' in result.output
    assert "steps = 100" in result.output


def test_without_a_preset_an_environment_starts_from_its_own_tiny_preset(tmp_path):
    result = runner.invoke(app, ["train", "--env", "household", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'name = "tiny-household"' in result.output  # the model, not tiny-math's
    assert "pick_and_place_simple" in result.output  # its env options, not math's data
    result = runner.invoke(app, ["train", "--env", "searchqa", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'name = "tiny-searchqa"' in result.output and "top_k = 1" in result.output
    # An environment with no tiny preset starts from the bare defaults: no math options.
    result = runner.invoke(
        app,
        ["train", "--env", "agentgym", "--dry-run", "--set", 'env.options={urls="http://h:1"}'],
    )
    assert result.exit_code == 0, result.output
    assert "synthetic" not in result.output and "tiny-math" not in result.output


def test_a_real_process_prints_no_traceback_for_a_bad_key():
    proc = subprocess.run(
        [sys.executable, "-m", "icrl_cli", "train", "--set", "algo.nope=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown config key 'algo.nope'; valid keys here: adv_eps, ")
    assert ", calibration, critic, critic_gate, " in lines[0]


def test_short_model_names_resolve_to_hub_ids():
    from icrl_cli.models import resolve_model_name

    assert resolve_model_name("Qwen3-4B") == "Qwen/Qwen3-4B"
    assert resolve_model_name("Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model_name("org/model") == "org/model"


def test_a_model_that_is_not_available_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["eval", "--model", "Qwen3-4B", "--limit", "1"])
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: model 'Qwen/Qwen3-4B' is not available locally and the hub cannot be reached"
    )


@pytest.mark.parametrize("preset", ["qwen3-4b-math", "qwen3-8b-math"])
def test_paper_presets_print_their_plan_without_loading_weights(preset):
    result = runner.invoke(app, ["train", "--preset", preset, "--dry-run"])
    assert result.exit_code == 0, result.output
    size = preset.split("-")[1].upper()
    assert f"Qwen/Qwen3-{size}" in result.output
    assert "16 queries × G=8, up to K=2 rounds" in result.output
    assert "calibration token_tis in [0, 2]" in result.output
    assert "clipped loss, critique_free context" in result.output
    assert "lr = 1e-06" in result.output and "eps_high = 0.28" in result.output


def test_env_serve_answers_health_on_loopback_and_rejects_unknown_names():
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "icrl_cli", "env", "serve", "household", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert reply.json() == {"status": "ok", "service": "household"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = runner.invoke(app, ["env", "serve", "nope"])
    assert result.exit_code == 2 and "unknown environment 'nope'" in result.output


def test_the_alfworld_preset_validates_its_servers_without_contacting_them():
    result = runner.invoke(app, ["train", "--preset", "qwen3-8b-alfworld", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "Qwen/Qwen3-8B" in result.output and "agentgym" in result.output
    assert 'urls = "http://127.0.0.1:36001-36032"' in result.output
    bad = ["--set", "env.options.urls=http://127.0.0.1:36032-36001"]
    result = runner.invoke(app, ["train", "--preset", "qwen3-8b-alfworld", "--dry-run", *bad])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1


def test_files_that_are_not_utf8_and_an_empty_model_directory_are_one_line(tmp_path):
    preset = tmp_path / "bad.toml"
    preset.write_bytes(b'[model]\nname = "\xff"\n')
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "\xfe", "answer": "1"}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": "\xff"}\n')
    (tmp_path / "empty").mkdir()
    cases = [
        (["train", "--preset", str(preset)], f"{preset}: not UTF-8 text (byte 16)"),
        (["eval", "--model", "tiny", "--data", str(data)], "bad.jsonl:2: not UTF-8 text (byte 14)"),
        (["report", str(run)], "metrics.jsonl: not UTF-8 text (byte 21)"),
        (
            ["eval", "--model", str(tmp_path / "empty")],
            "is a directory without config.json, not a Hugging Face model directory",
        ),
    ]
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output.replace("\n", "")
        assert "Traceback" not in result.output


def test_resume_asks_before_running_a_models_own_code(tmp_path):
    (tmp_path / "config.toml").write_text('[model]\nname = "tiny"\ntrust_remote_code = true\n')
    result = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 2
    assert "sets model.trust_remote_code" in result.output
    assert "add --trust-remote-code to continue it" in result.output.replace("\n", " ")
