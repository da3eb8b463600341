"""Every prompt the model sees: the solver, the revision and the critic, and the rule critic.

Templates are plain ``str.format`` strings. Each one can be overridden in the config
(``[prompts]``); a model directory may ship its own as ``icrl_prompts.json`` (the tiny model
does, with compact forms, because every character is a token for it); otherwise the defaults
below apply. The section layout follows the ICRL paper's prompts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from environments import Environment, Task

PROMPTS_FILE = "icrl_prompts.json"


@dataclass(frozen=True)
class Prompts:
    solver_user: str = "# Task\n{task}"
    revision_user: str = "# Task\n{task}\n\n# Core Tips From Previous Critique\n{critique}"
    refinement_user: str = (
        "# Task\n{task}\n\n# Your Previous Attempt\n{attempt}\n\n# Critique\n{critique}\n\n"
        "Answer the task again in full."
    )
    critic_system: str = (
        "You are a critic. You are shown a task and an attempt at it that did not fully "
        "succeed. Find the single most important mistake and give a few short, actionable tips "
        "for a fresh attempt. Do not solve the task yourself and do not narrate. Think briefly, "
        "then write the tips inside <critic></critic>."
    )
    critic_user: str = "# Task\n{task}\n\n# Trajectory Summary\n{summary}"
    summary: str = "task: {task}\nreward: {reward}\n{attempt}"
    critique_tag: str = "critic"
    rule_correct: str = "Your answer is correct."
    rule_incorrect: str = "Your answer is incorrect; the answer is {answer}."
    rule_failed: str = "Your attempt did not complete the task."

    @classmethod
    def resolve(cls, overrides: dict[str, str | None], model_dir: str | None = None) -> Prompts:
        """Defaults, then the model's shipped templates, then the config's overrides."""
        prompts = cls()
        if model_dir is not None and (Path(model_dir) / PROMPTS_FILE).is_file():
            shipped = json.loads((Path(model_dir) / PROMPTS_FILE).read_text())
            prompts = replace(prompts, **shipped)
        chosen = {k: v for k, v in overrides.items() if v is not None}
        return replace(prompts, **chosen)

    def to_json(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def solver_messages(
    env: Environment,
    task: Task,
    prompts: Prompts,
    critique: str | None = None,
    attempt: str | None = None,
) -> list[dict[str, str]]:
    """The solver prompt; with a critique it is the revision prompt (the behavior context), and
    with the previous ``attempt`` as well the refinement prompt."""
    if critique is None:
        user = prompts.solver_user.format(task=task.prompt)
    elif attempt is None:
        user = prompts.revision_user.format(task=task.prompt, critique=critique)
    else:
        user = prompts.refinement_user.format(task=task.prompt, attempt=attempt, critique=critique)
    return [
        {"role": "system", "content": env.solver_instructions()},
        {"role": "user", "content": user},
    ]


def critic_messages(
    task: Task, attempt: str, reward: float, prompts: Prompts
) -> list[dict[str, str]]:
    """The critic sees the task and a summary of the attempt, including its reward."""
    summary = prompts.summary.format(task=task.prompt, attempt=attempt, reward=f"{reward:g}")
    return [
        {"role": "system", "content": prompts.critic_system},
        {"role": "user", "content": prompts.critic_user.format(task=task.prompt, summary=summary)},
    ]


def parse_critique(text: str, tag: str) -> str:
    """The text inside the last <tag>…</tag>; the whole text (stripped) when the tag is absent."""
    found = re.findall(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, flags=re.DOTALL)
    return (found[-1] if found else text).strip()


def rule_critique(task: Task, success: bool, prompts: Prompts) -> str:
    """The rule critic: right or wrong, with the gold answer when the task has one (an agentic
    task has none, and hears only that it failed)."""
    if success:
        return prompts.rule_correct.format(answer=task.answer)
    if task.answer is None:
        return prompts.rule_failed
    return prompts.rule_incorrect.format(answer=task.answer)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    enable_thinking: bool = False,
) -> list[int]:
    """Token ids of ``messages`` followed by the assistant turn's opening."""
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    return tokenizer.encode(text, add_special_tokens=False)
