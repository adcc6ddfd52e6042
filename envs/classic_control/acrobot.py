"""Acrobot-v1 as one numpy-batched VectorEnv: gymnasium's ``AcrobotEnv`` ("book" dynamics, RK4 over
``dt``) computed for all envs at once.

The arithmetic is gymnasium's, operation for operation, with only exact simplifications (products with a
constant 1.0 dropped, products of constants computed once in Python as gymnasium's expressions compute
them), so a batched env and a single env started from the same state agree to the last bit or so: the
single env's scalar ``x**2`` calls libm ``pow``, numpy's array ``x**2`` squares, and the two can differ
in the last bit.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import utils
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .batched import BatchedClassicEnv

DT = AcrobotEnv.dt
L1, LC1, LC2 = AcrobotEnv.LINK_LENGTH_1, AcrobotEnv.LINK_COM_POS_1, AcrobotEnv.LINK_COM_POS_2
M1, M2, I1, I2 = AcrobotEnv.LINK_MASS_1, AcrobotEnv.LINK_MASS_2, AcrobotEnv.LINK_MOI, AcrobotEnv.LINK_MOI
G = 9.8
MAX_VEL_1, MAX_VEL_2 = AcrobotEnv.MAX_VEL_1, AcrobotEnv.MAX_VEL_2
TORQUES = np.array(AcrobotEnv.AVAIL_TORQUE, dtype=np.float64)
assert M2 == 1.0 and L1 * LC2 * 2 == 1.0, "the exact simplifications below assume gymnasium's link constants"

# gymnasium's constant sub-expressions, evaluated in the same order it evaluates them
_D1_CONST = M1 * LC1**2              # d1 = m1*lc1**2 + m2*(l1**2 + lc2**2 + 2*l1*lc2*cos(theta2)) + I1 + I2
_D1_INNER = L1**2 + LC2**2
_D2_CONST = LC2**2                   # d2 = m2*(lc2**2 + l1*lc2*cos(theta2)) + I2
_D2_COS = L1 * LC2
_PHI2 = M2 * LC2 * G                 # phi2 = m2*lc2*g*cos(theta1 + theta2 - pi/2)
_PHI1_A = -M2 * L1 * LC2             # -m2*l1*lc2*dtheta2**2*sin(theta2)
_PHI1_C = (M1 * LC1 + M2 * L1) * G   # (m1*lc1 + m2*l1)*g*cos(theta1 - pi/2)
_DD2_A = M2 * L1 * LC2               # m2*l1*lc2*dtheta1**2*sin(theta2)
_DD2_DEN = M2 * LC2**2 + I2          # m2*lc2**2 + I2 - d2**2/d1
_HALF_DT = (DT - 0) / 2.0            # rk4's dt2 over t = [0, dt]
_SIXTH_DT = (DT - 0) / 6.0


def derivatives(y: np.ndarray, torque: np.ndarray) -> np.ndarray:
    """``AcrobotEnv._dsdt`` (book dynamics) over arrays: d/dt of the ``(4, n)`` states
    (theta1, theta2, dtheta1, dtheta2)."""
    th1, th2, dth1, dth2 = y
    c2, s2 = np.cos(th2), np.sin(th2)
    d1 = _D1_CONST + (_D1_INNER + c2) + I1 + I2
    d2 = (_D2_CONST + _D2_COS * c2) + I2
    phi2 = _PHI2 * np.cos(th1 + th2 - np.pi / 2.0)
    phi1 = _PHI1_A * dth2**2 * s2 - dth2 * dth1 * s2 + _PHI1_C * np.cos(th1 - np.pi / 2) + phi2
    ddth2 = (torque + d2 / d1 * phi1 - _DD2_A * dth1**2 * s2 - phi2) / (_DD2_DEN - d2**2 / d1)
    ddth1 = -(d2 * ddth2 + phi1) / d1
    dy = np.empty_like(y)
    dy[:2], dy[2], dy[3] = y[2:], ddth1, ddth2
    return dy


def rk4_step(y: np.ndarray, torque: np.ndarray) -> np.ndarray:
    """One ``rk4(_dsdt, [*y, torque], [0, dt])`` step of the ``(4, n)`` states (the torque's derivative
    is 0, so it stays put)."""
    k1 = derivatives(y, torque)
    k2 = derivatives(y + _HALF_DT * k1, torque)
    k3 = derivatives(y + _HALF_DT * k2, torque)
    k4 = derivatives(y + DT * k3, torque)
    return y + _SIXTH_DT * (k1 + 2 * k2 + 2 * k3 + k4)


def wrap(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """gymnasium's ``wrap``: add or subtract the range until ``x`` lies in [low, high] (same roundings)."""
    diff = high - low
    while np.count_nonzero(over := x > high):
        x = np.where(over, x - diff, x)
    while np.count_nonzero(under := x < low):
        x = np.where(under, x + diff, x)
    return x


