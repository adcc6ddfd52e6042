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
    """Sample (or argmax) actions from fp32 logits by Gumbel-max, which needs no probability table:
    -log(E) with E ~ Exp(1) is a standard Gumbel variable (the same as -log(-log U), in fewer ops)."""
    if deterministic:
        return logits.argmax(-1)
    return (logits - torch.empty_like(logits).exponential_().log_()).argmax(-1)


def categorical_logp(logits: Tensor, actions: Tensor) -> Tensor:
    """Log-probability of ``actions`` alone: what rollouts need (the entropy would be thrown away)."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


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


# ----------------------------------------------------------------------------- fused tanh MLP

def _tanh_mlp_forward(x: Tensor, params: tuple[Tensor, ...], tanh_last: bool) -> list[Tensor]:
    """Activations ``[x, h1, ..., out]`` of Linear layers ``params = (W1, b1, W2, b2, ...)`` with tanh
    between them (and after the last one if ``tanh_last``).

    On large tensors tanh(z) is computed as 2 sigmoid(2z) - 1 with 2z straight out of addmm: aten::tanh goes
    through MKL's VML, which takes a slow scalar path on some CPUs (AMD), and this is the same function in
    under half the time on a (256, 64) batch. Small tensors keep aten::tanh, where the extra ops cost more.
    """
    hs, n = [x], len(params) // 2
    for i in range(n):
        w, b = params[2 * i], params[2 * i + 1]
        if i == n - 1 and not tanh_last:
            x = torch.addmm(b, x, w.t())
        elif x.shape[0] * w.shape[0] < 4096:
            x = torch.addmm(b, x, w.t()).tanh_()
        else:
            x = torch.sigmoid_(torch.addmm(b, x, w.t(), beta=2.0, alpha=2.0)).mul_(2.0).sub_(1.0)
        hs.append(x)
    return hs


class _TanhMLP(torch.autograd.Function):
    """Tanh MLPs (``_tanh_mlp_forward``) that read the same input - the actor and the critic - as one
    autograd node with a hand-written backward.

    Why: for 64-unit MLPs on a few hundred CPU samples, autograd's per-op bookkeeping and nn.Module calls
    cost as much as the arithmetic. One node for both networks instead of ~4 per layer makes a PPO
    gradient step markedly cheaper; the gradients are autograd's (tested to float rounding).
    """

    @staticmethod
    def forward(ctx, x: Tensor, tanh_last: bool, depths: tuple[int, ...], *params: Tensor) -> tuple[Tensor, ...]:
        outs, saved, start = [], [], 0
        for depth in depths:
            net = params[start:start + 2 * depth]
            start += 2 * depth
            hs = _tanh_mlp_forward(x, net, tanh_last)
            outs.append(hs[-1])
            saved += [*hs[:-1], *net[0::2], *hs[-1:]] if tanh_last else [*hs[:-1], *net[0::2]]
        ctx.tanh_last, ctx.depths = tanh_last, depths
        ctx.save_for_backward(*saved)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *out_grads: Tensor):
        saved, start = ctx.saved_tensors, 0
        x_grad, grads = None, []
        for depth, grad in zip(ctx.depths, out_grads):
            hs, weights = saved[start:start + depth], saved[start + depth:start + 2 * depth]
            if ctx.tanh_last:
                grad = torch.ops.aten.tanh_backward(grad, saved[start + 2 * depth])
            start += 2 * depth + ctx.tanh_last
            net_grads: list[Tensor | None] = [None] * (2 * depth)
            for i in reversed(range(depth)):
                # dW = g' h, computed as (h' g)' when the layer is wider than its input: same numbers, but
                # MKL is several times faster when the short side of the product comes first
                w = weights[i]
                wide = w.shape[1] < w.shape[0]
                net_grads[2 * i] = torch.mm(hs[i].t(), grad).t() if wide else torch.mm(grad.t(), hs[i])
                net_grads[2 * i + 1] = grad.sum(0)
                if i > 0:
                    grad = torch.ops.aten.tanh_backward(torch.mm(grad, w), hs[i])
                elif ctx.needs_input_grad[0]:
                    x_grad = torch.mm(grad, w) if x_grad is None else x_grad.addmm_(grad, w)
            grads += net_grads
        return x_grad, None, None, *grads


def tanh_mlp_linears(trunk: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``Sequential(Flatten, Sequential(Linear, Tanh, Linear, Tanh, ...))`` when every
    one is exactly ``nn.Linear`` with a bias and every activation exactly ``nn.Tanh``; None otherwise
    (another activation, a CNN trunk, or layers swapped for quantized / QAT ones)."""
    if not isinstance(trunk, nn.Sequential) or len(trunk) != 2 or not isinstance(trunk[1], nn.Sequential):
        return None
    layers = list(trunk[1])
    linears = layers[0::2]
    if (any(type(a) is not nn.Tanh for a in layers[1::2])
            or any(type(m) is not nn.Linear or m.bias is None for m in linears)):
        return None
    return linears


def linear_params(linears: list[nn.Module]) -> tuple[Tensor, ...]:
    return tuple(t for layer in linears for t in (layer.weight, layer.bias))


