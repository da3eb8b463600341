"""Measuring what was learned: success after each round, pass@k, per task type, critics on the
same attempts, rollout dumps, and the command lines of eval, critique-compare and rollout."""

import json
import math
from dataclasses import replace

import pytest
import torch
from session_settings import session_settings
from typer.testing import CliRunner

import environments
from icrl_cli.app import app
from icrl_cli.evaluation.compare import critic_comparison, parse_named_critics
from icrl_cli.evaluation.dump import response_segments, revision_weights, session_order
from icrl_cli.evaluation.evaluate import (
    PresetMeasurement,
    by_task_type,
    default_split,
    pass_at_k,
    success_by_round,
    summarize,
)
from icrl_cli.generation import Generation
from icrl_cli.rollout.critics import RuleCritic, parse_critic_spec
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.sessions import continue_sessions, open_sessions, run_sessions
from icrl_cli.tiny import TINY_PROMPTS, build_tokenizer

PROMPTS = Prompts(**TINY_PROMPTS)
runner = CliRunner()
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


class QueueBackend:
    """Answers the i-th generate call with the i-th scripted list of outcomes: True is the task's
    answer, False a wrong one; it counts the prompts it was sent."""

    def __init__(self, tokenizer, tasks, script):
        self.tokenizer, self.script, self.prompts = tokenizer, list(script), 0
        self.answers = {t.prompt: t.answer for t in tasks}

    def outcomes(self, n):
        assert len(self.script[0]) == n
        return self.script.pop(0)

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        outcomes = self.outcomes(len(prompts))
        self.prompts += len(prompts)
        outputs = []
        for prompt, right in zip(prompts, outcomes, strict=True):
            task = self.tokenizer.decode(prompt).split("<|user|>")[1].split("|")[0]
            task = task.removesuffix("<")  # the end of a first attempt's user turn
            text = f"\\boxed{{{self.answers[task] if right else -1}}}"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            outputs.append(
                Generation(ids + [self.tokenizer.eos_token_id], [-1.0] * (len(ids) + 1), "stop")
            )
        return outputs

    def sync_weights(self):
        return None


@pytest.fixture()
def env():
    return environments.make("math", data="synthetic")


@pytest.fixture()
def typed_tasks(env):
    """Two tasks of two made-up types."""
    first, second = env.tasks("test")[:2]
    return [
        replace(first, metadata={"task_type": "alpha"}),
        replace(second, metadata={"task_type": "beta"}),
    ]


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


def test_every_critic_continues_the_same_attempts(env, typed_tasks):
    tokenizer = build_tokenizer()
    # One generate call for round 1, then one revision call per critic.
    script = [[False, False, True, False], [True, False, True], [False, False, False]]
    backend = QueueBackend(tokenizer, typed_tasks, script)
    settings = session_settings(sessions_per_query=2, max_rounds=2)
    sessions = open_sessions(backend, tokenizer, env, typed_tasks, settings, PROMPTS)
    attempts = [s.last for s in sessions]

    class Recording(RuleCritic):
        seen: list = []

        def critique(self, env, pairs):
            self.seen.append([(t.id, a.session, a.text) for t, a in pairs])
            return super().critique(env, pairs)

    results = []
    for name in ("good", "bad"):
        critic = Recording(PROMPTS)
        continued = continue_sessions(backend, tokenizer, env, sessions, settings, PROMPTS, critic)
        results.append(
            critic_comparison(
                name, parse_critic_spec("rule"), attempts + continued, 2, "oracle", 1.0
            )
        )
    assert backend.prompts == 4 + 3 + 3  # round 1 was generated once
    assert Recording.seen[0] == Recording.seen[1] and len(Recording.seen[0]) == 3
    assert all(s.last is a for s, a in zip(sessions, attempts, strict=True))  # left unchanged
    good, bad = results
    # Round 1 solved 1 of 4; "good" fixed 2 of its 3 revisions, "bad" none.
    assert (good.success_round1, good.fix_rate, good.success_final) == (0.25, 2 / 3, 0.75)
    assert good.delta_success == pytest.approx(0.5) and good.revisions == 3
    assert (bad.fix_rate, bad.delta_success, bad.success_by_round) == (0.0, 0.0, [0.25, 0.25])


