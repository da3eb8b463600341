"""Measuring what was learned: success after each round, pass@k, per task type, critics on the
same attempts, rollout dumps, and the command lines of eval, critique-compare and rollout."""

import json

import pytest
from scripted import PROMPTS, QueueBackend, icrl
from session_settings import session_settings

import environments
from icrl_cli.components import make_environment
from icrl_cli.evaluation.evaluate import (
    PresetMeasurement,
    by_task_type,
    default_split,
    evaluate,
    pass_at_k,
    success_by_round,
    summarize,
)
from icrl_cli.rollout.critics import RuleCritic
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.tiny import build_tokenizer

# What an EvalResult names besides its numbers.
LABELS = {
    "model": "m",
    "env": "math",
    "data": "d",
    "split": "test",
    "samples": 2,
    "critic": "rule",
    "temperature": 1.0,
    "seed": 0,
}


@pytest.fixture()
def env():
    return environments.make("math", data="synthetic")


def sessions_of(env, tasks, script, **settings):
    tokenizer = build_tokenizer()
    backend = QueueBackend(tokenizer, tasks, script)
    chosen = session_settings(sessions_per_query=2, **settings)
    critic = RuleCritic(PROMPTS)
    return run_sessions(backend, tokenizer, env, tasks, chosen, PROMPTS, critic), backend


def test_oracle_gated_success_by_round_is_cumulative(env, typed_tasks):
    # Sessions (task, session): (0,0) (0,1) (1,0) (1,1).
    # Round 1: solved, failed, failed, failed.
    # Round 2 (the three failures): failed, solved, failed.
    # Round 3 (the two still failing, (0,1) and (1,1)): solved, failed.
    script = [[True, False, False, False], [False, True, False], [True, False]]
    samples, _ = sessions_of(env, typed_tasks, script, max_rounds=3)
    assert success_by_round(samples, 3) == [0.25, 0.5, 0.75]
    assert pass_at_k(samples) == 0.5  # task 0 had a solved first attempt, task 1 none
    result = summarize(samples, typed_tasks, 3, "oracle", **LABELS)
    assert result.success_round1 == 0.25 and result.success_by_round == [0.25, 0.5, 0.75]
    # Five revisions after a failure (three in round 2, two in round 3), two of them fixed.
    assert result.fix_rate == pytest.approx(2 / 5)
    assert result.break_rate is None and result.critique_tokens_mean is None  # rule critic
    alpha, beta = result.by_task_type["alpha"], result.by_task_type["beta"]
    assert (alpha.tasks, alpha.success_round1, alpha.pass_at_k) == (1, 0.5, 1.0)
    assert alpha.success_by_round == [0.5, 0.5, 1.0]
    assert (beta.success_round1, beta.pass_at_k, beta.success_by_round) == (
        0.0,
        0.0,
        [0.0, 0.5, 0.5],
    )
    assert json.loads(json.dumps(result.to_json()))["by_task_type"]["beta"]["tasks"] == 1


def test_ungated_success_can_break(env, typed_tasks):
    # Round 1: solved, failed, solved, failed; every session is revised:
    # round 2: failed (a break), solved (a fix), solved (kept), failed.
    samples, backend = sessions_of(
        env,
        typed_tasks,
        [[True, False, True, False], [False, True, True, False]],
        max_rounds=2,
        gate="ungated",
    )
    assert backend.prompts == 8
    assert success_by_round(samples, 2) == [0.5, 0.5]
    assert pass_at_k(samples) == 1.0
    result = summarize(samples, typed_tasks, 2, "ungated", **LABELS)
    assert (result.fix_rate, result.break_rate) == (0.5, 0.5)


def test_tasks_without_types_have_no_breakdown(env):
    tasks = env.tasks("test")[:1]
    samples, _ = sessions_of(env, tasks, [[True, False]])
    assert by_task_type(samples, tasks, 1) == {}


def test_the_default_split_is_test_or_an_eval_split():
    assert default_split(environments.make("math")) == "test"
    assert default_split(environments.make("household")) == "eval_in_distribution"


# --- the command lines, on the real tiny model ---------------------------------------------


def test_eval_with_rounds_samples_and_a_critic(tiny_dir, tmp_path):
    out = tmp_path / "eval.json"
    flags = "--limit 6 --rounds 3 --samples 2 --critic self --max-new-tokens 40 --output"
    flags = f"--critic-max-new-tokens 24 {flags}"
    result = icrl(f"eval --model tiny {flags}", out)
    assert result.exit_code == 0, result.output
    assert "success after round 3 (oracle-gated)" in result.output
    data = json.loads(out.read_text())
    assert (data["n"], data["samples"], data["rounds"], data["critic"]) == (6, 2, 3, "self")
    curve = data["success_by_round"]
    assert len(curve) == 3 and curve[0] == data["success_round1"]
    assert curve == sorted(curve)  # oracle-gated: a solved session stays solved
    # 12 sessions: success_round1 is a multiple of 1/12, and pass@2 is at least success.
    assert data["success_round1"] * 12 == pytest.approx(round(data["success_round1"] * 12))
    assert data["pass_at_k"] >= data["success_round1"]
    assert data["critique_tokens_mean"] > 0 and data["by_task_type"] == {}


