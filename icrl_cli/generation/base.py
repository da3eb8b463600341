"""The protocol every generation backend implements, and the record it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


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

    def sync_weights(self) -> None:
        """Make the backend sample from the trainer's current weights."""
        ...
