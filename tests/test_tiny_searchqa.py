"""The tiny-searchqa warm-start: its tokenizer, its careless solver and its demonstrations."""

import random

import pytest

import environments
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.tiny import searchqa_build as build


@pytest.fixture(scope="module")
def env():
    return environments.make("searchqa", **build.OPTIONS)


def test_a_name_is_the_same_tokens_wherever_it_stands(env):
    tasks = env.tasks("train")[:40]
    bpe = build.build_tokenizer(build.corpus(env, tasks))
    name = tasks[0].metadata["subject"]
    own = bpe.encode(name, add_special_tokens=False)
    for text in (f"search[{name}]", f"Who is {name}?", f"[1] {name}: {name} was", f"a {name}."):
        ids = bpe.encode(text, add_special_tokens=False)
        assert any(ids[i : i + len(own)] == own for i in range(len(ids))), text
        assert bpe.decode(ids) == text


def draws(env, task, n=4000):
    rng = random.Random(1)
    return [build.careless_actions(env, task, rng) for _ in range(n)]


def test_the_careless_solver_guesses_a_fact_of_the_passage_it_read(env):
    task = next(t for t in env.tasks("train") if t.metadata["relations"] == ["profession"])
    subject = task.metadata["subject"]
    facts = env.world.by_name[subject].facts
    assert len(facts) == 4  # a person: birthplace, employer, year of birth, profession
    attempts = draws(env, task)
    assert all(a[0] == f"search[{subject}]" and len(a) == 2 for a in attempts)
    answers = [a[1] for a in attempts]
    assert set(answers) == {f"answer[{obj}]" for _, obj in facts}
    # Right when it does not guess (1 - 0.75), or when its guess hits (0.75 / 4): 0.4375.
    right = answers.count(f"answer[{task.answer}]") / len(answers)
    assert right == pytest.approx(1 - build.GUESS_SHARE + build.GUESS_SHARE / 4, abs=0.025)


def test_the_careless_solver_stops_after_one_hop_half_the_time(env):
    task = next(
        t for t in env.tasks("train") if t.metadata["relations"] == ["works_for", "founded"]
    )
    subject, organisation = task.metadata["subject"], None
    organisation = dict(env.world.by_name[subject].facts)["works_for"]
    assert len(env.world.by_name[organisation].facts) == 3  # seat, founding year, product
    attempts = draws(env, task)
    lazy = [a for a in attempts if len(a) == 2]
    assert len(lazy) / len(attempts) == pytest.approx(build.LAZY_SHARE, abs=0.025)
    assert all(a[1] != f"answer[{task.answer}]" for a in lazy)
    full = [a for a in attempts if len(a) == 3]
    assert all(a[:2] == [f"search[{subject}]", f"search[{organisation}]"] for a in full)
    # Of the full attempts, right when not guessing (0.25) or guessing well (0.75 / 3): 0.5.
    right = sum(a[2] == f"answer[{task.answer}]" for a in full) / len(full)
    assert right == pytest.approx(0.5, abs=0.035)


def test_each_failed_attempt_teaches_its_tip_and_a_solving_revision(env):
    tasks = env.tasks("train")[:30]
    bpe = build.build_tokenizer(build.corpus(env, tasks))
    prompts = Prompts(**build.PROMPTS)
    pairs, masks = build.demonstrations(env, tasks, bpe, prompts)
    assert len(pairs["solver"]) == build.DRAWS * len(tasks)
    assert len(pairs["critic"]) == len(pairs["revision"]) > 0
    for role in pairs:
        assert len(masks[role]) == len(pairs[role])
    for (prompt, target), mask in zip(pairs["revision"], masks["revision"], strict=True):
        text = bpe.decode(prompt)
        question = text.split("\n")[0].removeprefix("<|user|>")
        (task,) = [t for t in tasks if t.prompt.startswith(question + "\n")]
        assert "\nTip: " in text
        learnt = bpe.decode([i for i, m in zip(target, mask, strict=True) if m])
        expected = env.expert_actions(task)
        assert learnt == "".join(a + bpe.eos_token for a in expected)
    for prompt, target in pairs["critic"]:
        assert bpe.decode(target).startswith("<c>") and bpe.decode(target).endswith("</c><|end|>")
        assert "\nreward 0" in bpe.decode(prompt)