def test_eval_under_a_preset_takes_its_environment_and_limits_unless_flags_say_otherwise():
    from icrl_cli.config import resolve
    from icrl_cli.evaluation.evaluate import measurement_config, preset_measurement

    preset = resolve("tiny-household", [])
    # presets/tiny-household.toml, read by hand.
    chosen = preset_measurement(preset, None, None)
    assert (chosen.model, chosen.env, chosen.split) == (
        "tiny-household",
        "household",
        "eval_out_of_distribution",
    )
    assert chosen.options == {"task_types": ["pick_and_place_simple"]}
    assert (chosen.max_new_tokens, chosen.temperature, chosen.critic_max_new_tokens) == (
        48,
        1.0,
        48,
    )
    assert chosen.turns == {"max_turns": 10, "repeat_limit": 3, "summary_observation_chars": 120}
    config = measurement_config("tiny", 2, "oracle", 48, 1.0, turns=chosen.turns)
    assert (config.env.max_turns, config.env.summary_observation_chars) == (10, 120)
    # Another environment: none of the preset's environment settings; no preset: eval's own.
    other = preset_measurement(preset, "math", None)
    assert (other.env, other.options, other.split, other.data) == ("math", {}, None, None)
    assert preset_measurement(None, None, None) == PresetMeasurement()
    assert (PresetMeasurement().env, PresetMeasurement().max_new_tokens) == ("math", 512)


def test_eval_with_a_preset_measures_its_tasks_with_its_budgets(tiny_dir, tmp_path):
    out = tmp_path / "eval.json"
    flags = "--limit 2 --rounds 2 --temperature 0.5 --output"
    result = icrl(f"eval --preset tiny-household --model tiny {flags}", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["env"], data["split"], data["n"]) == ("household", "eval_out_of_distribution", 2)
    assert list(data["by_task_type"]) == ["pick_and_place_simple"]  # the preset's one type
    assert data["temperature"] == 0.5  # the flag wins over the preset's 1.0
    # Critiques are held to the preset's 48 tokens (the run default is 1,024).
    assert 0 < data["critique_tokens_mean"] <= 48


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("eval --model tiny --rounds 0", "--rounds must be at least 1, got 0"),
        ("eval --model tiny --samples 0", "--samples must be at least 1, got 0"),
        (
            "eval --model tiny --critic http://127.0.0.1:8000/v1",
            "critic 'http://127.0.0.1:8000/v1' is not a server spec",
        ),
        (
            "eval --model tiny --rounds 2 --critic nope",
            "critic 'nope': model 'nope' is neither a local directory nor a hub id",
        ),
        ("eval --model tiny --gate always", "'algo.critic_gate'"),
        ("critique-compare --model tiny", "name at least one critic: --critic NAME=SPEC"),
        (
            "critique-compare --model tiny --critic self",
            "--critic expects NAME=SPEC (e.g. frozen=Qwen3-8B), not 'self'",
        ),
        (
            "critique-compare --model tiny --critic a=self --critic a=rule",
            "critic name 'a' is given twice",
        ),
        ("critique-compare --model tiny --critic a=self --rounds 1", "--rounds must be at least 2"),
        ("rollout --n 0", "--n must be at least 1, got 0"),
        ("rollout --format xml", "--format must be jsonl or pretty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_dir, command, expected):
    result = icrl(command)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_unreachable_critic_server_is_one_line(tiny_dir, dead_url):
    result = icrl("critique-compare --model tiny --limit 2 --critic", f"h={dead_url}/v1#tiny")
    assert result.exit_code == 2, result.output
    assert f"OpenAI-compatible server {dead_url} did not answer" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_an_empty_dataset_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = icrl("eval --model tiny --data", empty)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "the dataset is empty" in result.output


def test_a_prompt_longer_than_the_context_is_a_counted_skip(tiny_dir, tmp_path, monkeypatch):
    """The tiny model's context is 1024 tokens (one per character): a 2000-digit question is
    not sampled, is left out of success, and is counted; a 5 MB one is not even tokenised;
    the other two are measured."""
    from icrl_cli.rollout import sessions

    encoded = []

    def encode_prompt(tokenizer, messages, enable_thinking=False):
        encoded.append(sum(len(m["content"]) for m in messages))
        return real(tokenizer, messages, enable_thinking)

    real = sessions.encode_prompt
    monkeypatch.setattr(sessions, "encode_prompt", encode_prompt)
    rows = [{"question": "1+1", "answer": "2"}, {"question": "9" * 2000, "answer": "9"}]
    rows += [{"question": "7" * 5_000_000, "answer": "7"}, {"question": "2+2", "answer": "4"}]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = make_environment("math", str(data), {})
    result = evaluate("tiny", env, "math", str(data), "train", max_new_tokens=8, device="cpu")
    assert result.n == 4 and result.overlong_prompts == 2
    assert result.response_tokens_mean > 0
    assert len(encoded) == 3 and max(encoded) < 10_000