def observation(state: np.ndarray) -> np.ndarray:
    """``AcrobotEnv._get_ob`` of ``(4, n)`` states: cos and sin of both angles, both velocities; ``(n, 6)``
    float32. Trigonometry in the states' dtype, as there."""
    rows = np.empty((6, state.shape[1]), dtype=state.dtype)
    np.cos(state[:2], out=rows[0:4:2])
    np.sin(state[:2], out=rows[1:4:2])
    rows[4:] = state[2:]
    return np.ascontiguousarray(rows.T, dtype=np.float32)


class AcrobotVectorEnv(BatchedClassicEnv):
    """``num_envs`` Acrobot-v1 envs stepped together in numpy; same spaces, dynamics, rewards (-1 per step,
    0 on reaching the height) and termination as gymnasium's ``AcrobotEnv``; truncation after
    ``max_episode_steps`` (``make_vec`` passes the registered 500).

    ``reset(options={"low": ..., "high": ...})`` changes the start-state bounds (default -0.1, 0.1).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": AcrobotEnv.metadata["render_fps"],
                "autoreset_mode": AutoresetMode.NEXT_STEP}
    single_env_class = AcrobotEnv
    state_size = 4

    def __init__(self, num_envs: int = 1, max_episode_steps: int = 500, render_mode: str | None = None) -> None:
        super().__init__(num_envs, max_episode_steps, render_mode)
        high = np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32)
        self.single_observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = spaces.Discrete(3)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.low, self.high = -0.1, 0.1

    def _set_reset_bounds(self, options: dict | None) -> None:
        self.low, self.high = utils.maybe_parse_reset_bounds(options, -0.1, 0.1)

    def _initial_states(self, n: int) -> np.ndarray:
        # the single env keeps its start state as float32
        return self.np_random.uniform(self.low, self.high, size=(4, n)).astype(np.float32).astype(np.float64)

    def _advance(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu" or np.count_nonzero(a.astype(np.uint64) > 2):
            raise ValueError(f"actions={a!r}: allowed {self.num_envs} integers in 0..2")
        state = rk4_step(self.state, TORQUES[a])
        state[0], state[1] = wrap(state[0], -np.pi, np.pi), wrap(state[1], -np.pi, np.pi)
        state[2] = np.minimum(np.maximum(state[2], -MAX_VEL_1), MAX_VEL_1)
        state[3] = np.minimum(np.maximum(state[3], -MAX_VEL_2), MAX_VEL_2)
        terminated = -np.cos(state[0]) - np.cos(state[1] + state[0]) > 1.0
        return state, np.where(terminated, 0.0, -1.0), terminated

    def _observe(self) -> np.ndarray:
        obs = observation(self.state)
        fresh = self.steps == 0  # a start state is float32 in the single env, so are its cos and sin
        if np.count_nonzero(fresh):
            obs[fresh] = observation(self.state[:, fresh].astype(np.float32))
        return obs

    def _extra_state(self) -> dict[str, Any]:
        return {"reset_bounds": np.array([self.low, self.high])}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.low, self.high = (float(v) for v in state["reset_bounds"])
