"""The numpy-batched Acrobot-v1 and Pendulum-v1 envs against gymnasium's single envs, and their wiring.

Side by side: N batched envs and N gymnasium single envs (``gym.make``, so with its ``TimeLimit``). Before
every step each single env is given its batched twin's state, so each step is compared from the same
state: the two sides differ only by the last bit of a few powers (gymnasium's scalar ``x**2`` calls libm
``pow``, numpy's array ``x**2`` squares), and Acrobot is chaotic enough to grow such bits over hundreds of
steps. Each step's next states must agree to 1e-12, rewards to 1e-12 relative (1e-9 absolute: a float32
term), float32 observations to 1e-6, flags exactly; episode ends and automatic resets come from each
side's own bookkeeping.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from envs.classic_control import AcrobotVectorEnv, PendulumVectorEnv

N = 6


def acrobot_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Envs 0-1 random (they run into the time limit); the others mostly pump energy (they reach the
    height, so episodes terminate)."""
    pump = np.where(obs[:, 5] > 0, 2, 0)
    actions = np.where(rng.random(len(obs)) < 0.9, pump, rng.integers(0, 3, len(obs)))
    actions[:2] = rng.integers(0, 3, 2)
    return actions


def pendulum_actions(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random torques, some beyond the +-2 limit (the env clips them)."""
    return rng.uniform(-3.0, 3.0, size=(len(obs), 1)).astype(np.float32)


CASES = {
    "Acrobot-v1": (AcrobotVectorEnv, acrobot_actions, 150, 700),
    "Pendulum-v1": (PendulumVectorEnv, pendulum_actions, 200, 450),
}


def single_obs(env: gym.Env) -> np.ndarray:
    base = env.unwrapped
    return base._get_ob() if isinstance(base, gym.envs.classic_control.AcrobotEnv) else base._get_obs()


def give_state(env: gym.Env, state: np.ndarray, fresh: bool) -> None:
    """Set a single env's state; a fresh Acrobot start state is float32 there, as its reset leaves it."""
    is_acrobot = isinstance(env.unwrapped, gym.envs.classic_control.AcrobotEnv)
    env.unwrapped.state = state.astype(np.float32) if fresh and is_acrobot else state.copy()


@pytest.mark.parametrize("env_id", CASES)
def test_steps_like_gymnasium_single_envs(env_id):
    cls, policy, limit, steps = CASES[env_id]
    batched = cls(num_envs=N, max_episode_steps=limit)
    singles = [gym.make(env_id, max_episode_steps=limit) for _ in range(N)]
    obs, _ = batched.reset(seed=123)
    for i, env in enumerate(singles):
        env.reset(seed=i)
        give_state(env, batched.state[:, i], fresh=True)
        np.testing.assert_array_equal(single_obs(env), obs[i])
    rng = np.random.default_rng(0)
    done = np.zeros(N, dtype=bool)
    counts = {"terminated": 0, "truncated": 0, "autoreset": 0}
    for t in range(steps):
        actions = policy(obs, rng)
        before = batched.state.copy()
        obs, rewards, terminated, truncated, info = batched.step(actions)
        assert info == {} and obs.dtype == np.float32 and obs.shape == (N, batched.single_observation_space.shape[0])
        for i, env in enumerate(singles):
            if done[i]:  # NEXT_STEP autoreset: the action is ignored, the new episode's first obs comes back
                env.reset()
                give_state(env, batched.state[:, i], fresh=True)
                expected = (single_obs(env), 0.0, False, False)
                np.testing.assert_array_equal(obs[i], expected[0])  # same start state: same bits
                counts["autoreset"] += 1
            else:
                give_state(env, before[:, i], fresh=False)
                expected = env.step(actions[i])[:4]
                np.testing.assert_allclose(np.asarray(env.unwrapped.state, dtype=np.float64), batched.state[:, i],
                                           rtol=1e-12, atol=1e-12, err_msg=f"step {t}, env {i}: state")
            s_obs, s_reward, s_term, s_trunc = expected
            where = f"step {t}, env {i}"
            np.testing.assert_allclose(obs[i], s_obs, rtol=0, atol=1e-6, err_msg=where)
            # abs: Pendulum's 0.001 * u**2 is float32 there, its pow and numpy's square may differ in the last bit
            assert rewards[i] == pytest.approx(s_reward, rel=1e-12, abs=1e-9), where
            assert (bool(terminated[i]), bool(truncated[i])) == (bool(s_term), bool(s_trunc)), where
        counts["terminated"] += int(terminated.sum())
        counts["truncated"] += int(truncated.sum())
        done = terminated | truncated
    assert counts["truncated"] >= 2 and counts["autoreset"] >= 4, counts
    if env_id == "Acrobot-v1":
        assert counts["terminated"] >= 5, counts  # the "reached the height" rule was exercised


@pytest.mark.parametrize("env_id", CASES)
def test_spaces_are_gymnasiums(env_id):
    cls = CASES[env_id][0]
    batched, single = cls(num_envs=N), gym.make(env_id)
    assert batched.single_observation_space == single.observation_space
    assert batched.single_action_space == single.action_space
    assert batched.observation_space == batch_space(single.observation_space, N)
    assert batched.action_space == batch_space(single.action_space, N)
    assert batched.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


@pytest.mark.parametrize("env_id", CASES)
def test_a_seeded_reset_is_reproducible(env_id):
    cls, policy = CASES[env_id][:2]

    def run(env, seed):
        obs, _ = env.reset(seed=seed)
        rng, out = np.random.default_rng(1), [obs]
        for _ in range(250):  # past the first time limit, so automatic resets draw from the seeded generator
            obs, rewards, *_ = env.step(policy(obs, rng))
            out += [obs, rewards]
        return np.concatenate([o.ravel() for o in out])

    env = cls(num_envs=N, max_episode_steps=100)
    first = run(env, 7)
    np.testing.assert_array_equal(run(env, 7), first)
    np.testing.assert_array_equal(run(cls(num_envs=N, max_episode_steps=100), 7), first)
    assert not np.array_equal(run(env, 8)[:N * 4], first[:N * 4])


@pytest.mark.parametrize("env_id", CASES)
def test_start_states_follow_gymnasium_and_reset_options(env_id):
    cls = CASES[env_id][0]
    env = cls(num_envs=5000)
    obs, _ = env.reset(seed=0)
    single = gym.make(env_id)
    single.reset(seed=0)
    for i in range(env.num_envs):  # to the bit (Acrobot's float32 start state has float32 cos and sin)
        give_state(single, env.state[:, i], fresh=True)
        np.testing.assert_array_equal(single_obs(single), obs[i])
    if env_id == "Acrobot-v1":
        assert np.abs(env.state).max() <= 0.1 and np.array_equal(env.state, env.state.astype(np.float32))
        env.reset(seed=0, options={"low": -0.5, "high": 0.5})
        assert 0.4 < np.abs(env.state).max() <= 0.5
    else:
        assert np.abs(env.state[0]).max() <= np.pi and np.abs(env.state[1]).max() <= 1.0
        assert np.abs(env.state[0]).max() > 3.0
        env.reset(seed=0, options={"x_init": 0.5, "y_init": 0.25})
        assert 0.45 < np.abs(env.state[0]).max() <= 0.5 and np.abs(env.state[1]).max() <= 0.25


def test_pendulum_gravity_is_a_kwarg():
    light, heavy = PendulumVectorEnv(num_envs=1), PendulumVectorEnv(num_envs=1, g=20.0)
    for env in (light, heavy):
        env.reset(seed=0)
        env.state[:] = [[1.0], [0.0]]  # tilted, at rest
    fall = [env.step(np.zeros((1, 1), dtype=np.float32))[0][0, 2] for env in (light, heavy)]
    assert fall[0] == pytest.approx(10.0 * 1.5 * np.sin(1.0) * 0.05) and fall[1] == pytest.approx(2 * fall[0])


@pytest.mark.parametrize("cls", [AcrobotVectorEnv, PendulumVectorEnv])
def test_a_bad_render_mode_or_action_is_refused(cls):
    with pytest.raises(ValueError, match=r"render_mode='human': allowed None or 'rgb_array'"):
        cls(num_envs=2, render_mode="human")
    env = cls(num_envs=2)
    env.reset(seed=0)
    bad = np.array([0, 3]) if cls is AcrobotVectorEnv else np.zeros((2,), dtype=np.float32)
    with pytest.raises(ValueError, match="actions"):
        env.step(bad)


@pytest.mark.parametrize("env_id", CASES)
def test_state_survives_a_checkpoint_round_trip(env_id, tmp_path):
    from rlhf.env_state import get_env_state, set_env_state

    cls, policy = CASES[env_id][:2]
    env = cls(num_envs=N, max_episode_steps=30)
    obs, _ = env.reset(seed=3, options=None)
    rng = np.random.default_rng(0)
    for _ in range(45):  # mid-episode, some envs just reset
        obs, *_ = env.step(policy(obs, rng))
    torch.save(get_env_state(env), tmp_path / "state.pt")
    acts = [policy(obs, rng) for _ in range(40)]
    first = [env.step(a)[:4] for a in acts]
    other = cls(num_envs=N, max_episode_steps=30)
    set_env_state(other, torch.load(tmp_path / "state.pt", weights_only=True))
    for a, expected in zip(acts, first):
        for got, want in zip(other.step(a)[:4], expected):
            np.testing.assert_array_equal(got, want)


def test_a_sync_checkpoint_is_refused_by_the_batched_env():
    from rlhf.env_state import get_env_state, set_env_state
    from rlhf.errors import ConfigError

    sync = gym.make_vec("Acrobot-v1", num_envs=2, vectorization_mode="sync")
    sync.reset(seed=0)
    with pytest.raises(ConfigError, match="checkpoint holds the state of a SyncVectorEnv.*AcrobotVectorEnv"):
        set_env_state(AcrobotVectorEnv(num_envs=2), get_env_state(sync))


@pytest.mark.parametrize("env_id,cls,limit", [("Acrobot-v1", AcrobotVectorEnv, 500),
                                              ("Pendulum-v1", PendulumVectorEnv, 200)])
def test_make_vec_env_uses_them_for_native_and_auto_only(env_id, cls, limit):
    from rlhf.config import EnvConfig
    from rlhf.errors import ConfigError
    from rlhf.vec_env import make_vec_env

    for mode in ("native", "auto"):
        envs = make_vec_env(EnvConfig(id=env_id, num_envs=3, vectorization=mode))
        assert type(envs) is cls and envs.num_envs == 3 and envs.max_episode_steps == limit
        assert envs.spec.id == env_id
    assert isinstance(make_vec_env(EnvConfig(id=env_id, num_envs=3, vectorization="sync")), SyncVectorEnv)
    assert gym.registry[env_id].vector_entry_point is None  # gymnasium's registry is left as it was
    with pytest.raises(ConfigError, match="render_mode='human': allowed None or 'rgb_array'"):
        make_vec_env(EnvConfig(id=env_id, vectorization="native", kwargs={"render_mode": "human"}))
    if env_id == "Pendulum-v1":
        assert make_vec_env(EnvConfig(id=env_id, vectorization="native", kwargs={"g": 9.81})).g == 9.81
