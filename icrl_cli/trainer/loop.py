"""The schedule of a run: steps in order, a metrics line each, samples and checkpoints on
schedule, resume from the last checkpoint, ``final/`` at the end.

A run directory holds ``config.toml`` (re-runnable; written by ``icrl_cli.components``),
``metrics.jsonl`` (one object per step), ``samples/step-N.jsonl``, ``checkpoints/step-N/``
(see ``trainer.checkpoints``) and ``final/`` (a Hugging Face model directory). Under torchrun
every rank runs the loop; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import PreTrainedModel

from environments.math import grading
from icrl_cli import adapters
from icrl_cli.config import RunConfig
from icrl_cli.rollout.metrics import episode_metrics, session_metrics
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer import checkpoints, distributed, reporting
from icrl_cli.trainer.step import QuerySampler, StepOutcome, Trainee, train_step


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a whole step, checkpointed."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(f"{signal_name} after step {step}")
        self.step, self.signal_name = step, signal_name


class StopSignals:
    """SIGTERM and SIGINT ask the run to stop after the step in flight (a job scheduler's grace
    period, a Ctrl-C); a second SIGINT stops at once. Only the main thread may install them."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number: int, _frame: Any) -> None:
        if self.received and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def __exit__(self, *_exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


@dataclass
class Counters:
    """What the run has counted so far; saved with each checkpoint."""

    step: int = 0
    skipped_steps: int = 0
    failed_episodes: int = 0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def zero_std_fraction(samples: list[Sample]) -> float:
    groups: dict[str, set[float]] = {}
    for s in samples:
        groups.setdefault(s.query_id, set()).add(s.reward)
    return sum(len(r) == 1 for r in groups.values()) / max(len(groups), 1)


def default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset or config.env.name}-{config.algo.name}-{stamp}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def step_record(
    trainee: Trainee, outcome: StepOutcome, counters: Counters, grader_timeouts: int
) -> tuple[dict[str, Any], list[Sample]]:
    """The metrics line of one step over every rank's samples (counters updated first), and
    those samples."""
    world, stats = trainee.world, outcome.stats
    counters.skipped_steps += stats.skipped
    samples = world.gather(outcome.samples)  # what every rank played, for the metrics
    solver_batch = world.gather([s for s in outcome.batch if s.role == "solver"])
    sessions = session_metrics(samples, trainee.settings.gate)
    counters.failed_episodes += sessions["env/failed_episodes"]
    response_tokens = sum(len(s.response_ids) for s in samples)
    elapsed = outcome.rollout_time + outcome.update_time
    record = {
        "step": counters.step,
        **sessions,
        "env/failed_episodes_total": counters.failed_episodes,
        **episode_metrics(samples),
        "solver/frac_reward_zero_std": zero_std_fraction(solver_batch),
        "calib/w_mean_revision": stats.w_mean_revision,
        "calib/w_clip_frac": stats.w_clip_frac,
        "calib/divergence_frac": stats.divergence_frac,
        "calib/w_before_divergence": stats.w_before_divergence,
        "calib/w_at_divergence": stats.w_at_divergence,
        "calib/w_after_divergence": stats.w_after_divergence,
        "calib/w_below_half": stats.w_below_half_frac,
        "loss/policy": stats.loss_policy,
        "loss/kl": stats.loss_kl,
        "loss/clip_frac": stats.clip_frac,
        "entropy": stats.entropy,
        "grad_norm": stats.grad_norm,
        "logprob/behavior_abs_diff": stats.logprob_mismatch,
        "logprob/revision_abs_diff": stats.revision_gap,
        "train/skipped_steps": counters.skipped_steps,
        "env/grader_timeouts": grader_timeouts,
        "time/rollout": outcome.rollout_time,
        "time/update": outcome.update_time,
        "throughput/tokens_per_s": response_tokens / elapsed,
        "throughput/samples": len(samples),
        "memory/peak_mb": peak_memory_mb(trainee.model.device),
        **({"world/ranks": world.size} if world.size > 1 else {}),
    }
    return record, samples


