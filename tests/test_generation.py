"""The HF backend: log-probs match an independent forward pass; stops; batching is invisible."""

import pytest
import torch

from icrl_cli.generation.base import Sampling, nucleus_filter
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.batch import collate
from icrl_cli.trainer.logprobs import response_logprobs


def chat_prompts(tokenizer, texts=("12+34", "5+6", "99+1+7")):
    """Each text as a user turn in the model's chat template, token ids ready to sample from."""
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        for t in texts
    ]


def _full_forward_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(response)]


def test_logprobs_match_a_full_forward(random_tiny):
    model, tokenizer = random_tiny
    backend = HFBackend(model, tokenizer)
    prompts = chat_prompts(tokenizer)
    torch.manual_seed(1)
    outs = backend.generate(prompts, max_new_tokens=8, temperature=1.0)
    for prompt, out in zip(prompts, outs, strict=True):
        assert len(out.token_ids) == len(out.logprobs) >= 1
        expected = _full_forward_logprobs(model, prompt, out.token_ids)
        assert out.logprobs == pytest.approx(expected, abs=1e-4)


def test_temperature_scales_the_logprobs(random_tiny):
    model, tokenizer = random_tiny
    prompt = chat_prompts(tokenizer)[0]
    torch.manual_seed(2)
    out = HFBackend(model, tokenizer).generate([prompt], max_new_tokens=4, temperature=0.5)[0]
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / 0.5
    logp = torch.log_softmax(logits, -1)
    expected = [logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(out.token_ids)]
    assert out.logprobs == pytest.approx(expected, abs=1e-4)


def _bias_token(model, token, value):
    """Add ``value`` to one token's logit at every position (a forward hook on the LM head)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token] = value
    return model.lm_head.register_forward_hook(lambda _module, _inp, out: out + bias)


def test_sampling_is_not_truncated_to_the_top_k(random_tiny):
    """Nearly flat, all-distinct logits (EOS ruled out): 528 draws reach far past 50 distinct
    tokens, which generate's default top-k (used when none is set) would never allow, and each
    log-prob is that of the full softmax."""
    model, tokenizer = random_tiny
    vocab, eos = model.config.vocab_size, tokenizer.eos_token_id
    logits = -0.01 * torch.arange(vocab, dtype=torch.float32)
    logits[eos] = -1e9
    hook = model.lm_head.register_forward_hook(
        lambda _module, _inp, out: logits.expand_as(out).clone()
    )
    torch.manual_seed(4)
    outs = HFBackend(model, tokenizer).generate(chat_prompts(tokenizer) * 16, max_new_tokens=11)
    hook.remove()
    drawn = {t for o in outs for t in o.token_ids}
    assert len(drawn) > 80
    full = torch.log_softmax(logits, -1)
    for o in outs:
        assert o.logprobs == pytest.approx(full[o.token_ids].tolist(), abs=1e-4)


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_others(random_tiny):
    """EOS made likely: rows stop at different steps and leave the batch and its KV cache; every
    response's log-probs must still be those of a full forward of its own prompt."""
    model, tokenizer = random_tiny
    prompts = chat_prompts(tokenizer) * 4
    hook = _bias_token(model, tokenizer.eos_token_id, 4.0)
    torch.manual_seed(5)
    outs = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=10)
    lengths = {len(o.token_ids) for o in outs}
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.logprobs == pytest.approx(
            _full_forward_logprobs(model, prompt, out.token_ids), abs=1e-4
        )
    hook.remove()
    assert len(lengths) >= 3


def test_nucleus_keeps_the_smallest_set_that_reaches_top_p():
    scores = torch.tensor([[0.2, 0.5, 0.3]]).log()
    kept = nucleus_filter(scores, 0.75).isfinite()
    assert kept.tolist() == [[False, True, True]]
    kept = nucleus_filter(scores, 0.45).isfinite()
    assert kept.tolist() == [[False, True, False]]
    assert nucleus_filter(scores, 1.0).isfinite().all()


def test_stops_at_eos_or_at_the_token_budget(random_tiny):
    model, tokenizer = random_tiny
    eos = tokenizer.eos_token_id
    backend = HFBackend(model, tokenizer)
    prompts = chat_prompts(tokenizer)
    hook = _bias_token(model, eos, 100.0)
    outs = backend.generate(prompts, max_new_tokens=6)
    hook.remove()
    assert all(o.token_ids == [eos] and o.finish_reason == "stop" for o in outs)
    hook = _bias_token(model, eos, -1e9)
    outs = backend.generate(prompts, max_new_tokens=5)
    hook.remove()
    assert all(len(o.token_ids) == 5 and o.finish_reason == "length" for o in outs)


def test_batched_greedy_equals_one_at_a_time(random_tiny):
    model, tokenizer = random_tiny
    backend = HFBackend(model, tokenizer)
    prompts = chat_prompts(tokenizer)
    batched = backend.generate(prompts, max_new_tokens=6, temperature=0.0)
    for prompt, out in zip(prompts, batched, strict=True):
        alone = backend.generate([prompt], max_new_tokens=6, temperature=0.0)[0]
        assert out.token_ids == alone.token_ids


def test_training_forward_sees_exactly_the_sampled_tokens(random_tiny):
    model, tokenizer = random_tiny
    prompts = chat_prompts(tokenizer)
    torch.manual_seed(3)
    outs = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=7)
    samples = [
        Sample("q", i, 1, "solver", p, p, o.token_ids, [1] * len(o.token_ids), o.logprobs)
        for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
    ]
    batch = collate(samples, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, entropy = response_logprobs(model, batch, with_entropy=True)
    for row, (p, o) in enumerate(zip(prompts, outs, strict=True)):
        n = len(o.token_ids)
        assert batch.response_ids[row, :n].tolist() == o.token_ids
        assert batch.mask[row].sum().item() == n
        assert logp[row, :n].tolist() == pytest.approx(
            _full_forward_logprobs(model, p, o.token_ids), abs=1e-4
        )
    assert (entropy > 0).all()


@pytest.mark.parametrize(
    ("temperature", "top_p"), [(0.7, 1.0), (1.3, 1.0), (0.7, 0.9), (1.0, 0.5), (0.0, 1.0)]
)
def test_the_trainer_scores_the_distribution_the_sampler_drew_from(random_tiny, temperature, top_p):
    """First attempts (the same context on both sides): the trainer's log-probs under the run's
    temperature and nucleus equal the sampler's to 1e-5 in float32."""
    model, tokenizer = random_tiny
    prompts = chat_prompts(tokenizer) * 3
    torch.manual_seed(6)
    outs = HFBackend(model, tokenizer).generate(
        prompts, max_new_tokens=9, temperature=temperature, top_p=top_p
    )
    samples = [
        Sample("q", i, 1, "solver", p, p, o.token_ids, [1] * len(o.token_ids), o.logprobs)
        for i, (p, o) in enumerate(zip(prompts, outs, strict=True))
    ]
    batch = collate(samples, tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logp, entropy = response_logprobs(
            model, batch, with_entropy=True, sampling=Sampling(temperature, top_p)
        )
    assert torch.isfinite(entropy).all()
    for row, out in enumerate(outs):
        scored = logp[row, : len(out.token_ids)].tolist()
        assert scored == pytest.approx(out.logprobs, abs=1e-5)
    if top_p < 1.0:
        # The nucleus renormalises: some token's probability is above its full-softmax value.
        plain = response_logprobs(model, batch, sampling=Sampling(temperature, 1.0))[0]
        assert (logp - plain)[batch.mask.bool()].max() > 1e-3
