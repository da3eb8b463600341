"""Every critic, and the critic spec users write (`self`, `rule`, `expert`, `leaky:P`, a model,
or a server URL#MODEL).

The same spec is `algo.critic` in a training config, `icrl eval --critic` and each
`icrl critique-compare --critic NAME=SPEC`; `icrl_cli.components.build_critic` turns it into one
of the critics below. A critic writes text and, where a model wrote it, a critic Sample; what the
critique was worth (its reward) is set by the trainer once the next attempt is scored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

from transformers import PreTrainedTokenizerBase

from environments import EnvError, Environment, Task
from icrl_cli.config import ConfigError
from icrl_cli.generation import GenerationBackend
from icrl_cli.generation.openai import OpenAIBackend
from icrl_cli.models import ModelLoadError
from icrl_cli.rollout.prompts import (
    Prompts,
    critic_messages,
    encode_prompt,
    parse_critique,
    rule_critique,
)
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.settings import SessionSettings

SPEC_FORMS = "self, rule, expert, leaky:P, a model id or directory, or http(s)://HOST:PORT/v1#MODEL"


def attempt_summary(env: Environment, task: Task, attempt: Sample) -> str:
    """The attempt as the critic reads it: a multi-turn episode's trajectory summary, or the
    environment's rendering of a single response."""
    summary = attempt.metadata.get("summary")
    return summary if summary is not None else env.render_attempt(task, attempt.text)


class Critic(Protocol):
    """Writes one critique per failed (or, ungated, any) attempt."""

    trainable: bool

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        """(critique text, the critic's Sample or None when no model wrote it) per attempt."""
        ...


