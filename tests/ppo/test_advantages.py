"""GAE and statistics against hand-computed values and Stable-Baselines3's RolloutBuffer."""
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlhf.ppo import explained_variance, gae, masked_mean, masked_var, masked_whiten, whiten


def test_gae_hand_computed_single_env():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.4], [0.3]])
    nv = torch.tensor([[0.4], [0.3], [0.2]])
    zeros = torch.zeros(3, 1)
    gamma, lam = 0.9, 0.8
    d = [1 + 0.9 * 0.4 - 0.5, 1 + 0.9 * 0.3 - 0.4, 1 + 0.9 * 0.2 - 0.3]
    a2 = d[2]
    a1 = d[1] + gamma * lam * a2
    a0 = d[0] + gamma * lam * a1
    adv, ret = gae(r, v, nv, zeros, zeros, gamma, lam)
    assert adv.squeeze(1).tolist() == pytest.approx([a0, a1, a2])
    assert torch.allclose(ret, adv + v)


def test_gae_termination_vs_truncation():
    r, v = torch.ones(2, 1), torch.zeros(2, 1)
    nv = torch.full((2, 1), 10.0)
    done = torch.tensor([[True], [False]])
    terminated = torch.tensor([[True], [False]])
    adv_term, _ = gae(r, v, nv, terminated, done, 1.0, 1.0)
    adv_trunc, _ = gae(r, v, nv, torch.zeros(2, 1), done, 1.0, 1.0)
    assert adv_term[0, 0].item() == pytest.approx(1.0)  # no bootstrap, and no leak from step 1
    assert adv_trunc[0, 0].item() == pytest.approx(11.0)  # bootstrap V(final obs) = 10


def test_gae_matches_sb3_rollout_buffer():
    from stable_baselines3.common.buffers import RolloutBuffer

    T, N, gamma, lam = 16, 3, 0.97, 0.9
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    last_values = rng.normal(size=N).astype(np.float32)
    dones = rng.random((T, N)) < 0.2  # all terminations here; SB3 encodes truncation in the reward

    buf = RolloutBuffer(T, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), gamma=gamma, gae_lambda=lam, n_envs=N)
    prev_done = np.zeros(N, dtype=bool)
    for t in range(T):
        # SB3 stores episode_start = the done flag of the previous step
        buf.add(np.zeros((N, 1)), np.zeros((N, 1)), rewards[t], prev_done, torch.tensor(values[t]), torch.zeros(N))
        prev_done = dones[t]
    buf.compute_returns_and_advantage(torch.tensor(last_values), dones[-1])

    next_values = torch.cat([torch.tensor(values[1:]), torch.tensor(last_values)[None]])
    d = torch.tensor(dones)
    adv, ret = gae(torch.tensor(rewards), torch.tensor(values), next_values, d, d, gamma, lam)
    assert np.allclose(adv.numpy(), buf.advantages, atol=1e-5)
    assert np.allclose(ret.numpy(), buf.returns, atol=1e-5)


def test_masked_statistics():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_var(x, m).item() == pytest.approx(1.0)
    w = masked_whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(w, m).item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(masked_whiten(x[:3]), whiten(x[:3]), atol=1e-6)


def test_whiten_is_sb3_normalisation():
    a = torch.randn(64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(whiten(a), (a - a.mean()) / (a.std() + 1e-8))


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)
