"""Configuration: presets, overrides, and one-line errors for unknown keys and values."""

from typing import get_args

import pytest

from icrl_cli.config import (
    AlgoConfig,
    ConfigError,
    RunConfig,
    list_presets,
    load_run_config,
    parse_override,
    resolve,
    to_toml,
)
from icrl_cli.trainer.algorithms import (
    CALIBRATION_WEIGHTS,
    CRITIC_REWARDS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
)


def test_presets_are_bundled_and_survive_a_round_trip_through_config_toml(tmp_path):
    presets = list_presets()
    assert {"tiny-math", "tiny-household", "qwen3-4b-math"} <= set(presets)
    for name in presets:
        config = resolve(name, [])
        assert config.preset == name
        (tmp_path / "config.toml").write_text(to_toml(config))
        assert load_run_config(tmp_path / "config.toml") == config, name


def test_calibration_names_choose_the_three_revision_settings():
    def chosen(*overrides):
        algo = resolve("tiny-math", list(overrides)).algo
        return algo.token_weight, algo.revision_loss, algo.revision_context

    assert chosen() == ("token_tis", "clipped", "critique_free")
    assert chosen('algo.calibration="none"') == ("none", "clipped", "critique_free")
    assert chosen('algo.calibration="seq_geomean"') == ("seq_geomean", "clipped", "critique_free")
    assert chosen('algo.calibration="luffy_shaping"') == ("none", "shaped", "critique_free")
    assert chosen('algo.calibration="keep_critique"') == ("none", "clipped", "critique")
    # The later setting wins, whichever of the two names it.
    later = chosen('algo.calibration="keep_critique"', 'algo.token_weight="token_tis"')
    assert later == ("token_tis", "clipped", "critique")
    assert chosen('algo.token_weight="icepop_mask"', 'algo.calibration="none"')[0] == "none"
    # Critique-GRPO's defaults, unless the user chose otherwise.
    assert chosen('algo.name="critique-grpo"') == ("none", "shaped", "critique_free")
    assert chosen('algo.name="critique-grpo"', 'algo.calibration="token_tis"') == (
        "token_tis",
        "clipped",
        "critique_free",
    )
    with pytest.raises(ConfigError, match="token_tis, none, seq_geomean, icepop_mask, luffy"):
        resolve("tiny-math", ['algo.calibration="nope"'])


def test_allowed_values_are_the_registries():
    fields = AlgoConfig.model_fields
    assert get_args(fields["token_weight"].annotation) == tuple(CALIBRATION_WEIGHTS)
    assert get_args(fields["revision_loss"].annotation) == tuple(POLICY_LOSSES)
    assert get_args(fields["loss_aggregation"].annotation) == tuple(LOSS_AGGREGATIONS)
    assert get_args(fields["critic_reward"].annotation) == tuple(CRITIC_REWARDS)


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


@pytest.mark.parametrize("preset", sorted(list_presets()))
@pytest.mark.parametrize("algo", ["grpo", "icrl", "critique-grpo"])
def test_every_preset_yields_a_faithful_algorithm(preset, algo):
    chosen = resolve(preset, [f'algo.name="{algo}"']).algo
    assert chosen.name == algo
    if algo == "critique-grpo":  # whatever the preset set for ICRL
        defined = (
            chosen.critic,
            chosen.critic_gate,
            chosen.train_critic,
            chosen.token_weight,
            chosen.revision_loss,
            chosen.normalize_std,
            chosen.max_rounds,
        )
        assert defined == ("rule", "ungated", False, "none", "shaped", False, 2)
    else:  # the preset's own settings stand
        assert chosen.token_weight == resolve(preset, []).algo.token_weight


def test_a_setting_that_contradicts_the_algorithm_is_refused_and_others_are_kept():
    with pytest.raises(ConfigError, match="algo.critic = 'self' contradicts --algo critique-grpo"):
        resolve("qwen3-4b-math", ['algo.name="critique-grpo"', 'algo.critic="self"'])
    with pytest.raises(ConfigError, match="train_critic = True contradicts"):
        resolve("tiny-math", ['algo.name="critique-grpo"', "algo.train_critic=true"])
    kept = resolve(
        "qwen3-4b-math",
        ['algo.name="critique-grpo"', 'algo.critic="Qwen3-8B"', 'algo.calibration="token_tis"'],
    ).algo
    assert (kept.critic, kept.token_weight, kept.revision_loss) == (
        "Qwen3-8B",
        "token_tis",
        "clipped",
    )


@pytest.mark.parametrize("override", ["train.lr=inf", "algo.w_max=nan", "algo.eps_high=-inf"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match="finite number"):
        resolve("tiny-math", [override])
