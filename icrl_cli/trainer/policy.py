"""One policy update (Eq. 6): the weighted policy loss of every micro-batch, accumulated into one
optimizer step, with the diagnostics the step logs.

Micro-batch losses are normalised by the whole batch, so the micro-batch size changes memory,
never the gradient.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from icrl_cli.config import AlgoConfig, RunConfig
from icrl_cli.generation.base import Sampling
from icrl_cli.models import pick_dtype
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.algorithms import (
    POLICY_LOSSES,
    LossSettings,
    aggregate_loss,
    calibration_weights,
    kl_k3,
    token_weights,
)
from icrl_cli.trainer.batch import ResponseBatch, collate, idle_batch, micro_batches
from icrl_cli.trainer.distributed import World
from icrl_cli.trainer.logprobs import ResponseScorer, response_logprobs, score_response

# What each micro-batch adds to the step's diagnostics (summed over micro-batches and ranks).
# The step's totals where the weight bites (``divergence_totals``).
DIVERGENCE_KEYS = (
    "div_revisions",
    "div_rows",
    "div_w_at",
    "div_w_before",
    "div_before_tokens",
    "div_w_after",
    "div_after_tokens",
    "w_low",
)


TOTALS = (
    "policy",
    "kl",
    "clip",
    "entropy",
    "mismatch",
    "same_context_tokens",
    "w_rev",
    "w_clip",
    "rev_tokens",
    "rev_gap",
    *DIVERGENCE_KEYS,
)


def divergence_totals(
    tis: torch.Tensor, greedy: torch.Tensor, revision_mask: torch.Tensor
) -> dict[str, float]:
    """Where the calibration weight bites: in each revision (its trained tokens), the first
    token that is not the critique-free greedy choice, and the token_tis weight ``tis`` before,
    at and after it (over the revisions that depart at all), and the revision tokens whose
    weight is below 0.5. Sums, for the step's totals."""
    return {k: v.item() for k, v in _divergence_sums(tis, greedy, revision_mask).items()}


