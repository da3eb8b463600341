"""Load a causal LM and its tokenizer by hub id, short name or local directory.

The embedded names (``tiny``, ``tiny-household``) are resolved to their cached directories by
``icrl_cli.components``, which builds them on first use; this module loads what it is given.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

# Short names users type, mapped to the organisation that publishes them on the hub.
_SHORT_NAME_ORGS = (
    (re.compile(r"^(Qwen[\d.]+|QwQ)-", re.IGNORECASE), "Qwen"),
    (re.compile(r"^Llama-3", re.IGNORECASE), "meta-llama"),
)


class ModelLoadError(ValueError):
    """The model could not be found or loaded; the message is one line for the user."""


def resolve_model_name(name: str) -> str:
    """'Qwen3-4B' → 'Qwen/Qwen3-4B'; hub ids and paths stay as they are."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")) or name.endswith(os.sep):
        raise ModelLoadError(f"model path '{name}' does not exist")
    if "/" not in name:
        for pattern, org in _SHORT_NAME_ORGS:
            if pattern.match(name):
                return f"{org}/{name}"
        raise ModelLoadError(
            f"model '{name}' is neither a local directory nor a hub id (organisation/name)"
        )
    return name


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def saved_dtype(path: str, trust_remote_code: bool = False) -> torch.dtype | None:
    """The dtype a model directory or hub id says its weights are in (its config's ``dtype``);
    None when it does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection (offline mode counts as no).

    Checked before a download so that an offline machine fails in seconds with one clear line,
    instead of after the hub client's minute of retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def ensure_available(path: str) -> None:
    """A hub id must be in the local cache or downloadable; otherwise one clear error."""
    if Path(path).exists():
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json"), str):
        return
    if not hub_reachable():
        raise ModelLoadError(
            f"model '{path}' is not available locally and the hub cannot be reached; "
            "download it on a connected machine (hf download) or pass a local directory"
        )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    path = resolve_model_name(name)
    local = Path(path)
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"'{path}' is a directory without config.json, not a Hugging Face model directory"
        )
    ensure_available(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(_not_available(path, err)) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model on ``device`` in ``dtype`` plus its tokenizer; raises ModelLoadError with one line."""
    path = resolve_model_name(name)
    torch_device = pick_device(device)
    tokenizer = load_tokenizer(path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=pick_dtype(dtype, torch_device), trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise ModelLoadError(_not_available(path, err)) from None
    return model.to(torch_device), tokenizer


def _not_available(path: str, err: Exception) -> str:
    if Path(path).exists():
        return f"'{path}' is not a loadable model directory ({str(err).splitlines()[0]})"
    return (
        f"model '{path}' is not available locally and could not be downloaded from the hub "
        "(offline, or no such repository); pass a local model directory"
    )


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass, by transformers' own
    switch (``activation_checkpointing_enable`` from 5.x on, ``gradient_checkpointing_enable``
    before); non-reentrant, so a layer's inputs need not require gradients."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
