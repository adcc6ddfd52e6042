"""Pendulum-v1 as one numpy-batched VectorEnv: gymnasium's ``PendulumEnv`` equations for all envs at once.

Same operations in the same order as gymnasium's ``step`` (the torque stays in the dtype it was given, as
there), so a batched env and a single env started from the same state agree to the last bit or so (the
single env's scalar ``x**2`` calls libm ``pow``, numpy's array ``x**2`` squares).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from gymnasium.envs.classic_control.pendulum import DEFAULT_X, DEFAULT_Y, PendulumEnv
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .batched import BatchedClassicEnv

MAX_SPEED, MAX_TORQUE, DT, M, L = 8, 2.0, 0.05, 1.0, 1.0  # PendulumEnv.__init__'s constants


def angle_normalize(x: np.ndarray) -> np.ndarray:
    """The angle in [-pi, pi), 0 upright (gymnasium's ``angle_normalize``)."""
    return ((x + np.pi) % (2 * np.pi)) - np.pi


class PendulumVectorEnv(BatchedClassicEnv):
    """``num_envs`` Pendulum-v1 envs stepped together in numpy; same spaces, equations (gravity ``g``,
    default 10.0), torque and speed clipping and cost as gymnasium's ``PendulumEnv``; truncation after
    ``max_episode_steps`` (``make_vec`` passes the registered 200).

    ``reset(options={"x_init": ..., "y_init": ...})`` changes the start-state bounds (default pi, 1.0).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": PendulumEnv.metadata["render_fps"],
                "autoreset_mode": AutoresetMode.NEXT_STEP}
    single_env_class = PendulumEnv
    state_size = 2

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 200, render_mode: str | None = None,
                 g: float = 10.0) -> None:
        super().__init__(num_envs, max_episode_steps, render_mode)
        self.g = g
        self._gravity_term = 3 * g / (2 * L)
        high = np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32)
        self.single_action_space = spaces.Box(low=-MAX_TORQUE, high=MAX_TORQUE, shape=(1,), dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.reset_high = np.array([DEFAULT_X, DEFAULT_Y])
        self.last_u = np.full(self.num_envs, np.nan)  # the last torque, for drawing; NaN before the first

    def _set_reset_bounds(self, options: dict | None) -> None:
        if options is None:
            self.reset_high = np.array([DEFAULT_X, DEFAULT_Y])
            return
        x = utils.verify_number_and_cast(options.get("x_init") if "x_init" in options else DEFAULT_X)
        y = utils.verify_number_and_cast(options.get("y_init") if "y_init" in options else DEFAULT_Y)
        self.reset_high = np.array([x, y])

    def _initial_states(self, n: int) -> np.ndarray:
        high = self.reset_high[:, None]
        return self.np_random.uniform(low=-high, high=high, size=(2, n))

    def _advance(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(actions)
        if a.shape != (self.num_envs, 1) or a.dtype.kind != "f":
            raise ValueError(f"actions of shape {a.shape} and dtype {a.dtype}: allowed floats of shape "
                             f"{(self.num_envs, 1)}")
        th, thdot = self.state
        u = np.minimum(np.maximum(a[:, 0], -MAX_TORQUE), MAX_TORQUE)  # np.clip, without its Python overhead
        self.last_u = u.astype(np.float64)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (self._gravity_term * np.sin(th) + 3.0 / (M * L**2) * u) * DT
        state = np.empty_like(self.state)
        state[1] = np.minimum(np.maximum(newthdot, -MAX_SPEED), MAX_SPEED)
        state[0] = th + state[1] * DT
        return state, -costs, np.zeros(self.num_envs, dtype=bool)

    def _on_reset(self, mask: np.ndarray) -> None:
        self.last_u[mask] = np.nan

    def _observe(self) -> np.ndarray:
        th, thdot = self.state
        obs = np.empty((self.num_envs, 3), dtype=np.float32)
        obs[:, 0], obs[:, 1], obs[:, 2] = np.cos(th), np.sin(th), thdot
        return obs

    def _load_into(self, env: gym.Env, i: int) -> None:
        super()._load_into(env, i)
        env.unwrapped.last_u = None if np.isnan(self.last_u[i]) else self.last_u[i]

    def _extra_state(self) -> dict[str, Any]:
        return {"reset_high": self.reset_high.copy(), "last_u": self.last_u.copy()}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.reset_high = np.array(state["reset_high"], dtype=np.float64, copy=True)
        self.last_u = np.array(state["last_u"], dtype=np.float64, copy=True)
