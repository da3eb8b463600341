"""Multi-turn sessions: the token layout of an episode, how it stops, failed episodes, and the
critic's view of a trajectory."""

from dataclasses import replace

import pytest
from session_settings import session_settings

import environments
from environments import EpisodeFailed, StepResult, Task, react_action
from icrl_cli.generation import Generation
from icrl_cli.rollout.critics import RuleCritic
from icrl_cli.rollout.episodes import observation_ids, play, trajectory_summary
from icrl_cli.rollout.metrics import episode_metrics, session_metrics
from icrl_cli.rollout.prompts import Prompts, encode_prompt, solver_messages
from icrl_cli.rollout.sessions import run_sessions
from icrl_cli.tiny import TINY_PROMPTS, build_tokenizer

PROMPTS = Prompts(**TINY_PROMPTS)
# Qwen3's habit that matters here: the assistant turn after the last user message is rendered
# with an (empty) thinking block, earlier assistant turns without one.
QWEN_LIKE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' and loop.last -%}"
    "{{ '<|assistant|>\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|end|>\\n' }}"
    "{%- else -%}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


class Scripted:
    """Replies with the next text of ``replies`` per prompt (log-prob −0.5 a token); a reply
    ending in '~' stops at the token budget instead of at EOS."""

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply, self.calls = tokenizer, reply, []

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        self.calls.append(list(prompts))
        outputs = []
        for prompt in prompts:
            text = self.reply(self.tokenizer.decode(prompt))
            ids = self.tokenizer.encode(text.rstrip("~"), add_special_tokens=False)
            if text.endswith("~"):
                outputs.append(Generation(ids, [-0.5] * len(ids), "length"))
            else:
                ids.append(self.tokenizer.eos_token_id)
                outputs.append(Generation(ids, [-0.5] * len(ids), "stop"))
        return outputs

    def sleep(self):
        return None

    def sync_weights(self, weights):
        return None


class Counter:
    """An episode that is won by the action 'win', says 'obs N' otherwise, and can be told to
    fail at a given step."""

    def __init__(self, fail_at=None):
        self.steps, self.fail_at, self.actions = 0, fail_at, []

    def initial_observation(self):
        return "room"

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise EpisodeFailed("server http://127.0.0.1:1 died")
        self.actions.append(action)
        won = react_action(action) == "win"
        return StepResult(f"obs {self.steps}", float(won), won)


def limits(**overrides):
    return session_settings(**{"max_new_tokens": 16, "context_tokens": 10_000, **overrides})


def test_react_action_takes_the_first_line_after_the_last_action():
    assert react_action("Thought: go. Action: go to sofa 1") == "go to sofa 1"
    assert react_action("Action: a Thought: b Action:  take x 1 from y 2 \nmore") == (
        "take x 1 from y 2"
    )
    assert react_action("  look \n") == "look"


def test_observation_tokens_continue_the_chat_template_after_the_assistant_turn(tokenizer):
    after_eos = tokenizer.decode(observation_ids(tokenizer, "On the sofa 1, you see nothing."))
    assert after_eos == "<|user|>On the sofa 1, you see nothing.<|end|><|assistant|>"
    cut = tokenizer.decode(observation_ids(tokenizer, "x", after_eos=False))
    assert cut == "<|end|><|user|>x<|end|><|assistant|>"


def test_observation_tokens_under_a_template_that_renders_the_last_turn_differently(tokenizer):
    qwen = build_tokenizer()
    qwen.chat_template = QWEN_LIKE
    text = qwen.decode(observation_ids(qwen, "obs", enable_thinking=False))
    # Not the "<think>" block of a last assistant turn: the continuation of a middle one.
    assert text == "\n<|user|>\nobs<|end|>\n<|assistant|>\n<think>\n\n</think>\n\n"


def test_an_episode_is_one_response_with_observations_masked(tokenizer):
    replies = iter(["Action: a", "Action: win"])
    backend = Scripted(tokenizer, lambda _: next(replies))
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": "go"}])
    (rollout,) = play(backend, tokenizer, [Counter()], [prompt], limits())
    turn1 = tokenizer.encode("Action: a") + [tokenizer.eos_token_id]
    obs = tokenizer.encode("<|user|>obs 1<|end|><|assistant|>")
    turn2 = tokenizer.encode("Action: win") + [tokenizer.eos_token_id]
    assert rollout.response_ids == turn1 + obs + turn2
    assert rollout.loss_mask == [1] * len(turn1) + [0] * len(obs) + [1] * len(turn2)
    assert rollout.logprobs == [-0.5] * len(turn1) + [0.0] * len(obs) + [-0.5] * len(turn2)
    assert (rollout.reward, rollout.stop, rollout.turns) == (
        1.0,
        "done",
        [("a", "obs 1"), ("win", "obs 2")],
    )
    # The second turn was generated after exactly the tokens the sample trains on.
    assert backend.calls[1] == [prompt + turn1 + obs]


