"""Advantage estimation and masked statistics (pure functions).

GAE takes time as the first axis: tensors are (T, ...) with T steps and trailing axes independent
streams (parallel envs, or the rows of a token batch transposed to (T, B)). Every statistic takes an
optional ``mask`` (1 = count this element) so padded rows or padding tokens never move a number.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminations: Tensor, dones: Tensor,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation. Returns (advantages, returns), each shaped like ``rewards``.

    ``next_values[t]`` is V(s_{t+1}), the value of the observation that followed step t, which for a
    step that ended an episode is V(final observation). It is bootstrapped unless the step was a real
    termination, so truncated episodes (time limits) keep their future value while terminated ones get
    none. ``dones[t]`` (terminated or truncated) stops the advantage recursion from crossing into the
    next episode.
    """
    deltas = rewards + gamma * next_values * (1.0 - terminations.float()) - values
    decay = (gamma * lam) * (1.0 - dones.float())
    advantages = deltas.clone()  # A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}, from the last step back
    steps, decays = advantages.unbind(0), decay.unbind(0)  # views: one in-place op per step
    for t in range(len(steps) - 2, -1, -1):
        steps[t].addcmul_(decays[t], steps[t + 1])
    return advantages, advantages + values


def rloo_advantages(scores: Tensor) -> Tensor:
    """REINFORCE leave-one-out: each sample's score minus the mean of the *other* samples of its prompt.

    ``scores`` is (prompts, G) with G >= 2 generations per prompt; returns the same shape.
    """
    g = scores.shape[-1]
    if g < 2:
        raise ValueError(f"RLOO needs at least 2 generations per prompt, got {g}")
    others_mean = (scores.sum(-1, keepdim=True) - scores) / (g - 1)
    return scores - others_mean


def grpo_advantages(scores: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO's group-normalised advantage (r - mean) / (std + eps) within each prompt's G samples."""
    if scores.shape[-1] < 2:
        raise ValueError(f"GRPO needs at least 2 generations per prompt, got {scores.shape[-1]}")
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True)
    return (scores - mean) / (std + eps)


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the elements where mask is 1 (plain mean without a mask).

    Masked-out elements are selected away, not multiplied by 0, so padding holding garbage (even inf)
    cannot turn the result or its gradient into NaN.
    """
    if mask is None:
        return x.mean()
    keep = mask.bool()
    return torch.where(keep, x, 0.0).sum() / keep.sum().clamp_min(1)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance over masked elements, Bessel-corrected by default like ``torch.var``."""
    if mask is None:
        return x.var(unbiased=unbiased) if x.numel() > 1 else torch.zeros((), dtype=x.dtype, device=x.device)
    keep = mask.bool()
    n = keep.sum().to(x.dtype)
    dev = torch.where(keep, x - masked_mean(x, keep), 0.0)
    var = (dev * dev).sum() / n.clamp_min(1.0)
    if unbiased:
        var = var * n / (n - 1).clamp_min(1.0)
    return var


def masked_whiten(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """Advantage normalisation over the masked elements: Stable-Baselines3's ``(a - mean) / (std + eps)``.

    ``shift_mean=False`` keeps the mean (TRL's choice for whitening rewards: only the scale changes).
    """
    if mask is None and x.numel() > 1:
        std, mean = torch.std_mean(x)  # one pass: this runs once per minibatch
    else:
        mean, std = masked_mean(x, mask), masked_var(x, mask).sqrt()
    out = (x - mean) / (std + eps)
    return out if shift_mean else out + mean


def whiten(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Unmasked advantage normalisation (``masked_whiten`` without a mask)."""
    return masked_whiten(x, None, eps)


@torch.no_grad()
def explained_variance(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """1 - Var[target - pred] / Var[target] over masked elements: 1 is a perfect critic, 0 no better
    than a constant, NaN when the targets do not vary."""
    var_y = masked_var(target, mask)
    if var_y == 0:
        return float("nan")
    return float(1.0 - masked_var(target - pred, mask) / var_y)
