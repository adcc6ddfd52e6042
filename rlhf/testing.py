"""Helpers for unit-testing policy updates, yours or ours.

    from rlhf.testing import synthetic_batch, assert_ratio_starts_at_one, assert_update_changes_parameters

    def test_my_policy_learns():
        policy = MyPolicy(obs_space, action_space)
        batch = synthetic_batch(policy, n=128, seed=0)
        assert_ratio_starts_at_one(policy, batch)
        assert_update_changes_parameters(policy, batch)

A policy here is any ``nn.Module`` that ``ppo_update`` can train: ``evaluate_actions(obs, actions)`` ->
(logp, entropy, values) (see ``rlhf.ppo.update.EvaluatesActions``), plus, for ``synthetic_batch``,
``sample_actions(obs)`` and an ``obs_space`` attribute.
"""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch
from torch import nn

from rlhf.build import ppo_settings
from rlhf.config import PPOConfig
from rlhf.optim import make_optimizer
from rlhf.ppo.update import Batch, PPOSettings, ppo_update
from rlhf.precision import Precision


def synthetic_batch(policy: nn.Module, n: int = 64, seed: int = 0, advantages: torch.Tensor | None = None,
                    precision: Precision | None = None) -> Batch:
    """A batch of ``n`` observations sampled from the policy's observation space, acted on by the policy.

    Advantages and returns are seeded standard normals unless ``advantages`` is given; stored log-probs
    and values are the policy's own ``evaluate_actions`` (in ``precision``'s autocast, as the trainer
    scores a rollout), so the first PPO ratio must be exactly 1.
    """
    space = policy.obs_space
    space.seed(seed)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(n)]))
    if obs.dtype == torch.float64:
        obs = obs.float()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    was_training = policy.training
    policy.eval()
    with torch.no_grad(), (precision or Precision("fp32")).autocast():
        actions = policy.sample_actions(obs)
        logp, _, values = policy.evaluate_actions(obs, actions)
    policy.train(was_training)
    adv = torch.randn(n, generator=g) if advantages is None else advantages.float()
    returns = values + torch.randn(n, generator=g)
    return Batch(obs, actions, logp.float(), values.float(), adv, returns)


def _settings(cfg: PPOSettings | PPOConfig | None, n: int) -> PPOSettings:
    if isinstance(cfg, PPOSettings):
        return cfg
    return ppo_settings(cfg or PPOConfig(batch_size=min(64, n), epochs=4))


def run_update(policy: nn.Module, batch: Batch, cfg: PPOSettings | PPOConfig | None = None, lr: float = 3e-4,
               precision: Precision | None = None) -> dict[str, float]:
    """One full PPO update (all epochs and minibatches) with a fresh Adam optimizer.

    ``cfg`` is a ``PPOSettings`` or a ``PPOConfig`` (schedules read at their start values); default: batch
    size 64, 4 epochs.
    """
    return ppo_update(policy, make_optimizer(policy, lr), batch, _settings(cfg, len(batch)), precision)


def first_minibatch_ratio(policy: nn.Module, batch: Batch, precision: Precision | None = None) -> torch.Tensor:
    """The PPO ratio exp(logp_new - logp_old) before any optimizer step."""
    with torch.no_grad(), (precision or Precision("fp32")).autocast():
        logp, _, _ = policy.evaluate_actions(batch.obs, batch.actions)
    return torch.exp(logp - batch.logp)


def assert_ratio_starts_at_one(policy: nn.Module, batch: Batch, precision: Precision | None = None) -> None:
    """Stored log-probs must come from the same computation the update uses: ratio == 1 exactly."""
    ratio = first_minibatch_ratio(policy, batch, precision)
    worst = float((ratio - 1).abs().max())
    assert worst == 0.0, f"first-minibatch PPO ratio differs from 1 by up to {worst:.3g}"


def assert_update_changes_parameters(policy: nn.Module, batch: Batch, cfg: PPOSettings | PPOConfig | None = None) -> None:
    """Every trainable parameter that receives gradient must move after one update."""
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    run_update(policy, batch, cfg)
    unchanged = [k for k, v in policy.named_parameters() if v.requires_grad and torch.equal(v, before[k])]
    assert not unchanged, f"parameters did not change after a PPO update: {unchanged}"


def assert_finite_update(policy: nn.Module, batch: Batch, cfg: PPOSettings | PPOConfig | None = None,
                         precision: Precision | None = None) -> dict[str, float]:
    """Losses, statistics, gradients and parameters after one update are all finite."""
    stats = run_update(policy, batch, cfg, precision=precision)
    bad = [k for k in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl")
           if not np.isfinite(stats[k])]
    assert not bad, f"non-finite statistics after update: {bad} ({stats})"
    for name, p in policy.named_parameters():
        assert torch.isfinite(p).all(), f"parameter {name} is not finite after update"
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"gradient of {name} is not finite"
    return stats


def assert_moves_toward_positive_advantage(policy: nn.Module, n: int = 128, seed: int = 0,
                                           cfg: PPOSettings | PPOConfig | None = None) -> None:
    """Random +1/-1 advantages: after an update, the mean log-probability of the +1 actions rises and
    that of the -1 actions falls."""
    batch = synthetic_batch(policy, n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    batch.advantages = sign
    reference = copy.deepcopy(policy)
    run_update(policy, batch, cfg or PPOSettings(batch_size=n, epochs=4, normalize_advantage=False), lr=1e-3)
    with torch.no_grad():
        new_logp = policy.evaluate_actions(batch.obs, batch.actions)[0]
        old_logp = reference.evaluate_actions(batch.obs, batch.actions)[0]
    delta = new_logp - old_logp
    up, down = float(delta[sign > 0].mean()), float(delta[sign < 0].mean())
    assert up > 0 > down, f"log-prob of positive-advantage actions changed by {up:.3g}, negative by {down:.3g}"


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every entry of ``module.state_dict()`` (names and exact bytes): equal digests mean
    bit-identical weights, e.g. across data-parallel ranks or between a resumed and an uninterrupted run."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: bf16 has no numpy dtype
    return h.hexdigest()
