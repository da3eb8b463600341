"""The critic spec: one parser for `algo.critic`, `eval --critic` and `critique-compare`, and
the critic behind an OpenAI-compatible server, checked against the same model run locally."""

import random
from dataclasses import replace

import pytest
from session_settings import session_settings

import environments
from icrl_cli.components import Policy, build_critic, load_model
from icrl_cli.config import ConfigError, resolve
from icrl_cli.generation.hf import HFBackend
from icrl_cli.generation.openai import ChatResult
from icrl_cli.models import ModelLoadError
from icrl_cli.rollout.critics import (
    ExpertCritic,
    HTTPCritic,
    ModelCritic,
    connect_http_critic,
    parse_critic_spec,
)
from icrl_cli.rollout.metrics import session_metrics
from icrl_cli.rollout.prompts import Prompts, critic_messages
from icrl_cli.rollout.samples import Sample
from icrl_cli.tiny import TINY_PROMPTS

PROMPTS = Prompts(**TINY_PROMPTS)


@pytest.mark.parametrize(
    ("text", "kind", "model", "url"),
    [
        ("self", "self", None, None),
        (" rule ", "rule", None, None),
        ("expert", "expert", None, None),
        ("Qwen/Qwen3-8B", "model", "Qwen/Qwen3-8B", None),
        ("tiny", "model", "tiny", None),
        ("http://127.0.0.1:8000/v1#Qwen3-32B", "http", "Qwen3-32B", "http://127.0.0.1:8000/v1"),
        ("https://host/v1/#org/m", "http", "org/m", "https://host/v1"),
    ],
)
def test_specs_parse(text, kind, model, url):
    spec = parse_critic_spec(text)
    assert (spec.kind, spec.model, spec.url, spec.text) == (kind, model, url, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8000/v1#",
        "ftp://h/v1#m",
        "http://#m",
        "leaky:",
        "leaky:half",
        "leaky:1.5",
        "leaky:-0.1",
    ],
)
def test_ill_formed_specs_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_critic_spec(text)


@pytest.mark.parametrize(
    ("text", "leak"), [("leaky:0.25", 0.25), ("leaky:0", 0.0), ("leaky:1", 1.0)]
)
def test_leaky_specs_are_expert_critics_with_a_leak(text, leak):
    spec = parse_critic_spec(text)
    assert (spec.kind, spec.leak, spec.model) == ("expert", leak, None)


def sum_attempts(text, n):
    """``n`` failed attempts, ``text`` each, at the synthetic tasks 7+3+5+2 (answer 17)."""
    task = environments.Task("t", "7+3+5+2", "17", {"operands": [7, 3, 5, 2]})
    attempt = Sample("t", 0, 1, "solver", [], [], [], [], [], reward=0.0, text=text)
    return [(task, attempt)] * n


def test_the_expert_critic_names_the_first_wrong_running_sum():
    env = environments.make("math", data="synthetic", digits=1, terms=4)
    critiques = ExpertCritic(PROMPTS).critique(env, sum_attempts("7+3=10, 10+5=16. \\boxed{18}", 3))
    assert critiques == [("10+5=15", None)] * 3


def test_the_leaky_critic_hands_over_the_answer_as_often_as_asked_and_replays_on_resume():
    env = environments.make("math", data="synthetic", digits=1, terms=4)
    attempts = sum_attempts("\\boxed{20}", 2000)
    random.seed(11)
    texts = [text for text, _ in ExpertCritic(PROMPTS, leak=0.3).critique(env, attempts)]
    assert set(texts) == {"7+3=10", "no:17"}  # the hint, or the rule critic's text with the answer
    leaks = texts.count("no:17")
    # Binomial(2000, 0.3): mean 600, sd 20.5; 4 sd either side.
    assert 518 <= leaks <= 682
    random.seed(11)  # what a checkpoint restores
    assert [t for t, _ in ExpertCritic(PROMPTS, leak=0.3).critique(env, attempts)] == texts
    assert {t for t, _ in ExpertCritic(PROMPTS, leak=1.0).critique(env, attempts[:50])} == {"no:17"}


