"""Stage 1, supervised fine-tuning: teach the GPT the review language from demonstrations.

The loss is next-token cross-entropy on the response tokens (EOS included), the tokens the
policy will later produce; the prompt is context only. Validation perplexity is measured the
same way on demonstrations for the held-out prompts.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.errors import NonFiniteError
from rlhf.moe import with_auxiliary_loss
from rlhf.text.model import GPT
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer, left_pad

LogFn = Callable[[dict, int], None]


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * lr`` (nanoGPT's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not biases or LayerNorm gains), as nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def scheduled_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, lr: float,
                   name: str = "training") -> float:
    """One optimizer step at learning rate ``lr`` with the gradient norm clipped at 1 (how both supervised
    stages train); returns the loss as a float. A NaN/inf loss or gradient norm raises ``NonFiniteError``
    (naming ``name``) before the step, so the weights never take it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteError(f"{name}: the loss is {value:g}; stopped before the optimizer step")
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    if not math.isfinite(norm):
        raise NonFiniteError(f"{name}: the gradient norm is {norm:g} (loss {value:g}); stopped before the "
                             "optimizer step")
    optimizer.step()
    return value


def encode_demonstrations(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(prompt + response + EOS token ids, prompt length) per demonstration."""
    return [(tokenizer.encode(p) + tokenizer.encode(r, add_eos=True), len(p.split())) for p, r in pairs]


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded (ids, attention_mask) and the (B, L - 1) mask of targets that are response tokens."""
    ids, mask = left_pad([seq for seq, _ in examples], pad_id)
    width = ids.shape[1]
    targets = torch.zeros(len(examples), width - 1, dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(examples):
        targets[row, width - len(seq) + prompt_len - 1:] = True  # target j predicts token j + 1
    return ids, mask, targets


def response_nll(model: GPT, ids: Tensor, mask: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token negative log-likelihood over ``targets`` and the number of target tokens."""
    logits = model(ids, attention_mask=mask).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    return (nll * targets.reshape(-1)).sum(), targets.sum()


@torch.no_grad()
def perplexity(model: GPT, examples: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int = 256) -> float:
    """exp(mean NLL per response token) over ``examples``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        ids, mask, targets = (t.to(device) for t in collate(examples[start:start + batch_size], pad_id))
        nll, n = response_nll(model, ids, mask, targets)
        total, count = total + float(nll), count + int(n)
    model.train(was_training)
    return math.exp(total / count)


def train_sft(model: GPT, tokenizer: Tokenizer, task: Task, steps: int = 1000, batch_size: int = 32,
              lr: float = 2e-3, weight_decay: float = 0.1, warmup: int = 20, corpus_size: int = 20_000,
              val_size: int = 1_000, log_every: int = 50, seed: int = 0, log: LogFn | None = None) -> dict:
    """Train ``model`` in place on ``task``'s demonstrations; returns the final metrics.

    ``log(stats, step)`` receives ``sft/loss`` and ``sft/learning_rate`` every ``log_every`` steps,
    ``sft/val_perplexity`` at the start and both at the end. Returned: ``sft/loss`` (mean over the last
    ``log_every`` steps), ``sft/val_perplexity``, ``sft/initial_val_perplexity``, ``sft/seconds``.
    """
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    train = encode_demonstrations(tokenizer, task.sft_corpus(corpus_size, rng, split="train"))
    val = encode_demonstrations(tokenizer, task.sft_corpus(val_size, rng, split="heldout"))
    initial_ppl = perplexity(model, val, tokenizer.pad_id)
    if log:
        log({"sft/val_perplexity": initial_ppl}, 0)

    optimizer = make_optimizer(model, lr, weight_decay)
    model.train()
    recent: list[float] = []
    for step in range(steps):
        batch = [train[i] for i in rng.integers(len(train), size=batch_size)]
        ids, mask, targets = (t.to(device) for t in collate(batch, tokenizer.pad_id))
        nll, n = response_nll(model, ids, mask, targets)
        loss = scheduled_step(model, optimizer, with_auxiliary_loss(nll / n, model), lr_at(step, steps, lr, warmup),
                              f"sft step {step}")
        recent = (recent + [loss])[-log_every:]
        if log and (step + 1) % log_every == 0 and step + 1 < steps:
            log({"sft/loss": float(np.mean(recent)), "sft/learning_rate": optimizer.param_groups[0]["lr"]}, step + 1)

    metrics = {"sft/loss": float(np.mean(recent)) if recent else float("nan"),
               "sft/val_perplexity": perplexity(model, val, tokenizer.pad_id),
               "sft/initial_val_perplexity": initial_ppl,
               "sft/seconds": time.perf_counter() - start_time}
    if log:
        log({k: v for k, v in metrics.items() if k in ("sft/loss", "sft/val_perplexity")}, steps)
    return metrics
