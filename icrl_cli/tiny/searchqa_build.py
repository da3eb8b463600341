"""The ``tiny-searchqa`` build: a search-QA BPE tokenizer, warm-started on searching episodes.

The critique-free solver it demonstrates reads the question carelessly: on a two-hop question
it often answers after the first hop, and it often answers with whichever fact of the passage
comes to hand rather than the one asked for. The critic reads a failed episode and writes the
environment's tip ("X works for Y; search for Y next", "the passage on X names the profession
of X"), and the revision after a tip searches and answers as the expert does. So a tip carries
what the careless solver skipped: the gap ICRL internalises.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

import environments
from environments import Task
from environments.searchqa import SearchQAEnvironment
from environments.searchqa.expert import hops_of
from icrl_cli.config import resolve
from icrl_cli.rollout.episodes import trajectory_summary
from icrl_cli.rollout.prompts import Prompts, critic_messages, encode_prompt, solver_messages
from icrl_cli.rollout.settings import SessionSettings
from icrl_cli.tiny.network import MULTI_TURN_PROMPTS, build_model, save, train_bpe
from icrl_cli.tiny.supervision import Metrics, Pair, measure_sessions, supervise, turns_target

# Bump when anything the build depends on changes what it builds, so stale caches are not reused.
VERSION = "1"
BUILD_TIME = "about 20 minutes"
# One passage a search: the expert still answers every question of every split, and the
# episodes stay short.
OPTIONS: dict[str, object] = {"top_k": 1}
PROMPTS = MULTI_TURN_PROMPTS
VOCAB_SIZE = 2048
MAX_POSITIONS = 1024
# The critique-free demonstrations: a two-hop question is answered after its first hop in
# LAZY_SHARE of them, and the answer is a fact of the last passage drawn at random (the right
# one among them) in GUESS_SHARE.
LAZY_SHARE = 0.5
GUESS_SHARE = 0.75
# The share of revisions told the rule critic's verdict instead of a tip.
RULE_SHARE = 0.2
# Each train task is demonstrated this many times, with fresh draws of the careless solver.
DRAWS = 3
VALIDATION_SIZE = 64
# The warm-start is measured as the tiny-searchqa preset samples, one session per task.
SETTINGS = replace(
    SessionSettings.from_config(resolve("tiny-searchqa", []), MAX_POSITIONS),
    sessions_per_query=1,
)
TARGET_SUCCESS = 0.15
TARGET_GAP = 0.15
CHECK_EVERY = 100
MAX_STEPS = 1000
BATCH_SIZE = 48

Episode = list[tuple[str, str]]  # (action, observation)


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Byte-level BPE that keeps every capitalised word and every digit a piece of its own
    (merged within, never with what surrounds it): an invented name is then the same tokens in
    the question, a passage, a search and an answer, so the model copies it. Merges between
    the other words may span spaces, so the passages' fixed phrasing takes few tokens."""
    return train_bpe(texts, r"[0-9]|\n|[A-Z][a-z]*", VOCAB_SIZE)


def play(env: SearchQAEnvironment, task: Task, actions: list[str]) -> tuple[Episode, float]:
    """``actions`` played in a fresh episode, until it ends: its turns and reward."""
    episode, turns, reward = env.start(task), [], 0.0
    for action in actions:
        result = episode.step(action)
        turns.append((action, result.observation))
        reward = result.reward
        if result.done:
            break
    return turns, reward


def careless_actions(env: SearchQAEnvironment, task: Task, rng: random.Random) -> list[str]:
    """A critique-free attempt as the warm-start demonstrates it: the expert's searches, on a
    two-hop question cut after the first hop in LAZY_SHARE of the draws, then in GUESS_SHARE of
    them an answer drawn from the facts of the last passage searched."""
    actions = env.expert_actions(task)
    searches = actions[:-1]
    if len(searches) > 1 and rng.random() < LAZY_SHARE:
        searches = searches[:1]
        facts = env.world.by_name[hops_of(task)[0]].facts
        return [*searches, f"answer[{rng.choice(facts)[1]}]"]
    if rng.random() < GUESS_SHARE:
        name = env.world.follow(*hops_of(task))[-1][0]
        return [*searches, f"answer[{rng.choice(env.world.by_name[name].facts)[1]}]"]
    return actions


