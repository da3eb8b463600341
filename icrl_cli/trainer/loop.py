"""The RL loop, top to bottom: sample queries, roll out, score, update, log, checkpoint, resume.

A run directory holds ``config.toml`` (re-runnable), ``metrics.jsonl`` (one object per step),
``samples/step-N.jsonl``, ``checkpoints/step-N/`` (written atomically) and ``final/`` (a Hugging
Face model directory).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import environments
from environments import Environment, Task
from environments.math import grading
from icrl_cli.config import ConfigError, RunConfig, to_toml
from icrl_cli.generation.hf import HFBackend
from icrl_cli.models import load_model, resolve_model_name
from icrl_cli.rollout.critics import CriticSpec, make_critic, parse_critic_spec
from icrl_cli.rollout.prompts import PROMPTS_FILE, Prompts
from icrl_cli.rollout.samples import Sample
from icrl_cli.rollout.sessions import (
    Critic,
    SessionSettings,
    episode_metrics,
    run_sessions,
    session_metrics,
    swap_in_best_refinements,
)
from icrl_cli.trainer import distributed
from icrl_cli.trainer.policy import (
    UpdateStats,
    assign_advantages,
    policy_update,
    recompute_behavior_logprobs,
)

CHECKPOINT_PREFIX = "step-"


class QuerySampler:
    """Draws queries in a seeded order, a fresh permutation each epoch; its state is two ints."""

    def __init__(self, tasks: list[Task], seed: int) -> None:
        self.tasks, self.seed = tasks, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[Task]:
        batch = []
        for _ in range(n):
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            batch.append(self.tasks[self._order[self.position]])
            self.position += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def make_environment(name: str, data: str | None, options: dict[str, Any]) -> Environment:
    """The environment ``name``; ``data`` is passed only when chosen (not every one takes it)."""
    chosen = {"data": data} if data is not None else {}
    return environments.make(name, **chosen, **options)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def session_settings(config: RunConfig, max_positions: int | None = None) -> SessionSettings:
    """The rollout settings of ``config``; the context budget defaults to ``max_positions``
    (the model's)."""
    algo, gen = config.algo, config.generation
    return SessionSettings(
        sessions_per_query=algo.sessions_per_query,
        max_rounds=1 if algo.name == "grpo" else algo.max_rounds,
        gate=algo.critic_gate,
        critic_reward=algo.critic_reward,
        max_new_tokens=gen.max_new_tokens,
        critic_max_new_tokens=algo.critic_max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        enable_thinking=config.model.enable_thinking,
        max_turns=config.env.max_turns,
        repeat_limit=config.env.repeat_limit,
        context_tokens=gen.context_tokens or max_positions or 4096,
        summary_observation_chars=config.env.summary_observation_chars,
    )


@dataclass
class Policy:
    """The model that is trained or measured, with what samples from it and how."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backend: HFBackend
    prompts: Prompts
    settings: SessionSettings


def load_policy(config: RunConfig, source: str | None = None) -> Policy:
    """``config.model`` (or the weights in ``source``, a checkpoint of it) ready to sample from,
    with its prompts and ``config``'s session settings."""
    model_config = config.model
    model, tokenizer = load_model(
        source or model_config.name,
        model_config.device,
        model_config.dtype,
        model_config.trust_remote_code,
    )
    return Policy(
        model,
        tokenizer,
        HFBackend(model, tokenizer, config.generation.batch_size),
        Prompts.resolve(config.prompts.model_dump(), resolve_model_name(model_config.name)),
        session_settings(config, getattr(model.config, "max_position_embeddings", None)),
    )


def build_critic(
    config: RunConfig,
    backend: HFBackend,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    settings: SessionSettings,
    spec: CriticSpec | None = None,
) -> Critic | None:
    """None for GRPO; otherwise the critic ``spec`` names (by default ``algo.critic``; see
    ``rollout.critics``), loaded with the run's model and generation settings."""
    if config.algo.name == "grpo":
        return None
    return make_critic(
        spec or parse_critic_spec(config.algo.critic),
        backend,
        tokenizer,
        prompts,
        settings,
        train_self=config.algo.train_critic,
        device=config.model.device,
        dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
        batch_size=config.generation.batch_size,
        prompt_overrides=config.prompts.model_dump(),
    )


def training_batch(samples: list[Sample], config: RunConfig) -> list[Sample]:
    """The samples that enter the loss, with their advantages and training contexts set."""
    algo = config.algo
    if algo.name == "critique-grpo":
        samples = swap_in_best_refinements(samples)
    batch = [s for s in samples if s.trainable]
    if algo.calibration == "keep_critique":
        # The ablation without transfer: revisions train in the context they were sampled in.
        for s in batch:
            s.prompt_ids = s.behavior_prompt_ids
    assign_advantages(batch, algo)
    return batch


def zero_std_fraction(samples: list[Sample]) -> float:
    groups: dict[str, set[float]] = {}
    for s in samples:
        groups.setdefault(s.query_id, set()).add(s.reward)
    return sum(len(r) == 1 for r in groups.values()) / max(len(groups), 1)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Fill a hidden partial directory, then rename it: a crash never leaves a half-written
    directory under the final name (readers ignore names that start with a dot)."""
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


def write_model(
    path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Prompts
) -> None:
    """A Hugging Face model directory, plus the prompt templates it was trained with, so that
    `icrl eval` on it prompts the model the way training did."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _write_json(path / PROMPTS_FILE, prompts.to_json())


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    optimizer_state: dict[str, Any],
    rngs: list[dict[str, Any]],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """``checkpoints/step-N``: the model, the optimizer state, each rank's random state
    (``rng.pt``: a list, rank by rank) and the trainer's, written atomically; the oldest beyond
    ``keep`` are removed."""

    def write(path: Path) -> None:
        write_model(path, model, tokenizer, prompts)
        torch.save(optimizer_state, path / "optimizer.pt")
        torch.save(rngs, path / "rng.pt")
        _write_json(path / "trainer_state.json", {"step": step, **state})

    target = write_atomically(run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}", write)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial ones start with a dot and are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (a killed run's tail)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line and json.loads(line)["step"] <= last_step
    ]
    partial = path.with_suffix(".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# The loop


def progress_info(record: dict[str, Any], skipped_steps: int, failed_episodes: int) -> str:
    reward = record["solver/reward_mean"]
    text = f"reward {reward:.3f}" if reward is not None else "reward -"
    text += f"  skipped {skipped_steps}"
    if failed_episodes:
        text += f"  failed episodes {failed_episodes}"
    return text


def default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset or config.env.name}-{config.algo.name}-{stamp}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: RunConfig, run_dir: Path, resume: bool = False, console: Console | None = None
) -> Path:
    """Run (or continue) training into ``run_dir``; returns the path of ``final/``. Under
    ``torchrun``, every rank runs this (see ``trainer.distributed``); rank 0 writes."""
    world = distributed.setup()
    try:
        return _train(config, run_dir, resume, console or Console(stderr=True), world)
    finally:
        distributed.teardown(world)


