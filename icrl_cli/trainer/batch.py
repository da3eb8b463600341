"""The batch the update reads: sampled responses as padded tensors, and micro-batches of them.

Samples keep their tokens exactly as sampled (no re-tokenising); the training context
(``prompt_ids``) is what a response is scored after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icrl_cli.rollout.samples import Sample


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
    old_logprobs: torch.Tensor | None = None  # π_old at the sampling weights, where it was set


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
    with_old = all(s.old_logprobs is not None for s in samples)
    old = torch.zeros((n, steps), dtype=torch.float32)
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
            if with_old:
                old[row, :r] = torch.tensor(s.old_logprobs, dtype=torch.float32)
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
        old.to(device) if with_old else None,
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


def idle_batch(pad_id: int, device: torch.device) -> ResponseBatch:
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
