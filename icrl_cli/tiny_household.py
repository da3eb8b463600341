"""``tiny-household``: the embedded model for the household world, built and cached locally.

The same few-million-parameter Qwen3 as ``tiny``, with a byte-level BPE tokenizer trained on
household text (a character tokenizer would make every episode thousands of tokens long; this
one makes it about 150, and keeps every digit a token of its own, so receptacle numbers are
copied rather than guessed). It is warm-started in all three roles on a searching expert, one
that knows only what it has seen: the critique-free solver looks into the receptacles in the
order the room lists them until it sees the object, so within the turn budget it finds only
what lies early in the list. The critic reads a failed episode and writes a tip from what that
episode saw — where it passed the object by, or where to go on searching — and the revision
follows the tip. A tip therefore carries what the solver could not know in time, and lifts
success: the gap ICRL has to internalise.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import environments
from environments import Task, react_action
from environments.household import HouseholdEnvironment, expert, spec_of
from environments.household.catalog import CAN_CONTAIN, LAMPS, PICKUPABLE
from environments.household.world import World
from icrl_cli.rollout.episodes import observation_ids, trajectory_summary
from icrl_cli.rollout.prompts import (
    PROMPTS_FILE,
    Prompts,
    critic_messages,
    encode_prompt,
    solver_messages,
)
from icrl_cli.rollout.sessions import SessionSettings
from icrl_cli.tiny import (
    SPECIAL_TOKENS,
    Pair,
    build_model,
    measure_sessions,
    supervise,
    wrap_tokenizer,
)

VERSION = "5"
# The household options it is warm-started on: the simplest task type (a 3 to 5 step episode),
# so that a build on two cores leaves a model that acts at all.
OPTIONS: dict[str, object] = {"task_types": ["pick_and_place_simple"]}
PROMPTS = {
    "solver_user": "{task}",
    "revision_user": "{task}\nTip: {critique}",
    "critic_user": "{task}\n{summary}",
    "summary": "{attempt}\nreward {reward}",
    "critique_tag": "c",
    "rule_correct": "Done.",
    "rule_failed": "That failed.",
}
VOCAB_SIZE = 2048
MAX_POSITIONS = 2048
CORPUS_TASKS = 1500
# The train split holds under a thousand tasks of this type: too few to learn to read an
# observation rather than recall an episode, so the demonstrations add as many more worlds
# drawn the same way (``HouseholdEnvironment.training_like``; never an evaluation task).
EXTRA_TASKS = 8000
# A take is one turn in ten, and spotting the object in what a look showed is the hardest
# thing a searcher does: its tokens weigh this much more in the supervised loss.
TAKE_WEIGHT = 5.0
# Sampled, the model slips (a receptacle that is not in the room, an object that is not where
# it stands) and then repeats itself on "Nothing happens.". This share of the solver's and the
# revision's demonstrations carries one such slip: the slip is context (mask 0), the turn after
# it is the expert's own, so the model learns to go on from a failed action.
SLIP_SHARE = 0.5
VALIDATION_SIZE = 32
# Session settings of the warm-start's measurements (the tiny-household preset uses the same).
SETTINGS = SessionSettings(
    sessions_per_query=1,
    max_rounds=2,
    max_new_tokens=48,
    critic_max_new_tokens=48,
    max_turns=10,
    repeat_limit=3,
    context_tokens=MAX_POSITIONS,
    summary_observation_chars=120,
)
# Measured every CHECK_EVERY steps (a measurement plays 32 held-out tasks: seconds); the
# warm-start stops once both hold or after MAX_STEPS, keeping what it has (warm_start.json
# records the numbers either way). The build (demonstrations for 9,000 tasks, 2,000 steps of
# 48 rows, eight measurements) took 5,465 s on two cores (busy with other work for a while).
TARGET_SUCCESS = 0.05
TARGET_GAP = 0.15
CHECK_EVERY = 250
MAX_STEPS = 2000
# Rows a supervised step, a third for each role. On an H100 with slips, 2,000 steps of 24 rows
# reached 0.02 critique-free on held-out tasks, and of 48 rows 0.30 (docs/results.md).
BATCH_SIZE = 48
BUILD_TIME = "about 90 minutes"


def searched(env: HouseholdEnvironment, task: Task, start: str | None = None) -> list[expert.Step]:
    """The searching expert's steps for ``task``, looking from ``start`` (default: the first
    receptacle the room lists)."""
    spec = spec_of(task)
    world = env.world(spec)
    return expert.plan(world, spec.goal, start or world.listing()[0])


def episode(
    env: HouseholdEnvironment, task: Task, steps: list[expert.Step]
) -> tuple[list[tuple[str, str]], float]:
    """(ReAct turn, observation) for each step played in a fresh episode, up to done or the
    turn budget of the measurements, and the reward."""
    playing = env.start(task)
    turns, reward = [], 0.0
    for thought, action in steps[: SETTINGS.max_turns]:
        turn = f"Thought: {thought} Action: {action}"
        result = playing.step(turn)
        turns.append((turn, result.observation))
        reward = result.reward
        if result.done:
            break
    return turns, reward


def slip(world: World, goal_obj: str, rng: random.Random) -> expert.Step:
    """A turn of the kind the sampled model gets wrong, inadmissible where ``world`` stands:
    a walk to a receptacle the room does not have, or a take of the object it looks for
    from where it is (an instance that is not there)."""
    here = world.here()
    if here and rng.random() < 0.5:
        rec = rng.choice(here).name
        taken = {t.name for t in world.things.values() if t.kind == goal_obj and t.where == rec}
        number = rng.choice([n for n in range(1, 5) if f"{goal_obj} {n}" not in taken])
        thing = f"{goal_obj} {number}"
        return f"I need a {goal_obj}; the {thing} is here. I take it.", f"take {thing} from {rec}"
    kind = rng.choice(sorted({r.kind for r in world.receptacles.values()}))
    top = max(r.number for r in world.receptacles.values() if r.kind == kind)
    name = f"{kind} {top + rng.randint(1, 3)}"
    return f"I need a {goal_obj}; none here. I look in the {name}.", f"go to {name}"


def slipped_episode(
    env: HouseholdEnvironment, task: Task, steps: list[expert.Step], rng: random.Random
) -> tuple[list[tuple[str, str]], float, int | None]:
    """``episode`` with, in SLIP_SHARE of the draws, one ``slip`` before a step after the
    first (its feedback is "Nothing happens."; the world does not change), and the turn index
    of the slip (None without one)."""
    last = min(len(steps), SETTINGS.max_turns - 1)  # a slip leaves a turn for what follows
    at = rng.randrange(1, last) if last > 1 and rng.random() < SLIP_SHARE else None
    if at is None:
        return (*episode(env, task, steps), None)
    playing = env.start(task)
    for thought, action in steps[:at]:
        playing.step(f"Thought: {thought} Action: {action}")
    bad = slip(playing.world, spec_of(task).goal.obj, rng)
    if bad[1] in playing.world.commands():  # a slip must do nothing
        return (*episode(env, task, steps), None)
    return (*episode(env, task, [*steps[:at], bad, *steps[at:]]), at)


def failed_episode(
    env: HouseholdEnvironment, task: Task, rng: random.Random
) -> tuple[list[tuple[str, str]], float]:
    """A failing episode of the kind the solver plays: its own search run out of turns, or
    the search with one slip (a wrong object, a wrong place, a missed step)."""
    spec = spec_of(task)
    world = env.world(spec)
    played, reward = episode(env, task, searched(env, task))
    if reward == 1.0 or rng.random() < 0.5:
        slipped = expert.flawed_steps(world, spec.goal, rng, world.listing()[0])
        played, reward = episode(env, task, slipped)
    return played, reward


def corpus(env: HouseholdEnvironment, tasks: list[Task]) -> list[str]:
    """Text of the kind the model will read and write: openings, searching and failed
    episodes with their observations, and tips."""
    rng = random.Random(0)
    texts = []
    for task in tasks:
        spec = spec_of(task)
        failed, _ = failed_episode(env, task, rng)
        for played in (episode(env, task, searched(env, task))[0], failed):
            texts.append("\n".join([task.prompt] + [line for turn in played for line in turn]))
        actions = [react_action(turn) for turn, _ in failed]
        found = expert.review(env.world(spec), spec.goal, actions, env.max_steps, observed=True)
        texts.append(found.tip if found else "")
    return texts


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose merges may span spaces (household text is formulaic, so whole
    phrases become single tokens) but never a digit, a newline or the name of an object or
    receptacle kind: names stay tokens of their own, so the model copies them from the task
    and the observations instead of learning a phrase token for every name in every phrase."""
    names = sorted(set(PICKUPABLE) | set(CAN_CONTAIN) | set(LAMPS), key=len, reverse=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r" ?[0-9]|\n| ?\b(?:" + "|".join(names) + r")\b"), behavior="isolated"
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return wrap_tokenizer(backend)


