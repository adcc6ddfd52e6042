"""Actor-critic networks for gymnasium spaces and their action distributions.

Distributions are written as plain tensor functions rather than ``torch.distributions`` objects:
they are the hot path of every rollout step and every minibatch, and they must run in fp32 whatever
precision the network trunk uses (logits are upcast before any log-softmax).
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlhf.config import PolicyConfig
from rlhf.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- distributions

def categorical_sample(logits: Tensor, deterministic: bool = False) -> Tensor:
    """Sample (or argmax) actions from fp32 logits; Gumbel-max avoids building a probability table."""
    if deterministic:
        return logits.argmax(-1)
    u = torch.rand_like(logits).clamp_(1e-10, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def categorical_logp_entropy(logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of ``actions`` and the entropy, from logits (upcast to fp32 here)."""
    logp_all = F.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def gaussian_logp_entropy(mean: Tensor, log_std: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal Gaussian log-probability (summed over action dims) and entropy, in fp32."""
    mean, log_std = mean.float(), log_std.float()
    z = (actions - mean) * torch.exp(-log_std)
    logp = (-0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1)
    entropy = (0.5 + _LOG_SQRT_2PI + log_std).sum(-1).expand(mean.shape[:-1])
    return logp, entropy


# ----------------------------------------------------------------------------- observation normalisation

class RunningMeanStd(nn.Module):
    """Running mean/variance of observations (parallel Welford), kept as buffers so checkpoints hold it."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.reshape(-1, *self.mean.shape).double()
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean.to(x.dtype), torch.sqrt(self.var + self.eps).to(x.dtype)
        return torch.clamp((x - mean) / std, -self.clip, self.clip)


# ----------------------------------------------------------------------------- networks

def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), activation()]
    return nn.Sequential(*layers)


def is_image_space(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


class NatureCNN(nn.Module):
    """The DQN-Nature conv trunk (as in Stable-Baselines3) for channel-first images scaled to [0, 1]."""

    def __init__(self, space: gym.spaces.Box, features: int) -> None:
        super().__init__()
        channels = space.shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n_flat = self.convs(torch.zeros(1, *space.shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat, features), nn.ReLU())
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.convs(obs.float() * self.scale))


class ActorCritic(nn.Module):
    """Policy and value function for a Box/Discrete gymnasium task.

    ``act`` is what rollouts call (sample, log-prob, value); ``evaluate`` is what the PPO update calls
    (log-prob of stored actions, entropy, value). Box actions come from a diagonal Gaussian with a
    state-independent log-std; the sample is stored unclipped and clipped only for the env.
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, cfg: PolicyConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PolicyConfig()
        self.obs_space, self.action_space = obs_space, action_space
        if not isinstance(obs_space, gym.spaces.Box):
            raise ConfigError(f"observation space {obs_space} is not supported: use a Box (vector or image)")
        act = ACTIVATIONS[cfg.activation]
        self.image = is_image_space(obs_space)
        self.obs_rms = RunningMeanStd(obs_space.shape) if cfg.normalize_obs and not self.image else None
        if self.image:
            in_dim = cfg.cnn_features
            make_trunk = lambda: NatureCNN(obs_space, cfg.cnn_features)  # noqa: E731
        else:
            in_dim = int(np.prod(obs_space.shape))
            make_trunk = lambda: nn.Sequential(nn.Flatten(), mlp([in_dim, *cfg.hidden_sizes], act))  # noqa: E731
        self.pi_trunk = make_trunk()
        self.vf_trunk = None if cfg.shared else make_trunk()
        latent = cfg.hidden_sizes[-1] if (cfg.hidden_sizes and not self.image) else in_dim

        if isinstance(action_space, gym.spaces.Discrete):
            self.continuous = False
            self.pi_head = nn.Linear(latent, int(action_space.n))
            self.log_std = None
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.continuous = True
            self.pi_head = nn.Linear(latent, action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((action_space.shape[0],), float(cfg.log_std_init)))
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ConfigError(f"action space {action_space} is not supported: use Discrete or a 1-D Box")
        self.vf_head = nn.Linear(latent, 1)
        if cfg.ortho_init:
            self._orthogonal_init()

    def _orthogonal_init(self) -> None:
        """SB3/CleanRL init: sqrt(2) gain in the trunk, 0.01 on the policy head, 1 on the value head."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(module.weight, math.sqrt(2))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.pi_head.weight, 0.01)
        nn.init.orthogonal_(self.vf_head.weight, 1.0)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (logits or Gaussian mean, value), both fp32."""
        if self.obs_rms is not None:
            obs = self.obs_rms(obs)
        pi_latent = self.pi_trunk(obs)
        vf_latent = pi_latent if self.vf_trunk is None else self.vf_trunk(obs)
        return self.pi_head(pi_latent).float(), self.vf_head(vf_latent).float().squeeze(-1)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Sample actions for a batch of observations: (actions, log-probs, values)."""
        out, value = self(obs)
        if self.continuous:
            actions = out if deterministic else out + torch.randn_like(out) * self.log_std.float().exp()
            logp, _ = gaussian_logp_entropy(out, self.log_std, actions)
        else:
            actions = categorical_sample(out, deterministic)
            logp, _ = categorical_logp_entropy(out, actions)
        return actions, logp, value

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs of stored actions, entropies and values, with gradients: (logp, entropy, value)."""
        out, value = self(obs)
        return (*self.logp_entropy(out, actions), value)

    def logp_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Distribution step, kept apart from ``forward`` so it can run outside autocast in fp32."""
        if self.continuous:
            return gaussian_logp_entropy(out, self.log_std, actions)
        return categorical_logp_entropy(out, actions)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        return self(obs)[1]

    def env_actions(self, actions: Tensor) -> np.ndarray:
        """What the env receives: Box actions clipped to its bounds, Discrete as integers."""
        if self.continuous:
            return torch.clamp(actions, self.action_low, self.action_high).cpu().numpy()
        return actions.cpu().numpy()
