"""An OpenAI-compatible HTTP server for one model on the HF backend: ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions``.

It follows vLLM's extensions where a token-in/token-out client needs them: ``prompt`` may be token
ids, ``return_tokens_as_token_ids`` renders log-prob tokens as ``token_id:N``, and
``chat_template_kwargs`` carries ``enable_thinking``. Log-probs are the HF backend's: of the
sampling distribution, temperature and nucleus applied; at temperature 0 of the raw model.
Requests are served one at a time (one model, one lock) in worker threads, so the event loop keeps
answering while a generation runs. What one request may ask for is bounded (``Limits``): its body
size, checked before anything is read or tokenised, and its sequences (prompts × n).
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from environments.agentgym.limits import BodyLimit
from icrl_cli.generation.base import Generation, sampling_scores
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.prompts import encode_prompt
from icrl_cli.server.schema import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTemplateKwargs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
)

# --- the model behind the endpoints -----------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: its body in bytes, and its sequences (prompts × n)."""

    max_body_bytes: int = 8 * 2**20
    max_sequences: int = 256


@dataclass
class Sampled:
    """One choice: the generation (cut at a stop string), its text, and per token the ``k`` most
    likely alternatives as (token id, log-prob) pairs (empty lists when none were asked for)."""

    generation: Generation
    text: str
    alternatives: list[list[tuple[int, float]]]


class ServedModel:
    """The model, its tokenizer and its backend, behind one lock."""

    def __init__(
        self,
        name: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        limits: Limits | None = None,
    ):
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
        self.limits = limits or Limits()
        # The HF sampler: top log-probs need a forward pass of the same model (``alternatives``).
        self.backend = HFBackend(model, tokenizer)
        self.max_model_len = int(model.config.max_position_embeddings)
        self.vocab_size = int(model.config.vocab_size)
        self.created = int(time.time())
        self.lock = threading.Lock()

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(
                f"The model `{requested}` does not exist; this server serves `{self.name}`.",
                status=404,
                param="model",
                code="model_not_found",
            )

    def check_sequences(self, prompts: int, n: int) -> None:
        """Refuse a request for more than ``limits.max_sequences`` sequences (before any is
        tokenised)."""
        if prompts * n > self.limits.max_sequences:
            raise ApiError(
                f"{prompts} prompts × n={n} asks for {prompts * n} sequences; this server "
                f"generates at most {self.limits.max_sequences} per request",
                param="n",
                code="too_many_sequences",
            )

    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        if any(not 0 <= token < self.vocab_size for token in prompt):
            raise ApiError(f"prompt token ids must lie in [0, {self.vocab_size})", param="prompt")
        return list(prompt)

    def sample(
        self,
        prompts: list[list[int]],
        request: SamplingRequest,
        max_tokens: int | None,
        top_k: int | None,
    ) -> list[Sampled]:
        """``request.n`` choices per prompt, prompt-major (choice i*n + j is prompt i's j-th);
        ``max_tokens`` None fills the context."""
        self.check_sequences(len(prompts), request.n)
        # One batch shares one budget; with no max_tokens it is what the longest prompt leaves.
        budget = min(self.token_budget(prompt, max_tokens) for prompt in prompts)
        batch = [prompt for prompt in prompts for _ in range(request.n)]
        stops = request.stop_strings()
        with self.lock:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            generations = self.backend.generate(batch, budget, request.temperature, request.top_p)
            choices = [self.cut_at_stop(generation, stops) for generation in generations]
            return [
                Sampled(
                    generation,
                    text,
                    self.alternatives(prompt, generation.token_ids, request, top_k),
                )
                for prompt, (generation, text) in zip(batch, choices, strict=True)
            ]

    def token_budget(self, prompt: list[int], max_tokens: int | None) -> int:
        if not prompt:
            raise ApiError("the prompt is empty", param="prompt")
        room = self.max_model_len - len(prompt)
        if max_tokens is None and room >= 1:
            return room
        if max_tokens is None or max_tokens > room:
            raise ApiError(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                f"has {len(prompt)} and max_tokens asks for {max_tokens or 'at least 1'} more",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    def cut_at_stop(self, generation: Generation, stops: list[str]) -> tuple[Generation, str]:
        """The generation up to the token that completes the first stop string, and its text
        without the stop string (OpenAI's convention). Generation runs to its own end first: a
        stop string costs no extra tokens of the answer, only compute."""
        text = self.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        found = [(text.find(stop), stop) for stop in stops if stop and stop in text]
        if not found:
            return generation, text
        start, stop = min(found, key=lambda hit: (hit[0], len(hit[1])))
        for end in range(1, len(generation.token_ids) + 1):
            prefix = self.tokenizer.decode(generation.token_ids[:end], skip_special_tokens=True)
            if len(prefix) >= start + len(stop):
                break
        cut = Generation(generation.token_ids[:end], generation.logprobs[:end], "stop")
        return cut, text[:start]

    @torch.no_grad()
    def alternatives(
        self, prompt: list[int], tokens: list[int], sampling: SamplingRequest, top_k: int | None
    ) -> list[list[tuple[int, float]]]:
        """The ``top_k`` most likely tokens at each position of ``tokens``, from one forward pass
        of the distribution the backend sampled from (temperature and nucleus applied); tokens
        outside the nucleus have no probability and are not listed."""
        if not top_k or not tokens:
            return [[] for _ in tokens]
        ids = torch.tensor([prompt + tokens], device=self.model.device)
        logits = self.model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        chosen = torch.tensor(tokens, device=logits.device)
        scores = sampling_scores(logits.float(), sampling.temperature, sampling.top_p, chosen)
        values, indices = torch.log_softmax(scores, dim=-1).topk(top_k, dim=-1)
        return [
            [(t, v) for t, v in zip(row_ids, row_values, strict=True) if v != float("-inf")]
            for row_ids, row_values in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    def token_text(self, token: int, as_id: bool) -> str:
        return f"token_id:{token}" if as_id else self.tokenizer.decode([token])

    def completion_logprobs(self, sampled: Sampled, as_ids: bool) -> CompletionLogprobs:
        tokens = sampled.generation.token_ids
        pieces = [self.tokenizer.decode([t], skip_special_tokens=True) for t in tokens]
        offsets = [sum(len(piece) for piece in pieces[:i]) for i in range(len(pieces))]
        top = [
            # vLLM's convention: the k most likely, and the chosen token as well.
            {self.token_text(t, as_ids): lp for t, lp in alternatives}
            | {self.token_text(token, as_ids): logprob}
            for token, logprob, alternatives in zip(
                tokens, sampled.generation.logprobs, sampled.alternatives, strict=True
            )
        ]
        return CompletionLogprobs(
            tokens=[self.token_text(t, as_ids) for t in tokens],
            token_logprobs=sampled.generation.logprobs,
            top_logprobs=top,
            text_offset=offsets,
        )

    def chat_logprobs(self, sampled: Sampled, as_ids: bool) -> ChatLogprobs:
        def entry(token: int, logprob: float) -> TopLogprob:
            text = self.token_text(token, as_ids)
            return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

        content = []
        for token, logprob, alternatives in zip(
            sampled.generation.token_ids,
            sampled.generation.logprobs,
            sampled.alternatives,
            strict=True,
        ):
            top = [entry(t, lp) for t, lp in alternatives]
            content.append(TokenLogprob(**entry(token, logprob).model_dump(), top_logprobs=top))
        return ChatLogprobs(content=content)


def usage(prompts: list[list[int]], choices: list[Sampled]) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.generation.token_ids) for c in choices)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first complaint as one line, and the top-level field it concerns."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON ({first['ctx']['error']})", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(loc)
    # pydantic prefixes a validator's own sentence with "Value error, ".
    message = str(first["msg"]).removeprefix("Value error, ")
    return (f"{where}: {message}" if where else message), (loc[0] if loc else None)