def _train(
    config: RunConfig, run_dir: Path, resume: bool, console: Console, world: distributed.World
) -> Path:
    if config.train.queries_per_step % world.size:
        raise ConfigError(
            f"train.queries_per_step ({config.train.queries_per_step}) must be a multiple of "
            f"the number of ranks ({world.size}): each rank plays whole queries"
        )
    env = make_environment(config.env.name, config.env.data, config.env.options)
    train_tasks = list(env.tasks(config.env.train_split))
    run_dir = world.broadcast(run_dir)  # a default name carries rank 0's clock
    seed_everything(config.train.seed + world.rank)  # ranks sample their own noise
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config))
    # (An embedded model that is not built yet is built by one rank: its cache holds a lock.)
    checkpoints = list_checkpoints(run_dir) if resume else []
    policy = load_policy(config, str(checkpoints[-1]) if checkpoints else None)
    model, tokenizer, backend = policy.model, policy.tokenizer, policy.backend
    prompts, settings = policy.prompts, policy.settings
    # One process trains the model it samples from; several train a sharded copy of it.
    trained = distributed.shard_for_update(model) if world.size > 1 else model
    ref_model = None
    if config.algo.kl_coef > 0:
        ref_model, _ = load_model(
            config.model.name,
            config.model.device,
            config.model.dtype,
            config.model.trust_remote_code,
        )
        ref_model.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        trained.parameters(),
        lr=config.train.lr,
        betas=config.train.betas,
        weight_decay=config.train.weight_decay,
    )
    sampler = QuerySampler(train_tasks, config.train.seed)
    critic = build_critic(config, backend, tokenizer, prompts, settings)
    start_step, skipped_steps, failed_episodes = 0, 0, 0
    metrics_path = run_dir / "metrics.jsonl"
    if checkpoints:
        ckpt = checkpoints[-1]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        saved = torch.load(ckpt / "optimizer.pt", map_location=model.device)
        if world.size > 1:
            distributed.load_optimizer_state(trained, optimizer, saved)
        else:
            optimizer.load_state_dict(saved)
        rngs = torch.load(ckpt / "rng.pt", weights_only=False)
        if isinstance(rngs, dict):  # a checkpoint from before rng.pt held one state per rank
            rngs = [rngs]
        if len(rngs) == world.size:
            restore_rng(rngs[world.rank])
        elif world.main:
            console.print(f"{ckpt} was written by {len(rngs)} ranks: random states start anew")
        sampler.restore(state["sampler"])
        start_step, skipped_steps = state["step"], state["skipped_steps"]
        failed_episodes = state.get("failed_episodes", 0)
        if world.main:
            truncate_metrics(metrics_path, start_step)
            console.print(f"resuming from {ckpt} (step {start_step})")
    elif resume:
        if world.main:
            console.print(f"no checkpoint in {run_dir}; starting from step 0")
            metrics_path.unlink(missing_ok=True)
    elif world.main:
        metrics_path.unlink(missing_ok=True)
    progress = Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not world.main,
    )
    # Rank 0 reports and writes; the other ranks play their share and join the update.
    metrics_file = metrics_path.open("a") if world.main else contextlib.nullcontext()
    with progress, metrics_file:
        bar = progress.add_task("train", total=config.train.steps, completed=start_step, info="")
        for step in range(start_step + 1, config.train.steps + 1):
            timeouts_before = grading.timeouts()
            started = time.perf_counter()
            queries = world.shard(sampler.next(config.train.queries_per_step))
            samples = run_sessions(backend, tokenizer, env, queries, settings, prompts, critic)
            rollout_time = time.perf_counter() - started
            started = time.perf_counter()
            batch = training_batch(samples, config)
            if config.algo.behavior_logprobs == "recompute":
                recompute_behavior_logprobs(
                    model, batch, tokenizer.pad_token_id, config.train.micro_batch_size
                )
            if world.sum([len(batch)])[0]:
                stats = policy_update(
                    trained, ref_model, optimizer, batch, config, tokenizer.pad_token_id, world
                )
                if trained is not model:
                    distributed.copy_weights(trained, model)
                backend.sync_weights()
            else:  # every episode of the step was lost to its environment
                stats = UpdateStats.skipped_step()
            update_time = time.perf_counter() - started
            skipped_steps += stats.skipped
            samples = world.gather(samples)  # what every rank played, for the metrics
            solver_batch = world.gather([s for s in batch if s.role == "solver"])
            sessions = session_metrics(samples, settings.gate)
            failed_episodes += sessions["env/failed_episodes"]
            response_tokens = sum(len(s.response_ids) for s in samples)
            record = {
                "step": step,
                **sessions,
                "env/failed_episodes_total": failed_episodes,
                **episode_metrics(samples),
                "solver/frac_reward_zero_std": zero_std_fraction(solver_batch),
                "calib/w_mean_revision": stats.w_mean_revision,
                "calib/w_clip_frac": stats.w_clip_frac,
                "loss/policy": stats.loss_policy,
                "loss/kl": stats.loss_kl,
                "loss/clip_frac": stats.clip_frac,
                "entropy": stats.entropy,
                "grad_norm": stats.grad_norm,
                "logprob/behavior_abs_diff": stats.logprob_mismatch,
                "train/skipped_steps": skipped_steps,
                "env/grader_timeouts": grading.timeouts() - timeouts_before,
                "time/rollout": rollout_time,
                "time/update": update_time,
                "throughput/tokens_per_s": response_tokens / (rollout_time + update_time),
                "throughput/samples": len(samples),
                "memory/peak_mb": peak_memory_mb(model.device),
                **({"world/ranks": world.size} if world.size > 1 else {}),
            }
            if world.main:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            if world.main and config.train.samples_every and step % config.train.samples_every == 0:
                sample_dir = run_dir / "samples"
                sample_dir.mkdir(exist_ok=True)
                with (sample_dir / f"step-{step}.jsonl").open("w") as f:
                    for s in samples:
                        f.write(json.dumps(s.to_json()) + "\n")
            if config.train.save_every and step % config.train.save_every == 0:
                if world.size > 1:  # collectives: every rank takes part
                    optimizer_state = distributed.optimizer_state(trained, optimizer)
                else:
                    optimizer_state = optimizer.state_dict()
                rngs = world.gather([rng_state()])
                if world.main:
                    save_checkpoint(
                        run_dir,
                        step,
                        model,
                        tokenizer,
                        prompts,
                        optimizer_state,
                        rngs,
                        {
                            "skipped_steps": skipped_steps,
                            "failed_episodes": failed_episodes,
                            "sampler": sampler.state(),
                        },
                        config.train.keep_checkpoints,
                    )
                world.barrier()  # a checkpoint is whole before any rank goes on
            progress.update(
                bar,
                advance=1,
                info=progress_info(record, skipped_steps, failed_episodes),
            )
    final = run_dir / "final"
    if world.main:
        write_atomically(
            final,
            functools.partial(write_model, model=model, tokenizer=tokenizer, prompts=prompts),
        )
    world.barrier()
    return final
