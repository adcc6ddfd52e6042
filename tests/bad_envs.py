"""Envs that misbehave on purpose (NaN/inf/overflow at a chosen step, or a raise), registered on import.

Used as ``env.id=bad_envs:BadEnv-v0`` (the module is importable from tests/, and by subprocesses run
with ``PYTHONPATH=tests``).
"""
import gymnasium as gym
import numpy as np


class BadEnv(gym.Env):
    """A 4-number observation and reward 1 per step; episodes last 10 steps. From its ``bad_step``-th
    step on (counted over the env's life, resets included), ``field`` ("obs" or "reward") is ``value``."""

    def __init__(self, bad_step: int = -1, field: str = "obs", value: float = float("nan"),
                 raise_on_reset: bool = False, dtype: str = "float32") -> None:
        self.observation_space = gym.spaces.Box(-10.0, 10.0, (4,), dtype=np.dtype(dtype))
        self.action_space = gym.spaces.Discrete(2)
        self.bad_step, self.field, self.value, self.raise_on_reset = bad_step, field, float(value), raise_on_reset
        self.steps, self.t = 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.raise_on_reset:
            raise RuntimeError("the simulator is not running")
        self.t = 0
        return np.full(4, 0.5, dtype=self.observation_space.dtype), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        bad = 0 <= self.bad_step <= self.steps
        obs = np.full(4, 0.5, dtype=self.observation_space.dtype)
        if bad and self.field == "obs":
            obs[2] = self.value
        reward = self.value if bad and self.field == "reward" else 1.0
        return obs, reward, False, self.t >= 10, {}


if "BadEnv-v0" not in gym.registry:
    gym.register("BadEnv-v0", entry_point=BadEnv)
