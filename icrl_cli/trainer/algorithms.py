"""The RL algorithms as pure functions over tensors, in the paper's order (arXiv 2605.15224):
Eq. 3 the critic's reward, Eq. 4 the calibration weights, Eq. 5 role-wise advantages, Eq. 6 the
weighted clipped surrogate and its aggregation.

Nothing here touches a model, a config object or the disk; every function is tested on tiny
tensors. Each family of variants is a name → function registry (``CALIBRATION_WEIGHTS``,
``POLICY_LOSSES``, ``LOSS_AGGREGATIONS``, ``CRITIC_REWARDS``) from which the config's allowed
values are read: a new variant is one function under one ``@register`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

F = TypeVar("F", bound=Callable)


def registrar(registry: dict[str, F]) -> Callable[[str], Callable[[F], F]]:
    """``@register(name)`` for one registry."""

    def register(name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            registry[name] = fn
            return fn

        return add

    return register


def lookup(registry: dict[str, F], family: str, name: str) -> F:
    """The function registered as ``name``; an unknown name lists the valid ones."""
    if name not in registry:
        raise ValueError(f"unknown {family} '{name}'; choose one of: {', '.join(registry)}")
    return registry[name]


# ---------------------------------------------------------------------------------------------
# Eq. 3: the critic's reward

CRITIC_REWARDS: dict[str, Callable[[float, float], float]] = {}
register_critic_reward = registrar(CRITIC_REWARDS)


@register_critic_reward("success_or_delta")
def success_or_delta(previous: float, following: float) -> float:
    """The paper's: 1 if the next attempt succeeds, else R(next) − R(prev)."""
    return 1.0 if following == 1.0 else following - previous


@register_critic_reward("delta")
def delta(previous: float, following: float) -> float:
    """The predecessor's: always R(next) − R(prev)."""
    return following - previous


@register_critic_reward("success")
def success(previous: float, following: float) -> float:
    """1 or 0 for the next attempt's success."""
    return 1.0 if following == 1.0 else 0.0


def critic_reward(previous: float, following: float, mode: str = "success_or_delta") -> float:
    """Eq. 3: a critique is worth what the attempt after it gained."""
    return lookup(CRITIC_REWARDS, "critic reward", mode)(previous, following)


# ---------------------------------------------------------------------------------------------
# Eq. 4: calibration weights. Each takes [batch, tokens] log-probs under the training context
# (π_old) and the behavior context (μ), the loss mask and the clamp bounds.

CalibrationWeights = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor
]
CALIBRATION_WEIGHTS: dict[str, CalibrationWeights] = {}
register_calibration = registrar(CALIBRATION_WEIGHTS)


def _log_ratio(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor) -> torch.Tensor:
    return (old_logprobs - behavior_logprobs).detach().clamp(-20.0, 20.0)


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
    return _log_ratio(old_logprobs, behavior_logprobs).exp().clamp(w_min, w_max)


@register_calibration("token_tis")
def token_tis(old: Tensor, behavior: Tensor, mask: Tensor, w_min: float, w_max: float) -> Tensor:
    """Eq. 4, token by token."""
    return calibration_weights(old, behavior, w_min, w_max)


@register_calibration("none")
def no_calibration(
    old: Tensor, behavior: Tensor, mask: Tensor, w_min: float, w_max: float
) -> Tensor:
    """w ≡ 1: revisions are trained as if the critique-free policy had sampled them."""
    return torch.ones_like(old)


@register_calibration("seq_geomean")
def seq_geomean(old: Tensor, behavior: Tensor, mask: Tensor, w_min: float, w_max: float) -> Tensor:
    """One weight per sample: the clamped geometric mean of its token ratios."""
    log_ratio = _log_ratio(old, behavior)
    mean = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return mean.exp().clamp(w_min, w_max).unsqueeze(-1).expand_as(log_ratio).contiguous()


@register_calibration("icepop_mask")
def icepop_mask(old: Tensor, behavior: Tensor, mask: Tensor, w_min: float, w_max: float) -> Tensor:
    """The raw ratio inside [w_min, w_max], zero outside (IcePop's masking)."""
    ratio = _log_ratio(old, behavior).exp()
    return torch.where((ratio >= w_min) & (ratio <= w_max), ratio, torch.zeros_like(ratio))


