"""Advantage estimation and masked statistics (pure functions).

Time is the first axis: tensors are (T, ...) with T steps; trailing axes are independent streams
(parallel envs, or batch rows of a token sequence).
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
    not_term = 1.0 - terminations.float()
    not_done = 1.0 - dones.float()
    deltas = rewards + gamma * next_values * not_term - values
    advantages = torch.empty_like(deltas)
    last = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the elements where mask is 1 (plain mean without a mask)."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance over masked elements, Bessel-corrected by default like ``torch.var``."""
    if mask is None:
        return x.var(unbiased=unbiased) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
    mean = masked_mean(x, mask)
    m = mask.to(x.dtype)
    n = m.sum()
    var = ((x - mean) ** 2 * m).sum() / n.clamp_min(1.0)
    if unbiased:
        var = var * n / (n - 1).clamp_min(1.0)
    return var


def masked_whiten(x: Tensor, mask: Tensor | None = None, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """Normalise to zero mean and unit variance over the masked elements (advantage normalisation)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def whiten(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Unmasked advantage normalisation, exactly SB3's ``(a - mean) / (std + 1e-8)``."""
    return (x - x.mean()) / (x.std() + eps) if x.numel() > 1 else x - x.mean()


@torch.no_grad()
def explained_variance(pred: Tensor, target: Tensor) -> float:
    """1 - Var[target - pred] / Var[target]: 1 is a perfect critic, 0 no better than a constant."""
    var_y = target.var()
    if var_y == 0:
        return float("nan")
    return float(1.0 - (target - pred).var() / var_y)
