"""A policy class the library has never seen, trained on CartPole-v1 by ``ppo_update`` alone.

This is the "bring your own policy" contract: anything with ``sample_actions``, ``env_actions`` and
``evaluate_actions`` plugs into the collector, the scorer and the update.
"""
import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlhf.ppo import gae  # noqa: F401  (the public math is importable from the package)
from rlhf.ppo.update import PPOSettings, ppo_update
from rlhf.rollout import Collector, make_rollout, score_rollout


class TwoHeadedMLP(nn.Module):
    """A ReLU actor and a ReLU critic: nothing from rlhf.policies."""

    def __init__(self, obs_dim: int, n_actions: int) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_actions))
        self.critic = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, math.sqrt(2))
                nn.init.zeros_(m.bias)
        nn.init.orthogonal_(self.actor[-1].weight, 0.01)
        nn.init.orthogonal_(self.critic[-1].weight, 1.0)

    @torch.no_grad()
    def sample_actions(self, obs, deterministic=False):
        logits = self.actor(obs)
        return logits.argmax(-1) if deterministic else torch.distributions.Categorical(logits=logits).sample()

    def env_actions(self, actions):
        return actions.numpy()

    def evaluate_actions(self, obs, actions):
        dist = torch.distributions.Categorical(logits=self.actor(obs))
        return dist.log_prob(actions), dist.entropy(), self.critic(obs).squeeze(-1)


def test_custom_policy_trains_cartpole_through_ppo_update():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    envs = gym.make_vec("CartPole-v1", num_envs=8, vectorization_mode="vector_entry_point")
    policy = TwoHeadedMLP(4, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3, eps=1e-5)
    collector, rollout, device = Collector(envs, torch.device("cpu")), make_rollout(envs, 32), torch.device("cpu")
    collector.reset(seed=0)
    total, step = 100_000, 0
    while step < total:  # rl-zoo's CartPole settings, linear decay of the learning rate and clip range
        frac = 1.0 - step / total
        last_obs = collector.collect(policy, rollout, n_steps=32)
        step += 32 * 8
        with torch.no_grad():
            last_value = score_rollout(policy, rollout, last_obs, device)
        batch = rollout.batch(last_value, gamma=0.98, lam=0.8)
        optimizer.param_groups[0]["lr"] = 1e-3 * frac
        ppo_update(policy, optimizer, batch, PPOSettings(epochs=20, batch_size=256, clip_range=0.2 * frac))
    envs.close()

    eval_env = gym.make_vec("CartPole-v1", num_envs=1, vectorization_mode="vector_entry_point")
    evaluator = Collector(eval_env, device, stats_window=10)
    evaluator.reset(seed=10_000)
    for _ in range(10):
        evaluator.collect(policy, make_rollout(eval_env, 512), episodes=1, deterministic=True)
    mean_return = float(np.mean(evaluator.stats.returns))
    assert mean_return >= 475, mean_return
