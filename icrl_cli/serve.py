"""An OpenAI-compatible HTTP server for one model on the HF backend: ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions``.

It follows vLLM's extensions where a token-in/token-out client needs them: ``prompt`` may be token
ids, ``return_tokens_as_token_ids`` renders log-prob tokens as ``token_id:N``, and
``chat_template_kwargs`` carries ``enable_thinking``. Log-probs are the HF backend's: of the
sampling distribution with temperature applied (top-p not); at temperature 0 of the raw model.
Requests are served one at a time (one model, one lock) in worker threads, so the event loop keeps
answering while a generation runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator, model_validator
from starlette.exceptions import HTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from icrl_cli.generation.base import Generation
from icrl_cli.generation.hf import HFBackend
from icrl_cli.models import load_model
from icrl_cli.rollout.prompts import encode_prompt

# OpenAI's legacy completions allow 5 alternatives a token; vLLM's default ceiling is 20.
MAX_TOP_LOGPROBS = 20
MAX_N = 64


class ApiError(Exception):
    """A request the server refuses; rendered as OpenAI's ``{"error": {...}}`` body."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


# --- requests ---------------------------------------------------------------------------------


class SamplingRequest(BaseModel):
    """The sampling fields both completion endpoints share (unknown fields are ignored, as
    OpenAI's clients send some we have no use for)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    return_tokens_as_token_ids: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @model_validator(mode="after")
    def _only_what_is_served(self) -> SamplingRequest:
        if self.stream:
            raise ValueError("stream=true is not supported; ask for the whole response")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported (use 0)")
        return self

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(SamplingRequest):
    # A string, strings, token ids or lists of token ids, as OpenAI's API and vLLM accept.
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo=true is not supported")
        return echo


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict[str, str]:
        content = self.content
        if not isinstance(content, str):
            content = "\n".join(part.text for part in content)
        return {"role": self.role, "content": content}


class ChatTemplateKwargs(BaseModel, extra="forbid"):
    # Qwen3's template thinks unless told not to, and so does this server (as vLLM's does).
    enable_thinking: bool = True


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    chat_template_kwargs: ChatTemplateKwargs | None = None


# --- responses --------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "icrl"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# --- the model behind the endpoints -----------------------------------------------------------


@dataclass
class Sampled:
    """One choice: the generation (cut at a stop string), its text, and per token the ``k`` most
    likely alternatives as (token id, log-prob) pairs (empty lists when none were asked for)."""

    generation: Generation
    text: str
    alternatives: list[list[tuple[int, float]]]


class ServedModel:
    """The model, its tokenizer and its backend, behind one lock."""

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        self.name, self.model, self.tokenizer = name, model.eval(), tokenizer
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
                    self.alternatives(prompt, generation.token_ids, request.temperature, top_k),
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
        self, prompt: list[int], tokens: list[int], temperature: float, top_k: int | None
    ) -> list[list[tuple[int, float]]]:
        """The ``top_k`` most likely tokens at each position of ``tokens``, from one forward pass
        under the same temperature convention as the backend's log-probs."""
        if not top_k or not tokens:
            return [[] for _ in tokens]
        ids = torch.tensor([prompt + tokens], device=self.model.device)
        logits = self.model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        logits = logits.float() / temperature if temperature > 0 else logits.float()
        values, indices = torch.log_softmax(logits, dim=-1).topk(top_k, dim=-1)
        return [
            list(zip(row_ids, row_values, strict=True))
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


def create_app(model_name: str, device: str = "auto") -> FastAPI:
    """The server for ``model_name`` (anything ``icrl_cli.models.load_model`` takes, ``tiny``
    included), loaded on ``device``; raises ModelLoadError when it cannot be loaded."""
    model, tokenizer = load_model(model_name, device=device)
    served = ServedModel(model_name, model, tokenizer)
    app = FastAPI(title=f"icrl serve {model_name}")
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

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest) -> ChatCompletionResponse:
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

    return app


def serve(model_name: str, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """Load ``model_name`` and serve it with uvicorn; loopback by default so nothing is exposed
    by accident. Uvicorn announces the address once the model is loaded; requests are not
    logged (a training run's critic would fill the log)."""
    import uvicorn

    app = create_app(model_name, device)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
