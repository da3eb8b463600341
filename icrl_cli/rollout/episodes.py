"""Multi-turn episodes: the solver acts turn by turn and the environment answers in between.

A whole episode is one sample. Its response is every generated turn with the environment's
observations spliced in between them, token for token as the model saw them: generated tokens
carry loss mask 1 and the sampling log-probs, observation tokens (the chat template's user turn
around each observation) carry loss mask 0. Every turn of every open episode is one batched
generate call. An episode ends when the environment says done, after ``max_turns`` actions,
when its last ``repeat_limit`` actions are the same command, or when the next turn would not fit
the context budget. An episode whose environment fails (a dead server) is marked failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from environments import Episode, EpisodeFailed, StepResult, Task, react_action
from icrl_cli.generation import GenerationBackend
from icrl_cli.rollout.settings import SessionSettings

# Stand-ins used to find where an assistant turn ends in the chat template's text.
_FIRST_USER = "\u2063task\u2063"
_TURN = "\u2063turn\u2063"

Stop = str  # "done" | "turns" | "repeat" | "context" | "failed"


def observation_ids(
    tokenizer: PreTrainedTokenizerBase,
    observation: str,
    enable_thinking: bool = False,
    after_eos: bool = True,
) -> list[int]:
    """The tokens that follow a generated assistant turn so that the conversation continues
    with ``observation`` as the user's next message and opens the next assistant turn: the end
    of the assistant turn (less the EOS the model already emitted, when ``after_eos``), the user
    turn, and the generation prompt. One rendering of a conversation holding both turns is cut
    after the assistant's text, so templates that render earlier turns differently (Qwen3's
    thinking blocks) still give what the template would have shown."""
    messages = [
        {"role": "user", "content": _FIRST_USER},
        {"role": "assistant", "content": _TURN},
        {"role": "user", "content": observation},
    ]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    tail = text[text.index(_TURN) + len(_TURN) :]
    eos = tokenizer.eos_token or ""
    if after_eos and eos and tail.startswith(eos):
        tail = tail[len(eos) :]
    return tokenizer.encode(tail, add_special_tokens=False)


def trajectory_summary(turns: Sequence[tuple[str, str]], observation_chars: int) -> str:
    """What the critic reads: "> action" then the observation (cut to ``observation_chars``)
    for every turn."""
    lines = []
    for action, observation in turns:
        if len(observation) > observation_chars:
            observation = observation[:observation_chars].rstrip() + " …"
        lines += [f"> {action}", observation]
    return "\n".join(lines)


@dataclass
class Rollout:
    """One episode as a sample's response: tokens, loss mask, log-probs and what happened."""

    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[tuple[str, str]] = field(default_factory=list)  # (action, observation)
    reward: float = 0.0
    stop: Stop = ""
    finish_reason: str = "stop"  # of the last generated turn
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.stop == "failed"

    def metadata(self) -> dict[str, Any]:
        return {
            "turns": len(self.turns),
            "stop": self.stop,
            "trajectory": [list(turn) for turn in self.turns],
            **({"error": self.error} if self.error else {}),
        }


def _repeated(turns: list[tuple[str, str]], limit: int) -> bool:
    last = [action for action, _ in turns[-limit:]]
    return len(last) == limit and len(set(last)) == 1


def _step(episode: Episode, text: str) -> StepResult | EpisodeFailed:
    try:
        return episode.step(text)
    except EpisodeFailed as exc:
        return exc


def play(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    episodes: Sequence[Episode | None],
    prompts: Sequence[list[int]],
    settings: SessionSettings,
    workers: int = 16,
) -> list[Rollout]:
    """Play every episode from its (behavior) prompt until it stops, within ``settings``'s
    turn, repeat and context limits; None is an episode that failed to start. Environment steps
    run on a thread pool (remote servers answer in parallel)."""
    rollouts = [Rollout() for _ in episodes]
    for rollout, episode in zip(rollouts, episodes, strict=True):
        if episode is None:
            rollout.stop, rollout.error = "failed", rollout.error or "the episode did not start"
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(settings.max_turns):
            live = [i for i, r in enumerate(rollouts) if not r.stop]
            fits = []
            for i in live:
                used = len(prompts[i]) + len(rollouts[i].response_ids) + settings.max_new_tokens
                # (An empty prompt is one too long to have been tokenised.)
                if not prompts[i] or used > settings.context_tokens:
                    rollouts[i].stop = "context"
                else:
                    fits.append(i)
            if not fits:
                break
            contexts = [prompts[i] + rollouts[i].response_ids for i in fits]
            outputs = backend.generate(
                contexts,
                settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
            )
            texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outputs]
            results = list(pool.map(_step, [episodes[i] for i in fits], texts))
            for i, out, text, result in zip(fits, outputs, texts, results, strict=True):
                rollout = rollouts[i]
                rollout.response_ids += out.token_ids
                rollout.loss_mask += [1] * len(out.token_ids)
                rollout.logprobs += out.logprobs
                rollout.finish_reason = out.finish_reason
                if isinstance(result, EpisodeFailed):
                    rollout.stop, rollout.error, rollout.reward = "failed", str(result), 0.0
                    continue
                rollout.turns.append((react_action(text), result.observation))
                rollout.reward = float(result.reward)
                if result.done:
                    rollout.stop = "done"
                elif _repeated(rollout.turns, settings.repeat_limit):
                    rollout.stop = "repeat"
                elif len(rollout.turns) == settings.max_turns:
                    rollout.stop = "turns"
                else:
                    ids = observation_ids(
                        tokenizer,
                        result.observation,
                        settings.enable_thinking,
                        after_eos=out.finish_reason == "stop",
                    )
                    rollout.response_ids += ids
                    rollout.loss_mask += [0] * len(ids)
                    rollout.logprobs += [0.0] * len(ids)
    for episode, rollout in zip(episodes, rollouts, strict=True):
        if not rollout.stop:
            rollout.stop = "turns"
        close = getattr(episode, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # freeing a remote slot is a courtesy; the result stands
                pass
    return rollouts


def start_all(
    env_start: Callable[[Task], Episode], tasks: Sequence[Task], workers: int = 16
) -> list[tuple[Episode | None, str | None]]:
    """(episode, None) or (None, the error) per task; starts run on a thread pool."""

    def start(task: Task) -> tuple[Episode | None, str | None]:
        try:
            return env_start(task), None
        except EpisodeFailed as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(start, tasks))