def test_a_turn_cut_at_the_token_budget_gets_the_end_of_turn_as_an_observation_token(tokenizer):
    replies = iter(["Action: a~", "Action: win"])
    backend = Scripted(tokenizer, lambda _: next(replies))
    (rollout,) = play(backend, tokenizer, [Counter()], [[1]], limits())
    cut = tokenizer.encode("Action: a")
    assert rollout.response_ids[len(cut)] == tokenizer.eos_token_id
    assert rollout.loss_mask[len(cut)] == 0


def test_episodes_stop_on_turns_repeats_and_the_context_budget(tokenizer):
    prompt = [1] * 10
    backend = Scripted(tokenizer, lambda _: "Action: a")
    by_turns, by_repeat = (
        play(
            backend,
            tokenizer,
            [Counter(), Counter()],
            [prompt, prompt],
            limits(max_turns=2),
        ),
        play(backend, tokenizer, [Counter()], [prompt], limits(repeat_limit=3)),
    )
    assert [(r.stop, len(r.turns)) for r in by_turns] == [("turns", 2), ("turns", 2)]
    assert (by_repeat[0].stop, len(by_repeat[0].turns)) == ("repeat", 3)
    # A turn is 9 tokens + EOS and its observation 8 ("<|user|>obs 1<|end|><|assistant|>"):
    # a second turn of up to 16 tokens needs 10 + 18 + 16 = 44, a third 10 + 36 + 16 = 62.
    (by_context,) = play(backend, tokenizer, [Counter()], [prompt], limits(context_tokens=43))
    assert (by_context.stop, len(by_context.turns)) == ("context", 1)
    (fits,) = play(backend, tokenizer, [Counter()], [prompt], limits(context_tokens=44))
    assert (fits.stop, len(fits.turns), len(prompt) + len(fits.response_ids)) == ("context", 2, 46)


def test_a_failed_episode_is_marked_and_its_reward_is_zero(tokenizer):
    backend = Scripted(tokenizer, lambda _: "Action: a")
    failing, fine = Counter(fail_at=2), Counter()
    rollouts = play(
        backend, tokenizer, [failing, fine, None], [[1]] * 3, limits(max_turns=3, repeat_limit=4)
    )
    assert [r.stop for r in rollouts] == ["failed", "turns", "failed"]
    assert "died" in rollouts[0].error and len(rollouts[0].turns) == 1
    assert len(fine.actions) == 3  # the other episode played on


def test_trajectory_summary_truncates_observations():
    summary = trajectory_summary([("go to sofa 1", "x" * 50), ("look", "short")], 10)
    assert summary == "> go to sofa 1\nxxxxxxxxxx …\n> look\nshort"


class Household:
    """Plays the household expert's actions for the task in each prompt, or stops short (one
    action then a repeat) when ``fumble`` says so."""

    def __init__(self, env, fumble):
        self.env, self.fumble = env, fumble
        self.plans = {
            t.prompt: env.expert_actions(t) for split in ("train",) for t in env.tasks(split)[:4]
        }

    def __call__(self, text):
        user = text.split("<|user|>")[1].split("<|end|>")[0]
        task = user.split("|")[0]
        turns = text.count("<|assistant|>") - 1
        actions = self.plans[task]
        if self.fumble(user) and turns >= 1:
            return "Thought: hm Action: look"
        return f"Thought: next Action: {actions[min(turns, len(actions) - 1)]}"


