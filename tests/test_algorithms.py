"""The algorithm functions against values worked out by hand."""

import math

import pytest
import torch

from icrl_cli.trainer.algorithms import (
    POLICY_LOSSES,
    LossSettings,
    aggregate_loss,
    calibration_weights,
    clipped_policy_loss,
    critic_reward,
    kl_k3,
    role_wise_advantages,
    shaped_policy_loss,
    token_weights,
)


def test_group_advantage_uses_unbiased_std():
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = 0.577350; 0.5 / 0.577350 = 0.866025
    adv = role_wise_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), ["q"] * 4, ["solver"] * 4)
    assert adv.tolist() == pytest.approx([0.866024, -0.866024, -0.866024, 0.866024], abs=1e-5)


def test_buckets_split_by_query_and_role_singletons_and_ties_get_zero():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 0.0])
    queries = ["a", "a", "a", "a", "b", "b"]
    roles = ["solver", "solver", "critic", "critic", "solver", "critic"]
    adv = role_wise_advantages(rewards, queries, roles)
    # (a, solver): [1, 0] → std = 0.707107 → ±0.707106
    assert adv[0].item() == pytest.approx(0.707106, abs=1e-5)
    assert adv[1].item() == pytest.approx(-0.707106, abs=1e-5)
    # (a, critic): [1, 0.5] → ±0.25 / 0.353553 = ±0.707104
    assert adv[2].item() == pytest.approx(0.707104, abs=1e-5)
    assert adv[3].item() == pytest.approx(-0.707104, abs=1e-5)
    # (b, solver) and (b, critic) are singletons → 0
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0
    tied = role_wise_advantages(torch.tensor([0.0, 0.0, 0.0]), ["q"] * 3, ["solver"] * 3)
    assert tied.tolist() == [0.0, 0.0, 0.0]


def test_without_std_normalisation_only_the_mean_is_removed():
    adv = role_wise_advantages(
        torch.tensor([1.0, 0.0, 0.0, 0.0]), ["q"] * 4, ["solver"] * 4, normalize_std=False
    )
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_calibration_weights_clamp_and_carry_no_gradient():
    old = torch.tensor([-1.0, -2.0, -1.0, -30.0], requires_grad=True)
    behavior = torch.tensor([-2.0, -1.0, -1.0, -1.0])
    w = calibration_weights(old, behavior, w_min=0.0, w_max=2.0)
    # e^1 = 2.718 → clamped to 2; e^-1 = 0.367879; e^0 = 1; a log-ratio of -29 is first
    # limited to -20 (so exp never overflows), giving e^-20 = 2.06e-9
    assert w.tolist() == pytest.approx([2.0, math.exp(-1), 1.0, math.exp(-20)], rel=1e-5)
    assert not w.requires_grad
    raised = calibration_weights(old, behavior, w_min=0.5, w_max=2.0)
    assert raised[3].item() == 0.5


def test_clipped_loss_by_hand():
    # ratios: e^0.405465 = 1.5, e^-0.693147 = 0.5, e^0 = 1
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([1.0]), 0.2, 0.28)
    # A > 0: min(1.5, 1.28) = 1.28; min(0.5, 0.8) = 0.5; 1 → negated
    assert loss[0].tolist() == pytest.approx([-1.28, -0.5, -1.0], abs=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.28)
    # A < 0: min(-1.5, -1.28) = -1.5; min(-0.5, -0.8) = -0.8
    assert loss[0].tolist() == pytest.approx([1.5, 0.8, 1.0], abs=1e-6)
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]
    weighted, _ = clipped_policy_loss(
        logp, old, torch.tensor([1.0]), 0.2, 0.28, weights=torch.tensor([[0.5, 2.0, 0.0]])
    )
    assert weighted[0].tolist() == pytest.approx([-0.64, -1.0, 0.0], abs=1e-6)


def test_clipped_loss_gradient_at_ratio_one_is_advantage_times_score():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, logp.detach(), torch.tensor([0.5]))
    loss.sum().backward()
    # d/dlogp of -(exp(logp - old) * A) at logp = old is -A
    assert logp.grad[0].tolist() == pytest.approx([-0.5, -0.5])


def test_k3_kl():
    # δ = ref − θ = -1: e^-1 + 1 − 1 = 0.367879; δ = 0 → 0; δ = 2: e^2 − 3 = 4.389056
    kl = kl_k3(torch.tensor([-1.0, -1.0, -3.0]), torch.tensor([-2.0, -1.0, -1.0]))
    assert kl.tolist() == pytest.approx([math.exp(-1), 0.0, math.exp(2) - 3], rel=1e-5)