class CoinBackend(QueueBackend):
    """Right or wrong by a coin from torch's generator, as a sampler's draws would be."""

    def outcomes(self, n):
        return (torch.rand(n) < 0.5).tolist()


class DrawingCritic(RuleCritic):
    """The rule critic, after drawing from torch's generator as a sampling critic does."""

    def critique(self, env, pairs):
        torch.rand(100)
        return super().critique(env, pairs)


@pytest.mark.parametrize("revision_seed", [0, None])
def test_revisions_are_sampled_from_one_seed_whatever_the_critic_drew(env, revision_seed):
    tokenizer = build_tokenizer()
    tasks = env.tasks("test")[:6]
    backend = CoinBackend(tokenizer, tasks, [])
    settings = session_settings(sessions_per_query=2, max_rounds=3, gate="ungated")
    torch.manual_seed(0)
    sessions = open_sessions(backend, tokenizer, env, tasks, settings, PROMPTS)
    rewards = []
    for critic in (RuleCritic(PROMPTS), DrawingCritic(PROMPTS)):
        torch.manual_seed(1)
        continued = continue_sessions(
            backend, tokenizer, env, sessions, settings, PROMPTS, critic, revision_seed
        )
        rewards.append([s.reward for s in continued])
    assert len(rewards[0]) == 24  # 12 sessions revised in rounds 2 and 3
    # Seeded, both critics' revisions draw the same coins; unseeded, the draws differ.
    assert (rewards[0] == rewards[1]) == (revision_seed is not None)


def test_named_critics_parse_and_reject_bad_items():
    named = parse_named_critics(["a=self", "b=http://127.0.0.1:8000/v1#Qwen3-32B", "c=tiny"])
    assert [(n, s.kind, s.model, s.url) for n, s in named] == [
        ("a", "self", None, None),
        ("b", "http", "Qwen3-32B", "http://127.0.0.1:8000/v1"),
        ("c", "model", "tiny", None),
    ]


def test_revision_weights_by_hand():
    sample = Sample("q", 0, 2, "solver", [1], [2], [5, 6, 7], [1, 0, 1], [-1.0, 0.0, -2.0])
    (w,) = revision_weights([sample], [[-0.5, -3.0, -2.5]], 0.0, 2.0)
    assert w[1] is None  # an observation token: not generated, not weighted
    assert w[0] == pytest.approx(math.exp(0.5)) and w[2] == pytest.approx(math.exp(-0.5))
    (clipped,) = revision_weights([sample], [[1.0, 0.0, -2.0]], 0.0, 2.0)
    assert clipped[0] == 2.0 and clipped[2] == pytest.approx(1.0)


def test_an_episode_splits_into_what_the_model_wrote_and_what_the_environment_said():
    tokenizer = build_tokenizer()
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in ("go", "ok", "x")]
    response = ids[0] + ids[1] + ids[2]
    mask = [1] * len(ids[0]) + [0] * len(ids[1]) + [1] * len(ids[2])
    episode = Sample("q", 0, 1, "solver", [], [], response, mask, [0.0] * len(response))
    assert response_segments(episode, tokenizer) == [
        {"by": "model", "text": "go"},
        {"by": "environment", "text": "ok"},
        {"by": "model", "text": "x"},
    ]
    whole = Sample("q", 0, 1, "solver", [], [], ids[0], [1, 1], [0.0, 0.0])
    assert response_segments(whole, tokenizer) is None