def corpus(env: SearchQAEnvironment, tasks: list[Task]) -> list[str]:
    """Text of the kind the model reads and writes: questions, every passage, expert and
    careless episodes, and tips."""
    rng = random.Random(0)
    texts = [entity.passage for entity in env.world.entities]
    for task in tasks:
        for actions in (env.expert_actions(task), careless_actions(env, task, rng)):
            turns, _ = play(env, task, actions)
            texts.append("\n".join([task.prompt] + [line for turn in turns for line in turn]))
            texts.append(env.critique_demonstration(task, "\n".join(actions)) or "")
    return texts


def demonstrations(
    env: SearchQAEnvironment,
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    prompts: Prompts,
    seed: int = 0,
) -> tuple[dict[str, list[Pair]], dict[str, list[list[float]]]]:
    """(prompt, target) pairs and target loss masks for the solver, the critic and the
    revision: DRAWS careless attempts of each task; each that fails gives the critic its tip
    and the revision an expert episode after that tip (or after the rule's verdict)."""
    rng = random.Random(seed)
    tag = prompts.critique_tag
    pairs: dict[str, list[Pair]] = {"solver": [], "critic": [], "revision": []}
    masks: dict[str, list[list[float]]] = {"solver": [], "critic": [], "revision": []}

    def add(role: str, prompt: list[int], target: tuple[list[int], list[float]]) -> None:
        pairs[role].append((prompt, target[0]))
        masks[role].append(target[1])

    expert = {task.id: play(env, task, env.expert_actions(task))[0] for task in tasks}
    for _ in range(DRAWS):
        for task in tasks:
            actions = careless_actions(env, task, rng)
            turns, reward = play(env, task, actions)
            free = encode_prompt(tokenizer, solver_messages(env, task, prompts))
            add("solver", free, turns_target(tokenizer, turns, [1.0] * len(turns), done=True))
            tip = env.critique_demonstration(task, "\n".join(actions))
            if reward == 1.0 or tip is None:
                continue
            summary = trajectory_summary(turns, SETTINGS.summary_observation_chars)
            critic = encode_prompt(tokenizer, critic_messages(task, summary, reward, prompts))
            said = tokenizer.encode(f"<{tag}>{tip}</{tag}>", add_special_tokens=False)
            said += [tokenizer.eos_token_id]
            add("critic", critic, (said, [1.0] * len(said)))
            critique = prompts.rule_failed if rng.random() < RULE_SHARE else tip
            revision = encode_prompt(tokenizer, solver_messages(env, task, prompts, critique))
            shown = expert[task.id]
            add("revision", revision, turns_target(tokenizer, shown, [1.0] * len(shown), True))
    return pairs, masks


def build(target: Path, seed: int = 0) -> None:
    """Build ``tiny-searchqa`` into the directory ``target``. Its warm-start is measured on
    VALIDATION_SIZE train questions it never sees; dev and test stay unseen."""
    env = environments.make("searchqa", **OPTIONS)
    assert isinstance(env, SearchQAEnvironment)
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    tokenizer = build_tokenizer(corpus(env, train))
    model = build_model(tokenizer, seed, max_positions=MAX_POSITIONS)
    if torch.cuda.is_available():
        model.to("cuda")
    prompts = Prompts(**PROMPTS)
    pairs, masks = demonstrations(env, train, tokenizer, prompts, seed)

    def measure() -> Metrics:
        return measure_sessions(model, tokenizer, env, validation, prompts, settings=SETTINGS)

    def accept(measured: Metrics) -> bool:
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
        chunks=1,
        check_every=CHECK_EVERY,
        max_steps=MAX_STEPS,
        keep_last=True,
    )
    report = {"supervised_steps": steps, "options": OPTIONS, "held_out": measured}
    save(target, model, tokenizer, PROMPTS, report)
