"""`icrl rollout`: one training step's sessions without the update, every sample written out
with what training would have made of it (reward, advantage, calibration weights)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, Group
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from environments import EnvError
from icrl_cli import components
from icrl_cli.config import RunConfig
from icrl_cli.evaluation.evaluate import require_positive
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer import step
from icrl_cli.trainer.algorithms import calibration_weights
from icrl_cli.trainer.logprobs import context_scores
from icrl_cli.trainer.loop import seed_everything
from icrl_cli.trainer.policy import divergence_totals, sampling_of


@dataclass
class RolloutRecord:
    """One sample as `icrl rollout` writes it: the sample's JSON view (texts, reward, advantage,
    metadata), the prompts decoded, whether it enters the loss, and for a revision the token_tis
    weight of each response token (None on an episode's observation tokens) and where the weight
    bites (``divergence``)."""

    sample: dict[str, Any]
    prompt: str  # the training context: critique-free for every solver sample
    behavior_prompt: str | None  # the context it was sampled under, where that differs
    in_loss: bool
    calibration_weights: list[float | None] | None
    calibration_weight_mean: float | None
    # A multi-turn episode's response as runs: what the model wrote, what the environment said.
    segments: list[dict[str, str]] | None = None
    divergence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.sample,
            "segments": self.segments,
            "in_loss": self.in_loss,
            "calibration_weight_mean": self.calibration_weight_mean,
            "calibration_weights": self.calibration_weights,
            "divergence": self.divergence,
            "prompt": self.prompt,
            "behavior_prompt": self.behavior_prompt,
        }


def revision_weights(
    samples: list[Sample], critique_free_logprobs: list[list[float]], w_min: float, w_max: float
) -> list[list[float | None]]:
    """Eq. 4's w_t = clamp(π_old(y_t | q) / μ(y_t | q, critique), w_min, w_max) per response
    token of each revision; None where the token was not generated (loss mask 0)."""
    weights = []
    for s, old in zip(samples, critique_free_logprobs, strict=True):
        w = calibration_weights(torch.tensor(old), torch.tensor(s.behavior_logprobs), w_min, w_max)
        weights.append(
            [value if kept else None for value, kept in zip(w.tolist(), s.loss_mask, strict=True)]
        )
    return weights


def divergence(weights: list[float | None], greedy: list[bool]) -> dict[str, Any]:
    """Where a revision first departs from the critique-free greedy continuation: ``index`` is
    that response token's position (None if every generated token is the greedy choice), and
    the weight at it and its mean before and after it (None where there are no such tokens).
    The same quantities as the step metrics ``calib/w_*_divergence``, for one revision."""
    trained = torch.tensor([[w is not None for w in weights]], dtype=torch.float32)
    tis = torch.tensor([[0.0 if w is None else w for w in weights]])
    sums = divergence_totals(tis, torch.tensor([greedy]), trained)
    departs = (t for t, (w, g) in enumerate(zip(weights, greedy, strict=True)) if w is not None)
    index = next((t for t in departs if not greedy[t]), None)

    def mean(total: str, count: str) -> float | None:
        return sums[total] / sums[count] if index is not None and sums[count] else None

    return {
        "index": index,
        "w_at": sums["div_w_at"] if index is not None else None,
        "w_before": mean("div_w_before", "div_before_tokens"),
        "w_after": mean("div_w_after", "div_after_tokens"),
    }


def response_segments(
    sample: Sample, tokenizer: PreTrainedTokenizerBase
) -> list[dict[str, str]] | None:
    """The response split where the loss mask changes: runs the model generated (``model``)
    and the environment's observations between them (``environment``, mask 0); None when the
    model generated all of it."""
    if all(sample.loss_mask):
        return None
    tokens = zip(sample.response_ids, sample.loss_mask, strict=True)
    segments = []
    for generated, run in itertools.groupby(tokens, lambda pair: pair[1]):
        text = tokenizer.decode([token for token, _ in run], skip_special_tokens=True)
        segments.append({"by": "model" if generated else "environment", "text": text.strip()})
    return segments


def session_order(samples: list[Sample]) -> list[Sample]:
    """Samples by query (in the order queried), session and round; a critique after the attempt
    it read."""
    queries = {q: i for i, q in enumerate(dict.fromkeys(s.query_id for s in samples))}
    return sorted(
        samples, key=lambda s: (queries[s.query_id], s.session, s.round, s.role == "critic")
    )


def rollout(config: RunConfig, n: int, split: str | None = None) -> list[RolloutRecord]:
    """The sessions of ``n`` queries drawn as training's first step draws them (same seed, same
    sampler, G sessions each, the run's critic and settings), taken through the step's stages
    up to the update: rewards, advantages and the revisions' calibration weights."""
    require_positive(n=n)
    env = components.environment(config)
    split = split or config.env.train_split
    tasks = list(env.tasks(split))
    if not tasks:
        raise EnvError(f"split '{split}' of {config.env.name} has no tasks")
    seed_everything(config.train.seed)
    policy = components.load_policy(config)
    trainee = components.trainee(config, env, policy, train=False)
    samples = step.rollout(trainee, step.QuerySampler(tasks, config.train.seed).next(n))
    step.score_critiques(samples, config.algo.critic_reward)
    batch = step.training_batch(samples, config.algo)
    step.calibrate(trainee, batch)
    revisions = [s for s in batch if s.is_revision]
    micro = config.train.micro_batch_size
    scores = context_scores(policy.model, revisions, trainee.pad_id, micro, sampling_of(config))
    old = [logprobs for logprobs, _ in scores]
    per_revision = revision_weights(revisions, old, config.algo.w_min, config.algo.w_max)
    weights = dict(zip(map(id, revisions), per_revision, strict=True))
    greedy = {id(s): g for s, (_, g) in zip(revisions, scores, strict=True)}
    in_loss = {id(s) for s in batch}
    records = []
    for s in session_order(samples):
        records.append(record(s, weights.get(id(s)), id(s) in in_loss, policy.tokenizer))
        if id(s) in weights:
            records[-1].divergence = divergence(weights[id(s)], greedy[id(s)])
    return records


def record(
    s: Sample,
    weights: list[float | None] | None,
    in_loss: bool,
    tokenizer: PreTrainedTokenizerBase,
) -> RolloutRecord:
    """One sample as `icrl rollout` writes it."""
    kept = [v for v in weights if v is not None] if weights is not None else []
    return RolloutRecord(
        sample=s.to_json(),
        prompt=tokenizer.decode(s.prompt_ids),
        behavior_prompt=(
            tokenizer.decode(s.behavior_prompt_ids)
            if s.behavior_prompt_ids != s.prompt_ids
            else None
        ),
        in_loss=in_loss,
        calibration_weights=weights,
        calibration_weight_mean=sum(kept) / len(kept) if kept else None,
        segments=response_segments(s, tokenizer),
    )


def write_jsonl(records: Iterable[RolloutRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record.to_json()) + "\n")


def print_pretty(records: list[RolloutRecord], console: Console) -> None:
    """Each query under a rule, then its sessions' turns: solver attempts in cyan, critiques
    in magenta, an episode's observations dimmed. Model text is printed as text, never read as
    markup."""
    query = None
    for record in records:
        s = record.sample
        if s["query_id"] != query:
            query = s["query_id"]
            console.print(Rule(Text(f"query {query}")))
        solver = s["role"] == "solver"
        role = f"solver {'revision' if s['round'] > 1 else 'attempt'}" if solver else "critic"
        title = f"session {s['session']} · round {s['round']} · {role}"
        facts = [f"reward {s['reward']:g}", f"advantage {s['advantage']:+.3f}"]
        if record.calibration_weight_mean is not None:
            facts.append(f"w̄ {record.calibration_weight_mean:.3f}")
        departs = record.divergence["index"] if record.divergence else None
        if departs is not None:
            facts.append(
                f"off the greedy path at token {departs} (w {record.divergence['w_at']:.2f})"
            )
        if not record.in_loss:
            facts.append("not in the loss")
        body: list[Text] = []
        if solver and s["metadata"].get("critique") is not None:
            body.append(Text(f"critique read: {s['metadata']['critique']}", style="magenta"))
        if not solver:
            body.append(Text(f"critique: {s['metadata']['critique']}", style="bold"))
        if record.segments is None:
            body.append(Text(s["text"]))
        for segment in record.segments or []:
            by_model = segment["by"] == "model"
            body.append(Text(segment["text"], style="" if by_model else "dim"))
        console.print(
            Panel(
                Group(*body),
                title=Text(title),
                subtitle=Text(" · ".join(facts)),
                border_style="cyan" if solver else "magenta",
                title_align="left",
                subtitle_align="right",
            )
        )
