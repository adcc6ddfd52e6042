"""PPO loss terms as pure functions: tensors in, scalar tensor out.

Every function takes an optional ``mask`` (1 = count this element) so the same code serves gym
batches (no mask) and token sequences (padding masked out). All inputs are expected in fp32;
callers upcast logits before computing log-probs.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from rlhf.ppo.advantages import masked_mean


def log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor | None = None) -> Tensor:
    """log(pi_new / pi_old) per sample, 0 where masked out (so exp() of padding never overflows)."""
    diff = logp - old_logp
    return diff if mask is None else torch.where(mask.bool(), diff, 0.0)


def clipped_surrogate_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_range: float,
                           mask: Tensor | None = None) -> Tensor:
    """PPO-clip policy loss: -E[min(r A, clip(r, 1-eps, 1+eps) A)] with r = exp(logp - old_logp)."""
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    return -masked_mean(torch.min(unclipped, clipped), mask)


def kl_penalty_surrogate_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, kl_coef: float,
                              mask: Tensor | None = None) -> Tensor:
    """Adaptive-KL PPO policy loss: -E[r A - beta * KL(old || new)], KL by the k3 estimator.

    k3 = (r - 1) - log r is unbiased for KL(old || new) under samples from the old policy and never
    negative, so the penalty cannot reward moving away.
    """
    lr = log_ratio(logp, old_logp, mask)
    kl = torch.expm1(lr) - lr  # k3 of KL(old || new): kl_estimate(old_logp, logp, "k3") with padding zeroed
    return -masked_mean(torch.exp(lr) * advantages - kl_coef * kl, mask)


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None, clip_value: float | None = None,
               loss_type: str = "mse", huber_delta: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Critic loss: MSE or Huber to the returns, optionally PPO2-style clipped around ``old_values``.

    With clipping the loss is the elementwise max of the clipped and unclipped errors (pessimistic),
    as in OpenAI baselines. MSE here is the plain mean of squares, matching Stable-Baselines3.
    """
    if loss_type not in ("mse", "huber"):
        raise ValueError(f"loss_type = {loss_type!r}: allowed values are 'mse', 'huber'")

    def err(pred: Tensor) -> Tensor:
        if loss_type == "mse":
            return (pred - returns) ** 2
        return F.huber_loss(pred, returns, reduction="none", delta=huber_delta)

    loss = err(values)
    if clip_value is not None:
        if old_values is None:
            raise ValueError("value clipping needs old_values")
        clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
        loss = torch.max(loss, err(clipped))
    return masked_mean(loss, mask)


def entropy_loss(entropy: Tensor, mask: Tensor | None = None) -> Tensor:
    """Negative mean entropy; adding ``entropy_coef * entropy_loss`` to the loss rewards exploration."""
    return -masked_mean(entropy, mask)


KL_ESTIMATORS = ("k1", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """Per-sample estimate of KL(p || ref) from samples of p, where ``logp`` = log p(x), ``ref_logp`` = log ref(x).

    k1 = log p - log ref: unbiased, can be negative per sample (the per-token penalty of Ziegler et al.
    and InstructGPT). k3 = (r - 1) - log r with r = ref / p: unbiased and never negative, lower variance
    (Schulman's "Approximating KL divergence"). No reduction: callers mask and sum or average.
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"estimator = {estimator!r}: allowed values are {', '.join(KL_ESTIMATORS)}")


@torch.no_grad()
def approx_kl(logp: Tensor, old_logp: Tensor, mask: Tensor | None = None, estimator: str = "k3") -> Tensor:
    """KL(old || new) estimated from samples of the old policy (the ``train/approx_kl`` statistic)."""
    return masked_mean(kl_estimate(old_logp, logp, estimator), mask)


@torch.no_grad()
def clip_fraction(logp: Tensor, old_logp: Tensor, clip_range: float, mask: Tensor | None = None) -> Tensor:
    """Fraction of samples whose ratio left [1 - eps, 1 + eps]: how often clipping was active."""
    ratio = torch.exp(log_ratio(logp, old_logp, mask))
    return masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask)
