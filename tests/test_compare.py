"""`icrl critique-compare`: every critic continues the same round-1 attempts, revisions drawn
from one seed, the named-critic flags, and the command's table, JSON and chart."""

import json

import pytest
import torch
from scripted import PROMPTS, QueueBackend, icrl
from session_settings import session_settings

import environments
from icrl_cli.evaluation.compare import compare_critics, critic_comparison, parse_named_critics
from icrl_cli.rollout.critics import RuleCritic, parse_critic_spec
from icrl_cli.rollout.sessions import continue_sessions, open_sessions
from icrl_cli.tiny import build_tokenizer


@pytest.fixture()
def env():
    return environments.make("math", data="synthetic")


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
    assert rule["fix_rate_per_100_tokens"] is None
    # Oracle gate: one critique per failed attempt, so the fixes per 100 critique tokens.
    fixes = self_["fix_rate"] * failed
    tokens = self_["critique_tokens_mean"] * failed
    assert self_["fix_rate_per_100_tokens"] == pytest.approx(100 * fixes / tokens)
    assert rule["break_rate"] is None
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_critique_compare_under_a_preset_plays_its_task_and_budgets(tiny_dir, tmp_path):
    out = tmp_path / "compare.json"
    result = icrl("critique-compare --preset tiny-math --critic rule=rule --limit 8 --output", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["model"], data["data"], data["split"]) == ("tiny", "synthetic", "test")
    # The preset's task (sums of four digits) and budgets, as if given one by one.
    env = environments.make("math", data="synthetic", digits=1, terms=4)
    direct = compare_critics(
        "tiny", env, "math", "synthetic", "test", ["rule=rule"], 8, 2, "oracle", 1, 40, 1.0, 0, 24
    )
    assert data["critics"][0]["success_by_round"] == direct.critics[0].success_by_round
    assert data["critics"][0]["revisions"] == direct.critics[0].revisions