def test_aggregation_modes_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    assert aggregate_loss(per_token, mask, "token-mean", 2, 4, 8).item() == pytest.approx(2.5)
    # seq-mean-token-mean: (2 + 4) / 2 = 3
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean", 2, 4, 8).item() == 3.0
    # Dr. GRPO: 10 / (2 × 8) = 0.625
    assert aggregate_loss(per_token, mask, "seq-mean-token-sum-norm", 2, 4, 8).item() == 0.625
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(per_token, mask, "nope", 2, 4, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_full_batch_loss(mode):
    torch.manual_seed(0)
    per_token = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1.0
    n_tokens = int(mask.sum())
    full = aggregate_loss(per_token, mask, mode, 6, n_tokens, 5)
    parts = sum(
        aggregate_loss(per_token[i : i + 2], mask[i : i + 2], mode, 6, n_tokens, 5)
        for i in range(0, 6, 2)
    )
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


@pytest.mark.parametrize(
    ("mode", "previous", "following", "expected"),
    [
        ("success_or_delta", 0.0, 1.0, 1.0),
        ("success_or_delta", 0.2, 0.5, 0.3),  # partial credit: the gain
        ("success_or_delta", 1.0, 0.0, -1.0),  # ungated: a critique that broke a success
        ("success_or_delta", 0.6, 1.0, 1.0),  # success counts fully, not as a 0.4 gain
        ("delta", 0.6, 1.0, 0.4),
        ("delta", 0.5, 0.2, -0.3),
        ("success", 0.5, 0.9, 0.0),
        ("success", 0.0, 1.0, 1.0),
    ],
)
def test_critic_reward_by_hand(mode, previous, following, expected):
    assert critic_reward(previous, following, mode) == pytest.approx(expected)


def test_calibration_modes_by_hand():
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    # log ratios: row 0 [+1, −1, 0]; row 1 [−0.5, −0.5, (masked) +5]
    behavior = torch.tensor([[-2.0, 0.0, -1.0], [-0.5, -0.5, -6.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    tis = token_weights(old, behavior, mask, "token_tis", 0.0, 2.0)
    assert tis[0].tolist() == pytest.approx([2.0, math.exp(-1), 1.0], rel=1e-6)
    assert token_weights(old, behavior, mask, "none").tolist() == [[1.0] * 3] * 2
    # seq_geomean: row 0 mean log ratio 0 → 1; row 1 mean over the mask −0.5 → e^−0.5
    geo = token_weights(old, behavior, mask, "seq_geomean", 0.0, 2.0)
    assert geo[0].tolist() == pytest.approx([1.0] * 3)
    assert geo[1].tolist() == pytest.approx([math.exp(-0.5)] * 3, rel=1e-6)
    # icepop in [0.5, 2]: e^1 = 2.72 → 0, e^−1 = 0.37 → 0, 1 kept; e^−0.5 = 0.61 kept
    ice = token_weights(old, behavior, mask, "icepop_mask", 0.5, 2.0)
    assert ice[0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert ice[1, :2].tolist() == pytest.approx([math.exp(-0.5)] * 2, rel=1e-6)
    with pytest.raises(ValueError, match="token_tis"):
        token_weights(old, behavior, mask, "nope")


def test_the_registered_policy_losses_weigh_their_tokens():
    # ρ ≡ 1 (one update per batch); Â = 2; weights [0.5, 1.5]. Clipped: −w·Â = [−1, −3].
    logp = torch.log(torch.tensor([[0.5, 0.1]]))
    weights = torch.tensor([[0.5, 1.5]])
    settings = LossSettings(eps_low=0.2, eps_high=0.28, shaping_gamma=0.1)
    loss, clip = POLICY_LOSSES["clipped"](logp, logp, torch.tensor([2.0]), weights, settings)
    assert loss[0].tolist() == pytest.approx([-1.0, -3.0]) and clip.sum() == 0
    # Shaped: −w·Â·p/(p+γ) = −0.5·2·0.833333, −1.5·2·0.5
    loss, clip = POLICY_LOSSES["shaped"](logp, logp, torch.tensor([2.0]), weights, settings)
    assert loss[0].tolist() == pytest.approx([-0.833333, -1.5], abs=1e-6) and clip.sum() == 0
    assert sorted(POLICY_LOSSES) == ["clipped", "shaped"]


def test_luffy_shaping_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.1]])).requires_grad_(True)
    loss = shaped_policy_loss(logp, torch.tensor([1.0]), gamma=0.1)
    # −p/(p + 0.1): −0.5/0.6 = −0.833333, −0.1/0.2 = −0.5
    assert loss[0].tolist() == pytest.approx([-0.833333, -0.5], abs=1e-6)
    loss.sum().backward()
    # d/dlogp of −p/(p+γ) = −γp/(p+γ)²: −0.05/0.36 = −0.138889, −0.01/0.04 = −0.25
    assert logp.grad[0].tolist() == pytest.approx([-0.138889, -0.25], abs=1e-6)
