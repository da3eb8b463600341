"""The embedded default model: a few-million-parameter Qwen3 with a character tokenizer.

It is built locally (no download), warm-started by a short supervised pass on the synthetic math
environment's expert demonstrations until its critique-free success on held-out problems enters
the target band, and cached under ``$ICRL_CACHE`` (default ``~/.cache/icrl``). Every command can
then run on a laptop CPU in minutes, and the tests exercise a real model end to end.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import string
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import environments
from environments import Environment, Task
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.prompts import (
    PROMPTS_FILE,
    Prompts,
    critic_messages,
    encode_prompt,
    rule_critique,
    solver_messages,
)
from icrl_cli.rollout.sessions import ModelCritic, SessionSettings, run_sessions, session_metrics

# Bump when anything below changes what is built, so stale caches are not reused.
TINY_VERSION = "3"
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each message is its role marker, its text character by character, then <|end|> (the EOS).
# System messages are left out: every character costs compute on a CPU, and the tiny model
# learns each role's format from its warm-start demonstrations instead of from instructions.
CHAT_TEMPLATE = (
    "{%- for m in messages if m['role'] != 'system' -%}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
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
MAX_NEW_TOKENS = 48
DIRECT_SHARE = 0.75
# The warm-start stops once held-out success reaches this (the band is 10%–60%), so RL
# starts from a model that succeeds sometimes but has plenty left to learn.
TARGET_SUCCESS = 0.15
# …and once the model's own critique already helps by this much: without that gap there would
# be nothing for ICRL to internalise.
TARGET_GAP = 0.25
VALIDATION_SIZE = 200

_console = Console(stderr=True)


def cache_root() -> Path:
    return Path(os.environ.get("ICRL_CACHE", "~/.cache/icrl")).expanduser()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Printable ASCII, one token per character, plus the chat and control tokens."""
    alphabet = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return wrap_tokenizer(backend)


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``backend``, with the chat tokens and template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, max_positions: int = 1024
) -> Qwen3ForCausalLM:
    """4 layers, 256 wide, grouped-query attention: about 3 million parameters."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


Pair = tuple[list[int], list[int]]  # (prompt ids, target ids)


def sft_batch(
    tokenizer: PreTrainedTokenizerFast, pairs: list[Pair], masks: list[list[float]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + target) rows; the loss only sees the target tokens (and of those,
    with ``masks``, only the ones not marked 0: a multi-turn target's observations are not).
    A mask value other than 0 or 1 is the token's weight in the loss; such masks add a
    ``loss_weights`` row (see ``sft_loss``)."""
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    weights = torch.zeros((len(pairs), width), dtype=torch.float32)
    weighted = masks is not None and any(m not in (0, 1) for mask in masks for m in mask)
    for row, (prompt, target) in enumerate(pairs):
        n = len(prompt) + len(target)
        input_ids[row, :n] = torch.tensor(prompt + target)
        kept, mask = target, [1.0] * len(target)
        if masks is not None:
            mask = masks[row]
            kept = [t if m else -100 for t, m in zip(target, mask, strict=True)]
        labels[row, len(prompt) : n] = torch.tensor(kept)
        weights[row, len(prompt) : n] = torch.tensor(mask, dtype=torch.float32)
        attention[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    if weighted:
        batch["loss_weights"] = weights
    return batch


def sft_loss(model: Qwen3ForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean next-token loss over the target tokens of an ``sft_batch``, each token
    weighted by its ``loss_weights`` when the batch has them."""
    batch = {k: v.to(model.device) for k, v in batch.items()}
    weights = batch.pop("loss_weights", None)
    if weights is None:
        return model(**batch).loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels, weights = batch["labels"][:, 1:], weights[:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels.clamp(min=0), reduction="none"
    )
    return (losses * weights).sum() / weights.sum()


def loss_weight(batch: dict[str, torch.Tensor]) -> float:
    """The denominator of ``sft_loss`` on ``batch``: its target tokens' summed weight."""
    if "loss_weights" in batch:
        return batch["loss_weights"][:, 1:].sum().item()
    return (batch["labels"][:, 1:] != -100).sum().item()


def measure_sessions(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    tasks: list[Task],
    prompts: Prompts,
    max_rounds: int = 1,
    settings: SessionSettings | None = None,
) -> dict[str, float | int | None]:
    """Session metrics of one oracle-gated session per task, sampled at temperature 1 with the
    model as its own critic: success_round1 is critique-free, success_final after critique.
    ``settings`` replaces the defaults (math's token budgets, ``max_rounds``)."""
    backend = HFBackend(model, tokenizer)
    settings = settings or SessionSettings(
        sessions_per_query=1,
        max_rounds=max_rounds,
        max_new_tokens=MAX_NEW_TOKENS,
        critic_max_new_tokens=MAX_NEW_TOKENS,
    )
    critic = ModelCritic(backend, tokenizer, prompts, settings, trainable=True)
    samples = run_sessions(backend, tokenizer, env, tasks, settings, prompts, critic)
    return session_metrics(samples, gate="oracle")


def demonstrations(
    env: Environment, tasks: list[Task], tokenizer: PreTrainedTokenizerFast, prompts: Prompts
) -> dict[str, list[tuple[list[int], list[int]]]]:
    """(prompt ids, target ids) pairs for the three roles: the critique-free solver, the critic
    on a flawed attempt, and the revision given a critique (the environment's or the rule's)."""
    rng = random.Random(0)
    eos = [tokenizer.eos_token_id]

    def encode(messages: list[dict[str, str]], target: str) -> tuple[list[int], list[int]]:
        ids = tokenizer.encode(target, add_special_tokens=False) + eos
        return encode_prompt(tokenizer, messages), ids

    pairs: dict[str, list[tuple[list[int], list[int]]]] = {
        "solver": [],
        "critic": [],
        "revision": [],
    }
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
        if rng.random() < 0.25:
            critique = rule_critique(task, rng.random() < 0.2, prompts)
        messages = solver_messages(env, task, prompts, critique=critique)
        pairs["revision"].append(encode(messages, solution))
    return pairs


Measure = Callable[[], dict[str, float | int | None]]


def supervise(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    pairs: dict[str, list[Pair]],
    measure: Measure,
    accept: Callable[[dict[str, float | int | None]], bool],
    rng: random.Random,
    seed: int = 0,
    masks: dict[str, list[list[float]]] | None = None,
    batch_size: int = 64,
    lr: float = 2e-3,
    check_every: int = 25,
    first_check: int | None = None,
    max_steps: int = 2000,
    keep_last: bool = False,
    chunks: int = 1,
) -> tuple[int, dict[str, float | int | None]]:
    """Supervised steps over every role's demonstrations (each role's rows apart: sequences of
    a role have similar lengths, so less padding; ``chunks`` forwards per role, the rows sorted
    by length, pad less still) until ``accept(measure())``. Returns the steps
    taken and the last measurement. Measuring starts at ``first_check`` (default
    ``check_every``). Missing the targets by ``max_steps`` is an error unless ``keep_last``,
    which returns the model as it is with its last measurement."""
    first_check = first_check or check_every
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    started = time.perf_counter()
    for step in range(1, max_steps + 1):
        model.train()
        for role, role_pairs in pairs.items():
            rows = rng.sample(range(len(role_pairs)), batch_size // len(pairs))
            # Rows sorted by length and cut in ``chunks`` forwards pad less; each chunk's mean
            # loss is weighed by its share of the role's loss weight, so the gradient is the
            # one of a single forward over all the rows.
            if chunks > 1:  # (one forward keeps the draw's order: the same sums as before)
                rows.sort(key=lambda i: len(role_pairs[i][0]) + len(role_pairs[i][1]))
            size = -(-len(rows) // chunks)
            parts = [
                sft_batch(
                    tokenizer,
                    [role_pairs[i] for i in part],
                    [masks[role][i] for i in part] if masks else None,
                )
                for part in (rows[k * size : (k + 1) * size] for k in range(chunks))
                if part
            ]
            totals = [loss_weight(part) for part in parts]
            for part, total in zip(parts, totals, strict=True):
                loss = sft_loss(model, part) * (total / sum(totals)) / len(pairs)
                loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last = keep_last and step == max_steps
        if last or (step >= first_check and (step - first_check) % check_every == 0):
            measured = measure()
            success, after = measured["solver/success_round1"], measured["solver/success_final"]
            _console.print(
                f"[dim]tiny warm-start: step {step} ({time.perf_counter() - started:.0f} s), "
                f"loss {loss.item():.3f}, held-out success critique-free {success:.2f}, "
                f"after self-critique {after:.2f}[/dim]"
            )
            if accept(measured) or last:
                return step, measured
    raise RuntimeError(f"the tiny warm-start did not reach its targets in {max_steps} steps")


def warm_start(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    prompts: Prompts,
    seed: int = 0,
) -> tuple[int, dict[str, float | int | None]]:
    """Supervised steps on all three roles until held-out critique-free success reaches
    TARGET_SUCCESS and self-critique adds TARGET_GAP. Returns the steps taken and the session
    metrics on the held-out tasks (which never appear in the supervised data; the test split is
    never looked at)."""
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    pairs = demonstrations(env, train, tokenizer, prompts)

    def measure() -> dict[str, float | int | None]:
        return measure_sessions(model, tokenizer, env, validation, prompts, max_rounds=2)

    def accept(measured: dict[str, float | int | None]) -> bool:
        success, after = measured["solver/success_round1"], measured["solver/success_final"]
        return success >= TARGET_SUCCESS and after - success >= TARGET_GAP

    return supervise(model, tokenizer, pairs, measure, accept, rng, seed)


def build_tiny(target: Path, seed: int = 0) -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    env = environments.make("math", **TINY_TASK)
    prompts = Prompts(**TINY_PROMPTS)
    steps, measured = warm_start(model, tokenizer, env, prompts, seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / PROMPTS_FILE).write_text(json.dumps(TINY_PROMPTS, indent=2) + "\n")
    report = {"supervised_steps": steps, "task": TINY_TASK, "held_out": measured}
    (target / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")


def _builders() -> dict[str, tuple[str, Callable[[Path], None], str]]:
    """The embedded models by name: (cache directory name, builder, how long a build takes on
    two idle cores)."""
    from icrl_cli import tiny_household

    return {
        "tiny": (f"tiny-v{TINY_VERSION}", build_tiny, "a few minutes"),
        "tiny-household": (
            f"tiny-household-v{tiny_household.VERSION}",
            tiny_household.build,
            tiny_household.BUILD_TIME,
        ),
    }


def tiny_model_dir(name: str = "tiny") -> Path:
    """The cached directory of the embedded model ``name``, built on first use (a lock keeps
    concurrent builds apart)."""
    dirname, build, duration = _builders()[name]
    root = cache_root()
    target = root / dirname
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        _console.print(f"[bold]building the {name} model (once; {duration} on 2 cores)…[/bold]")
        partial = root / f".{dirname}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build(partial)
        os.replace(partial, target)
    return target
