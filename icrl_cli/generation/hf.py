"""The transformers backend: batched, KV-cached sampling on the trainer's own model.

The decoding loop is our own rather than ``generate``: a row leaves the batch (and its KV cache)
the step it samples a stop token, so a batch costs the sum of its responses' lengths rather than
rows × the longest response. Sampling is plain softmax sampling at the temperature, with optional
nucleus (top-p) filtering and nothing else: no top-k and none of a model's own generation
defaults, so that the returned log-probs describe the distribution the tokens were drawn from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from icrl_cli.generation.base import Generation, sampling_scores


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's configured EOS ids."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class HFBackend:
    """Samples from the very model object the trainer updates, so weight sync is a no-op."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = stop_token_ids(model, tokenizer)
        # transformers 5 renamed the forward's KV-cache argument (the old name still works there,
        # with a deprecation warning); 4.x knows only the old one.
        parameters = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def sleep(self) -> None:
        return None

    def sync_weights(self, weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        return None

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[Generation]:
        results: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                results.extend(
                    self._generate_batch(
                        prompts[start : start + self.batch_size], max_new_tokens, temperature, top_p
                    )
                )
        finally:
            self.model.train(was_training)
        return results

    def _next_token_logits(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: cache},
        )
        return out.logits[:, -1].float()

    def _generate_batch(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float
    ) -> list[Generation]:
        device = self.model.device
        n, width = len(prompts), max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token in the same column.
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        # Padding does not count as a position: each prompt starts at 0.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._next_token_logits(input_ids, attention, positions, cache)
        position = positions[:, -1:] + 1
        stop = torch.tensor(self.stop_ids, device=device)
        sampling = temperature > 0
        rows = torch.arange(n, device=device)  # the prompt index of each row still decoding
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        stopped = [False] * n
        for step in range(max_new_tokens):
            # Log-probs of the distribution sampled from: temperature and nucleus applied (the
            # trainer scores responses under the same ``sampling_scores``).
            scores = sampling_scores(logits, temperature, top_p)
            logp = torch.log_softmax(scores, dim=-1)
            if not sampling:
                token = scores.argmax(-1)
            else:
                token = torch.multinomial(scores.softmax(-1), 1).squeeze(1)
            token_logp = logp.gather(1, token.unsqueeze(1)).squeeze(1)
            ended = torch.isin(token, stop)
            for row, tok, lp, end in zip(
                rows.tolist(), token.tolist(), token_logp.tolist(), ended.tolist(), strict=True
            ):
                tokens[row].append(tok)
                logprobs[row].append(lp)
                stopped[row] = end
            if step == max_new_tokens - 1:
                break
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                # Finished rows leave the batch and the KV cache.
                cache.batch_select_indices(keep)
                rows, token, attention, position = (
                    rows[keep],
                    token[keep],
                    attention[keep],
                    position[keep],
                )
            attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
            logits = self._next_token_logits(token.unsqueeze(1), attention, position, cache)
            position = position + 1
        return [
            Generation(t, lp, finish_reason="stop" if s else "length")
            for t, lp, s in zip(tokens, logprobs, stopped, strict=True)
        ]
