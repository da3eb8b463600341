"""What a ``bench/throughput.py`` run is given and what it measures.

``Settings`` are the same for every contender (``bench/scaling.py`` varies them); ``RunResult``
is what one worker subprocess reports back as JSON. The helpers read the clock after the device's
queued work, read the peak RSS, and build the setup and optimizer the workers start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    queries: int = 16
    group: int = 8
    max_new_tokens: int = 40
    temperature: float = 1.0
    lr: float = 2e-4
    steps: int = 4
    # One thread: on a shared 2-core machine, two OpenMP threads per process spin-wait for each
    # other whenever another process holds a core, which can make a step several times slower.
    threads: int = 1
    seed: int = 0
    model: str = "tiny"  # a model name or directory (bench/scaling.py passes untrained ones)
    # "cpu" or "cuda": every contender runs there, in float32 (TRL's bf16 is off, icrl's dtype
    # is float32), and on "cuda" each step's clock is read after a device synchronisation.
    device: str = "cpu"


@dataclass
class RunResult:
    """What one worker subprocess measured."""

    contender: str
    step_s: list[float]  # measured steps only (the warm-up is dropped)
    samples: list[int]
    tokens: list[int]
    peak_rss_mb: float
    phases: dict[str, list[float]] = field(default_factory=dict)  # e.g. generation vs update
    threads: int = 0  # torch's thread count at the end of the run (a library may change it)
    peak_gpu_mb: float = 0.0  # torch.cuda.max_memory_allocated, on "cuda"

    def rates(self) -> dict[str, float]:
        seconds = sum(self.step_s)
        return {
            "step_s": seconds / len(self.step_s),
            "samples_per_s": sum(self.samples) / seconds,
            "tokens_per_s": sum(self.tokens) / seconds,
        }


def peak_rss_mb() -> float:
    """This process's high-water resident set size (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def sync(device: str) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def tiny_setup(settings: Settings) -> tuple[Any, Any, list[Any], Path]:
    """The math environment of the tiny-math preset, the model's prompts, the train tasks and
    the model directory."""
    from icrl_cli.components import environment, resolve_model_name
    from icrl_cli.config import resolve
    from icrl_cli.rollout.prompts import Prompts

    config = resolve("tiny-math", [])
    env = environment(config)
    model_dir = Path(resolve_model_name(settings.model))
    prompts = Prompts.resolve({}, str(model_dir))
    return env, prompts, list(env.tasks(config.env.train_split)), model_dir


def torch_adamw(model: Any, lr: float) -> Any:
    """AdamW as icrl train builds it (betas 0.9/0.999, no weight decay, the default kernel)."""
    import torch

    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