def token_weights(
    old_logprobs: torch.Tensor,
    behavior_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    w_min: float = 0.0,
    w_max: float = 2.0,
) -> torch.Tensor:
    """The per-token weight the calibration ``mode`` multiplies onto the policy loss."""
    weigh = lookup(CALIBRATION_WEIGHTS, "calibration weight", mode)
    return weigh(old_logprobs, behavior_logprobs, mask, w_min, w_max)


# ---------------------------------------------------------------------------------------------
# Eq. 5: role-wise advantages


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


# ---------------------------------------------------------------------------------------------
# Eq. 6: the policy loss per token. Each returns the per-token loss and a float mask of the
# tokens where clipping was active (for ``loss/clip_frac``).


@dataclass(frozen=True)
class LossSettings:
    """The numbers a policy loss reads: PPO's clip widths and the shaping's γ."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    shaping_gamma: float = 0.1


PolicyLoss = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LossSettings],
    tuple[torch.Tensor, torch.Tensor],
]
POLICY_LOSSES: dict[str, PolicyLoss] = {}
register_policy_loss = registrar(POLICY_LOSSES)


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
    ``[batch]`` (one scalar per sample, broadcast over its tokens).
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


def shaped_policy_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, gamma: float = 0.1
) -> torch.Tensor:
    """Critique-GRPO's off-policy objective per token: ``−Â · p/(p + γ)`` with ``p = π_θ(y_t)``.

    The shaping lifts the gradient of low-probability tokens (∝ γ/(p + γ)²) so a refinement the
    policy would rarely produce still teaches it; there is no ratio to the behavior policy.
    """
    p = logprobs.exp()
    return -(p / (p + gamma)) * advantages.unsqueeze(-1)


@register_policy_loss("clipped")
def clipped(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    weights: Tensor,
    settings: LossSettings,
) -> tuple[Tensor, Tensor]:
    """Eq. 6: the weighted clipped surrogate."""
    return clipped_policy_loss(
        logprobs, old_logprobs, advantages, settings.eps_low, settings.eps_high, weights
    )


@register_policy_loss("shaped")
def shaped(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    weights: Tensor,
    settings: LossSettings,
) -> tuple[Tensor, Tensor]:
    """Critique-GRPO's p/(p+γ) objective, weighted; it never clips."""
    loss = shaped_policy_loss(logprobs, advantages, settings.shaping_gamma) * weights
    return loss, torch.zeros_like(loss)


# ---------------------------------------------------------------------------------------------
# Aggregation: a micro-batch's per-token loss → its share of the whole batch's scalar loss.
# The normalisers are those of the **whole** optimizer batch (``num_samples`` samples,
# ``num_tokens`` loss-masked tokens), so summing over micro-batches gives exactly the full-batch
# loss: gradient accumulation changes nothing.

Aggregation = Callable[[torch.Tensor, torch.Tensor, int, int, int], torch.Tensor]
LOSS_AGGREGATIONS: dict[str, Aggregation] = {}
register_aggregation = registrar(LOSS_AGGREGATIONS)


@register_aggregation("token-mean")
def token_mean(
    masked: Tensor, mask: Tensor, num_samples: int, num_tokens: int, max_new_tokens: int
) -> Tensor:
    """Σ loss / total tokens (DAPO, verl's default)."""
    return masked.sum() / max(num_tokens, 1)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(
    masked: Tensor, mask: Tensor, num_samples: int, num_tokens: int, max_new_tokens: int
) -> Tensor:
    """The mean over samples of each sample's token mean (GRPO, ICRL)."""
    per_sample = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_sample.sum() / max(num_samples, 1)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    masked: Tensor, mask: Tensor, num_samples: int, num_tokens: int, max_new_tokens: int
) -> Tensor:
    """Σ loss / (samples × max_new_tokens) (Dr. GRPO's constant)."""
    return masked.sum() / max(num_samples * max_new_tokens, 1)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_samples: int,
    num_tokens: int,
    max_new_tokens: int,
) -> torch.Tensor:
    """Reduce a micro-batch's per-token loss with the aggregation ``mode``."""
    reduce = lookup(LOSS_AGGREGATIONS, "loss aggregation", mode)
    mask = mask.to(per_token.dtype)
    return reduce(per_token * mask, mask, num_samples, num_tokens, max_new_tokens)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ‖π_ref) per token: ``exp(δ) − δ − 1``, ``δ = ref − θ``.

    Non-negative and unbiased; ``δ`` is clamped to ±20 so a rare token cannot overflow ``exp``.
    """
    delta = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return delta.exp() - delta - 1.0
