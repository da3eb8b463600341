"""Who critiques: the critic spec users write (`self`, `rule`, a model, or a server URL#MODEL),
parsed once and turned into a :class:`~icrl_cli.rollout.sessions.Critic`.

The same spec is `algo.critic` in a training config, `icrl eval --critic` and each
`icrl critique-compare --critic NAME=SPEC`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from transformers import PreTrainedTokenizerBase

from environments import Environment, Task
from icrl_cli.config import ConfigError
from icrl_cli.generation import GenerationBackend
from icrl_cli.generation.openai import OpenAIBackend
from icrl_cli.models import ModelLoadError
from icrl_cli.rollout.prompts import Prompts, critic_messages, parse_critique
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.sessions import (
    Critic,
    ModelCritic,
    RuleCritic,
    SessionSettings,
    attempt_summary,
    critic_sample,
)

SPEC_FORMS = "self, rule, a model id or directory, or http(s)://HOST:PORT/v1#MODEL"


@dataclass(frozen=True)
class CriticSpec:
    """A parsed critic spec: ``model`` is the frozen model's id or directory, or the model name
    the server knows; ``url`` is the server's OpenAI-compatible base URL."""

    kind: Literal["self", "rule", "model", "http"]
    text: str
    model: str | None = None
    url: str | None = None


def parse_critic_spec(text: str) -> CriticSpec:
    """``self`` | ``rule`` | ``http(s)://HOST:PORT/v1#MODEL`` | a model id or directory.

    Only the shape is checked here; whether a model loads or a server answers is found out when
    the critic is made."""
    spec = text.strip()
    if spec in ("self", "rule"):
        return CriticSpec(spec, text)  # type: ignore[arg-type]
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


def make_critic(
    spec: CriticSpec,
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    settings: SessionSettings,
    *,
    train_self: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    batch_size: int = 256,
    prompt_overrides: dict[str, str | None] | None = None,
) -> Critic:
    """The critic ``spec`` names. ``backend``/``tokenizer``/``prompts`` are the solver's: `self`
    critiques with them (trained when ``train_self``), and a server critic uses the solver's
    prompt templates. A frozen model is loaded on ``device`` with its own shipped prompts, then
    ``prompt_overrides``."""
    if spec.kind == "self":
        return ModelCritic(backend, tokenizer, prompts, settings, trainable=train_self)
    if spec.kind == "rule":
        return RuleCritic(prompts)
    assert spec.model is not None
    if spec.kind == "http":
        assert spec.url is not None
        client = OpenAIBackend(spec.url, spec.model, enable_thinking=settings.enable_thinking)
        # A short request at the critique budget now, so a wrong URL, a model the server does
        # not serve or a budget its context cannot hold fails before any attempt is generated.
        budget = settings.critic_max_new_tokens
        try:
            client.chat([[{"role": "user", "content": "ping"}]], budget)
        except ModelLoadError as err:
            what = f"critic '{spec.text}' ({budget} tokens a critique)"
            raise ModelLoadError(f"{what}: {err}") from None
        return HTTPCritic(client, spec.url, prompts, settings)
    from icrl_cli.generation.hf import HFBackend
    from icrl_cli.models import load_model, resolve_model_name

    try:
        model, critic_tokenizer = load_model(spec.model, device, dtype, trust_remote_code)
    except ModelLoadError as err:
        raise ModelLoadError(f"critic '{spec.text}': {err} (a critic is {SPEC_FORMS})") from None
    model.eval().requires_grad_(False)
    critic_prompts = Prompts.resolve(prompt_overrides or {}, resolve_model_name(spec.model))
    return ModelCritic(
        HFBackend(model, critic_tokenizer, batch_size),
        critic_tokenizer,
        critic_prompts,
        settings,
        trainable=False,
    )
