"""Where a run's configuration comes from: bundled presets, TOML files and ``--set
dotted.key=value`` overrides, validated into a RunConfig with one readable error; and back to
TOML."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from icrl_cli.config.schema import (
    ALGORITHM_DEFINITIONS,
    CONTRADICTIONS,
    REVISION_DEFAULTS,
    ConfigError,
    RunConfig,
)


def preset_dir() -> Path:
    """The folder of bundled presets (the top-level `presets/`, installed as package data)."""
    return Path(str(resources.files("presets")))


def list_presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(preset_dir().glob("*.toml"))}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (see `icrl presets`) or by path to a TOML file, as a plain dict."""
    presets = list_presets()
    if name_or_path in presets:
        data = _read_toml(presets[name_or_path])
        data.setdefault("preset", name_or_path)
        return data
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        data = _read_toml(path)
        data.setdefault("preset", path.stem)
        return data
    raise ConfigError(
        f"unknown preset '{name_or_path}'; choose one of: {', '.join(presets)} (or a .toml path)"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (['a', 'b'], value); the value is TOML if it parses, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got '{text}'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{'.'.join(keys)}': '{k}' is not a section")
    if keys == ["algo", "calibration"]:
        # The alias replaces the three settings it names, wherever they came from before.
        for key in ("token_weight", *REVISION_DEFAULTS):
            node.pop(key, None)
    node[keys[-1]] = value


def _valid_keys(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    for part in path[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return sorted([*model.model_fields, *getattr(model, "ALIASES", ())])


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a dict into a RunConfig; the first problem becomes one readable ConfigError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = first["loc"]
        key = ".".join(str(p) for p in loc)
        if first["type"] == "extra_forbidden":
            valid = _valid_keys(RunConfig, loc)
            raise ConfigError(
                f"unknown config key '{key}'; valid keys here: {', '.join(valid)}"
            ) from None
        if first["type"] == "literal_error":
            raise ConfigError(f"invalid value for '{key}': {first['msg']}") from None
        where = f"'{key}'" if key else "config"
        raise ConfigError(f"invalid value for {where}: {first['msg']}") from None


def with_overrides(data: dict[str, Any], overrides: list[str]) -> RunConfig:
    """Apply ``--set`` overrides to a config dict and validate the result. An algorithm named by
    an override (``--algo``) takes its defining settings over the preset's (a preset written
    for ICRL still yields a faithful Critique-GRPO); an override that contradicts them is
    refused."""
    given: set[str] = set()
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
        given.add(".".join(keys))
    algo = data.get("algo")
    if "algo.name" in given and isinstance(algo, dict):
        define_algorithm(algo, {k.removeprefix("algo.") for k in given if k.startswith("algo.")})
    return build_config(data)


def define_algorithm(algo: dict[str, Any], chosen: set[str]) -> None:
    """``algo`` with its algorithm's defining settings, except those in ``chosen`` (given as
    overrides), which must not contradict the algorithm."""
    name = algo.get("name")
    for key, bad in CONTRADICTIONS.get(name, {}).items():
        if key in chosen and algo.get(key) == bad:
            raise ConfigError(
                f"algo.{key} = {bad!r} contradicts --algo {name} (a frozen critic, never trained)"
            )
    if "calibration" in chosen:  # the alias names three of the settings
        chosen = chosen | {"token_weight", "revision_loss", "revision_context"}
    for key, value in ALGORITHM_DEFINITIONS.get(name, {}).items():
        if key not in chosen:
            algo[key] = value


def resolve(preset: str | None, overrides: list[str]) -> RunConfig:
    return with_overrides(load_preset(preset) if preset else {}, overrides)


def to_toml(config: RunConfig) -> str:
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def load_run_config(path: Path) -> RunConfig:
    return build_config(_read_toml(path))
