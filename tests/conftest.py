"""Shared fixtures: the real tiny model (built once and cached) and an untrained twin."""

import pytest
import torch

from icrl_cli.tiny import build_model, build_tokenizer, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_dir():
    """The warm-started tiny model directory (built on first use, then cached)."""
    return tiny_model_dir()


@pytest.fixture()
def random_tiny():
    """An untrained tiny model and its tokenizer: fast, for tests of mechanics."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    return build_model(tokenizer, seed=0).eval(), tokenizer
