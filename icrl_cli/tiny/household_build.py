"""The ``tiny-household`` build: a household BPE tokenizer, warm-started on expert episodes."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

import environments
from environments import Task
from environments.household import HouseholdEnvironment
from environments.household.catalog import CAN_CONTAIN, LAMPS, PICKUPABLE
from environments.household.demonstrations import (
    Demonstration,
    Turn,
    corpus,
    demonstrate,
    turn_weights,
)
from icrl_cli.config import resolve
from icrl_cli.rollout.episodes import trajectory_summary
from icrl_cli.rollout.prompts import Prompts, critic_messages, encode_prompt, solver_messages
from icrl_cli.rollout.settings import SessionSettings
from icrl_cli.tiny.network import MULTI_TURN_PROMPTS, build_model, save, train_bpe
from icrl_cli.tiny.supervision import Metrics, Pair, measure_sessions, supervise, turns_target

# Bump when anything the build depends on changes what it builds, so stale caches are not reused.
VERSION = "7"
BUILD_TIME = "about 40 minutes"
# The household options it is warm-started on: the simplest task type (a 3 to 5 step episode),
# so that a build on two cores leaves a model that acts at all.
OPTIONS: dict[str, object] = {"task_types": ["pick_and_place_simple"]}
PROMPTS = MULTI_TURN_PROMPTS
# A character tokenizer would make an episode thousands of tokens long; this BPE makes it a
# couple of hundred.
VOCAB_SIZE = 2048
MAX_POSITIONS = 2048
CORPUS_TASKS = 1500
# The train split holds under a thousand tasks of this type: too few to learn to read an
# observation rather than recall an episode, so the demonstrations add as many more worlds
# drawn the same way (``HouseholdEnvironment.training_like``; never an evaluation task).
EXTRA_TASKS = 8000
VALIDATION_SIZE = 64
# The warm-start is measured as the tiny-household preset samples, one session per task.
SETTINGS = replace(
    SessionSettings.from_config(resolve("tiny-household", []), MAX_POSITIONS),
    sessions_per_query=1,
)
# The warm-start runs MAX_STEPS, its learning rate falling along a half cosine, and keeps the
# last model (its weights ship with the package: the build's length is no user's wait). It is
# measured every CHECK_EVERY steps on the VALIDATION_SIZE held-out tasks (warm_start.json keeps
# the last measurement).
CHECK_EVERY = 500
MAX_STEPS = 1000
# Rows a supervised step, a third for each role (docs/tiny_models.md: fewer learn far slower).
BATCH_SIZE = 48
# Two stages. The first draws 16 rows a role a step from about 9,000 worlds for MAX_STEPS. It
# is v6, shipped as FIRST_STAGE, with thoughts that named only the object: on 150 new worlds,
# teacher-forced, it says rightly whether the object is here at 75% of the looks and names the
# receptacle the object goes to at 46% of the puts (0.05 held-out success). The second stage
# starts from it with the expert's thoughts of today, which carry the receptacle the object
# goes to (``expert._Planner.fetch``), on SECOND_TASKS worlds it has never seen (drawn apart
# from the first stage's), about one each a step, for SECOND_STEPS under bfloat16 autocast,
# the cosine restarted, its rows drawn by a generator of its own (seed + 1).
# ``build(target, first_stage=None)`` runs both stages from scratch with today's thoughts: the
# same recipe, not the shipped weights.
FIRST_STAGE = Path(__file__).parent / "shipped" / "tiny-household-v6"
SECOND_LR = 2e-3
SECOND_STEPS = 1000
SECOND_TASKS = 16000
SECOND_CHECK_EVERY = 250


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose merges may span spaces (household text is formulaic, so whole
    phrases become single tokens) but never a digit, a newline or the name of an object or
    receptacle kind: names stay tokens of their own, so the model copies them from the task
    and the observations instead of learning a phrase token for every name in every phrase."""
    names = sorted(set(PICKUPABLE) | set(CAN_CONTAIN) | set(LAMPS), key=len, reverse=True)
    return train_bpe(texts, r" ?[0-9]|\n| ?\b(?:" + "|".join(names) + r")\b", VOCAB_SIZE)


def episode_target(
    tokenizer: PreTrainedTokenizerFast,
    turns: list[Turn],
    done: bool,
    skip: int | None = None,
) -> tuple[list[int], list[float]]:
    """A played episode as a multi-turn response (``turns_target``), each turn weighed by
    ``turn_weights`` (0 for the slip at index ``skip``)."""
    return turns_target(tokenizer, turns, turn_weights(turns, skip), done)


