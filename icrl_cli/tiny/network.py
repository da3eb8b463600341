"""The embedded models' network: a small Qwen3, its chat template and a character tokenizer."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from icrl_cli.rollout.prompts import PROMPTS_FILE

SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each message is its role marker, its text, then <|end|> (the EOS). System messages are left
# out: every token costs compute on a CPU, and the tiny models learn each role's format from
# their warm-start demonstrations instead of from instructions.
CHAT_TEMPLATE = (
    "{%- for m in messages if m['role'] != 'system' -%}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Printable ASCII, one token per character, plus the chat and control tokens."""
    alphabet = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return wrap_tokenizer(backend)


# The prompts the multi-turn models ship (household, search QA): the task alone, the task and a
# tip, and for the critic the task and the attempt's "> action" / observation lines.
MULTI_TURN_PROMPTS = {
    "solver_user": "{task}",
    "revision_user": "{task}\nTip: {critique}",
    "critic_user": "{task}\n{summary}",
    "summary": "{attempt}\nreward {reward}",
    "critique_tag": "c",
    "rule_correct": "Done.",
    "rule_failed": "That failed.",
}


def train_bpe(texts: list[str], isolated: str, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``, whose merges may span spaces except across the
    matches of the regex ``isolated``: each match is merged within, never with what surrounds
    it (so a name stays the same tokens wherever it stands, and is copied)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(isolated), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
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
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    max_positions: int = 1024,
    layers: int = 4,
    hidden: int = 256,
) -> Qwen3ForCausalLM:
    """4 layers, 256 wide, grouped-query attention: about 3 million parameters. Other shapes
    keep the proportions: an MLP three times as wide, 64-wide heads, two query heads per key
    and value head (8 layers × 512: about 25 million)."""
    heads = hidden // 64
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def save(
    target: Path,
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: dict[str, str],
    report: dict[str, object],
) -> None:
    """A built model's directory: the weights, the tokenizer, the prompts it ships and its
    warm-start report (``warm_start.json``)."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / PROMPTS_FILE).write_text(json.dumps(prompts, indent=2) + "\n")
    (target / "warm_start.json").write_text(json.dumps(report, indent=2) + "\n")
