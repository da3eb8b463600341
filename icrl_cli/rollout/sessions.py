"""Self-improvement sessions: solve → (if it failed) critique → revise, for G sessions per query.

Each round's generation is one batch across every open session of every query in the step.
GRPO is the special case of one round and no critic. Every solver sample carries the
critique-free prompt as its training context and the prompt it was sampled under as its
behavior context (they differ only for revisions). Round 1 (``open_sessions``) and the rounds
after it (``continue_sessions``) are separate steps of ``run_sessions`` so that `icrl
critique-compare` can hand the same first attempts to several critics.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from environments import Environment, Task, opening
from icrl_cli.generation import GenerationBackend
from icrl_cli.rollout.critics import Critic, attempt_summary
from icrl_cli.rollout.episodes import play, start_all, trajectory_summary
from icrl_cli.rollout.prompts import Prompts, encode_prompt, solver_messages
from icrl_cli.rollout.samples import Sample, is_failed
from icrl_cli.rollout.settings import SessionSettings


@dataclass
class Session:
    """One of the G sessions of a query: its task, its latest attempt and the critique the next
    attempt will see."""

    task: Task  # for a multi-turn task, its prompt is the episode's opening once started
    index: int
    last: Sample | None = None
    critique: str | None = None

    def attempt(
        self,
        round_: int,
        free: list[int],
        behavior: list[int],
        metadata: dict[str, Any],
        **fields: Any,
    ) -> Sample:
        """This session's solver sample of ``round_``: trained after ``free`` (the critique-free
        prompt), sampled after ``behavior``."""
        return Sample(
            query_id=self.task.id,
            session=self.index,
            round=round_,
            role="solver",
            prompt_ids=free,
            behavior_prompt_ids=behavior,
            metadata={
                "task": self.task.prompt,
                "critique": self.critique,
                "previous_reward": self.last.reward if self.last else None,
                **metadata,
            },
            **fields,
        )


def _solver_prompts(
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: list[Session],
    settings: SessionSettings,
    prompts: Prompts,
) -> tuple[dict[str, list[int]], list[list[int]]]:
    """The critique-free prompt of each task (the training context) and each session's
    behavior prompt (with its critique, if it has one, and with the attempt it read when
    ``settings.revision_shows_attempt``)."""
    free: dict[str, list[int]] = {}
    behavior = []

    def encode(messages: list[dict[str, str]]) -> list[int]:
        # A prompt that surely cannot fit is not tokenised at all (a 5 MB question would take
        # gigabytes): it stays empty, and an empty prompt is never sampled.
        if _surely_too_long(tokenizer, messages, settings.context_tokens):
            return []
        return encode_prompt(tokenizer, messages, settings.enable_thinking)

    for s in sessions:
        if s.task.id not in free:
            free[s.task.id] = encode(solver_messages(env, s.task, prompts))
        if s.critique is None:
            behavior.append(free[s.task.id])
        else:
            attempt = None
            if settings.revision_shows_attempt and s.last is not None:
                attempt = attempt_summary(env, s.task, s.last)
            behavior.append(encode(solver_messages(env, s.task, prompts, s.critique, attempt)))
    return free, behavior


_LONGEST_TOKEN: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, int] = (
    weakref.WeakKeyDictionary()
)


def _surely_too_long(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], budget: int
) -> bool:
    """More characters than ``budget`` tokens could spell, each at most as long as the
    vocabulary's longest token."""
    if tokenizer not in _LONGEST_TOKEN:
        _LONGEST_TOKEN[tokenizer] = max(len(token) for token in tokenizer.get_vocab())
    return sum(len(m["content"]) for m in messages) > budget * _LONGEST_TOKEN[tokenizer]


def _single_step_round(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: list[Session],
    round_: int,
    settings: SessionSettings,
    prompts: Prompts,
) -> list[Sample]:
    """One attempt per session, sampled under its behavior prompt, trained under the plain one.
    A prompt that leaves no room in the context is not sampled: its attempt is a failed episode
    (out of training and success), counted as ``overlong``."""
    free, behavior = _solver_prompts(tokenizer, env, sessions, settings, prompts)
    fits = [0 < len(p) < settings.context_tokens for p in behavior]
    sampled = backend.generate(
        [p for p, fit in zip(behavior, fits, strict=True) if fit],
        settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
    )
    outputs = iter(sampled)
    samples = []
    for s, context, fit in zip(sessions, behavior, fits, strict=True):
        if not fit:
            samples.append(_overlong(s, round_, free[s.task.id], context, settings))
            continue
        out = next(outputs)
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        result = env.start(s.task).step(text)
        samples.append(
            s.attempt(
                round_,
                free[s.task.id],
                context,
                {"answer": s.task.answer},
                response_ids=out.token_ids,
                loss_mask=[1] * len(out.token_ids),
                behavior_logprobs=out.logprobs,
                reward=float(result.reward),
                text=text,
                finish_reason=out.finish_reason,
            )
        )
    return samples


