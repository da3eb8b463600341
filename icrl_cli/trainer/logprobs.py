"""Log-probs of sampled responses under a context: the forward passes the update and the
calibration read."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel

from icrl_cli.generation.base import Sampling
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer.batch import ResponseBatch, collate

# Temperature 1, no nucleus: the model's own distribution.
AS_SAMPLED_AT_ONE = Sampling()


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


@dataclass
class Scored:
    """A batch's response tokens scored: ``[n, T]`` log-probs, and where asked their entropy
    and whether each token is the distribution's own most likely one (its greedy choice)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    greedy: torch.Tensor | None = None


def score_response(
    model: PreTrainedModel | ResponseScorer,
    batch: ResponseBatch,
    sampling: Sampling = AS_SAMPLED_AT_ONE,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    with_greedy: bool = False,
) -> Scored:
    """``[n, T]`` log π(y_t | context, y_<t) of each response token under the distribution the
    backend samples from (``sampling``: temperature and nucleus, as the backend applies them);
    optionally its entropy (with a gradient for an entropy bonus when ``entropy_grad``) and,
    with ``with_greedy``, whether y_t is that distribution's argmax."""
    score = (
        model if isinstance(model, ResponseScorer) else functools.partial(response_logits, model)
    )
    logits = sampling.scores(
        score(batch.input_ids, batch.attention_mask, batch.positions), batch.response_ids
    )
    logprobs_all = torch.log_softmax(logits, dim=-1)
    scored = Scored(logprobs_all.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1))
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            plogp = logprobs_all.exp() * logprobs_all
            if sampling.top_p < 1.0:  # outside the nucleus p = 0: no entropy, not 0 · −∞
                plogp = torch.where(logprobs_all.isfinite(), plogp, 0.0)
            scored.entropy = -plogp.sum(-1)
    if with_greedy:
        scored.greedy = logits.detach().argmax(-1) == batch.response_ids
    return scored


def response_logprobs(
    model: PreTrainedModel | ResponseScorer,
    batch: ResponseBatch,
    with_entropy: bool = False,
    sampling: Sampling = AS_SAMPLED_AT_ONE,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``score_response``'s log-probs and (with ``with_entropy``) entropy."""
    scored = score_response(model, batch, sampling, with_entropy, entropy_grad)
    return scored.logprobs, scored.entropy


def _scored_chunks(
    model: PreTrainedModel,
    samples: list[Sample],
    pad_id: int,
    micro_batch_size: int,
    sampling: Sampling,
    with_greedy: bool,
) -> Iterator[tuple[list[Sample], Scored]]:
    """``samples`` scored under their ``prompt_ids``, ``micro_batch_size`` at a time."""
    for start in range(0, len(samples), micro_batch_size):
        chunk = samples[start : start + micro_batch_size]
        batch = collate(chunk, pad_id, model.device)
        yield chunk, score_response(model, batch, sampling, with_greedy=with_greedy)


@torch.no_grad()
def context_logprobs(
    model: PreTrainedModel,
    samples: list[Sample],
    pad_id: int,
    micro_batch_size: int,
    sampling: Sampling = AS_SAMPLED_AT_ONE,
) -> list[list[float]]:
    """log π(y_t | prompt_ids, y_<t) of every response token of each sample, in micro-batches
    and without gradients."""
    return [
        scored.logprobs[row, : len(s.response_ids)].tolist()
        for chunk, scored in _scored_chunks(
            model, samples, pad_id, micro_batch_size, sampling, with_greedy=False
        )
        for row, s in enumerate(chunk)
    ]


@torch.no_grad()
def context_scores(
    model: PreTrainedModel,
    samples: list[Sample],
    pad_id: int,
    micro_batch_size: int,
    sampling: Sampling = AS_SAMPLED_AT_ONE,
) -> list[tuple[list[float], list[bool]]]:
    """``context_logprobs``, and whether each response token is the greedy choice under
    ``prompt_ids`` (the argmax of the distribution ``sampling`` describes). Only ``icrl
    rollout`` asks for the latter: training's ``context_logprobs`` does not pay for the argmax."""
    result: list[tuple[list[float], list[bool]]] = []
    for chunk, scored in _scored_chunks(
        model, samples, pad_id, micro_batch_size, sampling, with_greedy=True
    ):
        assert scored.greedy is not None
        for row, s in enumerate(chunk):
            n = len(s.response_ids)
            result.append((scored.logprobs[row, :n].tolist(), scored.greedy[row, :n].tolist()))
    return result


def recompute_behavior_logprobs(
    model: PreTrainedModel,
    samples: list[Sample],
    pad_id: int,
    micro_batch_size: int,
    sampling: Sampling = AS_SAMPLED_AT_ONE,
) -> None:
    """Replace each revision's engine log-probs with a trainer forward under its behavior
    (critique-conditioned) prompt, at the same weights (``algo.behavior_logprobs=recompute``)."""
    revisions = [s for s in samples if s.behavior_prompt_ids != s.prompt_ids]
    as_sampled = [replace(s, prompt_ids=s.behavior_prompt_ids) for s in revisions]
    recomputed = context_logprobs(model, as_sampled, pad_id, micro_batch_size, sampling)
    for s, logprobs in zip(revisions, recomputed, strict=True):
        s.behavior_logprobs = logprobs
