"""Every prompt the model sees, rendered through the tokenizer's own chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from environments import Environment, Task


def solver_messages(env: Environment, task: Task) -> list[dict[str, str]]:
    """The critique-free solver prompt: the environment's instructions, then the task."""
    return [
        {"role": "system", "content": env.solver_instructions()},
        {"role": "user", "content": task.prompt},
    ]


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
