"""What the sessions of a step did, as metrics: success before and after critique, what the
critiques cost and earned, how revisions changed outcomes, and how multi-turn episodes ended."""

from __future__ import annotations

from icrl_cli.rollout.samples import Sample, is_failed


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def session_metrics(samples: list[Sample], gate: str) -> dict[str, float | int | None]:
    """What the sessions of one step did: success before and after critique, the critic's
    reward and length, and how revisions changed outcomes (None where nothing was measured)."""
    failed = [s for s in samples if is_failed(s)]
    solver = [s for s in samples if s.role == "solver" and not is_failed(s)]
    critic = [s for s in samples if s.role == "critic" and not s.metadata.get("unmeasured")]
    final: dict[tuple[str, int], Sample] = {}
    for s in solver:
        key = (s.query_id, s.session)
        if key not in final or s.round > final[key].round:
            final[key] = s
    revisions = [s for s in solver if s.is_revision]
    after_failure = [s.success for s in revisions if s.metadata["previous_reward"] != 1.0]
    after_success = [not s.success for s in revisions if s.metadata["previous_reward"] == 1.0]
    return {
        "solver/reward_mean": _mean([s.reward for s in solver]),
        "solver/success_round1": _mean([s.success for s in solver if s.round == 1]),
        "solver/success_final": _mean([s.success for s in final.values()]),
        "solver/response_tokens_mean": _mean([len(s.response_ids) for s in solver]),
        "critic/reward_mean": _mean([s.reward for s in critic]),
        "critic/tokens_mean": _mean([s.completion_tokens for s in critic]),
        "sessions/revisions": len(revisions),
        "sessions/fix_rate": _mean(after_failure),
        "sessions/break_rate": _mean(after_success) if gate == "ungated" else None,
        "env/failed_episodes": len(failed),
        "env/overlong_prompts": sum(bool(s.metadata.get("overlong")) for s in failed),
    }


def episode_metrics(samples: list[Sample]) -> dict[str, float | None]:
    """Turn counts and how multi-turn episodes ended (fractions of the episodes played)."""
    episodes = [s for s in samples if s.role == "solver" and "turns" in s.metadata]
    if not episodes:
        return {}
    record: dict[str, float | None] = {
        "env/turns_mean": _mean([s.metadata["turns"] for s in episodes]),
    }
    for stop in ("done", "turns", "repeat", "context", "failed"):
        record[f"env/stop_{stop}"] = _mean([s.metadata["stop"] == stop for s in episodes])
    return record
