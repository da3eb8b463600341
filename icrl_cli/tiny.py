"""The embedded default model: a few-million-parameter Qwen3 with a character tokenizer.

It is built locally (no download), warm-started by a short supervised pass on the synthetic math
environment's expert demonstrations until its critique-free success on held-out problems enters
the target band, and cached under ``$ICRL_CACHE`` (default ``~/.cache/icrl``). Every command can
then run on a laptop CPU in minutes, and the tests exercise a real model end to end.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import string
from pathlib import Path

import torch
from rich.console import Console
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import environments
from environments import Environment, Task
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.prompts import encode_prompt, solver_messages

# Bump when anything below changes what is built, so stale caches are not reused.
TINY_VERSION = "1"
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each message is its role marker, its text character by character, then <|end|> (the EOS).
# System messages are left out: every character costs compute on a CPU, and the tiny model
# learns each role's format from its warm-start demonstrations instead of from instructions.
CHAT_TEMPLATE = (
    "{%- for m in messages if m['role'] != 'system' -%}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
# The warm-start stops once held-out success reaches this (the band is 10%–60%), so RL
# starts from a model that succeeds sometimes but has plenty left to learn.
TARGET_SUCCESS = 0.2
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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3ForCausalLM:
    """4 layers, 256 wide, grouped-query attention: about 3 million parameters."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def sft_batch(
    tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[list[int], list[int]]]
) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + target) rows; the loss only sees the target tokens."""
    width = max(len(p) + len(t) for p, t in pairs)
    input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (prompt, target) in enumerate(pairs):
        n = len(prompt) + len(target)
        input_ids[row, :n] = torch.tensor(prompt + target)
        labels[row, len(prompt) : n] = torch.tensor(target)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def solver_success(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    tasks: list[Task],
    max_new_tokens: int = 24,
) -> float:
    """Fraction of ``tasks`` solved by one sample each at temperature 1, critique-free."""
    backend = HFBackend(model, tokenizer)
    prompts = [encode_prompt(tokenizer, solver_messages(env, t)) for t in tasks]
    outputs = backend.generate(prompts, max_new_tokens=max_new_tokens)
    solved = 0.0
    for task, out in zip(tasks, outputs, strict=True):
        text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
        solved += env.start(task).step(text).reward
    return solved / len(tasks)


def warm_start(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    env: Environment,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    check_every: int = 25,
    max_steps: int = 3000,
) -> tuple[int, float]:
    """Supervised steps on demonstrations until held-out success reaches TARGET_SUCCESS.

    Returns (steps taken, validation success). The validation tasks are held out of the
    supervised data, and the test split is never looked at.
    """
    tasks = list(env.tasks("train"))
    rng = random.Random(seed)
    rng.shuffle(tasks)
    validation, train = tasks[:VALIDATION_SIZE], tasks[VALIDATION_SIZE:]
    pairs = [
        (
            encode_prompt(tokenizer, solver_messages(env, t)),
            tokenizer.encode(env.demonstration(t), add_special_tokens=False)
            + [tokenizer.eos_token_id],
        )
        for t in train
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    success = 0.0
    for step in range(1, max_steps + 1):
        model.train()
        batch = sft_batch(tokenizer, rng.sample(pairs, batch_size))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % check_every == 0:
            success = solver_success(model, tokenizer, env, validation)
            _console.print(
                f"[dim]tiny warm-start: step {step}, loss {loss.item():.3f}, "
                f"held-out success {success:.2f}[/dim]"
            )
            if success >= TARGET_SUCCESS:
                return step, success
    raise RuntimeError(f"tiny warm-start did not reach {TARGET_SUCCESS:.0%} in {max_steps} steps")


def build_tiny(target: Path, seed: int = 0) -> None:
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    env = environments.make("math", data="synthetic")
    steps, success = warm_start(model, tokenizer, env, seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "WARM_START.txt").write_text(
        f"supervised steps: {steps}\nheld-out critique-free success: {success:.3f}\n"
    )


def tiny_model_dir() -> Path:
    """The cached tiny model directory, built on first use (a lock keeps builds apart)."""
    root = cache_root()
    target = root / f"tiny-v{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".tiny-v{TINY_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        _console.print("[bold]building the tiny model (once; about a minute on 2 cores)…[/bold]")
        partial = root / f".tiny-v{TINY_VERSION}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build_tiny(partial)
        os.replace(partial, target)
    return target