def resume(
    trainee: Trainee, sampler: QuerySampler, checkpoint: Path, run_dir: Path, console: Console
) -> Counters:
    """The optimizer, random states, query sampler and counters of ``checkpoint``; the metrics
    a killed run wrote after it are dropped. (The weights were loaded from it already.)"""
    world, optimizer = trainee.world, trainee.optimizer
    assert trainee.trained is not None and optimizer is not None
    saved = checkpoints.load_tensors(checkpoint / "optimizer.pt", trainee.model.device)
    if world.size > 1:
        distributed.load_optimizer_state(trainee.trained, optimizer, saved)
    else:
        optimizer.load_state_dict(saved)
    rngs = checkpoints.read_rng_states(checkpoint)
    if len(rngs) == world.size:
        checkpoints.restore_rng(rngs[world.rank])
    elif world.main:
        console.print(f"{checkpoint} was written by {len(rngs)} ranks: random states start anew")
    state = checkpoints.read_trainer_state(checkpoint)
    sampler.restore(state["sampler"])
    counters = Counters(state["step"], state["skipped_steps"], state.get("failed_episodes", 0))
    if world.main:
        checkpoints.truncate_metrics(run_dir / "metrics.jsonl", counters.step)
        console.print(f"resuming from {checkpoint} (step {counters.step})", soft_wrap=True)
    return counters


def master_weights(trainee: Trainee) -> tuple[PreTrainedModel, dict[str, torch.Tensor] | None]:
    """What a checkpoint holds: the float32 masters, as a model to save and (for sharded
    masters below float32, gathered from every rank: a collective; for adapters, merged into
    the base) the state to save with it."""
    trained, model = trainee.trained, trainee.model
    if trained is not None and adapters.is_adapted(trained):
        return model, adapters.merged_state(trained)
    if trained is None or trained is model or model.dtype == torch.float32:
        return model, None  # the sampler holds the masters, or an exact float32 copy of them
    if isinstance(trained, PreTrainedModel):
        return trained, None
    return model, distributed.full_state(trained)


def final_model(trainee: Trainee) -> tuple[PreTrainedModel, dict[str, torch.Tensor] | None]:
    """``final/``: the trained weights (adapters merged) in ``trainee.final_dtype``, as a model
    and, where the sampler does not hold them in that dtype, the state to save with it. Under
    torchrun, the sampler as it is (its compute dtype)."""
    model, trained = trainee.model, trainee.trained
    target = trainee.final_dtype or model.dtype
    adapted = trained is not None and adapters.is_adapted(trained)
    injected = adapted and trained.get_base_model() is model
    if trainee.world.size > 1 or (target == model.dtype and not injected):
        return model, None
    if adapted:
        state = adapters.merged_state(trained)
    else:
        source = trained if isinstance(trained, PreTrainedModel) else model
        state = source.state_dict()
    state = {name: tensor.to(target) for name, tensor in state.items()}
    model.to(target)  # training is over; config.json then names the dtype the tensors are in
    return model, state


def save(trainee: Trainee, sampler: QuerySampler, run_dir: Path, counters: Counters) -> None:
    """``checkpoints/step-N``; every rank takes part in gathering its state, rank 0 writes."""
    world, optimizer = trainee.world, trainee.optimizer
    assert trainee.trained is not None and optimizer is not None
    if world.size > 1:  # collectives: every rank takes part
        optimizer_state = distributed.optimizer_state(trainee.trained, optimizer)
    else:
        optimizer_state = optimizer.state_dict()
    rngs = world.gather([checkpoints.rng_state()])
    model, state = master_weights(trainee)
    if world.main:
        checkpoints.save_checkpoint(
            run_dir,
            counters.step,
            model,
            trainee.tokenizer,
            trainee.prompts,
            optimizer_state,
            rngs,
            {
                "skipped_steps": counters.skipped_steps,
                "failed_episodes": counters.failed_episodes,
                "sampler": sampler.state(),
            },
            trainee.config.train.keep_checkpoints,
            state,
            trainee.trained if adapters.is_adapted(trainee.trained) else None,
        )
    world.barrier()  # a checkpoint is whole before any rank goes on


