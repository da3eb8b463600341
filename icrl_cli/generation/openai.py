"""The OpenAI-compatible HTTP backend: sampling from a model on a remote server (vLLM's or
``icrl serve``), for frozen models too large to sit beside the trainer.

Token ids go out as ``prompt`` token arrays of ``/v1/completions`` and come back exactly, through
vLLM's ``return_tokens_as_token_ids`` (every log-prob token rendered ``token_id:N``), so nothing
is decoded and re-tokenised. The server's weights never change, so ``sync_weights`` has nothing to
do and the backend cannot sample a policy that is being trained. Log-probs are the server's:
``icrl serve`` applies the temperature as the HF backend does; vLLM does only when started with
``--logprobs-mode processed_logprobs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from icrl_cli.generation.base import Generation
from icrl_cli.models import ModelLoadError

if TYPE_CHECKING:
    import torch

TOKEN_ID_PREFIX = "token_id:"
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class ChatResult:
    """One chat completion: the assistant's text and how many tokens the server generated."""

    text: str
    completion_tokens: int


class OpenAIBackend:
    """Generation and chat on the OpenAI-compatible server at ``base_url`` (with or without the
    trailing ``/v1``), serving ``model``.

    A batch is split into requests of ``prompts_per_request`` prompts sent ``concurrency`` at a
    time. Sampling is safe to resend, so connection failures, time-outs and 5xx answers are
    retried ``retries`` times with exponential back-off from ``backoff`` seconds; then, and on
    any 4xx answer, a ModelLoadError says in one line what was tried. ``enable_thinking`` is
    sent as vLLM's ``chat_template_kwargs`` when set (None leaves the server's default).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout: float = 120.0,
        retries: int = 2,
        *,
        backoff: float = 0.5,
        concurrency: int = 8,
        prompts_per_request: int = 16,
        enable_thinking: bool | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.root = root.removesuffix("/v1")
        self.model = model
        self.retries, self.backoff = retries, backoff
        self.concurrency, self.prompts_per_request = concurrency, prompts_per_request
        self.enable_thinking = enable_thinking
        self._http = httpx.Client(timeout=timeout)

    def sleep(self) -> None:
        return None

    def sync_weights(self, weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        return None

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[Generation]:
        """One response per prompt, token ids and log-probs exactly as the server sampled them."""
        chunks = [
            prompts[start : start + self.prompts_per_request]
            for start in range(0, len(prompts), self.prompts_per_request)
        ]

        def complete(chunk: list[list[int]]) -> list[Generation]:
            body = {
                "model": self.model,
                "prompt": chunk,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "logprobs": 0,  # the chosen token's log-prob, no alternatives
                "return_tokens_as_token_ids": True,
            }
            data = self._post("/v1/completions", body)
            choices = sorted(data["choices"], key=lambda choice: choice["index"])
            if len(choices) != len(chunk):
                raise self._malformed("/v1/completions", f"{len(choices)} choices for {len(chunk)}")
            return [self._generation(choice) for choice in choices]

        return [generation for part in self._map(complete, chunks) for generation in part]

    def chat(
        self,
        messages: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[ChatResult]:
        """One assistant reply per conversation, the server applying the model's chat template."""

        def reply(conversation: list[dict[str, str]]) -> ChatResult:
            body: dict[str, Any] = {
                "model": self.model,
                "messages": conversation,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
            }
            if self.enable_thinking is not None:
                body["chat_template_kwargs"] = {"enable_thinking": self.enable_thinking}
            data = self._post("/v1/chat/completions", body)
            try:
                text = data["choices"][0]["message"]["content"] or ""
                return ChatResult(text, int(data["usage"]["completion_tokens"]))
            except (KeyError, IndexError, TypeError, ValueError):
                raise self._malformed("/v1/chat/completions", "no choice or no usage") from None

        return self._map(reply, messages)

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _generation(self, choice: dict[str, Any]) -> Generation:
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        if not all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            raise self._malformed(
                "/v1/completions", "tokens are not 'token_id:N' (return_tokens_as_token_ids)"
            )
        # Anything but a length cut-off (EOS, a stop string, a stop token) ended the response.
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(
            token_ids=[int(t.removeprefix(TOKEN_ID_PREFIX)) for t in tokens],
            logprobs=[float(lp) for lp in logprobs.get("token_logprobs") or []],
            finish_reason=finish,
        )

    def _malformed(self, path: str, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.root}{path} answered an unusable response ({what})")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.root + path
        for attempt in range(self.retries + 1):
            try:
                response = self._http.post(url, json=body)
            except httpx.TransportError as exc:
                detail = (str(exc).splitlines() or ["no detail"])[0]
                failure = f"{type(exc).__name__}: {detail}"
            else:
                if response.status_code < 500:
                    break
                failure = f"HTTP {response.status_code}"
            if attempt == self.retries:
                raise ModelLoadError(
                    f"OpenAI-compatible server {self.root} did not answer POST {path}: "
                    f"{self.retries + 1} tries with back-off from {self.backoff:g} s ({failure})"
                )
            time.sleep(self.backoff * 2**attempt)
        try:
            data = response.json()
        except ValueError:
            raise self._malformed(path, f"HTTP {response.status_code}, not JSON") from None
        if response.status_code != 200:
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else data
            raise ModelLoadError(f"POST {url} gave HTTP {response.status_code}: {message}")
        return data