def demonstrations(
    env: HouseholdEnvironment,
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    prompts: Prompts,
) -> tuple[dict[str, list[Pair]], dict[str, list[list[float]]]]:
    """(prompt, target) pairs and target loss masks for the solver, the critic and the
    revision."""
    pairs: dict[str, list[Pair]] = {"solver": [], "critic": [], "revision": []}
    masks: dict[str, list[list[float]]] = {"solver": [], "critic": [], "revision": []}
    for demo in demonstrate(env, tasks):
        for role, pair, mask in _encoded(env, demo, tokenizer, prompts):
            pairs[role].append(pair)
            masks[role].append(mask)
    return pairs, masks


def _encoded(
    env: HouseholdEnvironment,
    demo: Demonstration,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Prompts,
) -> list[tuple[str, Pair, list[float]]]:
    """(role, (prompt, target), target mask) for each role ``demo`` demonstrates."""
    task, tag = demo.task, prompts.critique_tag
    # An episode cut at the turn budget ends as a rollout does there: no observation after.
    target, mask = episode_target(tokenizer, demo.solver.turns, done=True, skip=demo.solver.slip)
    free = encode_prompt(tokenizer, solver_messages(env, task, prompts))
    encoded = [("solver", (free, target), mask)]
    if demo.revision is None:
        return encoded
    summary = trajectory_summary(demo.failed, SETTINGS.summary_observation_chars)
    critic_prompt = encode_prompt(tokenizer, critic_messages(task, summary, 0.0, prompts))
    critic_target = tokenizer.encode(f"<{tag}>{demo.tip}</{tag}>", add_special_tokens=False)
    critic_target += [tokenizer.eos_token_id]
    encoded.append(("critic", (critic_prompt, critic_target), [1] * len(critic_target)))
    critique = prompts.rule_failed if demo.ruled else demo.tip
    target, mask = episode_target(
        tokenizer, demo.revision.turns, done=True, skip=demo.revision.slip
    )
    revision = encode_prompt(tokenizer, solver_messages(env, task, prompts, critique=critique))
    encoded.append(("revision", (revision, target), mask))
    return encoded


def build(target: Path, seed: int = 0, first_stage: Path | None = FIRST_STAGE) -> None:
    """Build ``tiny-household`` into the directory ``target``: the second stage from the model
    and tokenizer in ``first_stage`` (v6's, shipped), or with None both stages from scratch."""
    env = environments.make("household", **OPTIONS)
    assert isinstance(env, HouseholdEnvironment)
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    if first_stage is None:
        tokenizer = build_tokenizer(corpus(env, train[:CORPUS_TASKS]))
        model = build_model(tokenizer, seed, max_positions=MAX_POSITIONS)
    else:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(first_stage)
        model = Qwen3ForCausalLM.from_pretrained(first_stage)
    if torch.cuda.is_available():  # the same steps on a GPU where there is one
        model.to("cuda")
    prompts = Prompts(**PROMPTS)

    def measure() -> Metrics:
        return measure_sessions(model, tokenizer, env, validation, prompts, settings=SETTINGS)

    def stage(
        tasks: list[Task],
        generator: random.Random,
        lr: float,
        steps: int,
        check_every: int,
        bf16: bool,
    ) -> tuple[int, Metrics]:
        """``steps`` supervised steps on ``tasks``' demonstrations."""
        pairs, masks = demonstrations(env, tasks, tokenizer, prompts)
        return supervise(
            model,
            tokenizer,
            pairs,
            measure,
            lambda _: False,
            generator,
            seed,
            masks=masks,
            batch_size=BATCH_SIZE,
            lr=lr,
            chunks=3,
            check_every=check_every,
            max_steps=steps,
            keep_last=True,
            cosine=True,
            bf16=bf16,
        )

    report: dict[str, object] = {"options": OPTIONS}
    if first_stage is None:
        first = train + env.training_like(EXTRA_TASKS)
        steps, measured = stage(first, rng, 2e-3, MAX_STEPS, CHECK_EVERY, bf16=False)
        report["first_stage"] = {"supervised_steps": steps, "held_out": measured}
    else:
        report["first_stage"] = {"from": first_stage.name}
    second = env.training_like(SECOND_TASKS, draw=1)
    generator = random.Random(seed + 1)
    steps, measured = stage(
        second, generator, SECOND_LR, SECOND_STEPS, SECOND_CHECK_EVERY, bf16=True
    )
    report.update(supervised_steps=MAX_STEPS + steps, held_out=measured)
    save(target, model, tokenizer, PROMPTS, report)
