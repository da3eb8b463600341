"""What the rollout samples under, read once from a run's configuration: the config is the one
source of every default (there is no second set here)."""

from __future__ import annotations

from dataclasses import dataclass

from icrl_cli.config import RunConfig

# A context budget for a model that does not say its own (no ``max_position_embeddings``).
FALLBACK_CONTEXT_TOKENS = 4096


@dataclass(frozen=True)
class SessionSettings:
    """Sessions per query, rounds, the critic's gate and budgets, sampling, and the limits of a
    multi-turn episode (``max_turns``, ``repeat_limit``, ``context_tokens``,
    ``summary_observation_chars``). Built by :meth:`from_config`; see ``RunConfig`` for what each
    field means."""

    sessions_per_query: int
    max_rounds: int
    gate: str
    revision_shows_attempt: bool
    max_new_tokens: int
    critic_max_new_tokens: int
    temperature: float
    top_p: float
    enable_thinking: bool
    max_turns: int
    repeat_limit: int
    context_tokens: int
    summary_observation_chars: int

    @classmethod
    def from_config(cls, config: RunConfig, max_positions: int | None = None) -> SessionSettings:
        """``config``'s rollout settings; the context budget defaults to ``max_positions`` (the
        model's). GRPO plays one round whatever ``algo.max_rounds`` says."""
        algo, gen, env = config.algo, config.generation, config.env
        return cls(
            sessions_per_query=algo.sessions_per_query,
            max_rounds=1 if algo.name == "grpo" else algo.max_rounds,
            gate=algo.critic_gate,
            revision_shows_attempt=algo.revision_shows_attempt,
            max_new_tokens=gen.max_new_tokens,
            critic_max_new_tokens=algo.critic_max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            enable_thinking=config.model.enable_thinking,
            max_turns=env.max_turns,
            repeat_limit=env.repeat_limit,
            context_tokens=gen.context_tokens or max_positions or FALLBACK_CONTEXT_TOKENS,
            summary_observation_chars=env.summary_observation_chars,
        )
