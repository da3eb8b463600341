"""The protocol every generation backend implements, and the record it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch


@dataclass
class Generation:
    """One sampled response: its token ids (EOS included when it stopped there) and their log-probs
    under the sampling distribution at the weights that produced them."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]


class GenerationBackend(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[Generation]:
        """One response per prompt (repeat a prompt to get several samples of it)."""
        ...

    def sleep(self) -> None:
        """Free what the backend holds on the accelerator while the trainer updates (a backend
        that shares the trainer's weights, or holds nothing there, has nothing to free)."""
        ...

    def sync_weights(self, weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Make the backend sample from the trainer's current weights: ``weights()`` gives the
        sampling model's state under its own parameter names, called only by a backend that
        holds a copy of it."""
        ...


def nucleus_filter(
    scores: torch.Tensor, top_p: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``scores`` with every token outside the smallest set whose probability reaches ``top_p``
    set to -inf (the most likely token always stays; so does ``keep``, a token id per row, when
    given: a token that was sampled is inside the nucleus by construction, and rounding must not
    push it out when the trainer scores it again)."""
    ascending, order = torch.sort(scores, dim=-1)
    mass_below = ascending.softmax(-1).cumsum(-1)
    drop = mass_below <= 1 - top_p
    drop[..., -1] = False
    drop = drop.scatter(-1, order, drop)
    if keep is not None:
        drop = drop.scatter(-1, keep.unsqueeze(-1), False)
    return scores.masked_fill(drop, float("-inf"))


def sampling_scores(
    logits: torch.Tensor, temperature: float, top_p: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """The scores of the distribution a backend samples from: logits over the temperature (none
    at 0, greedy), then the nucleus of mass ``top_p``. Their log-softmax is what a backend
    reports and what the trainer scores, so the two describe one distribution."""
    if temperature <= 0:
        return logits
    scores = logits / temperature if temperature != 1.0 else logits
    return nucleus_filter(scores, top_p, keep) if top_p < 1.0 else scores


@dataclass(frozen=True)
class Sampling:
    """A sampling distribution's settings, for the side that scores what was sampled."""

    temperature: float = 1.0
    top_p: float = 1.0

    def scores(self, logits: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return sampling_scores(logits, self.temperature, self.top_p, keep)
