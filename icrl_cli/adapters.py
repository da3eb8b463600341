"""LoRA adapters through peft (the ``peft`` extra): attached to the float32 base for training,
read back as merged weights for sampling and for the model directories a run writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from icrl_cli.config import ConfigError
from icrl_cli.config.schema import LoraConfig

ADAPTER_DIR = "adapter"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora needs the 'peft' extra: pip install -e '.[peft]'") from None
    return peft


def attach(model: PreTrainedModel, lora: LoraConfig, saved: Path | None = None) -> Any:
    """``model`` with trainable LoRA adapters on ``lora.target_modules`` (the base frozen): new
    ones (B = 0, so the model is unchanged), or those ``saved`` in a checkpoint's adapter
    directory. The adapters are injected into ``model``'s own modules."""
    peft = _peft()
    if saved is not None:
        return peft.PeftModel.from_pretrained(model, str(saved), is_trainable=True)
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. no module matches the targets
        raise ConfigError(f"model.lora: {str(err).splitlines()[0]}") from None


def is_adapted(model: Any) -> bool:
    return type(model).__name__ == "PeftModel" or hasattr(model, "peft_config")


@torch.no_grad()
def merged_state(adapted: Any) -> dict[str, torch.Tensor]:
    """The base's state with every adapted weight replaced by W + ΔW, under the base model's own
    parameter names: computed aside, the base itself is never merged in place (merging and
    unmerging round the frozen weights a little every step)."""
    peft = _peft()
    base = adapted.get_base_model()
    deltas = {
        name: module.get_delta_weight(adapted.active_adapter)
        for name, module in base.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    state: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if "lora_" in key:
            continue
        name = key.replace(".base_layer.", ".")
        owner = key.removesuffix(".base_layer.weight")
        if key.endswith(".base_layer.weight") and owner in deltas:
            tensor = tensor + deltas[owner].to(tensor.dtype)
        state[name] = tensor
    return state


def save_adapter(adapted: Any, directory: Path) -> None:
    adapted.save_pretrained(str(directory / ADAPTER_DIR))
