"""The RL algorithms as pure functions over tensors: advantages, weights, losses, aggregation.

Nothing here touches a model, a config object or the disk; every function is tested on tiny
tensors. Notation follows the ICRL paper (arXiv 2605.15224): Eq. 5 role-wise advantages, Eq. 4
calibration weights, Eq. 6 the weighted clipped surrogate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGGREGATIONS: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def role_wise_advantages(
    rewards: torch.Tensor,
    query_ids: Sequence[object],
    roles: Sequence[object],
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> torch.Tensor:
    """Eq. 5: ``(r - mean) / (std + eps)`` within each (query, role) bucket.

    ``std`` is the unbiased standard deviation. A singleton bucket gets 0 (``r - mean``), as
    does every member of a zero-variance bucket. With ``normalize_std=False`` only the mean is
    removed (Dr. GRPO). Plain GRPO is the special case where every role is the same.
    """
    if not (len(rewards) == len(query_ids) == len(roles)):
        raise ValueError("rewards, query_ids and roles must have the same length")
    rewards = rewards.to(torch.float64)
    advantages = torch.zeros_like(rewards)
    buckets: dict[tuple[object, object], list[int]] = {}
    for i, key in enumerate(zip(query_ids, roles, strict=True)):
        buckets.setdefault(key, []).append(i)
    for members in buckets.values():
        index = torch.tensor(members)
        r = rewards[index]
        centred = r - r.mean()
        if normalize_std and len(members) > 1:
            centred = centred / (r.std(unbiased=True) + eps)
        advantages[index] = centred
    return advantages.to(torch.float32)


def calibration_weights(
    old_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    w_min: float = 0.0,
    w_max: float = 2.0,
) -> torch.Tensor:
    """Eq. 4: ``w_t = clamp(exp(log π_old(y_t|x̃) − log μ(y_t|x_behav)), w_min, w_max)``.

    The weight carries no gradient.

    For a revision, ``x̃`` is the critique-free prompt and ``x_behav`` the critique-conditioned
    one, so ``w_t`` says how much the critique was needed for that token. Elsewhere both contexts
    agree and ``w_t`` only corrects the tiny train/inference mismatch (≈ 1).
    """
    log_ratio = (old_logprobs - behavior_logprobs).detach().clamp(-20.0, 20.0)
    return log_ratio.exp().clamp(w_min, w_max)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 per token: ``−w_t · min(ρ_t Â, clip(ρ_t, 1−ε_low, 1+ε_high) Â)``.

    ``logprobs``/``old_logprobs``/``weights`` are ``[batch, tokens]``; ``advantages`` is
    ``[batch]`` (one scalar per sample, broadcast over its tokens). Returns the per-token loss
    and a float mask of the tokens where clipping was active (for ``loss/clip_frac``).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    if weights is not None:
        loss = loss * weights
    clip_active = (clipped < unclipped).float()
    return loss, clip_active


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ‖π_ref) per token: ``exp(δ) − δ − 1``, ``δ = ref − θ``.

    Non-negative and unbiased; ``δ`` is clamped to ±20 so a rare token cannot overflow ``exp``.
    """
    delta = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return delta.exp() - delta - 1.0


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    num_samples: int,
    num_tokens: int,
    max_new_tokens: int,
) -> torch.Tensor:
    """Reduce a micro-batch's per-token loss to its share of the whole batch's scalar loss.

    The normalisers are those of the **whole** optimizer batch (``num_samples`` samples,
    ``num_tokens`` loss-masked tokens), so summing the returned values over micro-batches gives
    exactly the full-batch loss — gradient accumulation changes nothing.

    - ``token-mean``: Σ loss / total tokens (DAPO, verl's default).
    - ``seq-mean-token-mean``: mean over samples of each sample's token mean (GRPO, ICRL).
    - ``seq-mean-token-sum-norm``: Σ loss / (samples × max_new_tokens) (Dr. GRPO's constant).
    """
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / max(num_tokens, 1)
    if mode == "seq-mean-token-mean":
        per_sample = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_sample.sum() / max(num_samples, 1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / max(num_samples * max_new_tokens, 1)
    raise ValueError(
        f"unknown loss aggregation '{mode}'; choose one of: {', '.join(LOSS_AGGREGATIONS)}"
    )


def critic_reward(previous: float, following: float, mode: str = "success_or_delta") -> float:
    """Eq. 3: a critique is worth what the attempt after it gained.

    ``success_or_delta`` (the paper): 1 if the next attempt succeeds, else R(next) − R(prev);
    ``delta`` (the predecessor's): always R(next) − R(prev); ``success``: 1 or 0.
    """
    if mode == "success_or_delta":
        return 1.0 if following == 1.0 else following - previous
    if mode == "delta":
        return following - previous
    if mode == "success":
        return 1.0 if following == 1.0 else 0.0
    raise ValueError(f"unknown critic reward '{mode}'")


CALIBRATIONS = ("token_tis", "none", "seq_geomean", "icepop_mask", "luffy_shaping", "keep_critique")


def token_weights(
    old_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    w_min: float = 0.0,
    w_max: float = 2.0,
) -> torch.Tensor:
    """The per-token weight each calibration mode multiplies onto the clipped surrogate.

    ``token_tis`` is Eq. 4; ``seq_geomean`` gives every token of a sample the clamped geometric
    mean of its ratios; ``icepop_mask`` keeps the raw ratio inside [w_min, w_max] and zeroes it
    outside; the other modes (``none``, ``luffy_shaping``, ``keep_critique``) weigh tokens by 1.
    """
    if mode == "token_tis":
        return calibration_weights(old_logprobs, behavior_logprobs, w_min, w_max)
    log_ratio = (old_logprobs - behavior_logprobs).detach().clamp(-20.0, 20.0)
    if mode == "seq_geomean":
        mean = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return mean.exp().clamp(w_min, w_max).unsqueeze(-1).expand_as(log_ratio).contiguous()
    if mode == "icepop_mask":
        ratio = log_ratio.exp()
        return torch.where((ratio >= w_min) & (ratio <= w_max), ratio, torch.zeros_like(ratio))
    if mode in ("none", "luffy_shaping", "keep_critique"):
        return torch.ones_like(log_ratio)
    raise ValueError(f"unknown calibration '{mode}'; choose one of: {', '.join(CALIBRATIONS)}")


def shaped_policy_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, gamma: float = 0.1
) -> torch.Tensor:
    """Critique-GRPO's off-policy objective per token: ``−Â · p/(p + γ)`` with ``p = π_θ(y_t)``.

    The shaping lifts the gradient of low-probability tokens (∝ γ/(p + γ)²) so a refinement the
    policy would rarely produce still teaches it; there is no ratio to the behavior policy.
    """
    p = logprobs.exp()
    return -(p / (p + gamma)) * advantages.unsqueeze(-1)
