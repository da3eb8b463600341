"""`icrl serve` and the openai backend: the real tiny model behind a loopback uvicorn server,
checked against the HF backend and independent forward passes."""

import threading
import time

import httpx
import pytest
import torch
from fastapi import FastAPI

from icrl_cli.components import load_model
from icrl_cli.generation.hf import HFBackend
from icrl_cli.generation.openai import ChatResult, OpenAIBackend
from icrl_cli.models import ModelLoadError
from icrl_cli.rollout.prompts import encode_prompt
from icrl_cli.server.serve import ServedModel, create_app

TASKS = ["3+5+8+2", "9+9+1+4", "7+0+6+5"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """The tiny model loaded on its own, as the reference the server is compared with."""
    model, tokenizer = load_model("tiny", device="cpu")
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def server(tiny, serve_app):
    app = create_app(ServedModel("tiny", *load_model("tiny", device="cpu")))
    return app, serve_app(app).url


def chat_prompt(tokenizer, task: str) -> list[int]:
    return encode_prompt(tokenizer, [{"role": "user", "content": task}])


def forward_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0):
    """log softmax(logits / temperature) of each response token, from one full forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    rows = logp[len(prompt) - 1 : len(prompt) - 1 + len(response)]
    return rows.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1).tolist(), rows


def test_models_lists_the_served_model(server, tiny):
    _, url = server
    body = httpx.get(f"{url}/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [("tiny", "model")]
    assert body["data"][0]["max_model_len"] == tiny[0].config.max_position_embeddings == 1024


def test_greedy_over_http_equals_the_hf_backend(server, tiny):
    model, tokenizer = tiny
    prompts = [chat_prompt(tokenizer, task) for task in TASKS]
    direct = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=48, temperature=0.0)
    # Two requests of at most two prompts, sent concurrently.
    remote = OpenAIBackend(server[1], "tiny", prompts_per_request=2).generate(
        prompts, max_new_tokens=48, temperature=0.0
    )
    assert [g.token_ids for g in remote] == [g.token_ids for g in direct]
    assert [g.finish_reason for g in remote] == [g.finish_reason for g in direct]
    for prompt, r, d in zip(prompts, remote, direct, strict=True):
        assert r.logprobs == pytest.approx(d.logprobs, abs=1e-5)
        # Greedy log-probs are the raw model's (no temperature), and every token is the argmax.
        expected, rows = forward_logprobs(model, prompt, r.token_ids)
        assert r.logprobs == pytest.approx(expected, abs=1e-4)
        assert rows.argmax(-1).tolist() == r.token_ids
    assert any(
        g.finish_reason == "stop" and g.token_ids[-1] == tokenizer.eos_token_id for g in remote
    )


def test_sampled_logprobs_carry_the_temperature(server, tiny):
    model, tokenizer = tiny
    prompt = chat_prompt(tokenizer, TASKS[0])
    backend = OpenAIBackend(server[1] + "/v1", "tiny")  # the OpenAI client's form of the URL
    out = backend.generate([prompt, prompt], max_new_tokens=12, temperature=0.7)
    for generation in out:
        assert len(generation.token_ids) == len(generation.logprobs) >= 1
        expected, _ = forward_logprobs(model, prompt, generation.token_ids, temperature=0.7)
        assert generation.logprobs == pytest.approx(expected, abs=1e-4)


def test_n_choices_usage_and_text(server, tiny):
    _, tokenizer = tiny
    body = {"model": "tiny", "prompt": "3+5+8+2", "n": 3, "max_tokens": 6, "seed": 1}
    body |= {"logprobs": 2}
    answer = httpx.post(f"{server[1]}/v1/completions", json=body).json()
    choices = answer["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    # The character tokenizer: "3+5+8+2" is 7 tokens, counted once however many choices.
    assert answer["usage"]["prompt_tokens"] == 7
    lengths = [len(c["logprobs"]["tokens"]) for c in choices]
    assert all(1 <= n <= 6 for n in lengths)
    assert answer["usage"]["completion_tokens"] == sum(lengths)
    assert answer["usage"]["total_tokens"] == 7 + sum(lengths)
    for choice in choices:
        logprobs = choice["logprobs"]
        ids = tokenizer.convert_tokens_to_ids(logprobs["tokens"])
        assert choice["text"] == tokenizer.decode(ids, skip_special_tokens=True)
        for token, logprob, top in zip(
            logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
        ):
            # The two most likely tokens, and the chosen one (one of them, or a third).
            assert 2 <= len(top) <= 3 and top[token] == pytest.approx(logprob)
            assert max(top.values()) >= logprob


def test_token_id_prompts_and_stop_strings(server, tiny):
    _, tokenizer = tiny
    url = f"{server[1]}/v1/completions"
    greedy = {"max_tokens": 20, "temperature": 0, "logprobs": 0}
    ids = chat_prompt(tokenizer, TASKS[0])
    text_prompt = tokenizer.decode(ids)  # the chat template's text, special tokens included
    by_text = httpx.post(url, json={"prompt": text_prompt, **greedy}).json()["choices"][0]
    by_ids = httpx.post(url, json={"prompt": ids, **greedy}).json()["choices"][0]
    assert by_ids == by_text
    text = by_text["text"]
    assert len(text) >= 4
    stop = text[2:4]
    cut = httpx.post(url, json={"prompt": ids, "stop": [stop], **greedy}).json()["choices"][0]
    first = text.find(stop)  # the stop string may occur before position 2
    # One character per token: the text ends before the stop string, the tokens include it.
    assert cut["text"] == text[:first]
    assert cut["logprobs"]["tokens"] == by_text["logprobs"]["tokens"][: first + 2]
    assert cut["finish_reason"] == "stop"


def test_chat_round_trip(server, tiny):
    model, tokenizer = tiny
    conversation = [{"role": "user", "content": TASKS[1]}]
    prompt = encode_prompt(tokenizer, conversation, enable_thinking=True)
    direct = HFBackend(model, tokenizer).generate([prompt], 40, temperature=0.0)[0]
    answer = httpx.post(
        f"{server[1]}/v1/chat/completions",
        json={"messages": conversation, "max_tokens": 40, "temperature": 0, "logprobs": True},
    ).json()
    choice = answer["choices"][0]
    expected_text = tokenizer.decode(direct.token_ids, skip_special_tokens=True)
    assert choice["message"] == {"role": "assistant", "content": expected_text}
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    assert answer["usage"]["completion_tokens"] == len(direct.token_ids)
    assert [e["logprob"] for e in choice["logprobs"]["content"]] == pytest.approx(
        direct.logprobs, abs=1e-5
    )
    results = OpenAIBackend(server[1], "tiny").chat([conversation] * 2, 40, temperature=0.0)
    assert results == [ChatResult(expected_text, len(direct.token_ids))] * 2


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        ("completions", {"prompt": "1+2", "max_tokens": 0}, 400, "max_tokens", None),
        ("completions", {"prompt": []}, 400, "prompt", None),
        ("completions", {"prompt": [1, 10**6]}, 400, "prompt", None),
        ("completions", {"prompt": "1+2", "temperature": 3}, 400, "temperature", None),
        ("completions", {"prompt": "1+2", "max_tokens": 2000}, 400, "max_tokens",
         "context_length_exceeded"),
        ("completions", {"prompt": "1+2", "model": "gpt-4"}, 404, "model", "model_not_found"),
        ("completions", {"prompt": "1+2", "stream": True}, 400, None, None),
        ("completions", {"max_tokens": 3}, 400, "prompt", None),
        ("chat/completions", {"messages": []}, 400, "messages", None),
        ("chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages", None),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "chat_template_kwargs": {"foo": 1}}, 400, "chat_template_kwargs",
         None),
    ],
)  # fmt: skip
def test_malformed_requests_get_openai_error_bodies(server, path, body, status, param, code):
    response = httpx.post(f"{server[1]}/v1/{path}", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)


def test_a_body_that_is_not_json(server):
    response = httpx.post(
        f"{server[1]}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("the request body is not valid JSON")


def test_the_server_answers_while_a_generation_waits_for_the_model(server):
    app, url = server
    lock = app.state.served.lock
    answers: list[httpx.Response] = []
    with lock:  # the model is busy
        pending = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/v1/completions", json={"prompt": "1+2", "max_tokens": 2})
            )
        )
        pending.start()
        time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=2).json() == {"status": "ok"}
        assert httpx.get(f"{url}/v1/models", timeout=2).status_code == 200
        assert answers == []
    pending.join(timeout=10)
    assert answers[0].status_code == 200


def test_the_backend_names_what_failed(server, dead_url):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        OpenAIBackend(dead_url, "tiny", retries=2, backoff=0.05).generate([[1, 2]], 2)
    message = str(err.value)
    assert dead_url in message and "POST /v1/completions" in message and "3 tries" in message
    assert "\n" not in message
    assert time.monotonic() - started >= 0.05 + 0.1  # the two back-offs were waited
    with pytest.raises(ModelLoadError, match="HTTP 404: The model `Qwen3-8B` does not exist"):
        OpenAIBackend(server[1], "Qwen3-8B").chat([[{"role": "user", "content": "1"}]], 2)


def test_a_server_error_is_retried(serve_app, tiny):
    calls: list[int] = []
    app = FastAPI()

    @app.post("/v1/completions")
    def flaky(body: dict) -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first call fails")  # an HTTP 500
        tokens = ["token_id:5", "token_id:0"]
        choice = {"index": 0, "finish_reason": "stop", "text": "x"}
        choice["logprobs"] = {"tokens": tokens, "token_logprobs": [-0.5, -0.25]}
        return {"choices": [choice]}

    live = serve_app(app)
    out = OpenAIBackend(live.url, "m", backoff=0.01).generate([[1]], 4)
    assert len(calls) == 2
    assert (out[0].token_ids, out[0].logprobs, out[0].finish_reason) == (
        [5, 0],
        [-0.5, -0.25],
        "stop",
    )
