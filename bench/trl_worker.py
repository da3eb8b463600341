"""The ``trl`` contender of ``bench/throughput.py``: TRL's ``GRPOTrainer`` set up as icrl's step.

One generation batch of B × G completions per optimizer step, one iteration over it, rewards from
the math environment, and a callback that reads the clock at the end of every step.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from step_timing import RunResult, Settings, peak_rss_mb, sync, tiny_setup


def grpo_config(settings: Settings, output_dir: str) -> Any:
    """TRL's ``GRPOConfig`` with the settings every contender shares."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        max_steps=settings.steps + 1,
        per_device_train_batch_size=settings.queries * settings.group,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=settings.group,
        num_iterations=1,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        optim="adamw_torch",
        loss_type="dapo",
        scale_rewards="group",
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        mask_truncated_completions=False,
        # GRPOConfig defaults to bf16 and gradient checkpointing; icrl runs float32 without.
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=settings.device == "cpu",
        seed=settings.seed,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )


def run_trl(settings: Settings) -> RunResult:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    from icrl_cli.rollout.prompts import solver_messages

    env, prompts, tasks, model_dir = tiny_setup(settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # The same conversation icrl's solver sees; TRL applies the same chat template to it.
    dataset = Dataset.from_list(
        [
            {"prompt": solver_messages(env, task, prompts), "task_index": i}
            for i, task in enumerate(tasks)
        ]
    )
    result = RunResult("trl", [], [], [], 0.0, {"reward_s": []})

    def environment_reward(completions: list[Any], task_index: list[int], **kwargs: Any) -> list:
        started = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rewards = [
            env.start(tasks[i]).step(text).reward for i, text in zip(task_index, texts, strict=True)
        ]
        result.samples.append(len(texts))
        result.tokens.append(sum(len(ids) for ids in kwargs["completion_ids"]))
        result.phases["reward_s"].append(time.perf_counter() - started)
        return rewards

    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(settings.device)
            ends.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(settings.device)
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=environment_reward,
            args=grpo_config(settings, output_dir),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        trainer.train()
    # ends[0] is the start, ends[1] the end of the warm-up step.
    result.step_s = [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]
    result.samples, result.tokens = result.samples[1:], result.tokens[1:]
    result.phases["reward_s"] = result.phases["reward_s"][1:]
    result.peak_rss_mb = peak_rss_mb()
    return result
