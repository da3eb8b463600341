"""The embedded models' supervised warm-start: SFT batches and loss, the step loop, measurements."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from rich.console import Console
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from environments import Environment, Task
from icrl_cli.config import RunConfig
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.critics import ModelCritic
from icrl_cli.rollout.episodes import observation_ids
from icrl_cli.rollout.metrics import session_metrics
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.rollout.settings import SessionSettings
from icrl_cli.trainer.step import score_critiques

Pair = tuple[list[int], list[int]]  # (prompt ids, target ids)
Metrics = dict[str, float | int | None]
# The token budget of a measurement's turns unless its settings say otherwise (the math build's).
MAX_NEW_TOKENS = 48

_console = Console(stderr=True)


def sft_batch(
    tokenizer: PreTrainedTokenizerFast, pairs: list[Pair], masks: list[list[float]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + target) rows; the loss only sees the target tokens (and of those,
    with ``masks``, only the ones not marked 0: a multi-turn target's observations are not).
    A mask value other than 0 or 1 is the token's weight in the loss; such masks add a
    ``loss_weights`` row (see ``sft_loss``)."""
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    weights = torch.zeros((len(pairs), width), dtype=torch.float32)
    weighted = masks is not None and any(m not in (0, 1) for mask in masks for m in mask)
    for row, (prompt, target) in enumerate(pairs):
        n = len(prompt) + len(target)
        input_ids[row, :n] = torch.tensor(prompt + target)
        kept, mask = target, [1.0] * len(target)
        if masks is not None:
            mask = masks[row]
            kept = [t if m else -100 for t, m in zip(target, mask, strict=True)]
        labels[row, len(prompt) : n] = torch.tensor(kept)
        weights[row, len(prompt) : n] = torch.tensor(mask, dtype=torch.float32)
        attention[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if weighted:
        batch["loss_weights"] = weights
    return batch


def turns_target(
    tokenizer: PreTrainedTokenizerFast,
    turns: list[tuple[str, str]],
    weights: list[float],
    done: bool,
) -> tuple[list[int], list[float]]:
    """A played episode, (turn, observation) after (turn, observation), as a multi-turn
    response: each turn and its EOS (mask: the turn's weight), then the observation's user turn
    (mask 0), exactly as a rollout lays it out; an episode that is ``done`` ends on its last
    turn (a rollout shows no observation after it)."""
    ids: list[int] = []
    mask: list[float] = []
    for index, ((turn, observation), weight) in enumerate(zip(turns, weights, strict=True)):
        turn_ids = tokenizer.encode(turn, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += turn_ids
        mask += [weight] * len(turn_ids)
        if index < len(turns) - 1 or not done:
            continuation = observation_ids(tokenizer, observation)
            ids += continuation
            mask += [0] * len(continuation)
    return ids, mask


def sft_loss(model: Qwen3ForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean next-token loss over the target tokens of an ``sft_batch``, each token
    weighted by its ``loss_weights`` when the batch has them."""
    batch = {k: v.to(model.device) for k, v in batch.items()}
    weights = batch.pop("loss_weights", None)
    if weights is None:
        return model(**batch).loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels, weights = batch["labels"][:, 1:], weights[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels.clamp(min=0), reduction="none"
    )
    return (losses * weights).sum() / weights.sum()


def loss_weight(batch: dict[str, torch.Tensor]) -> float:
    """The denominator of ``sft_loss`` on ``batch``: its target tokens' summed weight."""
    if "loss_weights" in batch:
        return batch["loss_weights"][:, 1:].sum().item()
    return (batch["labels"][:, 1:] != -100).sum().item()


def measure_sessions(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    tasks: list[Task],
    prompts: Prompts,
    max_rounds: int = 1,
    settings: SessionSettings | None = None,
) -> Metrics:
    """Session metrics of one oracle-gated session per task, sampled at temperature 1 with the
    model as its own critic: success_round1 is critique-free, success_final after critique.
    ``settings`` replaces the defaults (math's token budgets, ``max_rounds``)."""
    backend = HFBackend(model, tokenizer)
    settings = settings or replace(
        SessionSettings.from_config(RunConfig()),
        sessions_per_query=1,
        max_rounds=max_rounds,
        max_new_tokens=MAX_NEW_TOKENS,
        critic_max_new_tokens=MAX_NEW_TOKENS,
    )
    critic = ModelCritic(backend, tokenizer, prompts, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, tasks, settings, prompts, critic)
    score_critiques(samples, RunConfig().algo.critic_reward)
    return session_metrics(samples, gate="oracle")


def _role_step(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[Pair],
    masks: list[list[float]] | None,
    rows: list[int],
    chunks: int,
    roles: int,
) -> torch.Tensor:
    """Backpropagate the mean loss of one role's ``rows`` over ``roles`` (each role's share of
    the step), in ``chunks`` forwards; returns the last forward's loss."""
    # Rows sorted by length and cut in ``chunks`` forwards pad less; each chunk's mean loss is
    # weighed by its share of the role's loss weight, so the gradient is the one of a single
    # forward over all the rows. Sorting changes the order of the sums, so one forward keeps
    # the order the rows were drawn in (and the math build its weights).
    if chunks > 1:
        rows.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    size = -(-len(rows) // chunks)
    parts = [
        sft_batch(
            tokenizer,
            [pairs[i] for i in part],
            [masks[i] for i in part] if masks is not None else None,
        )
        for part in (rows[k * size : (k + 1) * size] for k in range(chunks))
        if part
    ]
    totals = [loss_weight(part) for part in parts]
    for part, total in zip(parts, totals, strict=True):
        loss = sft_loss(model, part) * (total / sum(totals)) / roles
        loss.backward()
    return loss


def supervise(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    pairs: dict[str, list[Pair]],
    measure: Callable[[], Metrics],
    accept: Callable[[Metrics], bool],
    rng: random.Random,
    seed: int = 0,
    masks: dict[str, list[list[float]]] | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    check_every: int = 25,
    first_check: int | None = None,
    max_steps: int = 2000,
    keep_last: bool = False,
    chunks: int = 1,
    cosine: bool = False,
    bf16: bool = False,
) -> tuple[int, Metrics]:
    """Supervised steps over every role's demonstrations (each role's rows apart: sequences of
    a role have similar lengths, so less padding; ``chunks`` forwards per role, the rows sorted
    by length, pad less still) until ``accept(measure())``. Returns the steps
    taken and the last measurement. Measuring starts at ``first_check`` (default
    ``check_every``). Missing the targets by ``max_steps`` is an error unless ``keep_last``,
    which returns the model as it is with its last measurement. With ``cosine``, the learning
    rate falls from ``lr`` to 0 along a half cosine over ``max_steps`` (for a build that runs
    them all and keeps the last model, which a constant rate leaves noisy). With ``bf16``, the
    forwards and backwards run under bfloat16 autocast (the weights and the optimizer stay in
    float32): on a CPU with bfloat16 instructions a step takes about two thirds of the time."""
    first_check = first_check or check_every
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: 0.5 * (1 + math.cos(math.pi * done / max_steps)) if cosine else 1
    )
    torch.manual_seed(seed)
    started = time.perf_counter()
    for step in range(1, max_steps + 1):
        model.train()
        for role, role_pairs in pairs.items():
            rows = rng.sample(range(len(role_pairs)), batch_size // len(pairs))
            role_masks = masks[role] if masks else None
            with torch.autocast(model.device.type, torch.bfloat16, enabled=bf16):
                loss = _role_step(
                    model, tokenizer, role_pairs, role_masks, rows, chunks, len(pairs)
                )
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        last = keep_last and step == max_steps
        if last or (step >= first_check and (step - first_check) % check_every == 0):
            measured = measure()
            success, after = measured["solver/success_round1"], measured["solver/success_final"]
            _console.print(
                f"[dim]tiny warm-start: step {step} ({time.perf_counter() - started:.0f} s), "
                f"loss {loss.item():.3f}, held-out success critique-free {success:.2f}, "
                f"after self-critique {after:.2f}[/dim]"
            )
            if accept(measured) or last:
                return step, measured
    raise RuntimeError(f"the tiny warm-start did not reach its targets in {max_steps} steps")
