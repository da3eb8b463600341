"""Self-improvement sessions: solve → (if it failed) critique → revise, for G sessions per query.

Each round's generation is one batch across every open session of every query in the step.
GRPO is the special case of one round and no critic. Every solver sample carries the
critique-free prompt as its training context and the prompt it was sampled under as its
behavior context (they differ only for revisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from environments import Environment, Task
from icrl_cli.generation import GenerationBackend
from icrl_cli.rollout.prompts import (
    Prompts,
    critic_messages,
    encode_prompt,
    parse_critique,
    rule_critique,
    solver_messages,
)
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.algorithms import critic_reward


@dataclass(frozen=True)
class SessionSettings:
    sessions_per_query: int
    max_rounds: int = 1
    gate: str = "oracle"
    critic_reward: str = "success_or_delta"
    max_new_tokens: int = 512
    critic_max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    enable_thinking: bool = False


class Critic(Protocol):
    """Writes one critique per failed (or, ungated, any) attempt."""

    trainable: bool

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        """(critique text, the critic's Sample or None when no model wrote it) per attempt."""
        ...


class ModelCritic:
    """A language model in the critic role: the policy itself ('self') or a frozen second model."""

    def __init__(
        self,
        backend: GenerationBackend,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Prompts,
        settings: SessionSettings,
        trainable: bool,
    ) -> None:
        self.backend, self.tokenizer, self.prompts = backend, tokenizer, prompts
        self.settings, self.trainable = settings, trainable

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        prompts = [
            encode_prompt(
                self.tokenizer,
                critic_messages(task, env.render_attempt(task, s.text), s.reward, self.prompts),
                self.settings.enable_thinking,
            )
            for task, s in attempts
        ]
        outputs = self.backend.generate(
            prompts,
            self.settings.critic_max_new_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
        )
        results: list[tuple[str, Sample | None]] = []
        for (task, attempt), prompt, out in zip(attempts, prompts, outputs, strict=True):
            text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
            critique = parse_critique(text, self.prompts.critique_tag)
            sample = Sample(
                query_id=task.id,
                session=attempt.session,
                round=attempt.round,
                role="critic",
                prompt_ids=prompt,
                behavior_prompt_ids=prompt,
                response_ids=out.token_ids,
                loss_mask=[1] * len(out.token_ids),
                behavior_logprobs=out.logprobs,
                text=text,
                finish_reason=out.finish_reason,
                metadata={"critique": critique, "reward_before": attempt.reward},
                trainable=self.trainable,
            )
            results.append((critique, sample))
        return results


class RuleCritic:
    """ "Correct/incorrect; the answer is X" from the gold answer (Critique-GRPO's rule critic)."""

    trainable = False

    def __init__(self, prompts: Prompts) -> None:
        self.prompts = prompts

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        return [(rule_critique(task, s.success, self.prompts), None) for task, s in attempts]


@dataclass
class _Session:
    task: Task
    index: int
    last: Sample | None = None
    critique: str | None = None
    pending_critic: Sample | None = None


def _solver_round(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: list[_Session],
    round_: int,
    settings: SessionSettings,
    prompts: Prompts,
) -> list[Sample]:
    """One attempt per session, sampled under its behavior prompt, trained under the plain one."""
    free: dict[str, list[int]] = {}
    behavior = []
    for s in sessions:
        if s.task.id not in free:
            messages = solver_messages(env, s.task, prompts)
            free[s.task.id] = encode_prompt(tokenizer, messages, settings.enable_thinking)
        if s.critique is None:
            behavior.append(free[s.task.id])
        else:
            messages = solver_messages(env, s.task, prompts, critique=s.critique)
            behavior.append(encode_prompt(tokenizer, messages, settings.enable_thinking))
    outputs = backend.generate(
        behavior, settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p
    )
    samples = []
    for s, context, out in zip(sessions, behavior, outputs, strict=True):
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        result = env.start(s.task).step(text)
        samples.append(
            Sample(
                query_id=s.task.id,
                session=s.index,
                round=round_,
                role="solver",
                prompt_ids=free[s.task.id],
                behavior_prompt_ids=context,
                response_ids=out.token_ids,
                loss_mask=[1] * len(out.token_ids),
                behavior_logprobs=out.logprobs,
                reward=float(result.reward),
                text=text,
                finish_reason=out.finish_reason,
                metadata={
                    "task": s.task.prompt,
                    "answer": s.task.answer,
                    "critique": s.critique,
                    "previous_reward": s.last.reward if s.last else None,
                },
            )
        )
    return samples


def run_sessions(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    queries: Sequence[Task],
    settings: SessionSettings,
    prompts: Prompts,
    critic: Critic | None = None,
) -> list[Sample]:
    """All samples of G sessions per query: attempts, critiques and revisions (Algorithm 1)."""
    sessions = [_Session(q, j) for q in queries for j in range(settings.sessions_per_query)]
    rounds = settings.max_rounds if critic is not None else 1
    samples: list[Sample] = []
    active = sessions
    for round_ in range(1, rounds + 1):
        attempts = _solver_round(backend, tokenizer, env, active, round_, settings, prompts)
        for session, attempt in zip(active, attempts, strict=True):
            if session.pending_critic is not None and session.last is not None:
                session.pending_critic.reward = critic_reward(
                    session.last.reward, attempt.reward, settings.critic_reward
                )
            session.last = attempt
            samples.append(attempt)
        if round_ == rounds or critic is None:
            break
        active = [s for s in active if settings.gate == "ungated" or not s.last.success]
        if not active:
            break
        critiques = critic.critique(env, [(s.task, s.last) for s in active])
        for session, (text, critic_sample) in zip(active, critiques, strict=True):
            session.critique, session.pending_critic = text, critic_sample
            if critic_sample is not None:
                samples.append(critic_sample)
    return samples


def swap_in_best_refinements(samples: list[Sample]) -> list[Sample]:
    """Critique-GRPO's group: per query, the best revision replaces the attempt it refined and
    the other revisions are dropped, so the group keeps G solver samples."""
    best: dict[str, Sample] = {}
    for s in samples:
        if s.role == "solver" and s.round > 1:
            if s.query_id not in best or s.reward > best[s.query_id].reward:
                best[s.query_id] = s
    kept = []
    for s in samples:
        chosen = best.get(s.query_id)
        if s.role == "solver" and s.round > 1:
            continue  # revisions enter only in place of the attempt they refined
        if chosen is not None and s.role == "solver" and s.session == chosen.session:
            kept.append(chosen)
        else:
            kept.append(s)
    return kept


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def session_metrics(samples: list[Sample], gate: str) -> dict[str, float | int | None]:
    """What the sessions of one step did: success before and after critique, the critic's
    reward and length, and how revisions changed outcomes (None where nothing was measured)."""
    solver = [s for s in samples if s.role == "solver"]
    critic = [s for s in samples if s.role == "critic"]
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
        "critic/tokens_mean": _mean([len(s.response_ids) for s in critic]),
        "sessions/revisions": len(revisions),
        "sessions/fix_rate": _mean(after_failure),
        "sessions/break_rate": _mean(after_success) if gate == "ungated" else None,
    }