def write_samples(run_dir: Path, step: int, samples: list[Sample]) -> None:
    sample_dir = run_dir / "samples"
    sample_dir.mkdir(exist_ok=True)
    with (sample_dir / f"step-{step}.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(s.to_json()) + "\n")


@contextlib.contextmanager
def closing_all(trackers: list[reporting.Reporter]) -> Iterator[None]:
    try:
        yield
    finally:
        for tracker in trackers:
            tracker.close()


def progress_bar(console: Console, main: bool) -> Progress:
    return Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not main,
    )


def progress_info(record: dict[str, Any], counters: Counters) -> str:
    reward = record["solver/reward_mean"]
    text = f"reward {reward:.3f}" if reward is not None else "reward -"
    text += f"  skipped {counters.skipped_steps}"
    if counters.failed_episodes:
        text += f"  failed episodes {counters.failed_episodes}"
    return text


def fit(
    trainee: Trainee,
    sampler: QuerySampler,
    run_dir: Path,
    checkpoint: Path | None,
    console: Console,
) -> Path:
    """Steps from the checkpoint's (or the first) to ``train.steps``; returns ``final/``."""
    config, world = trainee.config, trainee.world
    metrics_path = run_dir / "metrics.jsonl"
    counters = Counters()
    if checkpoint is not None:
        counters = resume(trainee, sampler, checkpoint, run_dir, console)
    elif world.main:
        metrics_path.unlink(missing_ok=True)
    # Rank 0 reports and writes; the other ranks play their share and join the update.
    metrics_file: TextIO | contextlib.nullcontext[None]
    metrics_file = metrics_path.open("a") if world.main else contextlib.nullcontext()
    trackers = reporting.open_reporters(config, run_dir, counters.step) if world.main else []
    with (
        StopSignals() as stop,
        progress_bar(console, world.main) as progress,
        metrics_file,
        closing_all(trackers),
    ):
        bar = progress.add_task("train", total=config.train.steps, completed=counters.step, info="")
        for step in range(counters.step + 1, config.train.steps + 1):
            timeouts_before = grading.timeouts()
            queries = world.shard(sampler.next(config.train.queries_per_step))
            outcome = train_step(trainee, queries)
            counters.step = step
            timeouts = grading.timeouts() - timeouts_before
            record, samples = step_record(trainee, outcome, counters, timeouts)
            if world.main:
                metrics_file.write(json.dumps(record) + "\n")  # type: ignore[union-attr]
                metrics_file.flush()  # type: ignore[union-attr]
                sampled = (
                    bool(config.train.samples_every) and step % config.train.samples_every == 0
                )
                if sampled:
                    write_samples(run_dir, step, samples)
                for tracker in trackers:
                    tracker.metrics(step, record)
                    if sampled:
                        tracker.samples(step, reporting.session_rows(samples))
            saved = bool(config.train.save_every) and step % config.train.save_every == 0
            if saved:
                save(trainee, sampler, run_dir, counters)
            progress.update(bar, advance=1, info=progress_info(record, counters))
            if world.max(int(stop.received is not None)):  # every rank stops at the same step
                if not saved:
                    save(trainee, sampler, run_dir, counters)
                raise Interrupted(step, stop.received or "a signal on another rank")
    final = run_dir / "final"
    if world.main:
        model, state = final_model(trainee)
        write = functools.partial(
            checkpoints.write_model,
            model=model,
            tokenizer=trainee.tokenizer,
            prompts=trainee.prompts,
            state_dict=state,
            adapted=trainee.trained if adapters.is_adapted(trainee.trained) else None,
        )
        checkpoints.write_atomically(final, write)
    world.barrier()
    return final
