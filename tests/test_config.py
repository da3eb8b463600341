"""Configuration: presets, overrides, and one-line errors for unknown keys and values."""

import pytest

from icrl_cli.config import ConfigError, RunConfig, list_presets, parse_override, resolve


def test_presets_are_bundled_and_valid():
    presets = list_presets()
    assert "tiny-math" in presets
    for name in presets:
        assert isinstance(resolve(name, []), RunConfig)


def test_overrides_are_typed_by_toml():
    assert parse_override("train.lr=1e-5") == (["train", "lr"], 1e-5)
    assert parse_override("train.steps=7") == (["train", "steps"], 7)
    assert parse_override("model.enable_thinking=true") == (["model", "enable_thinking"], True)
    assert parse_override("model.name=Qwen/Qwen3-4B") == (["model", "name"], "Qwen/Qwen3-4B")
    config = resolve("tiny-math", ["train.steps=7", "train.save_every=3", "algo.eps_high=0.3"])
    assert (config.train.steps, config.train.save_every, config.algo.eps_high) == (7, 3, 0.3)


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        resolve("tiny-math", ["train.stepz=3"])
    message = str(err.value)
    assert "train.stepz" in message and "save_every" in message and "steps" in message
    assert "\n" not in message


def test_unknown_algorithm_and_preset_name_the_choices():
    with pytest.raises(ConfigError, match="grpo.*icrl.*critique-grpo"):
        resolve("tiny-math", ["algo.name=ppo"])
    with pytest.raises(ConfigError, match="tiny-math"):
        resolve("no-such-preset", [])


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, RunConfig.__base__):
                walk(annotation)
            else:
                assert field.description, f"{model.__name__}.{name} has no description"

    walk(RunConfig)
