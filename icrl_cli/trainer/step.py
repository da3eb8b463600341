"""One training step in the paper's order: rollout → rewards → advantages → calibration → update.

Departures from plain GRPO, each a setting: sessions of several rounds in which the model
critiques its failed attempt and revises it (``algo.max_rounds``, ``algo.critic``); the critic's
reward is what the next attempt gained (Eq. 3, ``algo.critic_reward``); advantages are
normalised per (query, role) (Eq. 5, ``algo.advantage_grouping``); revisions are trained under
the critique-free prompt (``algo.revision_context``), each token weighted by how likely it is
without the critique (Eq. 4, ``algo.token_weight``). Critique-GRPO swaps the best refinement
into the group instead and shapes its loss (``algo.revision_loss``).

`icrl train` runs every stage; `icrl rollout` stops before the update; `bench/` times it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from environments import Environment, Task
from icrl_cli import adapters
from icrl_cli.config import AlgoConfig, RunConfig
from icrl_cli.generation import GenerationBackend
from icrl_cli.rollout.critics import Critic
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.rollout.samples import Sample, is_failed
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.rollout.settings import SessionSettings
from icrl_cli.trainer import distributed
from icrl_cli.trainer.algorithms import critic_reward, role_wise_advantages
from icrl_cli.trainer.distributed import World
from icrl_cli.trainer.logprobs import context_logprobs, recompute_behavior_logprobs
from icrl_cli.trainer.policy import UpdateStats, policy_update, sampling_of


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


@dataclass
class Trainee:
    """What a step works on: the environment, the model that samples (with its backend,
    tokenizer, prompts, session settings and critic) and, to update it, the module the optimizer
    trains (the model itself, or its FSDP2-sharded copy under torchrun), the reference model of
    the KL term and the optimizer. Built by ``icrl_cli.components``."""

    config: RunConfig
    env: Environment
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backend: GenerationBackend
    prompts: Prompts
    settings: SessionSettings
    critic: Critic | None
    trained: torch.nn.Module | None = None
    ref_model: PreTrainedModel | None = None
    optimizer: torch.optim.Optimizer | None = None
    world: World = field(default_factory=World)
    final_dtype: torch.dtype | None = None  # final/'s; None: the sampler's

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


@dataclass
class StepOutcome:
    samples: list[Sample]  # every sample this rank played
    batch: list[Sample]  # those that entered the loss
    stats: UpdateStats
    rollout_time: float
    update_time: float


def rollout(trainee: Trainee, queries: list[Task]) -> list[Sample]:
    """G sessions of each query: attempts, critiques and revisions (Algorithm 1)."""
    t = trainee
    return run_sessions(t.backend, t.tokenizer, t.env, queries, t.settings, t.prompts, t.critic)


def score_critiques(samples: list[Sample], mode: str) -> None:
    """Eq. 3: each critique's reward from the attempt it read and the attempt after it (the
    same session's next round, matched in the order they were made); a critique whose next
    attempt was lost to its environment (``unmeasured``) keeps none."""
    following: dict[tuple[str, int, int], list[Sample]] = {}
    for s in samples:
        if s.role == "solver":
            following.setdefault((s.query_id, s.session, s.round), []).append(s)
    for s in samples:
        queue = following.get((s.query_id, s.session, s.round + 1))
        if s.role != "critic" or not queue:
            continue
        attempt = queue.pop(0)
        if not s.metadata.get("unmeasured"):
            s.reward = critic_reward(s.metadata["reward_before"], attempt.reward, mode)


def swap_in_best_refinements(samples: list[Sample]) -> list[Sample]:
    """Critique-GRPO's group: per query, the best revision replaces the attempt it refined and
    the other revisions are dropped, so the group keeps G solver samples."""
    best: dict[str, Sample] = {}
    for s in samples:
        if s.role == "solver" and s.round > 1 and not is_failed(s):
            if s.query_id not in best or s.reward > best[s.query_id].reward:
                best[s.query_id] = s
    kept = []
    for s in samples:
        chosen = best.get(s.query_id)
        if s.role == "solver" and s.round > 1:
            continue  # revisions enter only in place of the attempt they refined
        if chosen is not None and s.role == "solver" and s.session == chosen.session:
            kept.append(chosen)
        else:
            kept.append(s)
    return kept


def assign_advantages(samples: list[Sample], algo: AlgoConfig) -> None:
    """Eq. 5 over the samples that enter the loss, bucketed by ``algo.advantage_grouping``."""
    if not samples:
        return
    grouping = algo.advantage_grouping
    queries = [
        (s.query_id, s.round) if grouping == "query_round_role" else s.query_id for s in samples
    ]
    roles = ["any" if grouping == "query" else s.role for s in samples]
    advantages = role_wise_advantages(
        torch.tensor([s.reward for s in samples]),
        queries,
        roles,
        eps=algo.adv_eps,
        normalize_std=algo.normalize_std,
    )
    for sample, adv in zip(samples, advantages.tolist(), strict=True):
        sample.advantage = adv


def training_batch(samples: list[Sample], algo: AlgoConfig) -> list[Sample]:
    """The samples that enter the loss, in their training contexts, with their advantages."""
    if algo.name == "critique-grpo":
        samples = swap_in_best_refinements(samples)
    batch = [s for s in samples if s.trainable]
    if algo.revision_context == "critique":
        # The ablation without transfer: revisions train in the context they were sampled in.
        for s in batch:
            s.prompt_ids = s.behavior_prompt_ids
    assign_advantages(batch, algo)
    return batch


def calibrate(trainee: Trainee, batch: list[Sample]) -> None:
    """The two sides of Eq. 4's ratio. μ as configured: the engine's log-probs as sampled, or
    (``recompute``) a trainer forward under each revision's behavior context. π_old on the
    training context: with several optimizer steps per batch, a forward of the weights that
    sampled, before the first step; with one, the update takes it from its own forward."""
    config = trainee.config
    micro, sampling = config.train.micro_batch_size, sampling_of(config)
    if config.algo.behavior_logprobs == "recompute":
        recompute_behavior_logprobs(trainee.model, batch, trainee.pad_id, micro, sampling)
    if config.train.mini_batches > 1:
        old = context_logprobs(trainee.model, batch, trainee.pad_id, micro, sampling)
        for sample, logprobs in zip(batch, old, strict=True):
            sample.old_logprobs = logprobs


def update(trainee: Trainee, batch: list[Sample]) -> UpdateStats:
    """One optimizer step (Eq. 6) on every rank's batch, then the new weights to the sampler;
    a step whose episodes were all lost to their environment is skipped."""
    t = trainee
    assert t.trained is not None and t.optimizer is not None, "this trainee does not train"
    if not t.world.sum([len(batch)])[0]:
        return UpdateStats.skipped_step()
    t.backend.sleep()
    stats = policy_update(t.trained, t.ref_model, t.optimizer, batch, t.config, t.pad_id, t.world)
    push_weights(t.trained, t.model, t.backend)
    return stats


def push_weights(
    trained: torch.nn.Module, model: PreTrainedModel, backend: GenerationBackend
) -> None:
    """The trained weights to the sampling model (``sync_sampler``), and from it to the
    backend's own copy when it keeps one (vLLM's engine)."""
    sync_sampler(trained, model)
    backend.sync_weights(lambda: sampler_state(trained, model))


def sampler_state(trained: torch.nn.Module, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The sampling model's weights under the plain model's parameter names: with adapters
    injected into it, its base with the adapters merged (computed aside)."""
    if adapters.is_adapted(trained) and trained.get_base_model() is model:
        return adapters.merged_state(trained)
    return model.state_dict()