def test_household_sessions_with_critique_train_revisions_on_the_critique_free_prompt(tokenizer):
    env = environments.make("household")
    tasks = env.tasks("train")[:2]
    # First attempts fumble; given the rule critique ('|' in the prompt) the solver succeeds.
    backend = Scripted(tokenizer, Household(env, fumble=lambda user: "|" not in user))
    settings = session_settings(
        sessions_per_query=2, max_rounds=2, max_new_tokens=64, context_tokens=100_000
    )
    samples = run_sessions(backend, tokenizer, env, tasks, settings, PROMPTS, RuleCritic(PROMPTS))
    first = [s for s in samples if s.round == 1]
    revisions = [s for s in samples if s.round == 2]
    assert [s.reward for s in first] == [0.0] * 4 and [s.reward for s in revisions] == [1.0] * 4
    assert {s.metadata["stop"] for s in first} == {"repeat"}
    for s in revisions:
        task = next(t for t in tasks if t.id == s.query_id)
        free = encode_prompt(tokenizer, solver_messages(env, task, PROMPTS))
        assert s.prompt_ids == free and s.behavior_prompt_ids != free
        assert s.metadata["critique"] == PROMPTS.rule_failed
        assert s.metadata["turns"] == len(env.expert_actions(task))
    metrics = session_metrics(samples, "oracle")
    assert (metrics["solver/success_round1"], metrics["solver/success_final"]) == (0.0, 1.0)
    assert metrics["env/failed_episodes"] == 0
    assert episode_metrics(samples)["env/stop_repeat"] == 0.5


def test_a_failed_episode_is_counted_and_kept_out_of_training(tokenizer):
    class Flaky:
        """The household world, with the second session of every task losing its server."""

        name, multi_turn = "flaky", True

        def __init__(self):
            self.inner, self.started = environments.make("household"), {}

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def start(self, task: Task):
            self.started[task.id] = self.started.get(task.id, 0) + 1
            if self.started[task.id] == 1:
                raise EpisodeFailed("connection refused")
            return self.inner.start(self.full[task.id])

    env = Flaky()
    env.full = {t.id: t for t in env.inner.tasks("train")[:2]}
    # Like a remote task: no text until the episode starts, and the first start fails.
    tasks = [replace(t, prompt="") for t in env.full.values()]
    backend = Scripted(tokenizer, Household(env.inner, fumble=lambda user: False))
    backend.reply.plans = {
        env.full[t.id].prompt.split("\n")[0]: env.inner.expert_actions(env.full[t.id])
        for t in tasks
    }
    settings = session_settings(sessions_per_query=2, max_new_tokens=64, context_tokens=100_000)
    samples = run_sessions(backend, tokenizer, env, tasks, settings, PROMPTS)
    assert [s.trainable for s in samples] == [False, True, False, True]
    assert samples[0].metadata["error"] == "connection refused"
    # Every sample of a task, the failed one included, has the opening as its prompt.
    for s in samples:
        opened = replace(env.full[s.query_id], prompt=env.full[s.query_id].prompt.split("\n")[0])
        assert s.prompt_ids == encode_prompt(tokenizer, solver_messages(env, opened, PROMPTS))
    metrics = session_metrics(samples, "oracle")
    assert metrics["env/failed_episodes"] == 2 and metrics["solver/success_round1"] == 1.0


def test_tiny_household_demonstrations_are_laid_out_exactly_like_a_rollout():
    from environments.household import demonstrations, expert, spec_of
    from icrl_cli.tiny import household_build

    env = environments.make("household", **household_build.OPTIONS)
    tasks = env.tasks("train")[:30]
    bpe = household_build.build_tokenizer(demonstrations.corpus(env, tasks))
    # Digits and kind names are always tokens of their own, so they are copied, not merged
    # into phrases.
    pieces = [bpe.decode([i]) for i in bpe.encode("I need a spraybottle. Go to cabinet 14.")]
    assert {" spraybottle", " cabinet", " 1", "4"} <= set(pieces)
    assert "".join(pieces) == "I need a spraybottle. Go to cabinet 14."
    task = tasks[0]
    spec = spec_of(task)
    turns, reward = demonstrations.episode(env, task, expert.plan(env.world(spec), spec.goal))
    assert reward == 1.0
    ids, mask = household_build.episode_target(bpe, turns, done=True)
    replies = iter(turn for turn, _ in turns)
    prompt = encode_prompt(bpe, solver_messages(env, task, PROMPTS))
    (rollout,) = play(
        Scripted(bpe, lambda _: next(replies)), bpe, [env.start(task)], [prompt], limits()
    )
    assert (rollout.stop, rollout.reward) == ("done", 1.0)
    assert rollout.response_ids == ids and rollout.loss_mask == [1 if m else 0 for m in mask]
    # The take turn's tokens (its EOS too) weigh TAKE_WEIGHT in the warm-start's loss.
    (take,) = [turn for turn, _ in turns if react_action(turn).startswith("take ")]
    heavy = len(bpe.encode(take, add_special_tokens=False)) + 1
    assert mask.count(demonstrations.TAKE_WEIGHT) == heavy
    assert len([m for m in mask if m == 1]) == sum(mask) - heavy * demonstrations.TAKE_WEIGHT