def _divergence_sums(
    tis: torch.Tensor, greedy: torch.Tensor, revision_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    trained = revision_mask > 0
    departs = trained & ~greedy
    steps = torch.arange(tis.size(-1), device=tis.device).expand_as(tis)
    first = torch.where(departs, steps, tis.size(-1)).min(-1).values.unsqueeze(-1)
    departing = departs.any(-1, keepdim=True)
    before = trained & departing & (steps < first)
    at = departs & (steps == first)
    after = trained & departing & (steps > first)
    return {
        "div_revisions": trained.any(-1).sum(),
        "div_rows": departing.sum(),
        "div_w_at": (tis * at).sum(),
        "div_w_before": (tis * before).sum(),
        "div_before_tokens": before.sum(),
        "div_w_after": (tis * after).sum(),
        "div_after_tokens": after.sum(),
        "w_low": ((tis < 0.5) & trained).sum(),
    }


def sampling_of(config: RunConfig) -> Sampling:
    """The distribution ``config``'s sampler draws from, for the trainer to score under."""
    return Sampling(config.generation.temperature, config.generation.top_p)


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
    revision_gap: float | None = None
    # Where the weight bites (``divergence_totals``); None without revisions.
    divergence_frac: float | None = None  # revisions that depart from the greedy choice
    w_at_divergence: float | None = None
    w_before_divergence: float | None = None
    w_after_divergence: float | None = None
    w_below_half_frac: float | None = None  # revision tokens with w < 0.5

    @classmethod
    def skipped_step(cls) -> UpdateStats:
        """A step with nothing to train on: no update, zero losses."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, skipped=True)

    @classmethod
    def from_totals(
        cls, totals: dict[str, float], num_tokens: int, grad_norm: float, skipped: bool
    ) -> UpdateStats:
        per_token = max(num_tokens, 1)
        revision_tokens = totals["rev_tokens"]
        return cls(
            loss_policy=totals["policy"],
            loss_kl=totals["kl"],
            clip_frac=totals["clip"] / per_token,
            entropy=totals["entropy"] / per_token,
            grad_norm=grad_norm,
            logprob_mismatch=totals["mismatch"] / max(totals["same_context_tokens"], 1.0),
            w_mean_revision=_ratio(totals["w_rev"], revision_tokens),
            w_clip_frac=_ratio(totals["w_clip"], revision_tokens),
            skipped=skipped,
            revision_gap=_ratio(totals["rev_gap"], revision_tokens),
            divergence_frac=_ratio(totals["div_rows"], totals["div_revisions"]),
            w_at_divergence=_ratio(totals["div_w_at"], totals["div_rows"]),
            w_before_divergence=_ratio(totals["div_w_before"], totals["div_before_tokens"]),
            w_after_divergence=_ratio(totals["div_w_after"], totals["div_after_tokens"]),
            w_below_half_frac=_ratio(totals["w_low"], revision_tokens),
        )


def _ratio(total: float, count: float) -> float | None:
    return total / count if count else None


def per_token_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    behavior: torch.Tensor,
    batch: ResponseBatch,
    algo: AlgoConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 per token: the calibration weight ``algo.token_weight`` times the clipped surrogate;
    revision tokens take ``algo.revision_loss``. With one update per rollout batch π_old is the
    current policy on the training context, so ρ ≡ 1 in value while its gradient is ∇log π;
    with several, π_old is the policy that sampled and the clip binds."""
    weights = token_weights(
        old_logprobs, behavior, batch.mask, algo.token_weight, algo.w_min, algo.w_max
    )
    settings = LossSettings(algo.eps_low, algo.eps_high, algo.shaping_gamma)
    loss, clip_active = POLICY_LOSSES["clipped"](
        logprobs, old_logprobs, batch.advantages, weights, settings
    )
    if algo.revision_loss != "clipped":
        revision = batch.is_revision.unsqueeze(-1)
        revised, revised_clip = POLICY_LOSSES[algo.revision_loss](
            logprobs, old_logprobs, batch.advantages, weights, settings
        )
        loss = torch.where(revision, revised, loss)
        clip_active = torch.where(revision, revised_clip, clip_active)
    return loss, clip_active


def diagnostics(
    old_logprobs: torch.Tensor,
    behavior: torch.Tensor,
    entropy: torch.Tensor,
    clip_active: torch.Tensor,
    batch: ResponseBatch,
    algo: AlgoConfig,
    greedy: torch.Tensor,
) -> tuple[dict[str, float], list[float | None]]:
    """A micro-batch's share of the step's clip, entropy, mismatch and weight statistics, and
    each row's mean token_tis weight (None outside revisions)."""
    revision = batch.is_revision.unsqueeze(-1)
    # Sampler-vs-trainer mismatch, where both saw the same context (not revisions).
    same_context = batch.mask * ~revision
    # Fig. 4's diagnostic: the token_tis weight on revision tokens, whatever weight is applied.
    revision_mask = batch.mask * revision
    ratio = (old_logprobs - behavior).clamp(-20.0, 20.0).exp()
    tis = calibration_weights(old_logprobs, behavior, algo.w_min, algo.w_max)
    outside = (ratio > algo.w_max) | (ratio < algo.w_min)
    tokens = revision_mask.sum(-1)
    row_weights = ((tis * revision_mask).sum(-1) / tokens.clamp(min=1.0)).tolist()
    rows = [w if n > 0 else None for w, n in zip(row_weights, tokens.tolist(), strict=True)]
    sums = {
        "clip": (clip_active * batch.mask).sum(),
        "entropy": (entropy * batch.mask).sum(),
        "mismatch": ((old_logprobs - behavior).abs() * same_context).sum(),
        "same_context_tokens": same_context.sum(),
        "w_rev": (tis * revision_mask).sum(),
        "w_clip": (outside.float() * revision_mask).sum(),
        "rev_tokens": revision_mask.sum(),
        # |log π_old(y|q) − log μ(y|q, c)| on revision tokens: what the critique changed.
        "rev_gap": ((old_logprobs - behavior).abs() * revision_mask).sum(),
        **_divergence_sums(tis, greedy, revision_mask),
    }
    # One transfer for all of them (each .item() would wait for the device on its own).
    values = torch.stack([value.double() for value in sums.values()]).tolist()
    return dict(zip(sums, values, strict=True)), rows


def micro_batch_step(
    model: PreTrainedModel | ResponseScorer,
    ref_model: PreTrainedModel | None,
    batch: ResponseBatch,
    algo: AlgoConfig,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    world_size: int,
    sampling: Sampling,
) -> tuple[dict[str, float], list[float | None]]:
    """Forward and backward of one micro-batch; its share of the step's totals and its rows'
    mean calibration weights."""
    scored = score_response(
        model,
        batch,
        sampling,
        with_entropy=True,
        entropy_grad=algo.entropy_coef > 0,
        with_greedy=True,
    )
    logprobs, entropy = scored.logprobs, scored.entropy
    assert entropy is not None and scored.greedy is not None
    old_logprobs = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs
    behavior = batch.behavior_logprobs
    if algo.behavior_logprobs == "recompute":
        # Outside revisions the behavior context is the training context at the same weights.
        behavior = torch.where(batch.is_revision.unsqueeze(-1), behavior, old_logprobs)
    per_token, clip_active = per_token_loss(logprobs, old_logprobs, behavior, batch, algo)
    policy_loss = reduce(per_token)
    loss, kl = policy_loss, 0.0
    if algo.entropy_coef > 0:  # a bonus: higher entropy lowers the loss
        loss = loss - algo.entropy_coef * reduce(entropy)
    if ref_model is not None:
        with torch.no_grad():
            ref_logprobs, _ = response_logprobs(ref_model, batch, sampling=sampling)
        kl_loss = reduce(kl_k3(logprobs, ref_logprobs))
        loss = loss + algo.kl_coef * kl_loss
        kl = kl_loss.item()
    (loss * world_size).backward()  # FSDP averages over the ranks; the loss is a sum
    shares, rows = diagnostics(
        old_logprobs, behavior, entropy.detach(), clip_active, batch, algo, scored.greedy
    )
    return {"policy": policy_loss.item(), "kl": kl, **shares}, rows


def policy_update(
    model: PreTrainedModel | ResponseScorer,
    ref_model: PreTrainedModel | None,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    config: RunConfig,
    pad_id: int,
    world: World | None = None,
) -> UpdateStats:
    """``train.mini_batches`` optimizer steps on ``samples``, in order, each on its share
    (``optimizer_step``); losses and the gradient norm are the mean over the steps, token
    statistics over all their tokens."""
    parts = config.train.mini_batches
    totals, tokens, norms, skipped = dict.fromkeys(TOTALS, 0.0), 0, [], False
    for part in range(parts):
        share = samples[part * len(samples) // parts : (part + 1) * len(samples) // parts]
        step_totals, step_tokens, norm, step_skipped = optimizer_step(
            model, ref_model, optimizer, share, config, pad_id, world or World()
        )
        for key, value in step_totals.items():
            totals[key] += value
        tokens, skipped = tokens + step_tokens, skipped or step_skipped
        norms.append(norm)
    totals["policy"] /= parts
    totals["kl"] /= parts
    return UpdateStats.from_totals(totals, tokens, sum(norms) / parts, skipped)


def optimizer_step(
    model: PreTrainedModel | ResponseScorer,
    ref_model: PreTrainedModel | None,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    config: RunConfig,
    pad_id: int,
    world: World,
) -> tuple[dict[str, float], int, float, bool]:
    """One optimizer step on ``samples`` (Eq. 6), accumulated over micro-batches: its totals
    (``TOTALS``), its loss-masked tokens, the gradient norm and whether it was skipped.

    A non-finite loss or gradient norm skips the step and leaves the weights untouched. Over
    several ranks (``world``; ``model`` sharded with FSDP2, which averages gradients over the
    ranks) each rank brings its own ``samples``: the loss is normalised by every rank's samples
    and tokens, so the step is the one a single process would take on all of them; a rank with
    fewer micro-batches runs idle ones so that the collectives line up.
    """
    algo, device = config.algo, model.device
    local_tokens = sum(sum(s.loss_mask) for s in samples)
    num_samples, num_tokens = (int(n) for n in world.sum([len(samples), local_tokens]))
    reduce = functools.partial(
        aggregate_loss,
        mode=algo.loss_aggregation,
        num_samples=num_samples,
        num_tokens=num_tokens,
        max_new_tokens=config.generation.max_new_tokens,
    )
    optimizer.zero_grad(set_to_none=True)
    model.train()
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    chunks: list[list[int] | None] = list(
        micro_batches(lengths, config.train.micro_batch_size, config.train.micro_batch_tokens)
    )
    chunks += [None] * (world.max(len(chunks)) - len(chunks))
    totals = dict.fromkeys(TOTALS, 0.0)
    # float32 masters, the forward in the compute dtype the sampler runs in (model.dtype).
    compute = pick_dtype(config.model.dtype, device)
    autocast = torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)
    for chunk in chunks:
        if chunk is None:
            batch = idle_batch(pad_id, device)
        else:
            batch = collate([samples[i] for i in chunk], pad_id, device)
        reduce_batch = functools.partial(reduce, mask=batch.mask)
        with autocast:
            shares, rows = micro_batch_step(
                model, ref_model, batch, algo, reduce_batch, world.size, sampling_of(config)
            )
        for key, value in shares.items():
            totals[key] += value
        for index, weight in zip(chunk or [], rows, strict=False):
            samples[index].calibration_weight_mean = weight
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
    return totals, num_tokens, grad_norm, skipped