def test_session_order_puts_a_critique_after_the_attempt_it_read():
    def s(q, session, round_, role):
        return Sample(q, session, round_, role, [], [], [], [], [])

    mixed = [
        s("b", 0, 1, "solver"),
        s("a", 1, 1, "solver"),
        s("a", 0, 2, "solver"),
        s("a", 0, 1, "critic"),
        s("a", 0, 1, "solver"),
    ]
    ordered = [(x.query_id, x.session, x.round, x.role) for x in session_order(mixed)]
    assert ordered == [
        ("b", 0, 1, "solver"),
        ("a", 0, 1, "solver"),
        ("a", 0, 1, "critic"),
        ("a", 0, 2, "solver"),
        ("a", 1, 1, "solver"),
    ]


def test_the_default_split_is_test_or_an_eval_split():
    assert default_split(environments.make("math")) == "test"
    assert default_split(environments.make("household")) == "eval_in_distribution"


# --- the command lines, on the real tiny model ---------------------------------------------


@pytest.fixture(autouse=True)
def no_load_bars():
    """`icrl` (main) turns transformers' progress bars off; CliRunner calls the app directly."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def icrl(command: str, *paths):
    """Run `icrl COMMAND` (words split on spaces) with ``paths`` appended."""
    return runner.invoke(app, command.split() + [str(p) for p in paths])


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


def test_critique_compare_writes_a_table_json_and_chart(tiny_dir, tmp_path):
    out = tmp_path / "cc" / "compare.json"
    critics = "--critic self=self --critic rule=rule"
    budgets = "--max-new-tokens 40 --critic-max-new-tokens 24"
    result = icrl(f"critique-compare --model tiny {critics} {budgets} --limit 8 --output", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["critics"]] == ["self", "rule"]
    self_, rule = data["critics"]
    assert self_["success_round1"] == rule["success_round1"]  # the same attempts
    # Oracle gate, two rounds: every failed first attempt is revised once.
    failed = round(8 * (1 - rule["success_round1"]))
    assert self_["revisions"] == rule["revisions"] == failed
    assert rule["critique_tokens_mean"] is None and self_["critique_tokens_mean"] > 0
    assert rule["break_rate"] is None
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rollout_dumps_every_sample_with_advantages_and_weights(tiny_dir, tmp_path):
    out = tmp_path / "r.jsonl"
    result = icrl("rollout --n 2 --set algo.sessions_per_query=3 --output", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len([r for r in records if r["role"] == "solver" and r["round"] == 1]) == 6
    for query in {r["query_id"] for r in records}:
        for role in ("solver", "critic"):
            advantages = [
                r["advantage"] for r in records if r["query_id"] == query and r["role"] == role
            ]
            assert sum(advantages) == pytest.approx(0.0, abs=1e-5)  # normalised per bucket
    for r in records:
        revision = r["role"] == "solver" and r["round"] > 1
        assert (r["calibration_weights"] is not None) == revision
        if revision:
            assert len(r["calibration_weights"]) == r["response_tokens"]
            assert 0.0 <= r["calibration_weight_mean"] <= 2.0
            assert r["metadata"]["critique"] in r["behavior_prompt"] != r["prompt"]
    pretty = icrl("rollout --n 1 --format pretty --set algo.sessions_per_query=2")
    assert pretty.exit_code == 0, pretty.output
    assert "session 0 · round 1 · solver attempt" in pretty.output


def test_rollout_draws_what_training_step_one_draws(tiny_dir, tmp_path):
    settings = "--set algo.sessions_per_query=2 --set train.queries_per_step=2"
    trained = icrl(f"train --steps 1 --set train.samples_every=1 {settings} --output-dir", tmp_path)
    assert trained.exit_code == 0, trained.output
    step = [json.loads(x) for x in (tmp_path / "samples/step-1.jsonl").read_text().splitlines()]
    out = tmp_path / "r.jsonl"
    result = icrl(f"rollout --n 2 {settings} --output", out)
    assert result.exit_code == 0, result.output
    dumped = [json.loads(x) for x in out.read_text().splitlines()]

    def key(r):
        return (r["query_id"], r["session"], r["round"], r["role"], r["text"], r["reward"])

    assert sorted(map(key, dumped)) == sorted(map(key, step))


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