def _overlong(
    s: Session, round_: int, free: list[int], context: list[int], settings: SessionSettings
) -> Sample:
    size = f"{len(context)} tokens" if context else "more characters than it could hold"
    error = f"a prompt of {size} leaves no room in the {settings.context_tokens}-token context"
    return s.attempt(
        round_,
        free,
        context,
        {"answer": s.task.answer, "stop": "failed", "error": error, "overlong": True},
        response_ids=[],
        loss_mask=[],
        behavior_logprobs=[],
        reward=0.0,
        text="",
        finish_reason="length",
        trainable=False,
    )


def _multi_turn_round(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: list[Session],
    round_: int,
    settings: SessionSettings,
    prompts: Prompts,
) -> list[Sample]:
    """One episode per session, played turn by turn; the sample's response is the whole episode
    (observations masked out), trained after the critique-free prompt."""
    started = start_all(env.start, [s.task for s in sessions])
    # The opening (look text and task) is only known once an episode has started; sessions of
    # a task whose episode failed to start take it from one that did.
    openings = {
        s.task.id: opening(s.task, episode)
        for s, (episode, _) in zip(sessions, started, strict=True)
        if episode is not None and round_ == 1
    }
    for s in sessions:
        if s.task.id in openings:
            s.task = replace(s.task, prompt=openings[s.task.id])
    free, behavior = _solver_prompts(tokenizer, env, sessions, settings, prompts)
    rollouts = play(backend, tokenizer, [e for e, _ in started], behavior, settings)
    samples = []
    for s, context, rollout, (_, error) in zip(sessions, behavior, rollouts, started, strict=True):
        rollout.error = error or rollout.error
        summary = trajectory_summary(rollout.turns, settings.summary_observation_chars)
        samples.append(
            s.attempt(
                round_,
                free[s.task.id],
                context,
                {"summary": summary, **rollout.metadata()},
                response_ids=rollout.response_ids,
                loss_mask=rollout.loss_mask,
                behavior_logprobs=rollout.logprobs,
                reward=rollout.reward,
                text=tokenizer.decode(rollout.response_ids, skip_special_tokens=True),
                finish_reason=rollout.finish_reason,
                # An episode lost to its environment says nothing about the policy.
                trainable=not rollout.failed,
            )
        )
    return samples


def _solver_round(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: list[Session],
    round_: int,
    settings: SessionSettings,
    prompts: Prompts,
) -> list[Sample]:
    play_round = _multi_turn_round if env.multi_turn else _single_step_round
    return play_round(backend, tokenizer, env, sessions, round_, settings, prompts)


def open_sessions(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    queries: Sequence[Task],
    settings: SessionSettings,
    prompts: Prompts,
) -> list[Session]:
    """Round 1 of G sessions per query: each session holds its critique-free attempt."""
    sessions = [Session(q, j) for q in queries for j in range(settings.sessions_per_query)]
    attempts = _solver_round(backend, tokenizer, env, sessions, 1, settings, prompts)
    for session, attempt in zip(sessions, attempts, strict=True):
        session.last = attempt
    return sessions


def continue_sessions(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    sessions: Sequence[Session],
    settings: SessionSettings,
    prompts: Prompts,
    critic: Critic,
    revision_seed: int | None = None,
) -> list[Sample]:
    """Rounds 2…K after round 1: the critiques and revisions, in the order they were made.

    The given sessions are not changed (each is copied), so one set of round-1 attempts can be
    continued by several critics in turn (`icrl critique-compare`). With ``revision_seed``, each
    round's revisions are sampled from torch's generator seeded with ``revision_seed + round``,
    whatever the critic's own sampling drew from it, so critics differ only by their critiques."""
    sessions = [replace(s) for s in sessions]
    samples: list[Sample] = []
    for round_ in range(2, settings.max_rounds + 1):
        active = [
            s
            for s in sessions
            if s.last is not None
            and not is_failed(s.last)
            and (settings.gate == "ungated" or not s.last.success)
        ]
        if not active:
            break
        critiques = critic.critique(env, [(s.task, s.last) for s in active])
        for session, (text, critic_sample) in zip(active, critiques, strict=True):
            session.critique = text
            if critic_sample is not None:
                samples.append(critic_sample)
        if revision_seed is not None:
            torch.manual_seed(revision_seed + round_)
        attempts = _solver_round(backend, tokenizer, env, active, round_, settings, prompts)
        for session, (_, critic_sample), attempt in zip(active, critiques, attempts, strict=True):
            if critic_sample is not None:
                # What the critique was worth is the trainer's to say (Eq. 3), from this
                # attempt's reward; unless the attempt was lost, which measures nothing.
                if is_failed(attempt):
                    critic_sample.trainable = False
                    critic_sample.metadata["unmeasured"] = True
            session.last = attempt
            samples.append(attempt)
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
    sessions = open_sessions(backend, tokenizer, env, queries, settings, prompts)
    samples = [s.last for s in sessions]
    if critic is not None:
        samples += continue_sessions(backend, tokenizer, env, sessions, settings, prompts, critic)
    return samples
