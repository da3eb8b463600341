"""The training step's stages on scripted sessions: critic rewards (Eq. 3), which samples enter
the loss and in which context, advantages by grouping (Eq. 5), Critique-GRPO's swapped group."""

import pytest
from scripted import PROMPTS, ScriptedBackend
from session_settings import session_settings

import environments
from icrl_cli.config import resolve
from icrl_cli.rollout.critics import ModelCritic, RuleCritic
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.tiny import build_tokenizer
from icrl_cli.trainer.step import score_critiques, swap_in_best_refinements, training_batch


@pytest.fixture()
def env():
    return environments.make("math", data="synthetic", terms=3)


def _sample(query, session, round_, role, reward=0.0, **metadata):
    return Sample(query, session, round_, role, [], [], [], [], [], reward, metadata=metadata)


def test_a_critique_is_scored_by_the_attempt_that_read_it():
    samples = [
        _sample("q", 0, 1, "solver", 0.0),
        _sample("q", 0, 1, "critic", reward_before=0.0),
        _sample("q", 0, 2, "solver", 0.5),
        _sample("q", 0, 2, "critic", reward_before=0.5),
        _sample("q", 0, 3, "solver", 1.0),
        _sample("q", 1, 1, "solver", 0.2),
        _sample("q", 1, 1, "critic", reward_before=0.2, unmeasured=True),
        _sample("q", 1, 2, "solver", 0.0, stop="failed"),
    ]
    score_critiques(samples, "success_or_delta")
    critics = [s.reward for s in samples if s.role == "critic"]
    # 0.5 − 0 (no success yet); 1 (the third attempt succeeded); the lost attempt measures nothing
    assert critics == [0.5, 1.0, 0.0]
    score_critiques(samples, "delta")
    assert [s.reward for s in samples if s.role == "critic"] == [0.5, 0.5, 0.0]


def test_the_same_task_twice_in_a_step_pairs_critiques_in_order():
    # A task drawn twice (an epoch boundary inside a step) has two sessions numbered 0.
    samples = [
        _sample("q", 0, 1, "critic", reward_before=0.0),
        _sample("q", 0, 1, "critic", reward_before=0.0),
        _sample("q", 0, 2, "solver", 1.0),
        _sample("q", 0, 2, "solver", 0.25),
    ]
    score_critiques(samples, "success_or_delta")
    assert [s.reward for s in samples[:2]] == [1.0, 0.25]


def _icrl_samples(env, task, train_critic=True):
    tokenizer = build_tokenizer()
    backend = ScriptedBackend(
        tokenizer,
        lambda t: (
            "<c>x</c>" if "?" in t else (f"\\boxed{{{task.answer}}}" if "|" in t else "\\boxed{0}")
        ),
    )
    settings = session_settings(sessions_per_query=2, max_rounds=2)
    critic = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=train_critic)
    return run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, critic)


def _batch(samples, config):
    """The training batch as a step makes it: critic rewards first (Eq. 3), then the batch."""
    score_critiques(samples, config.algo.critic_reward)
    return training_batch(samples, config.algo)


def test_train_critic_false_leaves_no_critic_token_in_the_loss(env, task):
    config = resolve("tiny-math", ["algo.train_critic=false"])
    samples = _icrl_samples(env, task, train_critic=config.algo.train_critic)
    assert any(s.role == "critic" for s in samples)
    assert all(s.role == "solver" for s in _batch(samples, config))
    trained = _batch(_icrl_samples(env, task), resolve("tiny-math", []))
    assert sum(s.role == "critic" for s in trained) == 2


def test_advantage_grouping_switch(env, task):
    # Solver rewards [0, 0, 1, 1] (two failed attempts, two fixed revisions); critics [1, 1].
    by_role = _batch(_icrl_samples(env, task), resolve("tiny-math", []))
    solver = [s.advantage for s in by_role if s.role == "solver"]
    assert solver == pytest.approx([-0.866025, -0.866025, 0.866025, 0.866025], abs=1e-5)
    assert [s.advantage for s in by_role if s.role == "critic"] == [0.0, 0.0]  # tied bucket
    pooled = _batch(
        _icrl_samples(env, task), resolve("tiny-math", ['algo.advantage_grouping="query"'])
    )
    # One bucket of six rewards [0, 0, 1, 1, 1, 1]: mean 2/3, std 0.516398
    critic = [s.advantage for s in pooled if s.role == "critic"]
    assert critic == pytest.approx([0.645497, 0.645497], abs=1e-5)
    by_round = _batch(
        _icrl_samples(env, task),
        resolve("tiny-math", ['algo.advantage_grouping="query_round_role"']),
    )
    assert [s.advantage for s in by_round] == [0.0] * 6  # every (round, role) bucket is tied


def test_keep_critique_trains_revisions_in_their_sampling_context(env, task):
    batch = _batch(
        _icrl_samples(env, task), resolve("tiny-math", ['algo.calibration="keep_critique"'])
    )
    revisions = [s for s in batch if s.is_revision]
    assert revisions and all(s.prompt_ids == s.behavior_prompt_ids for s in revisions)
    swapped = _batch(_icrl_samples(env, task), resolve("tiny-math", []))
    assert all(s.prompt_ids != s.behavior_prompt_ids for s in swapped if s.is_revision)


def test_critique_grpo_swaps_the_best_refinement_into_the_group(env, task):
    tokenizer = build_tokenizer()
    backend = ScriptedBackend(
        tokenizer, lambda t: f"\\boxed{{{task.answer}}}" if "|" in t else "\\boxed{0}"
    )
    settings = session_settings(sessions_per_query=4, max_rounds=2, gate="ungated")
    samples = run_sessions(backend, tokenizer, env, [task], settings, PROMPTS, RuleCritic(PROMPTS))
    kept = swap_in_best_refinements(samples)
    assert len(kept) == 4
    assert [(s.session, s.round, s.reward) for s in kept] == [
        (0, 2, 1.0),
        (1, 1, 0.0),
        (2, 1, 0.0),
        (3, 1, 0.0),
    ]
    config = resolve("tiny-math", ['algo.name="critique-grpo"'])
    algo = config.algo
    assert (algo.critic, algo.critic_gate, algo.token_weight, algo.revision_loss) == (
        "rule",
        "ungated",
        "none",
        "shaped",
    )
    assert not config.algo.normalize_std and not config.algo.train_critic
    batch = _batch(samples, config)
    # No std normalisation: rewards [1, 0, 0, 0] − 0.25
    assert [s.advantage for s in batch] == pytest.approx([0.75, -0.25, -0.25, -0.25])