def test_tiny_household_slips_do_nothing_and_are_not_learnt(monkeypatch):
    """A slipped demonstration is the expert's episode with one inadmissible turn ("Nothing
    happens.", the world unchanged) that carries no loss; the expert's turns around it are
    played and weighed as without it."""
    import random

    from environments.household import demonstrations
    from icrl_cli.tiny import household_build

    monkeypatch.setattr(demonstrations, "SLIP_SHARE", 1.0)
    env = environments.make("household", **household_build.OPTIONS)
    tasks = env.tasks("train")[:40]
    bpe = household_build.build_tokenizer(demonstrations.corpus(env, tasks[:10]))
    draw = random.Random(0)
    kinds = set()
    for task in tasks:
        steps = demonstrations.searched(env, task)
        plain, plain_reward = demonstrations.episode(env, task, steps)
        turns, reward, at = demonstrations.slipped_episode(env, task, steps, draw)
        assert at is not None and 1 <= at <= demonstrations.MAX_TURNS - 2
        slip, observation = turns[at]
        assert observation == "Nothing happens."
        kinds.add(react_action(slip).split()[0])
        rest = turns[:at] + turns[at + 1 :]
        # The slip takes a turn of the budget: the plain episode less its last turn at most.
        assert rest == plain[: len(rest)] and len(rest) >= len(plain) - 1
        assert reward == (plain_reward if len(rest) == len(plain) else 0.0)
        ids, mask = household_build.episode_target(bpe, turns, done=True, skip=at)
        plain_ids, plain_mask = household_build.episode_target(bpe, rest, done=True)
        slip_ids = bpe.encode(slip, add_special_tokens=False) + [bpe.eos_token_id]
        start = len(household_build.episode_target(bpe, turns[:at], done=False)[0])
        assert ids[start : start + len(slip_ids)] == slip_ids
        assert mask[start : start + len(slip_ids)] == [0] * len(slip_ids)
        # Without the slip's turn and its observation, the target is the plain one.
        cut = start + len(slip_ids) + len(observation_ids(bpe, observation))
        assert ids[:start] + ids[cut:] == plain_ids and mask[:start] + mask[cut:] == plain_mask
    assert kinds == {"go", "take"}
    monkeypatch.setattr(demonstrations, "SLIP_SHARE", 0.0)
    steps = demonstrations.searched(env, tasks[0])
    assert demonstrations.slipped_episode(env, tasks[0], steps, draw) == (
        *demonstrations.episode(env, tasks[0], steps),
        None,
    )


def test_tiny_searchqa_demonstrations_are_laid_out_exactly_like_a_rollout():
    from icrl_cli.tiny import searchqa_build

    env = environments.make("searchqa", **searchqa_build.OPTIONS)
    tasks = [t for t in env.tasks("train") if t.metadata["task_type"] == "two_hop"][:20]
    bpe = searchqa_build.build_tokenizer(searchqa_build.corpus(env, tasks))
    task = tasks[0]
    actions = env.expert_actions(task)
    turns, reward = searchqa_build.play(env, task, actions)
    assert reward == 1.0 and len(turns) == 3  # two searches, one answer
    ids, mask = searchqa_build.turns_target(bpe, turns, [1.0] * 3, done=True)
    replies = iter(actions)
    prompt = encode_prompt(bpe, solver_messages(env, task, PROMPTS))
    (rollout,) = play(
        Scripted(bpe, lambda _: next(replies)), bpe, [env.start(task)], [prompt], limits()
    )
    assert (rollout.stop, rollout.reward) == ("done", 1.0)
    assert rollout.response_ids == ids and rollout.loss_mask == mask
    # The loss reads the three actions and their EOS, not the two passages between them.
    learnt = [i for i, m in zip(ids, mask, strict=True) if m]
    assert bpe.decode(learnt) == "".join(a + bpe.eos_token for a in actions)
