"""The embedded models' cache: shipped weights are copied in, others built once; `icrl models`."""

import json

import pytest
from typer.testing import CliRunner

from icrl_cli.app import app
from icrl_cli.tiny import cache

runner = CliRunner()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake embedded model, "fake-v1": its builds are counted; the cache and the shipped
    directory are under tmp_path."""
    builds = []

    def build(target):
        builds.append(target)
        (target / "config.json").write_text('{"built": true}')

    monkeypatch.setenv("ICRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "SHIPPED", tmp_path / "shipped")
    monkeypatch.setitem(cache.EMBEDDED, "fake", cache.Embedded("fake-v1", build, "2 hours"))
    return builds


def test_a_model_whose_weights_ship_is_copied_into_the_cache_not_built(fake, tmp_path):
    shipped = tmp_path / "shipped" / "fake-v1"
    shipped.mkdir(parents=True)
    (shipped / "config.json").write_text('{"shipped": true}')
    (shipped / "model.safetensors").write_bytes(b"\x01\x02\x03")
    target = cache.tiny_model_dir("fake")
    assert target == tmp_path / "cache" / "fake-v1"
    assert (target / "config.json").read_text() == '{"shipped": true}'
    assert (target / "model.safetensors").read_bytes() == b"\x01\x02\x03"
    assert fake == [] and not list((tmp_path / "cache").glob(".*.partial"))
    # Shipped weights of another version are not this build's: it builds.
    (shipped / "config.json").rename(shipped / "old.json")
    (tmp_path / "cache" / "fake-v1" / "config.json").unlink()
    assert (cache.tiny_model_dir("fake") / "config.json").read_text() == '{"built": true}'
    assert len(fake) == 1


def test_a_model_that_does_not_ship_is_built_once(fake, tmp_path):
    first = cache.tiny_model_dir("fake")
    assert cache.tiny_model_dir("fake") == first
    assert fake == [tmp_path / "cache" / ".fake-v1.partial"]  # built aside, then moved in
    assert (first / "config.json").read_text() == '{"built": true}'


def test_models_list_and_build(fake, tmp_path):
    shipped = tmp_path / "shipped" / "fake-v1"
    shipped.mkdir(parents=True)
    (shipped / "config.json").write_text("{}")
    result = runner.invoke(app, ["models", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "fake" in line]
    assert "shipped" in row and "2 hours" in row and "fake-v1" not in row  # not cached yet
    assert "built on first use" in next(ln for ln in result.output.splitlines() if "smollm2" in ln)
    # A rebuild runs the build even though the weights ship, into the directory named.
    result = runner.invoke(app, ["models", "build", "fake", "--out", str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    assert fake == [tmp_path / "new"] and (tmp_path / "new" / "config.json").is_file()
    for args, says in (
        (["fake", "--out", str(tmp_path / "new")], "exists; name a new directory"),
        (["nope", "--out", str(tmp_path / "n2")], "unknown embedded model 'nope'; choose from"),
    ):
        result = runner.invoke(app, ["models", "build", *args])
        assert result.exit_code == 2 and says in result.output, result.output
    assert len(fake) == 1


def test_every_shipped_model_is_the_current_version_of_an_embedded_one():
    """Weights of an old version would ship as dead weight (and a bumped version would build
    on first use): each directory under shipped/ is an embedded model's current dirname, or
    the first stage tiny-household's build starts from, with the files from_pretrained reads."""
    from icrl_cli.tiny import household_build

    current = {embedded.dirname for embedded in cache.EMBEDDED.values()}
    current.add(household_build.FIRST_STAGE.name)
    shipped = [d for d in cache.SHIPPED.iterdir() if d.is_dir()]
    assert shipped  # tiny-searchqa's weights ship
    for directory in shipped:
        assert directory.name in current, directory.name
        for name in ("config.json", "model.safetensors", "tokenizer.json", "warm_start.json"):
            assert (directory / name).is_file(), directory / name


def test_the_household_build_runs_its_second_stage_from_the_shipped_first(monkeypatch, tmp_path):
    """`icrl models build tiny-household` starts from the shipped v6 (its tokenizer too) and
    runs the second stage: cut here to 2 steps on 3 new worlds, measured on 2 held-out tasks.
    The second stage changes the weights, the tokenizer stays v6's, and the report counts
    the first stage's steps and the second's."""
    import torch
    from safetensors.torch import load_file

    from icrl_cli.tiny import household_build as build

    for name, value in (
        ("SECOND_TASKS", 3),
        ("SECOND_STEPS", 2),
        ("SECOND_CHECK_EVERY", 2),
        ("VALIDATION_SIZE", 2),
        ("BATCH_SIZE", 6),
    ):
        monkeypatch.setattr(build, name, value)
    build.build(tmp_path / "model")
    report = json.loads((tmp_path / "model" / "warm_start.json").read_text())
    assert report["first_stage"] == {"from": "tiny-household-v6"}
    assert report["supervised_steps"] == build.MAX_STEPS + 2 == 1002
    assert "solver/success_round1" in report["held_out"]
    before = load_file(build.FIRST_STAGE / "model.safetensors")
    after = load_file(tmp_path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "model" / name).read_text() == (build.FIRST_STAGE / name).read_text()