# --- the app ----------------------------------------------------------------------------------


def complete(served: ServedModel, request: CompletionRequest) -> CompletionResponse:
    """A /v1/completions request answered."""
    served.check_model(request.model)
    raw = request.prompt
    listed: list[str] | list[list[int]]
    if isinstance(raw, str):
        listed = [raw]
    elif raw and all(isinstance(token, int) for token in raw):
        listed = [raw]  # type: ignore[list-item]
    else:
        listed = raw  # type: ignore[assignment]
    if not listed:
        raise ApiError("the prompt is empty", param="prompt")
    served.check_sequences(len(listed), request.n)
    prompts = [served.encode(p) for p in listed]
    choices = served.sample(prompts, request, request.max_tokens, request.logprobs)
    as_ids = request.return_tokens_as_token_ids
    return CompletionResponse(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=served.name,
        choices=[
            CompletionChoice(
                index=i,
                text=choice.text,
                logprobs=(
                    served.completion_logprobs(choice, as_ids)
                    if request.logprobs is not None
                    else None
                ),
                finish_reason=choice.generation.finish_reason,
            )
            for i, choice in enumerate(choices)
        ],
        usage=usage(prompts, choices),
    )


def chat(served: ServedModel, request: ChatCompletionRequest) -> ChatCompletionResponse:
    """A /v1/chat/completions request answered."""
    served.check_model(request.model)
    thinking = (request.chat_template_kwargs or ChatTemplateKwargs()).enable_thinking
    messages = [m.as_template_message() for m in request.messages]
    prompt = encode_prompt(served.tokenizer, messages, enable_thinking=thinking)
    max_tokens = request.max_completion_tokens or request.max_tokens
    top_k = request.top_logprobs if request.logprobs else None
    choices = served.sample([prompt], request, max_tokens, top_k)
    as_ids = request.return_tokens_as_token_ids
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=served.name,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=choice.text),
                logprobs=served.chat_logprobs(choice, as_ids) if request.logprobs else None,
                finish_reason=choice.generation.finish_reason,
            )
            for i, choice in enumerate(choices)
        ],
        usage=usage([prompt], choices),
    )


def create_app(served: ServedModel) -> FastAPI:
    """The OpenAI-compatible app over ``served``."""
    app = FastAPI(title=f"icrl serve {served.name}")
    app.state.served = served

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RecursionError)
    async def too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        return error_response(400, "the request body is nested too deeply")

    def refusal(message: str) -> dict[str, Any]:
        return {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_too_large",
            }
        }

    app.add_middleware(BodyLimit, max_bytes=served.limits.max_body_bytes, error_body=refusal)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> ModelList:
        card = ModelCard(id=served.name, created=served.created, max_model_len=served.max_model_len)
        return ModelList(data=[card])

    # Plain (non-async) handlers: FastAPI runs them in worker threads, so a generation blocks
    # neither the event loop nor /health while another request waits for the lock.
    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> CompletionResponse:
        return complete(served, request)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest) -> ChatCompletionResponse:
        return chat(served, request)

    return app


def serve(served: ServedModel, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``served`` with uvicorn; loopback by default so nothing is exposed by accident.
    Uvicorn announces the address once it listens; requests are not logged (a training run's
    critic would fill the log)."""
    import uvicorn

    app = create_app(served)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
