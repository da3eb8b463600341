"""Sessions: G attempts per query, generated in one batch across every query of the step.

This is the critique-free first round that every algorithm shares (GRPO is exactly this round).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from environments import Environment, Task
from icrl_cli.generation import GenerationBackend
from icrl_cli.rollout.prompts import encode_prompt, solver_messages
from icrl_cli.rollout.samples import Sample


def first_attempts(
    backend: GenerationBackend,
    tokenizer: PreTrainedTokenizerBase,
    env: Environment,
    queries: Sequence[Task],
    sessions_per_query: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    enable_thinking: bool = False,
) -> list[Sample]:
    """Round 1 of every session: one solver attempt per (query, session) under the plain prompt."""
    prompts = [encode_prompt(tokenizer, solver_messages(env, q), enable_thinking) for q in queries]
    order = [(qi, j) for qi in range(len(queries)) for j in range(sessions_per_query)]
    outputs = backend.generate(
        [prompts[qi] for qi, _ in order], max_new_tokens, temperature=temperature, top_p=top_p
    )
    samples = []
    for (qi, j), out in zip(order, outputs, strict=True):
        task = queries[qi]
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        result = env.start(task).step(text)
        samples.append(
            Sample(
                query_id=task.id,
                session=j,
                round=1,
                role="solver",
                prompt_ids=prompts[qi],
                behavior_prompt_ids=prompts[qi],
                response_ids=out.token_ids,
                loss_mask=[1] * len(out.token_ids),
                behavior_logprobs=out.logprobs,
                reward=float(result.reward),
                text=text,
                finish_reason=out.finish_reason,
                metadata={"task": task.prompt, "answer": task.answer},
            )
        )
    return samples
