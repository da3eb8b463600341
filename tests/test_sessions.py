"""Sessions, prompts and switches: who critiques what, what each sample trains on, and rewards."""

from dataclasses import replace

import pytest
import torch
from scripted import PROMPTS, ScriptedBackend
from session_settings import session_settings

import environments
from icrl_cli.rollout.critics import ModelCritic, RuleCritic
from icrl_cli.rollout.metrics import session_metrics
from icrl_cli.rollout.prompts import (
    Prompts,
    critic_messages,
    encode_prompt,
    parse_critique,
    solver_messages,
)
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.tiny import build_tokenizer
from icrl_cli.trainer.policy import collate
from icrl_cli.trainer.step import score_critiques


@pytest.fixture()
def env():
    return environments.make("math", data="synthetic", terms=3)


def solve(task):
    return lambda text: f"\\boxed{{{task.answer}}}"


def test_parse_critique_reads_the_last_tag_or_falls_back_to_the_text():
    assert parse_critique("think<critic> fix step 2 </critic>", "critic") == "fix step 2"
    assert parse_critique("<c>a</c> then <c>b</c>", "c") == "b"
    assert parse_critique("  no tag here ", "critic") == "no tag here"


def test_prompts_resolve_defaults_then_model_files_then_config(tmp_path):
    assert Prompts.resolve({}).solver_user == "# Task\n{task}"
    (tmp_path / "icrl_prompts.json").write_text('{"solver_user": "Q: {task}"}')
    assert Prompts.resolve({}, str(tmp_path)).solver_user == "Q: {task}"
    chosen = Prompts.resolve({"solver_user": "T {task}", "summary": None}, str(tmp_path))
    assert chosen.solver_user == "T {task}" and chosen.summary == Prompts().summary


def test_revision_prompt_adds_the_critique_section(env, task):
    plain = solver_messages(env, task, Prompts())
    revised = solver_messages(env, task, Prompts(), critique="check 12+3")
    assert plain[1]["content"] == f"# Task\n{task.prompt}"
    assert revised[1]["content"] == (
        f"# Task\n{task.prompt}\n\n# Core Tips From Previous Critique\ncheck 12+3"
    )
    critic = critic_messages(task, "\\boxed{1}", 0.0, Prompts())
    assert "reward: 0\n\\boxed{1}" in critic[1]["content"]


def test_a_revision_trains_on_its_sampled_tokens_after_the_critique_free_prompt(env, task):
    tokenizer = build_tokenizer()

    # Round 1 fails; the critic says "45"; the revision (which sees the critique) succeeds.
    def script(text):
        if "?" in text:
            return "<c>45</c>"
        return f"\\boxed{{{task.answer}}}" if "|" in text else "\\boxed{0}"

    backend = ScriptedBackend(tokenizer, script)
    settings = session_settings(sessions_per_query=2, max_rounds=2, max_new_tokens=32)
    critic = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, critic)
    revision = next(s for s in samples if s.is_revision)
    free = encode_prompt(tokenizer, solver_messages(env, task, PROMPTS))
    behavior = encode_prompt(tokenizer, solver_messages(env, task, PROMPTS, critique="45"))
    assert revision.prompt_ids == free and revision.behavior_prompt_ids == behavior
    assert backend.calls[2][0] == tokenizer.decode(behavior)  # it was sampled under the critique
    sampled = tokenizer.encode(f"\\boxed{{{task.answer}}}", add_special_tokens=False)
    assert revision.response_ids == sampled + [tokenizer.eos_token_id]
    batch = collate([revision], tokenizer.pad_token_id, torch.device("cpu"))
    n = len(free) + len(revision.response_ids)
    assert batch.input_ids[0, :n].tolist() == free + revision.response_ids