def sync_sampler(trained: torch.nn.Module, model: PreTrainedModel) -> None:
    """Give the sampling model the trained weights: nothing to do when it is the trained model
    (or the base its adapters are injected into); the merged adapters, or the masters (gathered
    from the ranks when sharded), cast to the sampler's dtype otherwise."""
    if trained is model:
        return
    if adapters.is_adapted(trained):
        if trained.get_base_model() is not model:
            model.load_state_dict(adapters.merged_state(trained))
        return
    distributed.copy_weights(trained, model)


def learn(trainee: Trainee, samples: list[Sample]) -> tuple[list[Sample], UpdateStats]:
    """Everything after the rollout: rewards, advantages, calibration and the update; the
    samples that entered the loss, and what the update did."""
    algo = trainee.config.algo
    score_critiques(samples, algo.critic_reward)
    batch = training_batch(samples, algo)
    calibrate(trainee, batch)
    return batch, update(trainee, batch)


def train_step(trainee: Trainee, queries: list[Task]) -> StepOutcome:
    """Every stage of one step on this rank's ``queries``."""
    started = time.perf_counter()
    samples = rollout(trainee, queries)
    rollout_time = time.perf_counter() - started
    started = time.perf_counter()
    batch, stats = learn(trainee, samples)
    return StepOutcome(samples, batch, stats, rollout_time, time.perf_counter() - started)
