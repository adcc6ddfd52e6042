"""Sampling responses from a GPT, batched in lockstep over left-padded prompts.

The log-probs returned with each sampled token come from ``log_softmax(logits / temperature)`` in
fp32, the very distribution PPO evaluates later (``logprobs_from_logits`` on a full forward pass),
so PPO's first ratio is exactly 1. Top-k / top-p only change which tokens are *drawn*; the
log-probs stay those of the full temperature-scaled distribution, which makes filtered sampling
slightly off-policy - that is why both are off by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.text.model import GPT
from rlhf.text.tokenizer import Tokenizer


@dataclass
class GenerationOutput:
    sequences: Tensor      # (B, P + T) prompt (left-padded) followed by the response
    response: Tensor       # (B, T) sampled tokens, pad after each row's EOS
    response_mask: Tensor  # (B, T) int64, 1 up to and including EOS
    logprobs: Tensor       # (B, T) fp32 log-prob of each sampled token, 0 where response_mask is 0
    attention_mask: Tensor  # (B, P + T) int64 = cat(prompt_mask, response_mask), the mask of ``sequences``


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(token) under softmax(logits / temperature), computed in fp32. Shapes (..., V), (...)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k tokens / the top-p nucleus to -inf (the most likely token always stays)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p      # mass before this token already exceeds top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model: GPT, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> GenerationOutput:
    """Sample up to ``max_new_tokens`` per row after left-padded prompts (B, P).

    Every step draws one ``torch.multinomial`` sample per row from ``generator``, finished rows
    included (their token is replaced by pad), so the random stream and thus the output are the
    same with and without the KV cache. Stops early once every row has emitted EOS, so T can be
    shorter than ``max_new_tokens``. The model is run in eval mode and restored afterwards.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    was_training = model.training
    model.eval()
    B = prompt_ids.shape[0]
    sequences, mask = prompt_ids, prompt_mask.long()
    finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    tokens, logps, alive = [], [], []
    past, step_input = None, prompt_ids
    for _ in range(max_new_tokens):
        if use_cache:
            out = model(step_input, attention_mask=mask, past_kv=past, use_cache=True)
            past = out.past_kv
        else:
            out = model(sequences, attention_mask=mask)
        logits = out.logits[:, -1].float() / temperature
        probs = filter_logits(logits, top_k, top_p).softmax(-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        logp = F.log_softmax(logits, dim=-1).gather(1, token[:, None]).squeeze(1)
        token = token.masked_fill(finished, pad_id)
        alive.append(~finished)
        tokens.append(token)
        logps.append(logp.masked_fill(finished, 0.0))
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
        step_input = token[:, None]
        finished = finished | (token == eos_id)
        if bool(finished.all()):
            break
    model.train(was_training)
    return GenerationOutput(sequences=sequences, response=torch.stack(tokens, 1),
                            response_mask=torch.stack(alive, 1).long(), logprobs=torch.stack(logps, 1),
                            attention_mask=mask)


@dataclass
class Completion:
    prompt: str
    response: str              # decoded words, without EOS
    prompt_ids: list[int]      # real prompt tokens
    response_ids: list[int]    # real response tokens, EOS included when emitted
    ended: bool                # whether the response emitted EOS within max_new_tokens


def sample_completions(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
                       temperature: float = 1.0, batch_size: int = 256,
                       generator: torch.Generator | None = None) -> list[Completion]:
    """Text in, text out: generate() over ``prompts`` in batches, keeping the exact token ids."""
    device = next(model.parameters()).device
    completions = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        ids, mask = tokenizer.encode_batch(batch)
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens, tokenizer.eos_id, tokenizer.pad_id,
                       temperature=temperature, generator=generator)
        for row, prompt in enumerate(batch):
            n = int(out.response_mask[row].sum())
            response_ids = out.response[row, :n].tolist()
            completions.append(Completion(
                prompt=prompt, response=tokenizer.decode(response_ids),
                prompt_ids=ids[row][mask[row].bool()].tolist(), response_ids=response_ids,
                ended=bool(response_ids) and response_ids[-1] == tokenizer.eos_id))
    return completions
