"""One PPO update over a ``Batch`` for any policy that answers ``evaluate_actions``.

The loop reads like CleanRL's ``ppo.py``: epochs x shuffled minibatches, advantage normalisation per
minibatch, clipped (or KL-penalised) surrogate, value loss, entropy bonus, one optimizer step, and
SB3's target-KL early stop. Nothing here knows about gym, configs or token sequences: a token batch is
a batch whose ``mask`` is (B, T) instead of absent. Speed lives behind the interfaces it calls (the
policy's forward, ``precision.step`` and the optimizer's ``step``), never in a branch of this loop.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor, nn

from rlhf.ppo.advantages import explained_variance, masked_whiten
from rlhf.ppo.losses import (
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    entropy_loss,
    kl_penalty_surrogate_loss,
    value_loss,
)
from rlhf.precision import Precision

Obs = Tensor | dict[str, Tensor]


def _local(x: Tensor) -> Tensor:
    return x


@dataclass
class Batch:
    """A flat batch (first axis = sample). ``mask`` is shaped like ``logp``: (B,) for gym transitions,
    (B, T) for token sequences; 0 marks padding that no loss or statistic may see. ``obs`` is a tensor or
    a dict of tensors (e.g. ``input_ids`` and ``attention_mask``), indexed along the first axis."""

    obs: Obs
    actions: Tensor
    logp: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.actions.shape[0]

    def index(self, idx: Tensor) -> "Batch":
        def take(x):
            if isinstance(x, dict):
                return {k: v[idx] for k, v in x.items()}
            return None if x is None else x[idx]
        return Batch(*(take(getattr(self, f.name)) for f in fields(self)))


def minibatches(b: Batch, batch_size: int) -> Iterator[Batch]:
    """One epoch of shuffled minibatches of ``b`` (the last one may be shorter).

    When one minibatch holds the whole batch, ``b`` itself is the minibatch: a shuffle would only reorder
    the terms of each mean, so the indexing copies it costs buy nothing.
    """
    n = len(b)
    if batch_size >= n:
        yield b
        return
    b_inds = torch.randperm(n)
    for start in range(0, n, batch_size):
        yield b.index(b_inds[start:start + batch_size])


@dataclass(frozen=True)
class PPOSettings:
    """The knobs one update reads. Trainers fill it from their config (schedules already applied)."""

    epochs: int = 10
    batch_size: int = 64
    clip_range: float = 0.2
    clip_value: float | None = None
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float | None = 0.5
    target_kl: float | None = None
    normalize_advantage: bool = True
    loss_type: str = "mse"
    huber_delta: float = 1.0
    policy_loss: str = "clip"  # "clip" | "kl_penalty"
    kl_coef: float = 1.0  # beta of the kl_penalty policy loss
    # Data-parallel training (rlhf.distributed) swaps in cross-worker versions: advantage normalisation with
    # every worker's statistics, and the mean of a statistic over the workers (the target-KL stop decision).
    whiten: Callable[[Tensor, Tensor | None], Tensor] = masked_whiten
    mean: Callable[[Tensor], Tensor] = _local
    # How an epoch splits the batch; data-parallel gym training swaps in a split into the same number of
    # minibatches on every rank (``rlhf.distributed.EqualSplit``), whose batches differ in size.
    minibatches: Callable[[Batch, int], Iterator[Batch]] = minibatches


class EvaluatesActions(Protocol):
    """What ``ppo_update`` needs from a policy (the call Stable-Baselines3's policies answer too).

    ``evaluate_actions(obs, actions)`` returns fp32 ``(logp, entropy, values)`` shaped like ``actions``'s
    log-probs ((B,) or (B, T)), with gradients; ``values`` may be None for a policy without a critic
    (group baselines such as RLOO/GRPO). It is called inside ``precision.autocast()``, so the policy
    computes log-probs and entropies from upcast logits (see ``rlhf.precision.float32_region``).

    Optionally, ``auxiliary_loss() -> Tensor | None`` returns an extra, already weighted loss recorded by
    the last forward (``rlhf.moe`` layers' load balancing); ``ppo_update`` adds it to each step's loss.
    """

    def evaluate_actions(self, obs: Obs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor | None]: ...


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """The PPO paper's adaptive beta: halve when KL < d/1.5, double when KL > 1.5 d."""
    if kl < kl_target / 1.5:
        return kl_coef / 2.0
    if kl > kl_target * 1.5:
        return kl_coef * 2.0
    return kl_coef


def ppo_loss(logp: Tensor, entropy: Tensor, values: Tensor | None, mb: Batch, advantages: Tensor,
             s: PPOSettings, aux: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The minibatch loss ``pg + vf_coef * v + entropy_coef * ent (+ aux)`` and its detached parts (pure).

    ``aux`` is the policy's own weighted extra loss (e.g. an MoE router's load balancing), added as is."""
    m = mb.mask
    if s.policy_loss == "clip":
        pg_loss = clipped_surrogate_loss(logp, mb.logp, advantages, s.clip_range, m)
    else:
        pg_loss = kl_penalty_surrogate_loss(logp, mb.logp, advantages, s.kl_coef, m)
    v_loss = (value_loss(values, mb.returns, mb.values, s.clip_value, s.loss_type, s.huber_delta, m)
              if values is not None else torch.zeros((), device=logp.device))
    ent_loss = entropy_loss(entropy, m)
    loss = pg_loss + s.vf_coef * v_loss
    if s.entropy_coef:  # a zero coefficient would only backpropagate zeros through the entropy
        loss = loss + s.entropy_coef * ent_loss
    stats = {"policy_gradient_loss": pg_loss.detach(), "value_loss": v_loss.detach(),
             "entropy_loss": ent_loss.detach()}
    if aux is not None:
        loss = loss + aux
        stats["aux_loss"] = aux.detach()
    stats["loss"] = loss.detach()
    return loss, stats


def auxiliary_loss(policy: nn.Module) -> Tensor | None:
    """The policy's extra loss from its last forward, when it defines ``auxiliary_loss()`` (see the protocol)."""
    fn = getattr(policy, "auxiliary_loss", None)
    return fn() if fn is not None else None


class _ReuseForSameInput:
    """``whiten`` that returns its last result when called again on the same, unmodified tensors.

    When one minibatch holds the whole batch, every epoch normalises the very same advantages; one
    computation per update instead of one per epoch (20 in rl-zoo's CartPole settings)."""

    def __init__(self, whiten: Callable[[Tensor, Tensor | None], Tensor]) -> None:
        self.whiten, self.key, self.out = whiten, None, None

    def __call__(self, x: Tensor, mask: Tensor | None) -> Tensor:
        key = (x._version, None if mask is None else mask._version)
        if self.out is None or self.key[0] is not x or self.key[1] is not mask or self.key[2] != key:
            self.out, self.key = self.whiten(x, mask), (x, mask, key)
        return self.out


def ppo_update(policy: nn.Module, optimizer: torch.optim.Optimizer, b: Batch, s: PPOSettings,
               precision: Precision | None = None) -> dict[str, float]:
    """``s.epochs`` passes of shuffled minibatches over ``b``; returns SB3-named statistics.

    A 1-sample tail minibatch is trained on without normalising its advantage, as Stable-Baselines3 does.
    """
    precision = precision or Precision("fp32")
    whiten = _ReuseForSameInput(s.whiten)
    history, seen = [], []  # per-step losses, and (new logp, old logp, mask) for approx_kl / clip_fraction
    early_stop = False
    for _epoch in range(s.epochs):
        for mb in s.minibatches(b, s.batch_size):
            mb_adv = whiten(mb.advantages, mb.mask) if s.normalize_advantage and len(mb) > 1 else mb.advantages
            with precision.autocast():
                logp, entropy, values = policy.evaluate_actions(mb.obs, mb.actions)
            loss, stats = ppo_loss(logp, entropy, values, mb, mb_adv, s, auxiliary_loss(policy))
            if s.target_kl is not None and s.mean(approx_kl(logp.detach(), mb.logp, mb.mask)) > 1.5 * s.target_kl:
                early_stop = True  # SB3's rule: no step on a minibatch that already moved too far
                break
            stats["grad_norm"] = precision.step(loss, optimizer, max_grad_norm=s.max_grad_norm)["grad_norm"]
            history.append(stats)
            seen.append((logp.detach(), mb.logp, mb.mask))
        if early_stop:
            break
    return _statistics(history, seen, b, s, early_stop)


def _statistics(history: list[dict[str, Tensor]], seen: list[tuple[Tensor, Tensor, Tensor | None]], b: Batch,
                s: PPOSettings,
                early_stop: bool) -> dict[str, float]:
    """SB3-named means over the update's steps, reduced once: approx_kl and clip_fraction over every sample
    every step saw (each step's minibatch weighted by its size), ``loss`` from the last step as SB3 logs it."""
    out = {f"train/{k}": torch.stack([h[k] for h in history]).float().mean().item() if history else float("nan")
           for k in ("policy_gradient_loss", "value_loss", "entropy_loss", "grad_norm")}
    if history and "aux_loss" in history[0]:
        out["train/aux_loss"] = torch.stack([h["aux_loss"] for h in history]).mean().item()
    if seen:
        new, old = torch.cat([x[0] for x in seen]), torch.cat([x[1] for x in seen])
        mask = None if seen[0][2] is None else torch.cat([x[2] for x in seen])
        out["train/approx_kl"] = approx_kl(new, old, mask).item()
        out["train/clip_fraction"] = clip_fraction(new, old, s.clip_range, mask).item()
    else:
        out["train/approx_kl"] = out["train/clip_fraction"] = float("nan")
    out.update({"train/loss": float(history[-1]["loss"]) if history else float("nan"),
                "train/explained_variance": explained_variance(b.values, b.returns, b.mask),
                "train/n_updates": float(len(history)), "train/clip_range": float(s.clip_range),
                "train/early_stop": float(early_stop)})
    return out