def fused_tanh_mlps(nets: tuple[tuple[Tensor, ...], ...], x: Tensor, tanh_last: bool = False) -> tuple[Tensor, ...]:
    """Tanh MLPs on the same input, each given as its Linear layers ``(W1, b1, W2, b2, ...)``, with tanh
    between layers (and after the last if ``tanh_last``): one ``_TanhMLP`` autograd node when a gradient
    is wanted, plain ops otherwise (rollouts)."""
    params = tuple(t for net in nets for t in net)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _TanhMLP.apply(x, tanh_last, tuple(len(net) // 2 for net in nets), *params)
    return tuple(_tanh_mlp_forward(x, net, tanh_last)[-1] for net in nets)


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
        self.fused = True  # run plain tanh MLPs as one autograd node each (see _TanhMLP); False: layer by layer
        self._plan, self._plan_key = None, None

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
        fused = self._fused_forward(obs) if self.fused else None
        if fused is not None:
            return fused
        pi_latent = self.pi_trunk(obs)
        vf_latent = pi_latent if self.vf_trunk is None else self.vf_trunk(obs)
        return self.pi_head(pi_latent).float(), self.vf_head(vf_latent).float().squeeze(-1)

    def _fused_plan(self) -> tuple | None:
        """(pi params, vf params) for ``fused_tanh_mlps`` - trunk and head as one network each; or
        (trunk params, None) for a shared trunk - or None when some layer is not a plain Linear / Tanh.
        Cached with the exact module and parameter objects it was built from, so swapping a layer
        (as rlhf.precision does in its copies) or a parameter rebuilds it."""
        if self._plan_key is not None and all(d.get(k) is m for d, k, m in self._plan_key[0]) \
                and all(getattr(m, "weight", None) is w for m, w in self._plan_key[1]):
            return self._plan
        pi = tanh_mlp_linears(self.pi_trunk)
        vf = pi if self.vf_trunk is None else tanh_mlp_linears(self.vf_trunk)
        plan = None
        if pi is not None and vf is not None and type(self.pi_head) is nn.Linear and type(self.vf_head) is nn.Linear:
            if self.vf_trunk is None:
                plan = (linear_params(pi), None)
            else:
                plan = (linear_params([*pi, self.pi_head]), linear_params([*vf, self.vf_head]))
        slots = [(parent._modules, key, child) for parent in self.modules() for key, child in parent._modules.items()]
        weights = [(m, m.weight) for _, _, m in slots if isinstance(getattr(m, "weight", None), Tensor)]
        self._plan, self._plan_key = plan, (slots, weights)
        return plan

    def _apply(self, fn, *args, **kwargs):
        self._plan_key = None  # .to() / .double() may swap parameter objects
        return super()._apply(fn, *args, **kwargs)

    def _fused_forward(self, obs: Tensor) -> tuple[Tensor, Tensor] | None:
        """``forward`` with each network (trunk + head) as one ``_TanhMLP`` node; None where that does not
        apply: autocast on, input dtype not the weights', or any layer that is not a plain Linear / Tanh.
        Per-layer forward hooks do not run on this path; set ``policy.fused = False`` if you need them."""
        plan = self._fused_plan()
        if plan is None or torch.is_autocast_enabled(obs.device.type):
            return None
        pi, vf = plan
        if pi and obs.dtype != pi[0].dtype:
            return None
        if obs.dim() != 2:
            obs = obs.flatten(1)
        if vf is None:  # shared trunk: tanh after its last layer too, then the two heads
            latent = fused_tanh_mlps((pi,), obs, tanh_last=True)[0] if pi else obs
            return self.pi_head(latent).float(), self.vf_head(latent).float().squeeze(-1)
        logits, value = fused_tanh_mlps((pi, vf), obs)
        return logits, value.squeeze(-1)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Sample actions for a batch of observations: (actions, log-probs, values)."""
        if torch.is_grad_enabled():  # rollouts already run without grad: skip the no_grad context there
            with torch.no_grad():
                return self.act(obs, deterministic)
        out, value = self(obs)
        actions = self._sample(out, deterministic)
        if self.continuous:
            logp, _ = gaussian_logp_entropy(out, self.log_std, actions)
        else:
            logp = categorical_logp(out, actions)
        return actions, logp, value

    def sample_actions(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions alone, from the policy network alone. The collector steps envs with this and takes the
        log-probs and values of the whole rollout afterwards in one batched pass, which costs far less
        than computing them (and running the critic) at every step."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.sample_actions(obs, deterministic)
        return self._sample(self.policy_out(obs), deterministic)

    def _sample(self, out: Tensor, deterministic: bool) -> Tensor:
        if self.continuous:
            return out if deterministic else out + torch.randn_like(out) * self.log_std.float().exp()
        return categorical_sample(out, deterministic)

    def policy_out(self, obs: Tensor) -> Tensor:
        """``forward``'s first output (logits or Gaussian mean, fp32) without running the critic."""
        if self.obs_rms is not None:
            obs = self.obs_rms(obs)
        plan = self._fused_plan() if self.fused else None
        if (plan is not None and plan[1] is not None and obs.dtype == plan[0][0].dtype
                and not torch.is_autocast_enabled(obs.device.type)):
            return fused_tanh_mlps((plan[0],), obs if obs.dim() == 2 else obs.flatten(1))[0]
        return self.pi_head(self.pi_trunk(obs)).float()

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