def test_oracle_gate_critiques_failures_only_and_rewards_the_critic(env):
    tokenizer = build_tokenizer()
    tasks = env.tasks("train")[:2]
    answers = {t.prompt: t.answer for t in tasks}
    first = tasks[0].prompt

    def script(body):
        if "?" in body:
            return "<c>tip</c>"
        task_text = body.split("|")[0]
        if task_text == first and "|" not in body:
            return f"\\boxed{{{answers[task_text]}}}"  # task 0 solves at once
        return f"\\boxed{{{answers[task_text]}}}" if "|" in body else "\\boxed{1}"

    backend = ScriptedBackend(tokenizer, script)
    settings = session_settings(sessions_per_query=3, max_rounds=2, max_new_tokens=32)
    critic = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, tasks, settings, PROMPTS, critic)
    critics = [s for s in samples if s.role == "critic"]
    assert len(critics) == 3 and {s.query_id for s in critics} == {tasks[1].id}
    assert all(c.reward == 0.0 for c in critics)  # the rollout leaves rewards to the trainer
    score_critiques(samples, "success_or_delta")
    assert all(c.reward == 1.0 for c in critics)  # every revision after them succeeded
    metrics = session_metrics(samples, "oracle")
    assert metrics["solver/success_round1"] == 0.5
    assert metrics["solver/success_final"] == 1.0
    assert metrics["sessions/revisions"] == 3 and metrics["sessions/fix_rate"] == 1.0
    assert metrics["sessions/break_rate"] is None
    assert metrics["critic/tokens_mean"] == len("<c>tip</c>") + 1


def test_ungated_critiques_successes_too_and_counts_breaks(env, task):
    tokenizer = build_tokenizer()
    # Everything succeeds in round 1, every revision fails: all break.
    backend = ScriptedBackend(
        tokenizer, lambda t: "\\boxed{0}" if "|" in t else f"\\boxed{{{task.answer}}}"
    )
    settings = session_settings(sessions_per_query=2, max_rounds=2, gate="ungated")
    samples = run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, RuleCritic(PROMPTS))
    revisions = [s for s in samples if s.is_revision]
    assert len(revisions) == 2 and all(s.metadata["critique"] == "ok" for s in revisions)
    assert session_metrics(samples, "ungated")["sessions/break_rate"] == 1.0
    assert not any(s.role == "critic" for s in samples)  # the rule critic has no samples


@pytest.mark.parametrize(
    ("mode", "expected"), [("success_or_delta", -1.0), ("delta", -1.0), ("success", 0.0)]
)
def test_critic_reward_modes_score_the_critiques(env, task, mode, expected):
    tokenizer = build_tokenizer()
    backend = ScriptedBackend(
        tokenizer,
        lambda t: (
            "<c>x</c>" if "?" in t else ("\\boxed{0}" if "|" in t else f"\\boxed{{{task.answer}}}")
        ),
    )
    settings = session_settings(sessions_per_query=2, max_rounds=2, gate="ungated")
    critic = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, critic)
    score_critiques(samples, mode)
    assert [s.reward for s in samples if s.role == "critic"] == [expected, expected]


def test_three_rounds_when_k_is_three(env, task):
    tokenizer = build_tokenizer()
    backend = ScriptedBackend(tokenizer, lambda t: "<c>x</c>" if "?" in t else "\\boxed{0}")
    settings = session_settings(sessions_per_query=2, max_rounds=3)
    critic = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, critic)
    assert sorted(s.round for s in samples if s.role == "solver") == [1, 1, 2, 2, 3, 3]
    assert len([s for s in samples if s.role == "critic"]) == 4


def test_a_refinement_prompt_shows_the_attempt_it_read(env, task):
    """Critique-GRPO's refinement: the task, the previous attempt as the environment renders
    it, and the critique; ICRL's revision shows the task and the tips only. Both train under
    the critique-free prompt."""
    tokenizer = build_tokenizer()
    backend = ScriptedBackend(tokenizer, lambda t: "\\boxed{7}")
    prompts = replace(PROMPTS, refinement_user="{task}#{attempt}#{critique}")
    rendered = env.render_attempt(task, "\\boxed{7}")
    for shows, expected in ((True, f"{task.prompt}#{rendered}#no:{task.answer}"), (False, None)):
        settings = session_settings(
            sessions_per_query=1, max_rounds=2, revision_shows_attempt=shows
        )
        samples = run_sessions(
            backend, tokenizer, env, [task], settings, prompts, RuleCritic(prompts)
        )
        revision = next(s for s in samples if s.is_revision)
        behavior = tokenizer.decode(revision.behavior_prompt_ids)
        user = behavior.split("<|user|>")[1].split("<|end|>")[0]
        assert user == (expected or f"{task.prompt}|no:{task.answer}")
        assert revision.prompt_ids == samples[0].prompt_ids  # trained critique-free