def episode_target(
    tokenizer: PreTrainedTokenizerFast,
    turns: list[tuple[str, str]],
    done: bool,
    skip: int | None = None,
) -> tuple[list[int], list[float]]:
    """A played episode as a multi-turn response: each turn and its EOS (mask 1; TAKE_WEIGHT
    for a take; 0 for the turn at index ``skip``), then the observation's user turn (mask 0),
    exactly as a rollout lays it out."""
    ids: list[int] = []
    mask: list[float] = []
    for index, (turn, observation) in enumerate(turns):
        turn_ids = tokenizer.encode(turn, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += turn_ids
        weight = TAKE_WEIGHT if react_action(turn).startswith("take ") else 1
        mask += [0 if index == skip else weight] * len(turn_ids)
        if index < len(turns) - 1 or not done:
            continuation = observation_ids(tokenizer, observation)
            ids += continuation
            mask += [0] * len(continuation)
    return ids, mask


def demonstrations(
    env: HouseholdEnvironment,
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    prompts: Prompts,
) -> tuple[dict[str, list[Pair]], dict[str, list[list[float]]]]:
    """(prompt, target) pairs and target loss masks for the solver, the critic and the
    revision."""
    rng = random.Random(0)
    pairs: dict[str, list[Pair]] = {"solver": [], "critic": [], "revision": []}
    masks: dict[str, list[list[float]]] = {"solver": [], "critic": [], "revision": []}
    tag = prompts.critique_tag
    eos = [tokenizer.eos_token_id]
    for task in tasks:
        spec = spec_of(task)
        # An episode cut at the turn budget ends as a rollout does there: no observation after.
        played, _, skip = slipped_episode(env, task, searched(env, task), rng)
        target, mask = episode_target(tokenizer, played, done=True, skip=skip)
        free = encode_prompt(tokenizer, solver_messages(env, task, prompts))
        pairs["solver"].append((free, target))
        masks["solver"].append(mask)
        failed, reward = failed_episode(env, task, rng)
        actions = [react_action(turn) for turn, _ in failed]
        found = expert.review(env.world(spec), spec.goal, actions, env.max_steps, observed=True)
        if found is None or reward == 1.0:  # a slip the episode recovered from needs no tip
            continue
        summary = trajectory_summary(
            [(action, obs) for action, (_, obs) in zip(actions, failed, strict=True)],
            SETTINGS.summary_observation_chars,
        )
        critic_prompt = encode_prompt(tokenizer, critic_messages(task, summary, 0.0, prompts))
        critic_target = (
            tokenizer.encode(f"<{tag}>{found.tip}</{tag}>", add_special_tokens=False) + eos
        )
        pairs["critic"].append((critic_prompt, critic_target))
        masks["critic"].append([1] * len(critic_target))
        tip, start = found.tip, found.search_from
        if rng.random() < 0.2:
            tip, start = prompts.rule_failed, None  # what the rule critic says: no information
        revised, _, skip = slipped_episode(env, task, searched(env, task, start), rng)
        target, mask = episode_target(tokenizer, revised, done=True, skip=skip)
        revision = encode_prompt(tokenizer, solver_messages(env, task, prompts, critique=tip))
        pairs["revision"].append((revision, target))
        masks["revision"].append(mask)
    return pairs, masks


def build(target: Path, seed: int = 0) -> None:
    env = environments.make("household", **OPTIONS)
    assert isinstance(env, HouseholdEnvironment)
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    tokenizer = build_tokenizer(corpus(env, train[:CORPUS_TASKS]))
    model = build_model(tokenizer, seed, max_positions=MAX_POSITIONS)
    if torch.cuda.is_available():  # the same steps on a GPU where there is one
        model.to("cuda")
    prompts = Prompts(**PROMPTS)
    pairs, masks = demonstrations(env, train + env.training_like(EXTRA_TASKS), tokenizer, prompts)

    def measure() -> dict[str, float | int | None]:
        return measure_sessions(model, tokenizer, env, validation, prompts, settings=SETTINGS)

    def accept(measured: dict[str, float | int | None]) -> bool:
        success, after = measured["solver/success_round1"], measured["solver/success_final"]
        return success >= TARGET_SUCCESS and after - success >= TARGET_GAP

    steps, measured = supervise(
        model,
        tokenizer,
        pairs,
        measure,
        accept,
        rng,
        seed,
        masks=masks,
        batch_size=BATCH_SIZE,
        chunks=3,
        check_every=CHECK_EVERY,
        max_steps=MAX_STEPS,
        keep_last=True,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / PROMPTS_FILE).write_text(json.dumps(PROMPTS, indent=2) + "\n")
    report = {"supervised_steps": steps, "options": OPTIONS, "held_out": measured}
    (target / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
