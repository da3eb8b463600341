"""Per-token log-probs (and entropy) of sampled responses under a model, for a micro-batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

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
    return ResponseBatch(
        input_ids.to(device),
        attention.to(device),
        positions.to(device),
        response.to(device),
        mask.to(device),
        behavior.to(device),
        advantages.to(device),
    )


def response_logprobs(
    model: PreTrainedModel, batch: ResponseBatch, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[n, T]`` log π(y_t | context, y_<t) of each response token, and optionally the entropy.

    Only the logits at response positions are normalised, so memory is n × T × vocab, not
    n × (prompt + T) × vocab.
    """
    hidden = model.get_decoder()(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state
    index = batch.positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
    logits = model.get_output_embeddings()(hidden.gather(1, index)).float()
    logprobs_all = torch.log_softmax(logits, dim=-1)
    logprobs = logprobs_all.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    return logprobs, entropy
