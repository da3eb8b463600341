"""`icrl rollout`: calibration weights by hand, an episode's segments, the session order, and the
command's JSON lines against what training's first step draws."""

import json
import math

import pytest
from scripted import icrl

from icrl_cli.evaluation.dump import (
    divergence,
    response_segments,
    revision_weights,
    session_order,
)
from icrl_cli.rollout.samples import Sample
from icrl_cli.tiny import build_tokenizer


def test_revision_weights_by_hand():
    sample = Sample("q", 0, 2, "solver", [1], [2], [5, 6, 7], [1, 0, 1], [-1.0, 0.0, -2.0])
    (w,) = revision_weights([sample], [[-0.5, -3.0, -2.5]], 0.0, 2.0)
    assert w[1] is None  # an observation token: not generated, not weighted
    assert w[0] == pytest.approx(math.exp(0.5)) and w[2] == pytest.approx(math.exp(-0.5))
    (clipped,) = revision_weights([sample], [[1.0, 0.0, -2.0]], 0.0, 2.0)
    assert clipped[0] == 2.0 and clipped[2] == pytest.approx(1.0)


def test_where_a_revision_departs_by_hand():
    # Token 1 is an observation (no weight): that it is not the greedy choice does not count.
    weights = [1.0, None, 0.9, 0.2, 1.1, 0.5]
    found = divergence(weights, [True, False, True, False, False, True])
    assert found["index"] == 3 and found["w_at"] == pytest.approx(0.2)
    assert found["w_before"] == pytest.approx((1.0 + 0.9) / 2)
    assert found["w_after"] == pytest.approx((1.1 + 0.5) / 2)
    at_once = divergence([0.1, 1.0, 0.8], [False, True, False])
    assert at_once["index"] == 0 and at_once["w_before"] is None
    assert at_once["w_at"] == pytest.approx(0.1) and at_once["w_after"] == pytest.approx(0.9)
    greedy = divergence([1.0, 0.7], [True, True])
    assert greedy == {"index": None, "w_at": None, "w_before": None, "w_after": None}


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
            where = r["divergence"]
            if where["index"] is not None:
                assert where["w_at"] == pytest.approx(r["calibration_weights"][where["index"]])
        else:
            assert r["divergence"] is None
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
