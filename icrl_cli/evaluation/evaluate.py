"""Critique-free evaluation: one attempt per task, success and token counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from environments import EnvError, Environment
from icrl_cli.generation.hf import HFBackend
from icrl_cli.models import load_model, resolve_model_name
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.rollout.sessions import SessionSettings, run_sessions


@dataclass
class EvalResult:
    model: str
    env: str
    data: str
    split: str
    n: int
    success_round1: float
    reward_mean: float
    response_tokens_mean: float
    temperature: float
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model_name: str,
    env: Environment,
    env_name: str,
    data: str,
    split: str,
    limit: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    enable_thinking: bool = False,
) -> EvalResult:
    """Success of one critique-free attempt per task of ``split`` (the first ``limit`` tasks)."""
    tasks = list(env.tasks(split))
    if limit is not None:
        tasks = tasks[:limit]
    if not tasks:
        raise EnvError(f"split '{split}' of {env_name}:{data} has no tasks")
    model, tokenizer = load_model(model_name, device=device)
    torch.manual_seed(seed)
    backend = HFBackend(model, tokenizer, batch_size)
    prompts = Prompts.resolve({}, resolve_model_name(model_name))
    settings = SessionSettings(
        sessions_per_query=1,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        enable_thinking=enable_thinking,
    )
    samples = run_sessions(backend, tokenizer, env, tasks, settings, prompts)
    return EvalResult(
        model=model_name,
        env=env_name,
        data=data,
        split=split,
        n=len(samples),
        success_round1=sum(s.success for s in samples) / len(samples),
        reward_mean=sum(s.reward for s in samples) / len(samples),
        response_tokens_mean=sum(len(s.response_ids) for s in samples) / len(samples),
        temperature=temperature,
        seed=seed,
    )
