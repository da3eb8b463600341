"""The Sample record: one generated turn-sequence and everything training needs to know about it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["solver", "critic"]


@dataclass
class Sample:
    """One generated response.

    ``prompt_ids`` is the *training* context (for every solver sample the critique-free solver
    prompt); ``behavior_prompt_ids`` is the context it was actually sampled under. They differ
    only for revisions. ``behavior_logprobs`` are per response token, under the behavior context,
    at the weights that sampled it. Token ids are never re-derived from ``text``.
    """

    query_id: str
    session: int
    round: int
    role: Role
    prompt_ids: list[int]
    behavior_prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]
    behavior_logprobs: list[float]
    reward: float = 0.0
    advantage: float = 0.0
    text: str = ""
    finish_reason: str = "stop"
    metadata: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True  # False for a frozen critic's samples: never in the loss
    # log π_old(y_t | prompt_ids) at the weights that sampled, set before several optimizer steps
    # on one batch (``train.mini_batches``); None: π_old is the policy being updated.
    old_logprobs: list[float] | None = None
    # The mean token_tis weight of a revision's tokens, as the update measured it (Fig. 4).
    calibration_weight_mean: float | None = None

    @property
    def is_revision(self) -> bool:
        return self.role == "solver" and self.round > 1

    @property
    def success(self) -> bool:
        return self.reward == 1.0

    @property
    def completion_tokens(self) -> int:
        """Tokens the model generated: the loss-masked response tokens (an episode's
        observations are not generated), or for a critique from a remote server, whose token
        ids never reach us, the count the server reported."""
        reported = self.metadata.get("completion_tokens")
        return int(reported) if reported is not None else sum(self.loss_mask)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view for samples/step-N.jsonl: texts and numbers, not token lists."""
        record = asdict(self)
        for key in ("prompt_ids", "behavior_prompt_ids", "response_ids", "loss_mask"):
            record.pop(key)
        record.pop("behavior_logprobs")
        record.pop("old_logprobs")
        record.pop("calibration_weight_mean")
        record["response_tokens"] = len(self.response_ids)
        return record


def is_failed(sample: Sample) -> bool:
    """An episode its environment lost (e.g. a dead server): out of training and of metrics."""
    return sample.metadata.get("stop") == "failed"
