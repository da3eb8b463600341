"""One policy update on the tiny model: micro-batching leaves the gradient unchanged, a non-finite
loss skips the step, the KL term, the calibration switches, and recomputed behavior log-probs."""

import math
from dataclasses import replace

import pytest
import torch

from icrl_cli.config import resolve
from icrl_cli.models import enable_activation_checkpointing, load_model
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.batch import collate, micro_batches
from icrl_cli.trainer.logprobs import recompute_behavior_logprobs, response_logprobs
from icrl_cli.trainer.policy import divergence_totals, policy_update


def test_a_non_finite_loss_skips_the_step_and_keeps_the_weights(tiny_dir):
    config = resolve("tiny-math", [])
    model, tokenizer = load_model(str(tiny_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prompt = tokenizer.encode("<|user|>1+2<|end|><|assistant|>")
    response = tokenizer.encode(r"\boxed{3}") + [tokenizer.eos_token_id]
    samples = [
        Sample("q", i, 1, "solver", prompt, prompt, response, [1] * len(response), [0.0] * 10)
        for i in range(2)
    ]
    samples[0].advantage, samples[1].advantage = float("nan"), 1.0
    before = [p.detach().clone() for p in model.parameters()]
    stats = policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
    assert stats.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    samples[0].advantage = -1.0
    stats = policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
    assert not stats.skipped
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("micro, longest", [(1, None), (3, None), (4, 2), (4, 1)])
def test_micro_batching_does_not_change_the_update(tiny_dir, micro, longest):
    """The gradient of 4 samples is the same whether they go through in 1, 2 or 4 pieces, in
    rollout order or sorted by length under a cap of ``longest`` × the longest sample's
    tokens."""
    config = resolve("tiny-math", [])
    model, tokenizer = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    responses = [r"\boxed{42}", r"\boxed{41}", r"\boxed{4}", r"\boxed{420}"]
    samples = []
    for i, text in enumerate(responses):
        ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
        samples.append(
            Sample("q", i, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))
        )
        samples[-1].advantage = [1.5, -0.5, -0.5, -0.5][i]

    def gradients(micro_batch_size, micro_batch_tokens=None):
        config.train.micro_batch_size = micro_batch_size
        config.train.micro_batch_tokens = micro_batch_tokens
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
        return [p.grad.clone() for p in model.parameters()]

    full = gradients(4)
    most = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    split = gradients(micro, longest and longest * most)
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_micro_batches_sort_by_length_under_a_token_cap():
    lengths = [30, 10, 12, 50, 11, 29]
    # In rollout order, 4 rows at a time.
    assert micro_batches(lengths, 4, None) == [[0, 1, 2, 3], [4, 5]]
    # Sorted: 10, 11, 12 (3 × 12 = 36 ≤ 40); 29 (2 × 29 > 40); 30; 50 alone over the cap.
    assert micro_batches(lengths, 4, 40) == [[1, 4, 2], [5], [0], [3]]
    # The row limit still holds: 10, 11 | 12, 29 | 30, 50 under a cap of 100 and 2 rows.
    assert micro_batches(lengths, 2, 100) == [[1, 4], [2, 5], [0, 3]]
    # 4 × 29 = 116 > 90 starts a second; 29 and 30 fit (2 × 30); 50 does not (3 × 50).
    assert micro_batches(lengths, 8, 90) == [[1, 4, 2], [5, 0], [3]]


def test_k3_penalty_is_zero_against_itself_and_positive_against_another_model(tiny_dir):
    config = resolve("tiny-math", ["algo.kl_coef=0.1"])
    model, tokenizer = load_model(str(tiny_dir))
    reference, _ = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    ids = tokenizer.encode(r"\boxed{42}") + [tokenizer.eos_token_id]
    samples = [Sample("q", 0, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    assert policy_update(model, reference, optimizer, samples, config, 0).loss_kl == 0.0
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert policy_update(model, reference, optimizer, samples, config, 0).loss_kl > 1e-4


def _revision(tokenizer, critique="45"):
    free = tokenizer.encode("<|user|>12+30+3<|end|><|assistant|>")
    behavior = tokenizer.encode(f"<|user|>12+30+3|{critique}<|end|><|assistant|>")
    ids = tokenizer.encode(r"12+30=42, 42+3=45. \boxed{45}") + [tokenizer.eos_token_id]
    sample = Sample("q", 0, 2, "solver", free, behavior, ids, [1] * len(ids), [0.0] * len(ids))
    sample.advantage = 1.0
    return sample


def _logprobs(model, tokenizer, sample, context):
    batch = collate([replace(sample, prompt_ids=context)], tokenizer.pad_token_id, model.device)
    with torch.no_grad():
        return response_logprobs(model, batch)[0][0].tolist()


@pytest.mark.parametrize(
    ("calibration", "shift", "expected_loss", "expected_w", "clip_frac"),
    [
        ("token_tis", math.log(4.0), -0.25, 0.25, 0.0),  # the critique made tokens 4× likelier
        ("none", math.log(4.0), -1.0, 0.25, 0.0),  # w ≡ 1; the diagnostic still reads 0.25
        ("token_tis", -math.log(4.0), -2.0, 2.0, 1.0),  # 4× less likely: clamped at w_max = 2
        ("icepop_mask", -math.log(4.0), 0.0, 2.0, 1.0),  # outside the band: zeroed
    ],
)
def test_calibration_switch_weighs_revision_tokens(
    tiny_dir, calibration, shift, expected_loss, expected_w, clip_frac
):
    config = resolve("tiny-math", [f'algo.calibration="{calibration}"'])
    model, tokenizer = load_model(str(tiny_dir))
    sample = _revision(tokenizer)
    old = _logprobs(model, tokenizer, sample, sample.prompt_ids)
    sample.behavior_logprobs = [x + shift for x in old]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = policy_update(model, None, optimizer, [sample], config, tokenizer.pad_token_id)
    # ρ ≡ 1 and Â = 1, so the per-token loss is −w and the sample's token mean is −mean(w).
    assert stats.loss_policy == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    assert stats.w_mean_revision == pytest.approx(expected_w, rel=1e-4)
    assert stats.w_clip_frac == clip_frac


def test_luffy_shaping_replaces_the_surrogate_on_revision_tokens(tiny_dir):
    config = resolve("tiny-math", ['algo.calibration="luffy_shaping"'])
    model, tokenizer = load_model(str(tiny_dir))
    sample = _revision(tokenizer)
    probs = torch.tensor(_logprobs(model, tokenizer, sample, sample.prompt_ids)).exp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = policy_update(model, None, optimizer, [sample], config, tokenizer.pad_token_id)
    expected = -(probs / (probs + 0.1)).mean().item()
    assert stats.loss_policy == pytest.approx(expected, rel=1e-4)


def test_recompute_takes_behavior_logprobs_from_a_trainer_forward(tiny_dir):
    model, tokenizer = load_model(str(tiny_dir))
    revision, first = _revision(tokenizer), _revision(tokenizer)
    first.round, first.behavior_prompt_ids = 1, first.prompt_ids
    recompute_behavior_logprobs(model, [revision, first], tokenizer.pad_token_id, 8)
    expected = _logprobs(model, tokenizer, revision, revision.behavior_prompt_ids)
    assert revision.behavior_logprobs == pytest.approx(expected, abs=1e-5)
    assert first.behavior_logprobs == [0.0] * len(first.response_ids)  # untouched
    under_free = _logprobs(model, tokenizer, revision, revision.prompt_ids)
    assert revision.behavior_logprobs != pytest.approx(under_free, abs=1e-3)


def test_mini_batches_take_several_steps_against_the_sampling_weights(tiny_dir):
    """Four samples in two optimizer steps: the second step's ratios are measured against the
    weights that sampled (set before the first), so they move off 1 and, at this learning
    rate, the clip binds; one step never clips (ρ ≡ 1)."""
    model, tokenizer = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    samples = []
    for i, text in enumerate([r"\boxed{42}", r"\boxed{41}", r"\boxed{42}", r"\boxed{41}"]):
        ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
        samples.append(
            Sample("q", i, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))
        )
        samples[-1].advantage = [1.0, -1.0, 1.0, -1.0][i]
    batch = collate(samples, tokenizer.pad_token_id, model.device)
    with torch.no_grad():
        old = response_logprobs(model, batch)[0]
    for row, s in enumerate(samples):
        s.old_logprobs = old[row, : len(s.response_ids)].tolist()
    one = resolve("tiny-math", ["train.lr=0.05"])
    two = resolve("tiny-math", ["train.lr=0.05", "train.mini_batches=2"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stats = policy_update(
        model, None, torch.optim.AdamW(model.parameters(), lr=0.05), samples, two, 0
    )
    assert stats.clip_frac > 0.05
    model.load_state_dict(start)
    for s in samples:
        s.old_logprobs = None
    stats = policy_update(
        model, None, torch.optim.AdamW(model.parameters(), lr=0.05), samples, one, 0
    )
    assert stats.clip_frac == 0.0


def test_an_entropy_bonus_raises_the_entropy_it_is_measured_on(tiny_dir):
    """Zero advantages: the surrogate has no gradient, so a step moves only by the bonus, and
    the entropy of the scored positions rises; without the bonus nothing moves."""
    model, tokenizer = load_model(str(tiny_dir))
    prompt = tokenizer.encode("<|user|>12+30<|end|><|assistant|>")
    ids = tokenizer.encode(r"\boxed{42}") + [tokenizer.eos_token_id]
    samples = [Sample("q", 0, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))]
    batch = collate(samples, tokenizer.pad_token_id, model.device)

    def entropy():
        with torch.no_grad():
            return response_logprobs(model, batch, with_entropy=True)[1].mean().item()

    before = entropy()
    for coef, rises in ((0.0, False), (0.5, True)):
        config = resolve("tiny-math", [f"algo.entropy_coef={coef}"])
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
        assert (entropy() > before + 1e-3) == rises
        before = entropy()


def test_gradient_checkpointing_gives_the_same_gradient(tiny_dir):
    config = resolve("tiny-math", [])
    prompt_text = "<|user|>12+30<|end|><|assistant|>"
    grads = []
    for checkpointing in (False, True):
        model, tokenizer = load_model(str(tiny_dir))
        if checkpointing:
            enable_activation_checkpointing(model)
        prompt = tokenizer.encode(prompt_text)
        samples = []
        for i, text in enumerate([r"\boxed{42}", r"\boxed{41}"]):
            ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
            samples.append(
                Sample("q", i, 1, "solver", prompt, prompt, ids, [1] * len(ids), [0.0] * len(ids))
            )
            samples[-1].advantage = [1.0, -1.0][i]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        policy_update(model, None, optimizer, samples, config, tokenizer.pad_token_id)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_divergence_totals_find_the_first_departure_and_the_weight_around_it():
    """Two revisions and a first attempt, worked by hand. Row 0 departs from the greedy choice
    at token 2 (w 0.2), after 0.9 and 0.8, then 0.7 and 0.3 follow; row 1 never departs; row 2
    is not a revision. Token 4 of row 0 is padding (mask 0) and is not counted."""
    tis = torch.tensor([[0.9, 0.8, 0.2, 0.7, 0.3, 0.1], [1.0, 0.4, 1.0, 1.0, 1.0, 1.0], [0.1] * 6])
    greedy = torch.tensor(
        [[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0] * 6], dtype=torch.float)
    totals = divergence_totals(tis, greedy, mask)
    assert totals["div_revisions"] == 2 and totals["div_rows"] == 1
    assert totals["div_w_at"] == pytest.approx(0.2)
    assert totals["div_before_tokens"] == 2 and totals["div_w_before"] == pytest.approx(1.7)
    assert totals["div_after_tokens"] == 2 and totals["div_w_after"] == pytest.approx(1.0)
    # Below 0.5 among the 8 revision tokens: 0.2 and 0.3 in row 0, 0.4 in row 1.
    assert totals["w_low"] == 3
