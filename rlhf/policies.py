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
from rlhf.fused_mlp import fused_tanh_mlps, linear_params, structure_version, tanh_mlp_linears, why_not_fusable
from rlhf.moe import MoE, MoESettings, auxiliary_loss, moe_layers
from rlhf.normalize import RunningMeanStd
from rlhf.precision import float32_region

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------- distributions

def categorical_sample(logits: Tensor, deterministic: bool = False) -> Tensor:
    """Sample (or argmax) actions from fp32 logits by Gumbel-max, which needs no probability table:
    -log(E) with E ~ Exp(1) is a standard Gumbel variable (the same as -log(-log U), in fewer ops)."""
    if deterministic:
        return logits.argmax(-1)
    return (logits - torch.empty_like(logits).exponential_().log_()).argmax(-1)


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


# ----------------------------------------------------------------------------- networks

def mlp(sizes: list[int], activation: type[nn.Module], moe: MoESettings | None = None) -> nn.Sequential:
    """Linear + activation per hidden layer; with ``moe`` each Linear becomes a mixture of Linear experts."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if moe is None:
            layer: nn.Module = nn.Linear(sizes[i], sizes[i + 1])
        else:
            layer = MoE([nn.Linear(sizes[i], sizes[i + 1]) for _ in range(moe.experts)], sizes[i], moe)
        layers += [layer, activation()]
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

    Rollouts call ``sample_actions`` (the policy network alone); the rollout is then scored, and the PPO
    update trains, through ``evaluate_actions`` - one function, so the stored log-probs are exactly what
    the first minibatch recomputes. Box actions come from a diagonal Gaussian with a state-independent
    log-std; the sample is stored unclipped and clipped only for the env (``env_actions``).

    ``fused`` ("auto" | "on" | "off"): run the actor and critic tanh MLPs as one autograd node
    (``rlhf.fused_mlp``). "auto" uses it when the trunk is a tanh MLP; "on" refuses any other trunk. At
    each call the fast path still steps aside, for that call only, under autocast, for another input dtype,
    or when a layer is no longer a plain ``nn.Linear`` (quantized rollout copies, QAT) or has a hook;
    ``fused_path(obs)`` names the reason.
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
        if cfg.moe is not None and (self.image or not cfg.hidden_sizes):
            raise ConfigError("policy.moe: Mixture-of-Experts layers replace MLP hidden layers, and this policy has "
                              f"{'a CNN trunk' if self.image else 'none (policy.hidden_sizes is empty)'}; "
                              "remove policy.moe or give it hidden layers")
        if self.image:
            in_dim = cfg.cnn_features
            make_trunk = lambda: NatureCNN(obs_space, cfg.cnn_features)  # noqa: E731
        else:
            in_dim = int(np.prod(obs_space.shape))
            moe = MoESettings(**cfg.moe.model_dump()) if cfg.moe is not None else None
            make_trunk = lambda: nn.Sequential(nn.Flatten(), mlp([in_dim, *cfg.hidden_sizes], act, moe))  # noqa: E731
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
        tanh_mlp = tanh_mlp_linears(self.pi_trunk) is not None and cfg.moe is None
        if cfg.fused == "on" and not tanh_mlp:
            what = "a CNN" if self.image else "a Mixture-of-Experts MLP" if cfg.moe else repr(cfg.activation) + " MLP"
            raise ConfigError(f"policy.fused = 'on': the fused path runs tanh MLPs only, and this trunk is "
                              f"{what}; use 'auto' or 'off'")
        self.fused = cfg.fused != "off" and tanh_mlp
        self._plan: tuple | None = None  # (structure_version, params, layers, reason) of the fused path
        self.moe_layers = moe_layers(self)  # a plain list: not registered twice as submodules

    def auxiliary_loss(self) -> Tensor | None:
        """The MoE layers' load-balancing (+ z) loss from the last forward; None without MoE layers."""
        return auxiliary_loss(self.moe_layers) if self.moe_layers else None

    def _orthogonal_init(self) -> None:
        """SB3/CleanRL init: sqrt(2) gain in the trunk, 0.01 on the policy head, 1 on the value head."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(module.weight, math.sqrt(2))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.pi_head.weight, 0.01)
        nn.init.orthogonal_(self.vf_head.weight, 1.0)

    # ------------------------------------------------------------------ forward passes
    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (logits or Gaussian mean, value), both fp32."""
        obs = self._normalize(obs)
        plan, _why = self._fused_plan(obs)
        if plan is not None:
            return self._fused_forward(obs, *plan)
        pi_latent = self.pi_trunk(obs)
        vf_latent = pi_latent if self.vf_trunk is None else self.vf_trunk(obs)
        return self.pi_head(pi_latent).float(), self.vf_head(vf_latent).float().squeeze(-1)

    def policy_out(self, obs: Tensor) -> Tensor:
        """``forward``'s first output (logits or Gaussian mean, fp32) without running the critic."""
        obs = self._normalize(obs)
        if self.vf_trunk is not None:
            plan, _why = self._fused_plan(obs)
            if plan is not None:
                return fused_tanh_mlps(plan[:1], obs.flatten(1))[0]
        return self.pi_head(self.pi_trunk(obs)).float()

    def _normalize(self, obs: Tensor) -> Tensor:
        return obs if self.obs_rms is None else self.obs_rms(obs)

    def fused_path(self, obs: Tensor) -> str | None:
        """None when this call can take the fused path; otherwise why it runs layer by layer."""
        return self._fused_plan(obs)[1]

    def _fused_plan(self, obs: Tensor) -> tuple[tuple[tuple[Tensor, ...], ...] | None, str | None]:
        """(parameter tuples of the fused networks, None) when this call can take the fused path, else
        (None, why). Separate actor and critic: ((actor W1, b1, ..., head), (critic ...)); shared trunk:
        ((trunk W1, b1, ...),).

        The layer walk is cached under ``structure_version()``, which any layer or parameter reassignment
        changes; hooks, autocast and the input dtype are checked on every call."""
        if not self.fused:
            return None, "policy.fused is off (or the trunk is not a tanh MLP)"
        if torch.is_autocast_enabled(obs.device.type):
            return None, "autocast is on"
        if self._plan is None or self._plan[0] != structure_version():
            self._plan = (structure_version(), *self._walk_layers())
        _, params, layers, reason = self._plan
        if reason is None:
            reason = why_not_fusable(layers)  # hooks may have been added since the walk
        if reason is None and obs.dtype != (dtype := layers[-2]._parameters["weight"].dtype):  # actor head's
            reason = f"input dtype {obs.dtype} is not the weights' {dtype}"
        return (None, reason) if reason else (params, None)

    def _walk_layers(self) -> tuple[tuple[tuple[Tensor, ...], ...] | None, list[nn.Module], str | None]:
        pi = tanh_mlp_linears(self.pi_trunk)
        vf = [] if self.vf_trunk is None else tanh_mlp_linears(self.vf_trunk)
        if pi is None or vf is None:
            return None, [], "a trunk is no longer a tanh MLP"
        layers = [*pi, *vf, self.pi_head, self.vf_head]
        reason = why_not_fusable(layers)
        if reason is not None:
            return None, layers, reason
        if self.vf_trunk is None:
            return (linear_params(pi),), layers, None
        return (linear_params([*pi, self.pi_head]), linear_params([*vf, self.vf_head])), layers, None

    def _apply(self, fn, *args, **kwargs):
        self._plan = None  # .to()/.float() may replace parameters without registering them
        return super()._apply(fn, *args, **kwargs)

    def _fused_forward(self, obs: Tensor, *params: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        obs = obs.flatten(1) if obs.dim() != 2 else obs
        if self.vf_trunk is None:  # shared trunk: tanh after its last layer too, then the two heads
            latent = fused_tanh_mlps(params, obs, tanh_last=True)[0] if params[0] else obs
            return self.pi_head(latent).float(), self.vf_head(latent).float().squeeze(-1)
        logits, value = fused_tanh_mlps(params, obs)
        return logits, value.squeeze(-1)

    # ------------------------------------------------------------------ what rollouts and PPO call
    def sample_actions(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions alone, from the policy network alone: the collector steps envs with this and scores the
        whole rollout afterwards in one batched ``evaluate_actions`` pass, far cheaper than per step."""
        with torch.no_grad():
            out = self.policy_out(obs)
            if self.continuous:
                return out if deterministic else out + torch.randn_like(out) * self.log_std.float().exp()
            return categorical_sample(out, deterministic)

    def evaluate_actions(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-prob of ``actions``, entropy, value), fp32, with gradients: the ``ppo_update`` protocol.

        The trunk may run under the caller's autocast; the distribution always runs in fp32.
        """
        out, value = self(obs)
        with float32_region():
            if self.continuous:
                logp, entropy = gaussian_logp_entropy(out, self.log_std, actions)
            else:
                logp, entropy = categorical_logp_entropy(out, actions)
        return logp, entropy, value.float()

    def env_actions(self, actions: Tensor) -> np.ndarray:
        """What the env receives: Box actions clipped to its bounds, Discrete as integers."""
        if self.continuous:
            return torch.clamp(actions, self.action_low, self.action_high).cpu().numpy()
        return actions.cpu().numpy()
