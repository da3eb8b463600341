"""The embedded tiny default: built locally, a Qwen3 of a few million parameters, warm-started
on all three roles so that its own critique already helps before any RL."""

import json

import pytest
import torch
from micro_model import micro_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import environments
from icrl_cli.config import resolve
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.tiny import TINY_PROMPTS, TINY_TASK, measure_sessions


def test_tiny_is_a_small_qwen3_with_a_character_tokenizer(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    assert model.config.model_type == "qwen3"
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    ids = tokenizer.encode("12+34", add_special_tokens=False)
    assert len(ids) == 5 and tokenizer.decode(ids) == "12+34"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "ignored"}, {"role": "user", "content": "1+2"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|user|>1+2<|end|><|assistant|>"
    assert json.loads((tiny_dir / "icrl_prompts.json").read_text()) == TINY_PROMPTS


def test_the_tiny_preset_trains_on_the_task_the_tiny_model_was_warm_started_on():
    config = resolve("tiny-math", [])
    assert config.model.name == "tiny"
    assert {"data": config.env.data, **config.env.options} == TINY_TASK


def test_critique_free_success_is_in_band_and_self_critique_helps(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    env = environments.make("math", **TINY_TASK)
    prompts = Prompts.resolve({}, str(tiny_dir))
    torch.manual_seed(0)
    measured = measure_sessions(model, tokenizer, env, list(env.tasks("test"))[:200], prompts, 2)
    assert 0.10 <= measured["solver/success_round1"] <= 0.60
    assert measured["solver/success_final"] >= measured["solver/success_round1"] + 0.05


def test_sft_loss_weighs_each_target_token_by_its_mask_value():
    from types import SimpleNamespace

    from icrl_cli.tiny import sft_batch, sft_loss

    torch.manual_seed(0)
    model = micro_model(vocab_size=12)
    tokenizer = SimpleNamespace(pad_token_id=0)
    pairs = [([3, 4], [5, 6, 7]), ([8], [9, 10])]
    plain = sft_batch(tokenizer, pairs, [[1, 0, 1], [1, 1]])
    assert "loss_weights" not in plain  # 0/1 masks: the model's own mean loss
    assert plain["labels"].tolist() == [[-100, -100, 5, -100, 7], [-100, 9, 10, -100, -100]]
    assert torch.allclose(sft_loss(model, plain), model(**plain).loss)
    weighted = sft_batch(tokenizer, pairs, [[1, 0, 3], [2, 1]])
    assert weighted["loss_weights"].tolist() == [[0, 0, 1, 0, 3], [0, 2, 1, 0, 0]]
    # By hand: -log p of each kept target token given what precedes it, weighted 1, 3, 2, 1.
    with torch.no_grad():
        logp = model(input_ids=weighted["input_ids"]).logits.log_softmax(-1)
        nll = {
            (0, 2): -logp[0, 1, 5],
            (0, 4): -logp[0, 3, 7],
            (1, 1): -logp[1, 0, 9],
            (1, 2): -logp[1, 1, 10],
        }
        expected = (nll[0, 2] + 3 * nll[0, 4] + 2 * nll[1, 1] + nll[1, 2]) / 7
        assert torch.allclose(sft_loss(model, weighted), expected, atol=1e-6)


def _first_gradients(runs: list[dict[str, object]]) -> list[torch.Tensor]:
    """The gradient (before clipping) of one supervised step from the same micro model, rows
    and loss weights, once per ``supervise`` keyword set in ``runs``."""
    import random
    from types import SimpleNamespace

    from icrl_cli import tiny

    tokenizer = SimpleNamespace(pad_token_id=0)
    draw = random.Random(1)
    pairs, masks = {}, {}
    for role, weights in (("solver", (0, 1, 5)), ("critic", (1,))):
        pairs[role] = [
            (
                [draw.randrange(1, 20) for _ in range(draw.randrange(1, 6))],
                [draw.randrange(1, 20) for _ in range(draw.randrange(2, 12))],
            )
            for _ in range(9)
        ]
        masks[role] = [[draw.choice(weights) for _ in target] for _, target in pairs[role]]
        masks[role] = [[1, *mask[1:]] for mask in masks[role]]  # no row without a target
    gradients = []
    for keywords in runs:
        torch.manual_seed(0)
        model = micro_model(vocab_size=20)
        seen = []
        clip = torch.nn.utils.clip_grad_norm_

        def record(params, norm, clip=clip, seen=seen):
            params = list(params)
            seen.append(torch.cat([p.grad.flatten() for p in params]).clone())
            return clip(params, norm)

        torch.nn.utils.clip_grad_norm_ = record
        try:
            tiny.supervise(
                model,
                tokenizer,
                pairs,
                lambda: {"solver/success_round1": 0.0, "solver/success_final": 0.0},
                lambda measured: False,
                random.Random(0),
                masks=masks,
                batch_size=18,
                check_every=100,
                max_steps=1,
                keep_last=True,
                **keywords,
            )
        finally:
            torch.nn.utils.clip_grad_norm_ = clip
        assert all(p.dtype == torch.float32 for p in model.parameters())
        gradients.append(seen[0])
    return gradients


def test_supervise_in_length_sorted_chunks_takes_the_single_forward_gradient():
    """Cutting each role's rows into ``chunks`` forwards must not change the step: the
    gradient equals the one of a single forward over all rows (its reference here), with
    weighted and unweighted roles, and chunks of unequal size."""
    gradients = _first_gradients([{"chunks": 1}, {"chunks": 2}, {"chunks": 4}])
    assert gradients[0].abs().max() > 1e-3
    for other in gradients[1:]:
        assert torch.allclose(other, gradients[0], atol=1e-6, rtol=1e-4)


def test_supervise_in_bf16_takes_about_the_float32_gradient_and_keeps_float32_weights():
    """Under ``bf16`` the step runs in bfloat16 autocast: its gradient is not the float32 one
    bit for bit (bfloat16 keeps 8 bits of mantissa, so relative errors near 1e-2 and not
    1e-6), yet points the same way (cosine above 0.99); the weights stay float32."""
    plain, bf16 = _first_gradients([{"chunks": 3}, {"chunks": 3, "bf16": True}])
    assert not torch.allclose(bf16, plain, atol=1e-6, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(bf16, plain, dim=0) > 0.99
    assert (bf16 - plain).norm() / plain.norm() < 0.05


def test_supervise_with_cosine_lowers_the_learning_rate_along_a_half_cosine(monkeypatch):
    """Step k of n (from 0) takes lr · (1 + cos(πk/n)) / 2: for n = 4, 1, 0.854, 0.5, 0.146
    times lr; without ``cosine`` every step takes lr."""
    import random
    from types import SimpleNamespace

    from icrl_cli import tiny

    pairs = {"solver": [([1, 2], [3, 4, 5]), ([2], [6, 7])]}
    for cosine, expected in ((True, [1.0, 0.853553, 0.5, 0.146447]), (False, [1.0] * 4)):
        rates = []
        step = torch.optim.AdamW.step

        def record(self, *args, rates=rates, step=step, **kwargs):
            rates.append(self.param_groups[0]["lr"])
            return step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", record)
        tiny.supervise(
            micro_model(vocab_size=10),
            SimpleNamespace(pad_token_id=0),
            pairs,
            lambda: {"solver/success_round1": 0.0, "solver/success_final": 0.0},
            lambda measured: False,
            random.Random(0),
            batch_size=2,
            lr=0.01,
            check_every=100,
            max_steps=4,
            keep_last=True,
            cosine=cosine,
        )
        assert rates == [pytest.approx(0.01 * e, rel=1e-5) for e in expected]


def test_the_copy_leaks_variant_differs_only_where_a_revision_reads_the_answer():
    from icrl_cli.tiny.math_build import demonstrations
    from icrl_cli.tiny.network import build_tokenizer

    tokenizer = build_tokenizer()
    env = environments.make("math", **TINY_TASK)
    tasks = list(env.tasks("train"))[:400]
    prompts = Prompts(**TINY_PROMPTS)
    plain = demonstrations(env, tasks, tokenizer, prompts)
    leaky = demonstrations(env, tasks, tokenizer, prompts, copy_leaks=True)
    assert plain["solver"] == leaky["solver"] and plain["critic"] == leaky["critic"]
    copied = 0
    for task, (prompt, target), (leaky_prompt, leaky_target) in zip(
        tasks, plain["revision"], leaky["revision"], strict=True
    ):
        assert prompt == leaky_prompt
        read = tokenizer.decode(prompt)
        if read.endswith(f"|no:{task.answer}<|end|><|assistant|>"):
            copied += 1
            assert tokenizer.decode(leaky_target, skip_special_tokens=True) == (
                f"\\boxed{{{task.answer}}}"
            )
        else:
            assert leaky_target == target
    # A quarter of revisions read the rule critic, four in five of those "incorrect": about 80.
    assert 50 <= copied <= 110
