"""The embedded tiny default: built locally, a Qwen3 of a few million parameters, warm-started."""

from transformers import AutoModelForCausalLM, AutoTokenizer

import environments
from icrl_cli.tiny import solver_success


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


def test_warm_start_puts_held_out_success_between_10_and_60_percent(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    env = environments.make("math", data="synthetic")
    success = solver_success(model, tokenizer, env, list(env.tasks("test"))[:200])
    assert 0.10 <= success <= 0.60
