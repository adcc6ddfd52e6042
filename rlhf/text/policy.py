"""The GPT as a PPO policy: ``evaluate_actions`` over response tokens, the call ``ppo_update`` makes.

A token batch's observation is the whole left-padded ``prompt + response`` sequence with its attention
mask; the actions are the response tokens. The logits that produced response token t sit one position
earlier (causal shift), and so does its value: V(prefix before token t).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlhf.precision import float32_region
from rlhf.text.model import GPT


class TextPolicy(nn.Module):
    """Wraps a ``GPT`` (with a value head for GAE, without one for RLOO/GRPO or a frozen reference).

    Log-probs are those of ``softmax(logits / temperature)`` - the distribution ``generate`` samples from -
    computed in fp32 outside autocast, as every log-prob in the library is.
    """

    def __init__(self, model: GPT, temperature: float = 1.0) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def auxiliary_loss(self) -> Tensor | None:
        """The model's MoE routing loss from the last forward (None for a dense model)."""
        return self.model.auxiliary_loss()

    def evaluate_actions(self, obs: dict[str, Tensor], actions: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(logp, entropy, values), each (B, T) for ``actions`` (B, T) = the last T tokens of ``obs``."""
        T = actions.shape[1]
        out = self.model(obs["input_ids"], attention_mask=obs["attention_mask"])
        logits = out.logits[:, -T - 1:-1]
        with float32_region():
            logp_all = F.log_softmax(logits.float() / self.temperature, dim=-1)
            logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        values = out.values[:, -T - 1:-1].float() if out.values is not None else None
        return logp, entropy, values

    @torch.no_grad()
    def logprobs(self, obs: dict[str, Tensor], actions: Tensor) -> Tensor:
        """Log-probs alone, without gradients (the frozen reference's job)."""
        return self.evaluate_actions(obs, actions)[0]
