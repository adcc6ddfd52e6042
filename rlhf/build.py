"""Construction from a ``Config``: device, policy, optimizer, precision and PPO settings.

Training, evaluation and the CLI's tools all build through here, so a policy restored for ``rlhf eval``
is the exact network the trainer built.
"""
from __future__ import annotations

import gymnasium as gym
import torch

from rlhf.config import Config, PPOConfig
from rlhf.errors import ConfigError
from rlhf.optim import make_optimizer
from rlhf.policies import ActorCritic
from rlhf.ppo.update import PPOSettings
from rlhf.precision import Precision
from rlhf.schedules import schedule_value


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present; asking for CUDA without one is a config error, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda': no CUDA device is available (allowed here: auto, cpu)")
    return torch.device(name)


def build_policy(cfg: Config, obs_space: gym.Space, action_space: gym.Space,
                 device: torch.device | str) -> ActorCritic:
    """The actor-critic of ``cfg.policy`` (fake-quantized for QAT if asked), on ``device``."""
    policy = ActorCritic(obs_space, action_space, cfg.policy)
    if cfg.precision.qat:
        from rlhf.precision import prepare_qat

        policy = prepare_qat(policy, cfg.precision.qat)
    return policy.to(device)


def build_optimizer(cfg: Config, policy: torch.nn.Module) -> torch.optim.Optimizer:
    """Built last, after the policy is on its device (a flat-buffer Adam holds views of the parameters)."""
    return make_optimizer(policy, schedule_value(cfg.ppo.learning_rate, 1.0), cfg.ppo.optimizer)


def build_precision(cfg: Config, policy: torch.nn.Module, device: torch.device) -> Precision:
    try:
        return Precision(cfg.precision.train, device, model=policy, skip_nonfinite=cfg.ppo.skip_nonfinite_updates)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def ppo_settings(ppo: PPOConfig, progress_remaining: float = 1.0, kl_coef: float | None = None) -> PPOSettings:
    """What one ``ppo_update`` reads, with the clip-range schedule at ``progress_remaining`` (1 -> 0)."""
    return PPOSettings(
        epochs=ppo.epochs, batch_size=ppo.batch_size, clip_range=schedule_value(ppo.clip_range, progress_remaining),
        clip_value=ppo.clip_value, vf_coef=ppo.vf_coef, entropy_coef=ppo.entropy_coef,
        max_grad_norm=ppo.max_grad_norm, target_kl=ppo.target_kl, normalize_advantage=ppo.normalize_advantage,
        loss_type=ppo.loss_type, huber_delta=ppo.huber_delta, policy_loss=ppo.policy_loss,
        kl_coef=ppo.kl_coef if kl_coef is None else kl_coef)
