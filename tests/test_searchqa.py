"""Tests of the "searchqa" environment: answer scoring, the seeded world and its splits, BM25
retrieval, the episode protocol, the expert, the random baseline, critiques, and the
environment served over AgentGym's HTTP API."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import environments
from environments import EnvError, Task
from environments.agentgym import create_app
from environments.searchqa import SearchQAEnvironment
from environments.searchqa.answers import exact_match, normalize_answer, token_f1
from environments.searchqa.episode import INVALID, Command, parse_command
from environments.searchqa.retriever import Passage, Retriever
from environments.searchqa.world import RELATIONS, SIZES

ENV = SearchQAEnvironment(seed=0)
WORLD = ENV.world


def first_task(split: str, relations: list[str]) -> Task:
    return next(t for t in ENV.tasks(split) if t.metadata["relations"] == relations)


def play(env: SearchQAEnvironment, task: Task, actions: list[str]) -> list:
    episode = env.start(task)
    return [episode.step(action) for action in actions]


# --- answer scoring ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The  Quimbra!", "quimbra"),
        ("An apple, a day.", "apple day"),
        ("Doravex Labs.", "doravex labs"),
        ("Theory of a thing", "theory of thing"),  # only whole-word articles go
        ("Tessik's", "tessiks"),
        ("  \tA\n", ""),
    ],
)
def test_normalize_answer_is_squads(text: str, normal: str) -> None:
    assert normalize_answer(text) == normal


@pytest.mark.parametrize(
    ("prediction", "gold", "f1"),
    [
        ("Doravex", "Doravex Labs", 2 / 3),  # P = 1, R = 1/2
        ("Doravex Labs Inc", "the Doravex Labs", 0.8),  # P = 2/3, R = 1
        ("labs labs", "labs", 2 / 3),  # the repeat counts once: P = 1/2, R = 1
        ("the quimbra.", "Quimbra", 1.0),
        ("Quimbra", "Tessik", 0.0),
        ("the", "the", 0.0),  # both empty after normalising: no shared word
    ],
)
def test_token_f1_by_hand(prediction: str, gold: str, f1: float) -> None:
    assert token_f1(prediction, gold) == pytest.approx(f1)


def test_exact_match_after_normalising() -> None:
    assert exact_match("the Quimbra.", "Quimbra")
    assert exact_match("DORAVEX   labs", "Doravex Labs")
    assert not exact_match("Doravex", "Doravex Labs")


# --- the world and its splits --------------------------------------------------------------


def test_split_sizes_follow_from_the_shares() -> None:
    # Per kind, round(n/8) subjects go to test and round(n/16) to dev (12, 60, 160, 640
    # entities: 2 + 8 + 20 + 80 = 110 and 1 + 4 + 10 + 40 = 55), two questions per subject.
    assert len(WORLD.entities) == sum(SIZES.values()) == 872
    sizes = {split: len(ENV.tasks(split)) for split in ENV.splits()}
    assert sizes == {"train": 2 * (872 - 110 - 55), "dev": 2 * 55, "test": 2 * 110}
    for split in ENV.splits():
        types = [t.metadata["task_type"] for t in ENV.tasks(split)]
        assert types.count("one_hop") == types.count("two_hop") == sizes[split] // 2


def test_splits_are_disjoint_in_subjects_and_questions() -> None:
    subjects = {s: {t.metadata["subject"] for t in ENV.tasks(s)} for s in ENV.splits()}
    questions = {s: {t.metadata["question"] for t in ENV.tasks(s)} for s in ENV.splits()}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not subjects[a] & subjects[b]
        assert not questions[a] & questions[b]
    ids = [t.id for s in ENV.splits() for t in ENV.tasks(s)]
    assert len(set(ids)) == len(ids)


def test_splits_are_stable_and_depend_only_on_the_seed() -> None:
    again = SearchQAEnvironment(seed=0, top_k=5)
    for split in ENV.splits():
        assert [(t.id, t.answer, t.metadata) for t in again.tasks(split)] == [
            (t.id, t.answer, t.metadata) for t in ENV.tasks(split)
        ]
    # Pinned across processes and Python versions: a change here means every split drifted
    # (string seeds, never hash(), which varies per process).
    rows = "\n".join(
        f"{t.id}\t{t.metadata['question']}\t{t.answer}" for s in ENV.splits() for t in ENV.tasks(s)
    )
    digest = hashlib.sha256(rows.encode()).hexdigest()
    assert digest == "5cfe2d914f6e75a5428d98322c1585b756d5d15a9a3d4cd4a7ddb5d08a6af57c"
    other = SearchQAEnvironment(seed=1)
    assert other.tasks("test")[0].metadata != ENV.tasks("test")[0].metadata


def test_every_gold_answer_is_stated_by_the_last_hops_passage() -> None:
    by_name = WORLD.by_name
    for split in ENV.splits():
        for task in ENV.tasks(split):
            name = task.metadata["subject"]
            for relation in task.metadata["relations"]:
                obj = by_name[name].fact(relation)
                assert RELATIONS[relation].says(name, obj) in by_name[name].passage
                name = obj
            assert name == task.answer


def test_no_passage_is_cut_at_the_default_length() -> None:
    # The longest possible: a person of two 12-letter names (4 mentions), a 12-letter city, a
    # "… Institute" of 22 characters, "cartographer", a year, and 63 characters of template.
    longest = 4 * 25 + 12 + 22 + 12 + 4 + 63
    assert longest == 213 < ENV.passage_chars
    assert max(len(e.passage) for e in WORLD.entities) <= longest
    assert max(len(w) for e in WORLD.entities for w in e.name.split()) <= 12


def test_every_name_word_is_used_once() -> None:
    suffixes = {"Labs", "Works", "Institute", "Foundry", "Guild", "Company", "Trust"}
    words = [w for e in WORLD.entities for w in e.name.split() if w not in suffixes]
    values = {obj for e in WORLD.entities for r, obj in e.facts if r in ("river", "language")}
    assert len(words) == len(set(words)) == 12 + 60 + 160 + 2 * 640
    assert not values & set(words)


def test_questions_read_as_english() -> None:
    two_hop = first_task("test", ["works_for", "industry"])
    subject = two_hop.metadata["subject"]
    assert (
        two_hop.metadata["question"] == f"What does the organisation that {subject} works for make?"
    )
    assert two_hop.prompt.startswith(f"Question: {two_hop.metadata['question']}\n")
    assert "search[query]" in two_hop.prompt and "answer[text]" in two_hop.prompt


# --- retrieval -----------------------------------------------------------------------------


def test_bm25_ranks_the_entitys_own_passage_first_for_its_name() -> None:
    for entity in WORLD.entities:
        found = ENV.retrieve(entity.name)
        assert found[0].title == entity.name, entity.name
        assert 1 <= len(found) <= ENV.top_k


def test_bm25_by_hand_on_a_tiny_corpus() -> None:
    # Same length, "quimbra" twice in the first and once in the second: the term frequency
    # decides; the third shares no term with the query and is never returned.
    passages = [
        Passage("A", "quimbra river quimbra"),
        Passage("B", "quimbra river doravex"),
        Passage("C", "tessik varnolu doravex"),
    ]
    retriever = Retriever(passages)
    assert [p.title for p in retriever.search("Quimbra", 3)] == ["A", "B"]
    assert [p.title for p in retriever.search("Quimbra", 1)] == ["A"]
    assert [p.title for p in retriever.search("varnolu", 3)] == ["C"]
    assert retriever.search("zzz unknown", 3) == []
    assert retriever.search("what is the", 3) == []  # stop words only


def test_top_k_sets_how_many_passages_a_search_shows() -> None:
    city = next(e.name for e in WORLD.entities if e.kind == "city")
    for k in (1, 3, 5):
        episode = SearchQAEnvironment(top_k=k).start(ENV.tasks("test")[0])
        lines = episode.step(f"search[{city}]").observation.splitlines()
        assert [line.split("]")[0] for line in lines] == [f"[{i}" for i in range(1, k + 1)]
        assert lines[0].startswith(f"[1] {city}: {city} is a city in ")


# --- the episode protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "command"),
    [
        ("Thought: hmm. Action: search[Doravex Labs]", Command("search", "Doravex Labs")),
        ("Action: Answer[ Quimbra ]\nObservation: …", Command("answer", "Quimbra")),
        ("search[a b] then answer[c]", Command("search", "a b")),
        ("Thought: x\nAction:\nanswer[1923]", Command("answer", "1923")),
        ("Action: lookup[Quimbra]", None),
        ("Action: research[Quimbra]", None),
        ("Action: search[]", None),
        ("Action: answer[   ]", None),
        ("Action: Quimbra", None),
        ("", None),
    ],
)
def test_parse_command(reply: str, command: Command | None) -> None:
    assert parse_command(reply) == command


def test_invalid_actions_cost_a_step_and_name_the_valid_ones() -> None:
    task = ENV.tasks("test")[0]
    results = play(ENV, task, ["lookup[x]", "search[]", "Thought: done. Action: Noga"])
    for result in results:
        assert (result.observation, result.reward, result.done) == (INVALID, 0.0, False)
    assert [r.info["steps"] for r in results] == [1, 2, 3]
    assert "search[query]" in INVALID and "answer[text]" in INVALID


def test_an_answer_ends_the_episode_with_exact_match_and_f1() -> None:
    task = first_task("test", ["works_for"])  # the gold is an organisation: two words
    word = task.answer.split()[0]
    episode = ENV.start(task)
    result = episode.step(f"Thought: a guess. Action: answer[{word}]")
    assert (result.reward, result.done, result.info["won"]) == (0.0, True, False)
    assert result.info["f1"] == pytest.approx(2 / 3)
    with pytest.raises(EnvError, match="is over"):
        episode.step(f"answer[{task.answer}]")
    right = play(ENV, task, [f"answer[the {task.answer.upper()}.]"])[-1]
    assert (right.reward, right.done, right.info["f1"]) == (1.0, True, 1.0)


def test_max_steps_ends_an_unanswered_episode_with_reward_zero() -> None:
    env = SearchQAEnvironment(max_steps=2)
    task = env.tasks("test")[0]
    subject = task.metadata["subject"]
    episode = env.start(task)
    first = episode.step(f"search[{subject}]")
    assert (first.done, first.reward) == (False, 0.0)
    last = episode.step(f"search[{subject}]")
    assert (last.done, last.reward, last.info["won"]) == (True, 0.0, False)
    with pytest.raises(EnvError):
        episode.step(f"answer[{task.answer}]")
    # An answer on the last allowed step still counts.
    one = SearchQAEnvironment(max_steps=1)
    assert play(one, task, [f"answer[{task.answer}]"])[-1].reward == 1.0


# --- the expert, the random baseline, critiques --------------------------------------------


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_expert_solves_every_question_by_searching(split: str) -> None:
    for task in ENV.tasks(split):
        actions = ENV.expert_actions(task)
        hops = len(task.metadata["relations"])
        assert [a.split("[")[0] for a in actions] == ["search"] * hops + ["answer"]
        last = play(ENV, task, actions)[-1]
        assert (last.reward, last.done, last.info["f1"]) == (1.0, True, 1.0), task.id


def test_expert_reads_the_passages_not_the_gold() -> None:
    task = first_task("test", ["works_for", "industry"])
    misled = Task(task.id, task.prompt, "no such answer", task.metadata)
    assert ENV.expert_actions(misled)[-1] == f"answer[{task.answer}]"
    blind = SearchQAEnvironment()
    blind.retrieve = lambda query: []  # type: ignore[method-assign]
    with pytest.raises(EnvError, match="the expert found no works_for fact"):
        blind.expert_actions(task)


def test_demonstration_is_react_lines_of_the_experts_actions() -> None:
    task = first_task("test", ["works_for", "industry"])
    lines = ENV.demonstration(task).splitlines()
    assert all(re.fullmatch(r"Thought: .+ Action: (search|answer)\[.+\]", line) for line in lines)
    assert [line.split("Action: ")[1] for line in lines] == ENV.expert_actions(task)
    subject, org = (
        task.metadata["subject"],
        WORLD.by_name[task.metadata["subject"]].fact("works_for"),
    )
    assert lines[1] == (
        f"Thought: {subject} works for {org}. I search for {org}. Action: search[{org}]"
    )


def test_random_policy_rarely_succeeds() -> None:
    rng = random.Random("random-policy-test")
    rewards = [ENV.random_reward(task, rng) for task in ENV.tasks("test")]
    assert sum(rewards) / len(rewards) < 0.02


def test_render_attempt_replays_actions_and_observations() -> None:
    task = first_task("test", ["works_for"])
    subject = task.metadata["subject"]
    attempt = f"Thought: look. Action: search[{subject}]\nThought: so. Action: answer[x]"
    lines = ENV.render_attempt(task, attempt).splitlines()
    assert lines[0] == f"> search[{subject}]"
    assert lines[1].startswith(f"[1] {subject}: {subject} was born in ")
    assert lines[-2:] == ["> answer[x]", "You answered: x"]


def test_critiques_name_the_first_mistake() -> None:
    task = first_task("test", ["works_for", "industry"])
    subject = task.metadata["subject"]
    org = WORLD.by_name[subject].fact("works_for")
    critique = ENV.critique_demonstration
    assert critique(task, ENV.demonstration(task)) is None
    assert critique(task, "") == f"You never searched for {subject}; search for {subject} first."
    assert critique(task, f"Action: search[{subject}]\nAction: answer[{org}]") == (
        f"{subject} works for {org}; search for {org} next."
    )
    both = f"Action: search[{subject}]\nAction: search[{org}]"
    assert critique(task, both) == (
        f"You found the passage on {org} but never answered; it names what {org} makes."
    )
    assert critique(task, both + "\nAction: answer[glue]") == (
        f'The passage on {org} names what {org} makes; "glue" is not it.'
    )
    assert critique(task, f"Action: look for {subject}") == (
        f'"look for {subject}" is not an action; reply with search[query] or answer[text].'
    )
    # A slip mended later is no mistake: the attempt answers right.
    assert critique(task, "Action: oops\n" + ENV.demonstration(task)) is None


def test_flawed_attempts_fail_and_get_a_critique() -> None:
    rng = random.Random(0)
    for task in ENV.tasks("dev"):
        flawed = ENV.flawed_attempt(task, rng)
        summary = ENV.render_attempt(task, flawed)
        results = play(ENV, task, [line.split("Action: ")[1] for line in flawed.splitlines()])
        assert results[-1].reward == 0.0
        tip = ENV.critique_demonstration(task, flawed)
        assert tip is not None and tip == ENV.critique_demonstration(task, summary)


# --- options, registry, serving ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, "searchqa option top_k must be an integer from 1 to 20, not 0"),
        ({"max_steps": "6"}, "searchqa option max_steps must be an integer of at least 1, not '6'"),
        ({"seed": 1.5}, "searchqa option seed must be an integer, not 1.5"),
        ({"passage_chars": 10}, "passage_chars must be an integer of at least 40"),
        ({"rooms": 3}, "environment 'searchqa' rejects its options"),
    ],
)
def test_bad_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(EnvError, match=re.escape(message)):
        environments.make("searchqa", **options)


def test_unknown_split_and_foreign_task_are_one_line() -> None:
    assert "searchqa" in environments.available()
    with pytest.raises(
        EnvError, match="unknown split 'validation'; valid splits: train, dev, test"
    ):
        ENV.tasks("validation")
    with pytest.raises(EnvError, match="is not a searchqa task"):
        ENV.start(Task("math-0", "1+1", "2"))


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(create_app("searchqa", seed=0)) as client:
        yield client


def test_served_over_agentgym_http(http: TestClient) -> None:
    # Game indices: every train question, then the test split's.
    train = len(ENV.tasks("train"))
    task = ENV.tasks("test")[1]
    env_id = http.post("/create").json()["id"]
    reset = http.post("/reset", json={"id": env_id, "game": train + 1, "world_type": "Text"})
    data = reset.json()
    assert data["observation"] == task.prompt
    assert data["available_actions"] == ["answer[<text>]", "search[<query>]"]
    assert data["task_type"] == f"two_hop/{task.id}"
    actions = ENV.expert_actions(task)
    searched = http.post("/step", json={"id": env_id, "action": f"Action: {actions[0]}"}).json()
    assert searched["reward"] == 0.0 and searched["done"] is False
    subject = task.metadata["subject"]
    assert searched["observation"].startswith(f"[1] {subject}: ")
    for action in actions[1:]:
        answered = http.post("/step", json={"id": env_id, "action": action}).json()
    assert (answered["reward"], answered["done"]) == (1.0, True)
    assert answered["observation"] == f"You answered: {task.answer}"
    http.post("/reset", json={"id": env_id, "game": train + 1, "world_type": "Text"})
    wrong = http.post("/step", json={"id": env_id, "action": "answer[nobody]"}).json()
    assert (wrong["reward"], wrong["done"]) == (0.0, True)
    assert http.post("/close", json={"id": env_id}).json() == {"closed": True, "env_id": env_id}


def test_bm25s_loads_on_first_use_and_without_numba():
    # Loaded with the environments, bm25s would import numba and llvmlite wherever they are
    # installed (vLLM installs them), and vLLM's CPU engine fails at start-up on llvmlite's
    # objects; so it loads on the first search, with its numpy backend.
    import subprocess
    import sys

    code = (
        "import sys, environments\n"
        "print('bm25s' in sys.modules, 'numba' in sys.modules)\n"
        "environments.make('searchqa').retrieve('Noga')\n"
        "print('bm25s' in sys.modules, 'numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "False"]
