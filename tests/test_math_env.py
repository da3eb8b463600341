"""Tests for the math environment: grading, synthetic arithmetic, data loaders and the registry."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types

import pytest

import environments
from environments.base import EnvError, StepResult, Task
from environments.math import MathEnvironment, grading
from environments.math.datasets import find_data_file, load_file, load_hf, load_named
from environments.math.grading import extract_answer, grade
from environments.math.synthetic import MAX_TRAIN, SyntheticArithmetic

PATHOLOGICAL = r"\boxed{9^{9^{9^{9}}}}"

# ------------------------------------------------------------------ grading


def test_extract_answer_takes_last_balanced_box_then_answer_span():
    assert extract_answer(r"so \boxed{\frac{1}{2}} done") == (r"\frac{1}{2}", True)
    assert extract_answer(r"\boxed{3} no, \boxed{5}") == ("5", True)
    assert extract_answer(r"\boxed{3} and a cut-off \boxed{4") == ("3", True)
    assert extract_answer(r"\boxed{\{1, 2\}}") == (r"\{1, 2\}", True)
    assert extract_answer("<answer> 7 </answer> then <answer>42</answer>") == ("42", False)
    assert extract_answer(r"<answer>\boxed{8}</answer> <answer>9</answer>") == ("8", True)
    assert extract_answer("the answer is 12") is None


def test_plain_numbers_never_reach_the_worker(monkeypatch):
    def no_worker(*args):
        raise AssertionError("fast path expected")

    monkeypatch.setattr(grading, "_ask_worker", no_worker)
    assert grade(r"\boxed{68}", "68") == 1.0
    assert grade(r"\boxed{67}", "68") == 0.0
    assert grade(r"\boxed{1,000}", "1000") == 1.0
    assert grade(r"\boxed{1,450,000}", "1450000") == 1.0
    assert grade(r"\boxed{-5}", "-5") == 1.0
    assert grade(r"\boxed{-5}", "5") == 0.0
    assert grade(r"\boxed{+5}", "5") == 1.0
    assert grade(r"\boxed{68.0}", "68") == 1.0
    assert grade(r"\boxed{0.1}", ".1") == 1.0
    assert grade("<answer>2,125</answer>", "2,125") == 1.0
    assert grade(r"\boxed{3} no wait \boxed{5}", "5") == 1.0
    assert grade(r"\boxed{3} no wait \boxed{5}", "3") == 0.0


def test_no_answer_scores_zero():
    assert grade("The answer is 68.", "68") == 0.0
    assert grade(r"\boxed{}", "1") == 0.0
    assert grade("", "1") == 0.0


def test_latex_answers_go_through_math_verify():
    assert grade(r"\boxed{\frac{1}{2}}", r"\frac{1}{2}") == 1.0
    assert grade(r"\boxed{\frac{1}{2}}", "0.5") == 1.0
    assert grade(r"\boxed{\frac12}", "0.5") == 1.0
    assert grade(r"\boxed{\frac{1}{3}}", "0.5") == 0.0
    assert grade(r"\boxed{0.5001}", r"\frac{1}{2}") == 0.0
    assert grade(r"\boxed{2^{10}}", "1024") == 1.0
    assert grade(r"<answer>\frac{1}{2}</answer>", "0.5") == 1.0
    # Wrapped gold keeps both answers of a multi-answer problem.
    assert grade(r"\boxed{1728}", "1331, 1728") == 0.0
    assert grade(r"\boxed{1331, 1728}", "1331, 1728") == 1.0


def test_gold_that_does_not_parse_scores_zero():
    assert grade(r"\boxed{x}", "") == 0.0


def test_math500_gold_is_wrapped_before_parsing():
    rows = load_named("math500", "test")
    # Rows 0..7 by hand: a polar point, an expression, a fraction, text, a degree measure.
    assert [t.answer for t in rows[:8]] == [
        r"\left( 3, \frac{\pi}{2} \right)",
        "p - q",
        r"\frac{14}{3}",
        "9",
        r"\text{Evelyn}",
        "42",
        "27",
        r"90^\circ",
    ]
    for task in rows[:8]:
        assert grade("\\boxed{" + task.answer + "}", task.answer) == 1.0, task.answer
    assert grade(r"\boxed{(3, \pi/2)}", rows[0].answer) == 1.0
    assert grade(r"\boxed{\left( 3, \pi \right)}", rows[0].answer) == 0.0
    assert grade(r"\boxed{q - p}", rows[1].answer) == 0.0
    assert grade(r"\boxed{\frac{14}{5}}", rows[2].answer) == 0.0
    assert grade(r"\boxed{\text{Sam}}", rows[4].answer) == 0.0
    assert grade(r"\boxed{90}", rows[7].answer) == 1.0
    # An escaped \$ is currency, not a math delimiter: the gold still gets wrapped.
    assert grade(r"\boxed{18.90}", r"\$18.90") == 1.0


def test_pathological_power_times_out_and_the_next_grade_works():
    grading.warm_up()
    before = grading.timeouts()
    start = time.monotonic()
    assert grade(PATHOLOGICAL, "1", timeout=1.0) == 0.0
    assert time.monotonic() - start < 1.0 + 2.0
    assert grading.timeouts() == before + 1
    # The killed worker restarts on the next call.
    assert grade(r"\boxed{\frac{2}{4}}", r"\frac{1}{2}") == 1.0


def test_pathological_power_times_out_in_a_thread():
    results: list[float] = []
    worker = threading.Thread(target=lambda: results.append(grade(PATHOLOGICAL, "1", timeout=1.0)))
    start = time.monotonic()
    worker.start()
    worker.join(10)
    assert results == [0.0]
    # Includes restarting the worker killed by the previous test, if pytest ran it first.
    assert time.monotonic() - start < 1.0 + 2.0
    assert grade(r"\boxed{\sqrt{4}}", "2") == 1.0


def test_worker_crash_scores_zero_and_idle_death_is_survived():
    grading.warm_up()
    results: list[float] = []
    before = grading.timeouts()
    slow = threading.Thread(target=lambda: results.append(grade(PATHOLOGICAL, "1", timeout=30)))
    start = time.monotonic()
    slow.start()
    time.sleep(0.5)
    assert grading._worker is not None
    grading._worker.process.kill()  # a crash mid-grade, as the out-of-memory killer would do
    slow.join(10)
    assert results == [0.0] and time.monotonic() - start < 5
    assert grading.timeouts() == before  # a crash is not a time-out

    grading.warm_up()
    assert grading._worker is not None
    grading._worker.process.kill()  # dies while idle: the next grade must not pay for it
    grading._worker.process.join(5)
    assert grade(r"\boxed{\frac{6}{4}}", "1.5") == 1.0


def test_grades_from_many_threads_agree():
    cases = [(r"\boxed{\frac{3}{6}}", "0.5", 1.0), (r"\boxed{\pi}", r"\frac{22}{7}", 0.0)] * 4
    results: dict[int, float] = {}

    def run(i: int, completion: str, gold: str) -> None:
        results[i] = grade(completion, gold)

    threads = [threading.Thread(target=run, args=(i, c, g)) for i, (c, g, _) in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: expected for i, (_, _, expected) in enumerate(cases)}


# ------------------------------------------------------------------ synthetic


def test_synthetic_splits_are_fixed_disjoint_and_correct():
    first, second = SyntheticArithmetic(), SyntheticArithmetic()
    test, train = first.tasks("test"), first.tasks("train")
    assert len(test) == 500 and len(train) == 90 * 90 - 500
    assert test == second.tasks("test") and train == second.tasks("train")
    assert not {t.prompt for t in test} & {t.prompt for t in train}
    assert len({t.prompt for t in train + test}) == 8100  # every 2-digit pair exactly once
    # Pinned so a change of generator cannot silently reshuffle the splits; 77+30=107 by hand.
    assert test[0] == Task("synthetic-2d2t-test-00000", "77+30", "107", {"operands": [77, 30]})
    assert test[17].id == "synthetic-2d2t-test-00017"
    for task in train + test:
        operands = task.metadata["operands"]
        assert task.prompt == "+".join(map(str, operands))
        assert task.answer == str(sum(operands))
        assert all(10 <= n <= 99 for n in operands)


def test_synthetic_depends_on_seed_and_samples_large_spaces():
    assert SyntheticArithmetic(seed=1).tasks("test") != SyntheticArithmetic().tasks("test")
    big = SyntheticArithmetic(digits=3, terms=3, test_size=100, seed=5)
    test, train = big.tasks("test"), big.tasks("train")
    assert len(test) == 100 and len(train) == MAX_TRAIN
    assert not {t.prompt for t in test} & {t.prompt for t in train}
    assert all(100 <= n <= 999 for t in test for n in t.metadata["operands"])
    assert test == SyntheticArithmetic(digits=3, terms=3, test_size=100, seed=5).tasks("test")
    with pytest.raises(EnvError, match="only 81 problems"):
        SyntheticArithmetic(digits=1, terms=2, test_size=500)


def test_synthetic_demonstrations():
    assert SyntheticArithmetic.demonstration(Task("a", "23+45", "68", {"operands": [23, 45]})) == (
        r"\boxed{68}"
    )
    three = Task("b", "23+45+7", "75", {"operands": [23, 45, 7]})
    assert SyntheticArithmetic.demonstration(three) == r"23+45=68, 68+7=75. \boxed{75}"
    env = SyntheticArithmetic(digits=2, terms=4, test_size=50)
    for task in env.tasks("test"):
        assert grade(env.demonstration(task), task.answer) == 1.0


# ------------------------------------------------------------------ data loaders


def test_gsm8k_and_math500_load_from_the_shared_copies():
    assert find_data_file("gsm8k_test.jsonl") is not None
    gsm8k = load_named("gsm8k", "test")
    assert len(gsm8k) == 1319
    first = gsm8k[0]
    assert first.id == "gsm8k-test-00000"
    assert first.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    assert first.metadata["solution"].endswith("#### 18")
    assert "," not in "".join(t.answer or "" for t in gsm8k)  # thousands commas are stripped

    math500 = load_named("math500", "test")
    assert len(math500) == 500
    assert math500[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert math500[0].prompt.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert math500[0].metadata["subject"] == "Precalculus"
    assert math500[0].metadata["level"] == 2
    assert math500[0].metadata["unique_id"] == "test/precalculus/807.json"


def test_gsm8k_demonstrations_grade_full_marks():
    env = MathEnvironment(data="gsm8k")
    tasks = env.tasks("test")
    assert env.demonstration(tasks[0]) == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n"
        r"\boxed{18}"
    )
    for task in tasks[:20]:
        demo = env.demonstration(task)
        assert demo is not None and "<<" not in demo and "####" not in demo
        assert grade(demo, task.answer or "") == 1.0, task.id


def test_data_dir_variable_comes_first(tmp_path, monkeypatch):
    row = {"question": "What is 2+2?", "answer": "It is 2+2=<<2+2=4>>4.\n#### 4"}
    (tmp_path / "gsm8k_test.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("ICRL_DATA_DIR", str(tmp_path))
    tasks = load_named("gsm8k", "test")
    assert [(t.prompt, t.answer) for t in tasks] == [("What is 2+2?", "4")]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"question": "1+1", "answer": "2"})
    path.write_text("\n".join([good, good, "", good, "{oops", good]) + "\n")
    with pytest.raises(EnvError, match=r"^data\.jsonl:5: not valid JSON$"):
        load_file(path)
    path.write_text("\n".join([good, json.dumps({"question": "x"})]) + "\n")
    with pytest.raises(EnvError, match=r"^data\.jsonl:2: missing field 'answer'$"):
        load_file(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(EnvError, match=r"data\.jsonl:1: not a JSON object"):
        load_file(path)
    path.write_text("\n")
    with pytest.raises(EnvError, match="empty"):
        load_file(path)
    with pytest.raises(EnvError, match="missing.jsonl"):
        load_file(tmp_path / "missing.jsonl")


def test_files_with_field_mapping_and_splits(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"q": ["2+3", "4+4"], "a": [5, 8], "source": ["x", "y"]})
    pq.write_table(table, tmp_path / "train.parquet")
    tasks = load_file(tmp_path / "train.parquet", question_field="q", answer_field="a")
    assert [(t.prompt, t.answer, t.metadata) for t in tasks] == [
        ("2+3", "5", {"source": "x"}),
        ("4+4", "8", {"source": "y"}),
    ]
    (tmp_path / "test.parquet").write_bytes((tmp_path / "train.parquet").read_bytes())

    env = MathEnvironment(
        data=str(tmp_path / "{split}.parquet"), question_field="q", answer_field="a"
    )
    assert env.splits() == ["test", "train"]
    assert env.tasks("test")[1].answer == "8"
    single = MathEnvironment(
        data=str(tmp_path / "train.parquet"), question_field="q", answer_field="a"
    )
    assert single.splits() == ["train"]
    with pytest.raises(EnvError, match="valid splits: train"):
        single.tasks("test")
    assert single.demonstration(single.tasks("train")[0]) is None


def test_hub_dataset_offline_is_one_line_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (offline)\nmore detail")

    fake = types.ModuleType("datasets")
    fake.load_dataset = offline  # type: ignore[attr-defined]
    fake.get_dataset_split_names = offline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(EnvError, match="not available locally") as caught:
        load_hf("hf:openai/gsm8k:main", "train")
    assert "\n" not in str(caught.value)
    # The shared copy is the test split only, so gsm8k's train split goes to the hub.
    with pytest.raises(EnvError, match="'openai/gsm8k' is not available locally"):
        MathEnvironment(data="gsm8k").tasks("train")
    with pytest.raises(EnvError, match="not available locally"):
        MathEnvironment(data="hf:someone/thing").splits()


def test_hub_rows_become_tasks(monkeypatch):
    calls = []

    def load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return [{"problem": "1+2", "answer": "3"}]

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    tasks = load_hf("hf:me/sums:easy", "validation", question_field="problem")
    assert calls == [("me/sums", "easy", "validation")]
    assert tasks == [Task("sums-validation-00000", "1+2", "3", {})]


# ------------------------------------------------------------------ environment


def test_registry_and_episodes():
    env = environments.make("math", digits=2, terms=2)
    assert isinstance(env, MathEnvironment) and env.name == "math"
    assert env.splits() == ["train", "test"]
    assert env.tasks("test") is env.tasks("test")  # cached
    with pytest.raises(EnvError, match="valid splits: train, test"):
        env.tasks("dev")
    instructions = env.solver_instructions()
    assert len(instructions) < 60 and r"\boxed{" in instructions

    task = env.tasks("test")[0]
    demo = env.demonstration(task)
    assert demo == r"\boxed{107}"
    episode = env.start(task)
    assert episode.initial_observation() == ""
    assert episode.step(demo) == StepResult("", 1.0, True, {"answer": "107"})
    with pytest.raises(EnvError, match="over"):
        episode.step(demo)
    assert env.start(task).step(r"\boxed{106}").reward == 0.0

    with pytest.raises(EnvError, match="math"):
        environments.make("nope")


def test_real_dataset_environment():
    env = environments.make("math", data="math500")
    assert env.splits() == ["test"]
    assert r"\boxed{}" in env.solver_instructions() and "step by step" in env.solver_instructions()
    task = env.tasks("test")[3]
    assert env.demonstration(task) is None
    assert env.start(task).step(r"so \boxed{9}.").reward == 1.0
    assert environments.make("math", data="gsm8k").splits() == ["train", "test"]
    with pytest.raises(EnvError, match="not synthetic"):
        environments.make("math", data="no/such/file.jsonl").splits()


def test_importing_environments_is_cheap():
    heavy = ("math_verify", "sympy", "datasets", "torch")
    code = f"import sys, environments; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_grader_works_from_a_script_on_standard_input():
    """The grading worker is a spawned process, which re-runs the parent's main script; a
    script read from standard input names a file (``<stdin>``) that does not exist."""
    script = 'from environments.math import grade\nprint(grade("\\\\boxed{0.5}", "1/2"))\n'
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1.0"