def critic_sample(task: Task, attempt: Sample, critique: str, **fields: Any) -> Sample:
    """The critic's sample for its critique of ``attempt``; ``fields`` hold what it generated
    (its tokens, text, trainability). Its reward is set once the next attempt is scored."""
    metadata = {"critique": critique, "reward_before": attempt.reward, **fields.pop("metadata", {})}
    return Sample(
        query_id=task.id,
        session=attempt.session,
        round=attempt.round,
        role="critic",
        metadata=metadata,
        **fields,
    )


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
                critic_messages(task, attempt_summary(env, task, s), s.reward, self.prompts),
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
            sample = critic_sample(
                task,
                attempt,
                critique,
                prompt_ids=prompt,
                behavior_prompt_ids=prompt,
                response_ids=out.token_ids,
                loss_mask=[1] * len(out.token_ids),
                behavior_logprobs=out.logprobs,
                text=text,
                finish_reason=out.finish_reason,
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


class ExpertCritic:
    """The environment's expert critique (``Environment.critique_demonstration`` of what the
    critic would read: for synthetic math, the first running sum the attempt gets wrong,
    written out right), except that with probability ``leak`` it hands over the rule critic's
    text instead, which carries the gold answer.

    A testbed for the calibration weight: a hint names something the solver could have written
    itself, a leaked answer something it could not. Each draw uses Python's global random
    generator, which checkpoints save and restore, so a resumed run draws the same leaks. An
    environment without expert critiques (one that has none even for an empty attempt) is an
    error; where the expert finds nothing wrong with an attempt, the rule critic's text is
    used."""

    trainable = False

    def __init__(self, prompts: Prompts, leak: float = 0.0) -> None:
        self.prompts, self.leak = prompts, leak

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        results: list[tuple[str, Sample | None]] = []
        for task, attempt in attempts:
            rule = rule_critique(task, attempt.success, self.prompts)
            if self.leak > 0 and random.random() < self.leak:
                results.append((rule, None))
                continue
            hint = env.critique_demonstration(task, attempt_summary(env, task, attempt))
            if hint is None and env.critique_demonstration(task, "") is None:
                raise EnvError(
                    f"{env.name} has no expert critiques; the expert and leaky critics need an "
                    "environment with them (synthetic math, household)"
                )
            results.append((rule if hint is None else hint, None))
        return results


@dataclass(frozen=True)
class CriticSpec:
    """A parsed critic spec: ``model`` is the frozen model's id or directory, or the model name
    the server knows; ``url`` is the server's OpenAI-compatible base URL; ``leak`` is the share
    of an expert critic's critiques that hand over the answer."""

    kind: Literal["self", "rule", "expert", "model", "http"]
    text: str
    model: str | None = None
    url: str | None = None
    leak: float = 0.0


def parse_critic_spec(text: str) -> CriticSpec:
    """``self`` | ``rule`` | ``expert`` | ``leaky:P`` | ``http(s)://HOST:PORT/v1#MODEL`` | a
    model id or directory. ``leaky:P`` is the expert critic that hands over the answer with
    probability P (0 ≤ P ≤ 1).

    Only the shape is checked here; whether a model loads or a server answers is found out when
    the critic is made."""
    spec = text.strip()
    if spec in ("self", "rule", "expert"):
        return CriticSpec(spec, text)  # type: ignore[arg-type]
    if spec.startswith("leaky:"):
        share = spec.removeprefix("leaky:")
        try:
            leak = float(share)
        except ValueError:
            leak = -1.0
        if not 0.0 <= leak <= 1.0:
            raise ConfigError(f"critic '{text}': write leaky:P with P between 0 and 1")
        return CriticSpec("expert", text, leak=leak)
    if "://" in spec:
        url, _, model = spec.partition("#")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not model.strip():
            raise ConfigError(
                f"critic '{text}' is not a server spec; write http(s)://HOST:PORT/v1#MODEL"
            )
        return CriticSpec("http", text, model=model.strip(), url=url.rstrip("/"))
    if not spec:
        raise ConfigError(f"empty critic spec; a critic is {SPEC_FORMS}")
    return CriticSpec("model", text, model=spec)


class HTTPCritic:
    """A frozen critic behind an OpenAI-compatible server (e.g. a large model on vLLM).

    It sends chat messages, not token ids: the server applies its own model's chat template
    (its tokenizer is not ours). Its critic samples carry text and the server's completion-token
    count but no token ids, so they never enter a loss."""

    trainable = False

    def __init__(
        self, client: OpenAIBackend, url: str, prompts: Prompts, settings: SessionSettings
    ) -> None:
        self.client, self.url, self.prompts, self.settings = client, url, prompts, settings

    def critique(
        self, env: Environment, attempts: list[tuple[Task, Sample]]
    ) -> list[tuple[str, Sample | None]]:
        messages = [
            critic_messages(task, attempt_summary(env, task, s), s.reward, self.prompts)
            for task, s in attempts
        ]
        replies = self.client.chat(
            messages,
            self.settings.critic_max_new_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
        )
        results: list[tuple[str, Sample | None]] = []
        for (task, attempt), reply in zip(attempts, replies, strict=True):
            critique = parse_critique(reply.text, self.prompts.critique_tag)
            sample = critic_sample(
                task,
                attempt,
                critique,
                prompt_ids=[],
                behavior_prompt_ids=[],
                response_ids=[],
                loss_mask=[],
                behavior_logprobs=[],
                text=reply.text,
                metadata={"completion_tokens": reply.completion_tokens, "server": self.url},
                trainable=False,
            )
            results.append((critique, sample))
        return results


def connect_http_critic(
    spec: CriticSpec, prompts: Prompts, settings: SessionSettings
) -> HTTPCritic:
    """The server critic ``spec`` names, after a short request at the critique budget, so that a
    wrong URL, a model the server does not serve or a budget its context cannot hold fails before
    any attempt is generated."""
    assert spec.url is not None and spec.model is not None
    client = OpenAIBackend(spec.url, spec.model, enable_thinking=settings.enable_thinking)
    budget = settings.critic_max_new_tokens
    try:
        client.chat([[{"role": "user", "content": "ping"}]], budget)
    except ModelLoadError as err:
        what = f"critic '{spec.text}' ({budget} tokens a critique)"
        raise ModelLoadError(f"{what}: {err}") from None
    return HTTPCritic(client, spec.url, prompts, settings)
