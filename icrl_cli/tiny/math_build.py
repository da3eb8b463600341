"""The ``tiny`` build: the network with the character tokenizer, warm-started on synthetic math."""

from __future__ import annotations

import random
from pathlib import Path

from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

import environments
from environments import Environment, Task
from icrl_cli.rollout.prompts import (
    Prompts,
    critic_messages,
    encode_prompt,
    rule_critique,
    solver_messages,
)
from icrl_cli.tiny.network import build_model, build_tokenizer, save
from icrl_cli.tiny.supervision import Metrics, Pair, measure_sessions, supervise

# Bump when anything the build depends on changes what it builds, so stale caches are not reused.
TINY_VERSION = "3"
BUILD_TIME = "a few minutes"
# The task the tiny model is warm-started on (the tiny-math preset trains on the same), and the
# compact prompts it ships: one character is one token, so every character costs compute.
TINY_TASK = {"data": "synthetic", "digits": 1, "terms": 4}
TINY_PROMPTS = {
    "solver_user": "{task}",
    "revision_user": "{task}|{critique}",
    "critic_user": "{task}?{summary}",
    "summary": "{attempt}|{reward}",
    "critique_tag": "c",
    "rule_correct": "ok",
    "rule_incorrect": "no:{answer}",
}
DIRECT_SHARE = 0.75
# The warm-start stops once held-out success reaches this (the band is 10%–60%), so RL
# starts from a model that succeeds sometimes but has plenty left to learn.
TARGET_SUCCESS = 0.15
# …and once the model's own critique already helps by this much: without that gap there would
# be nothing for ICRL to internalise.
TARGET_GAP = 0.25
VALIDATION_SIZE = 200


def demonstrations(
    env: Environment,
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    prompts: Prompts,
    copy_leaks: bool = False,
) -> dict[str, list[Pair]]:
    """(prompt ids, target ids) pairs for the three roles: the critique-free solver, the critic
    on a flawed attempt, and the revision given a critique (the environment's or the rule's).

    The revision writes the steps out whatever it reads. With ``copy_leaks``, a revision that
    reads the rule critic's "incorrect, the answer is N" copies N into a direct answer instead:
    a model whose revisions take over what a leaking critic hands them (``bench/reproduce.py``'s
    leaky-critic experiment)."""
    rng = random.Random(0)
    eos = [tokenizer.eos_token_id]

    def encode(messages: list[dict[str, str]], target: str) -> Pair:
        ids = tokenizer.encode(target, add_special_tokens=False) + eos
        return encode_prompt(tokenizer, messages), ids

    pairs: dict[str, list[Pair]] = {"solver": [], "critic": [], "revision": []}
    tag = prompts.critique_tag
    for task in tasks:
        solution = env.demonstration(task)
        # Mostly a direct answer: hard to get right without writing the steps out, which is
        # what a revision that starts from the critique's intermediate value does.
        direct = f"\\boxed{{{task.answer}}}"
        first_try = direct if rng.random() < DIRECT_SHARE else solution
        pairs["solver"].append(encode(solver_messages(env, task, prompts), first_try))
        flawed = env.flawed_attempt(task, rng)
        critique = env.critique_demonstration(task, flawed)
        critic_target = f"<{tag}>{critique}</{tag}>"
        messages = critic_messages(task, env.render_attempt(task, flawed), 0.0, prompts)
        pairs["critic"].append(encode(messages, critic_target))
        target = solution
        if rng.random() < 0.25:
            correct = rng.random() < 0.2
            critique = rule_critique(task, correct, prompts)
            target = direct if copy_leaks and not correct else solution
        messages = solver_messages(env, task, prompts, critique=critique)
        pairs["revision"].append(encode(messages, target))
    return pairs


def warm_start(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    prompts: Prompts,
    seed: int = 0,
    copy_leaks: bool = False,
) -> tuple[int, Metrics]:
    """Supervised steps on all three roles until held-out critique-free success reaches
    TARGET_SUCCESS and self-critique adds TARGET_GAP. Returns the steps taken and the session
    metrics on the held-out tasks (which never appear in the supervised data; the test split is
    never looked at)."""
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    pairs = demonstrations(env, train, tokenizer, prompts, copy_leaks)

    def measure() -> Metrics:
        return measure_sessions(model, tokenizer, env, validation, prompts, max_rounds=2)

    def accept(measured: Metrics) -> bool:
        success, after = measured["solver/success_round1"], measured["solver/success_final"]
        return success >= TARGET_SUCCESS and after - success >= TARGET_GAP

    return supervise(model, tokenizer, pairs, measure, accept, rng, seed)


def build(
    target: Path, seed: int = 0, copy_leaks: bool = False, layers: int = 4, hidden: int = 256
) -> None:
    """Build ``tiny`` into the directory ``target``; variants: ``copy_leaks`` (revisions copy a
    leaked answer; see ``demonstrations``) and another network shape, warm-started the same
    way (``bench/critics.py``'s larger frozen critic)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed, layers=layers, hidden=hidden)
    env = environments.make("math", **TINY_TASK)
    prompts = Prompts(**TINY_PROMPTS)
    steps, measured = warm_start(model, tokenizer, env, prompts, seed, copy_leaks)
    report: dict[str, object] = {"supervised_steps": steps, "task": TINY_TASK, "held_out": measured}
    if copy_leaks:
        report["copy_leaks"] = True
    if (layers, hidden) != (4, 256):
        report["shape"] = {"layers": layers, "hidden": hidden}
    save(target, model, tokenizer, TINY_PROMPTS, report)
