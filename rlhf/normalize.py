"""Running statistics for normalising observations and rewards (Stable-Baselines3's VecNormalize ideas)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


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
        self.update_from_moments(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    @torch.no_grad()
    def update_from_moments(self, batch_mean: Tensor, batch_var: Tensor, n: int | float) -> None:
        """Fold in a batch of ``n`` samples given its mean and (population) variance."""
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean.to(x.dtype), torch.sqrt(self.var + self.eps).to(x.dtype)
        return torch.clamp((x - mean) / std, -self.clip, self.clip)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (Stable-Baselines3's VecNormalize)."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rewards
        self.rms.update(torch.as_tensor(self.ret))
        self.ret[dones] = 0.0
        return np.clip(rewards / np.sqrt(float(self.rms.var) + 1e-8), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "ret": torch.as_tensor(self.ret)}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.ret = state["ret"].numpy().copy()
