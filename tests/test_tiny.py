"""The embedded tiny default: built locally, a Qwen3 of a few million parameters, warm-started
on all three roles so that its own critique already helps before any RL."""

import json

import torch
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
