"""The transformers backend: batched, KV-cached ``generate`` on the trainer's own model."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from icrl_cli.generation.base import Generation


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

    def sync_weights(self) -> None:
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
        for start in range(0, len(prompts), self.batch_size):
            results.extend(
                self._generate_batch(
                    prompts[start : start + self.batch_size], max_new_tokens, temperature, top_p
                )
            )
        return results

    def _generate_batch(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float
    ) -> list[Generation]:
        device = self.model.device
        width = max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token in the same column, as generate expects.
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            # 0, not None: generate fills a None top_k with its global default of 50, which would
            # sample from a truncated distribution that the returned log-probs do not describe.
            top_k=0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=config,
        )
        self.model.train(was_training)
        new_tokens = out.sequences[:, width:].cpu()
        # Log-probs of the sampling distribution (temperature applied, top-p not: the same
        # convention as vLLM's logprobs), from the raw logits generate saw at each step.
        logits = torch.stack(out.logits, dim=1).float()
        if sampling:
            logits = logits / temperature
        logprobs = torch.log_softmax(logits, dim=-1)
        token_logprobs = logprobs.gather(-1, new_tokens.to(logits.device).unsqueeze(-1))
        token_logprobs = token_logprobs.squeeze(-1).cpu()
        stop = torch.tensor(self.stop_ids)
        results = []
        for row in range(len(prompts)):
            tokens = new_tokens[row].tolist()
            is_stop = torch.isin(new_tokens[row], stop).nonzero()
            if len(is_stop):
                end = int(is_stop[0]) + 1
                finish = "stop"
            else:
                end = len(tokens)
                finish = "length"
            results.append(
                Generation(tokens[:end], token_logprobs[row, :end].tolist(), finish_reason=finish)
            )
        return results