def test_the_expert_critic_needs_an_environment_with_expert_critiques(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "7+3+5+2", "answer": "17"}\n')
    env = environments.make("math", data=str(rows))
    task = env.tasks(env.splits()[0])[0]
    _, attempt = sum_attempts("\\boxed{20}", 1)[0]
    with pytest.raises(environments.EnvError, match="has no expert critiques"):
        ExpertCritic(PROMPTS).critique(env, [(task, attempt)])


class ScriptedChat:
    def __init__(self, text, tokens):
        self.text, self.tokens, self.sent = text, tokens, []

    def chat(self, messages, max_tokens, temperature=1.0, top_p=1.0):
        self.sent.append((messages, max_tokens))
        return [ChatResult(self.text, self.tokens) for _ in messages]


def failed_attempts(env, n):
    from icrl_cli.rollout.samples import Sample

    tasks = env.tasks("test")[:n]
    attempts = [
        Sample(t.id, 0, 1, "solver", [], [], [1], [1], [0.0], reward=0.0, text="\\boxed{0}")
        for t in tasks
    ]
    return list(zip(tasks, attempts, strict=True))


def test_the_http_critic_sends_the_critic_messages_and_counts_server_tokens():
    env = environments.make("math")
    pairs = failed_attempts(env, 2)
    client = ScriptedChat("think<c>3+5=8</c>", 7)
    settings = session_settings(sessions_per_query=1, max_rounds=2, critic_max_new_tokens=24)
    critic = HTTPCritic(client, "http://h/v1", PROMPTS, settings)
    results = critic.critique(env, pairs)
    messages, max_tokens = client.sent[0]
    assert max_tokens == 24
    assert messages[0] == critic_messages(
        pairs[0][0], env.render_attempt(pairs[0][0], "\\boxed{0}"), 0.0, PROMPTS
    )
    assert [text for text, _ in results] == ["3+5=8", "3+5=8"]
    record = results[0][1]
    assert record.role == "critic" and not record.trainable and record.response_ids == []
    assert record.completion_tokens == 7
    record.reward = 1.0
    assert session_metrics([record], "oracle")["critic/tokens_mean"] == 7


def test_a_server_critic_writes_what_the_local_critic_writes(tiny_dir, serve_app):
    """Greedy, the tiny model behind `icrl serve` and the same model run locally write the same
    critiques with the same token counts: the server's chat template is the local one."""
    from icrl_cli.server.serve import ServedModel, create_app

    url = serve_app(create_app(ServedModel("tiny", *load_model("tiny", device="cpu")))).url + "/v1"
    env = environments.make("math")
    pairs = failed_attempts(env, 3)
    settings = session_settings(
        sessions_per_query=1, max_rounds=2, critic_max_new_tokens=24, temperature=0.0
    )
    model, tokenizer = load_model("tiny", device="cpu")
    backend = HFBackend(model.eval(), tokenizer, batch_size=1)
    remote = connect_http_critic(parse_critic_spec(f"{url}#tiny"), PROMPTS, settings)
    local = ModelCritic(backend, tokenizer, PROMPTS, settings, trainable=False)
    over_http, here = remote.critique(env, pairs), local.critique(env, pairs)
    assert [t for t, _ in over_http] == [t for t, _ in here]
    assert [s.completion_tokens for _, s in over_http] == [len(s.response_ids) for _, s in here]
    assert [s.text for _, s in over_http] == [s.text for _, s in here]
    # A critique budget the server's context cannot hold fails when the critic is made.
    too_long = replace(settings, critic_max_new_tokens=1024)
    with pytest.raises(ModelLoadError, match="maximum context length is 1024 tokens"):
        connect_http_critic(parse_critic_spec(f"{url}#tiny"), PROMPTS, too_long)


def test_a_dead_server_or_unknown_model_fails_when_the_critic_is_made(dead_url, random_tiny):
    model, tokenizer = random_tiny
    backend = HFBackend(model, tokenizer)
    settings = session_settings(sessions_per_query=1)
    policy = Policy(model, tokenizer, backend, PROMPTS, settings)
    icrl = resolve("tiny-math", ['algo.name="icrl"'])
    with pytest.raises(ModelLoadError, match="did not answer"):
        build_critic(icrl, policy, parse_critic_spec(f"{dead_url}/v1#tiny"))
    with pytest.raises(ModelLoadError, match="critic 'no-such-model'"):
        build_critic(icrl, policy, parse_critic_spec("no-such-model"))
