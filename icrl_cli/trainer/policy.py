"""The policy side of training: per-token log-probs of sampled responses, and one update.

Samples are processed in micro-batches whose losses are normalised by the whole batch, so the
micro-batch size changes memory, never the gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from icrl_cli.config import AlgoConfig, RunConfig
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.algorithms import (
    aggregate_loss,
    calibration_weights,
    clipped_policy_loss,
    kl_k3,
    role_wise_advantages,
    shaped_policy_loss,
    token_weights,
)
from icrl_cli.trainer.distributed import World


@dataclass
class ResponseBatch:
    """Responses left-aligned in ``[n, T]`` tensors; ``mask`` is the loss mask (0 on padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor  # index of the logit that predicts each response token
    response_ids: torch.Tensor
    mask: torch.Tensor
    behavior_logprobs: torch.Tensor
    advantages: torch.Tensor
    is_revision: torch.Tensor  # [n] bool: solver samples of round 2 and later


def collate(samples: list[Sample], pad_id: int, device: torch.device) -> ResponseBatch:
    """Training context (``prompt_ids``) + sampled tokens, exactly as sampled: no re-tokenising."""
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    steps = max(max(len(s.response_ids) for s in samples), 1)
    n = len(samples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    positions = torch.zeros((n, steps), dtype=torch.long)
    response = torch.full((n, steps), pad_id, dtype=torch.long)
    mask = torch.zeros((n, steps), dtype=torch.float32)
    behavior = torch.zeros((n, steps), dtype=torch.float32)
    for row, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[row, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
        attention[row, : p + r] = 1
        # The logit at position i predicts token i + 1; pad rows point at a valid index.
        positions[row] = torch.arange(p - 1, p - 1 + steps).clamp(max=width - 1)
        if r:
            response[row, :r] = torch.tensor(s.response_ids)
            mask[row, :r] = torch.tensor(s.loss_mask, dtype=torch.float32)
            behavior[row, :r] = torch.tensor(s.behavior_logprobs, dtype=torch.float32)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    is_revision = torch.tensor([s.is_revision for s in samples], dtype=torch.bool)
    return ResponseBatch(
        input_ids.to(device),
        attention.to(device),
        positions.to(device),
        response.to(device),
        mask.to(device),
        behavior.to(device),
        advantages.to(device),
        is_revision.to(device),
    )


def micro_batches(lengths: list[int], max_rows: int, max_tokens: int | None) -> list[list[int]]:
    """Indices of the samples in each micro-batch. Without ``max_tokens``: ``max_rows`` at a
    time, in order. With it: sorted by length (``prompt + response`` tokens), each micro-batch
    filled while it holds at most ``max_rows`` rows and ``rows × its longest`` stays within
    ``max_tokens`` (a sample longer than that goes alone)."""
    if max_tokens is None:
        return [
            list(range(i, min(i + max_rows, len(lengths))))
            for i in range(0, len(lengths), max_rows)
        ]
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        current = batches[-1] if batches else None
        # Sorted ascending, so this sample is the micro-batch's longest once added.
        if (
            current is None
            or len(current) >= max_rows
            or (len(current) + 1) * lengths[index] > max_tokens
        ):
            batches.append([index])
        else:
            current.append(index)
    return batches


def response_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """``[n, T, vocab]`` float logits at the ``positions`` that predict response tokens: the
    output head runs on those positions only, so memory is n × T × vocab, not
    n × (prompt + T) × vocab."""
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state
    index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
    return model.get_output_embeddings()(hidden.gather(1, index)).float()


class ResponseScorer(torch.nn.Module):
    """``response_logits`` as one module's forward: what the update trains under FSDP2
    (``trainer.distributed``), whose root unit (embeddings, tied head, final norm) is gathered
    around a module's forward and has its gradients reduced after it."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        return response_logits(self.model, input_ids, attention_mask, positions)


def response_logprobs(
    model: PreTrainedModel | ResponseScorer, batch: ResponseBatch, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[n, T]`` log π(y_t | context, y_<t) of each response token, and optionally the
    entropy (see ``response_logits``)."""
    score = (
        model if isinstance(model, ResponseScorer) else functools.partial(response_logits, model)
    )
    logits = score(batch.input_ids, batch.attention_mask, batch.positions)
    logprobs_all = torch.log_softmax(logits, dim=-1)
    logprobs = logprobs_all.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    return logprobs, entropy


@torch.no_grad()
def context_logprobs(
    model: PreTrainedModel, samples: list[Sample], pad_id: int, micro_batch_size: int
) -> list[list[float]]:
    """log π(y_t | prompt_ids, y_<t) of every response token of each sample, in micro-batches
    and without gradients."""
    result: list[list[float]] = []
    for start in range(0, len(samples), micro_batch_size):
        chunk = samples[start : start + micro_batch_size]
        logprobs, _ = response_logprobs(model, collate(chunk, pad_id, model.device))
        result += [logprobs[row, : len(s.response_ids)].tolist() for row, s in enumerate(chunk)]
    return result


def recompute_behavior_logprobs(
    model: PreTrainedModel, samples: list[Sample], pad_id: int, micro_batch_size: int
) -> None:
    """Replace each revision's engine log-probs with a trainer forward under its behavior
    (critique-conditioned) prompt, at the same weights (``algo.behavior_logprobs=recompute``)."""
    revisions = [s for s in samples if s.behavior_prompt_ids != s.prompt_ids]
    as_sampled = [replace(s, prompt_ids=s.behavior_prompt_ids) for s in revisions]
    recomputed = context_logprobs(model, as_sampled, pad_id, micro_batch_size)
    for s, logprobs in zip(revisions, recomputed, strict=True):
        s.behavior_logprobs = logprobs


@dataclass
class UpdateStats:
    loss_policy: float
    loss_kl: float
    clip_frac: float
    entropy: float
    grad_norm: float
    logprob_mismatch: float
    w_mean_revision: float | None
    w_clip_frac: float | None
    skipped: bool

    @classmethod
    def skipped_step(cls) -> UpdateStats:
        """A step with nothing to train on: no update, zero losses."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, skipped=True)


def _idle_batch(pad_id: int, device: torch.device) -> ResponseBatch:
    """One padding token with nothing to learn: a rank with fewer micro-batches than another
    runs these, so that every rank joins the same FSDP collectives."""
    one = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    zero = torch.zeros((1, 1), device=device)
    return ResponseBatch(
        input_ids=one,
        attention_mask=torch.ones_like(one),
        positions=torch.zeros_like(one),
        response_ids=one,
        mask=zero,
        behavior_logprobs=zero,
        advantages=torch.zeros(1, device=device),
        is_revision=torch.zeros(1, dtype=torch.bool, device=device),
    )


def policy_update(
    model: PreTrainedModel | ResponseScorer,
    ref_model: PreTrainedModel | None,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    config: RunConfig,
    pad_id: int,
    world: World | None = None,
) -> UpdateStats:
    """One optimizer step on ``samples`` (Eq. 6), accumulated over micro-batches.

    With one update per rollout batch, π_old is the current policy on the training context, so
    ρ ≡ 1 in value while its gradient is ∇log π; the calibration weight compares that π_old with
    the behavior log-probs. A non-finite loss or gradient norm skips the step and leaves the
    weights untouched. Over several ranks (``world``; ``model`` sharded with FSDP2, which
    averages gradients over the ranks) each rank brings its own ``samples``: the loss is
    normalised by every rank's samples and tokens, so the step is the one a single process
    would take on all of them.
    """
    world = world or World()
    algo, device = config.algo, model.device
    local_tokens = sum(sum(s.loss_mask) for s in samples)
    num_samples, num_tokens = (int(n) for n in world.sum([len(samples), local_tokens]))
    totals = dict.fromkeys(
        (
            "policy",
            "kl",
            "clip",
            "entropy",
            "mismatch",
            "same_context_tokens",
            "w_rev",
            "w_clip",
            "rev_tokens",
        ),
        0.0,
    )
    optimizer.zero_grad(set_to_none=True)
    model.train()
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    chunks: list[list[int] | None] = list(
        micro_batches(lengths, config.train.micro_batch_size, config.train.micro_batch_tokens)
    )
    chunks += [None] * (world.max(len(chunks)) - len(chunks))
    for chunk in chunks:
        if chunk is None:
            batch = _idle_batch(pad_id, device)
        else:
            batch = collate([samples[i] for i in chunk], pad_id, device)
        logprobs, entropy = response_logprobs(model, batch, with_entropy=True)
        old_logprobs = logprobs.detach()
        revision = batch.is_revision.unsqueeze(-1)
        behavior = batch.behavior_logprobs
        if algo.behavior_logprobs == "recompute":
            # Outside revisions the behavior context is the training context at the same weights.
            behavior = torch.where(revision, behavior, old_logprobs)
        weights = token_weights(
            old_logprobs, behavior, batch.mask, algo.calibration, algo.w_min, algo.w_max
        )
        per_token, clip_active = clipped_policy_loss(
            logprobs, old_logprobs, batch.advantages, algo.eps_low, algo.eps_high, weights
        )
        if algo.calibration == "luffy_shaping":
            shaped = shaped_policy_loss(logprobs, batch.advantages, algo.shaping_gamma)
            per_token = torch.where(revision, shaped, per_token)
        reduce = functools.partial(
            aggregate_loss,
            mask=batch.mask,
            mode=algo.loss_aggregation,
            num_samples=num_samples,
            num_tokens=num_tokens,
            max_new_tokens=config.generation.max_new_tokens,
        )
        policy_loss = reduce(per_token)
        loss = policy_loss
        if ref_model is not None:
            with torch.no_grad():
                ref_logprobs, _ = response_logprobs(ref_model, batch)
            kl_loss = reduce(kl_k3(logprobs, ref_logprobs))
            loss = loss + algo.kl_coef * kl_loss
            totals["kl"] += kl_loss.item()
        (loss * world.size).backward()  # FSDP averages over the ranks; the loss is a sum
        totals["policy"] += policy_loss.item()
        totals["clip"] += (clip_active * batch.mask).sum().item()
        totals["entropy"] += (entropy * batch.mask).sum().item()
        # Sampler-vs-trainer mismatch, where both saw the same context (not revisions).
        same_context = batch.mask * ~revision
        totals["mismatch"] += ((old_logprobs - behavior).abs() * same_context).sum().item()
        totals["same_context_tokens"] += same_context.sum().item()
        # Fig. 4's diagnostic: the token_tis weight on revision tokens, whatever mode is applied.
        revision_mask = batch.mask * revision
        ratio = (old_logprobs - behavior).clamp(-20.0, 20.0).exp()
        tis = calibration_weights(old_logprobs, behavior, algo.w_min, algo.w_max)
        totals["w_rev"] += (tis * revision_mask).sum().item()
        outside = (ratio > algo.w_max) | (ratio < algo.w_min)
        totals["w_clip"] += (outside.float() * revision_mask).sum().item()
        totals["rev_tokens"] += revision_mask.sum().item()
    totals = dict(zip(totals, world.sum(list(totals.values())), strict=True))
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
    )
    skipped = not (
        math.isfinite(totals["policy"]) and math.isfinite(totals["kl"]) and math.isfinite(grad_norm)
    )
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    per_token = max(num_tokens, 1)
    revision_tokens = totals["rev_tokens"]
    return UpdateStats(
        loss_policy=totals["policy"],
        loss_kl=totals["kl"],
        clip_frac=totals["clip"] / per_token,
        entropy=totals["entropy"] / per_token,
        grad_norm=grad_norm,
        logprob_mismatch=totals["mismatch"] / max(totals["same_context_tokens"], 1.0),
        w_mean_revision=totals["w_rev"] / revision_tokens if revision_tokens else None,
        w_clip_frac=totals["w_clip"] / revision_tokens if revision_tokens else None,
        skipped=skipped,
    )


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
