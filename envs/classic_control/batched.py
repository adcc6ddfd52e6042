"""What the numpy-batched classic-control envs share: NEXT_STEP autoreset, the time limit, seeding,
state save/restore and ``rgb_array`` frames.

A subclass gives the physics (:meth:`_advance`), the start-state sampler (:meth:`_initial_states`) and the
observation (:meth:`_observe`); this class turns them into gymnasium 1.x vector-env semantics, the ones
``gymnasium.make_vec(..., vectorization_mode="sync")`` gives over the single env and its ``TimeLimit``.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv


class BatchedClassicEnv(VectorEnv):
    """N copies of one classic-control system whose state is a ``(state_size, num_envs)`` float64 array.

    After an env's episode ends (terminated, or ``max_episode_steps`` steps taken), the next ``step``
    ignores its action and returns its first observation of a new episode with reward 0 and
    terminated = truncated = False. ``reset`` options (start-state bounds) are kept for the later
    automatic resets too, as gymnasium's ``CartPoleVectorEnv`` keeps them.
    """

    single_env_class: type[gym.Env]  # gymnasium's own env: it draws the frames
    state_size: int

    def __init__(self, num_envs: int, max_episode_steps: int, render_mode: str | None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: allowed None or 'rgb_array'")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs={num_envs!r}: allowed 1 or more")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps!r}: allowed 1 or more")
        self.num_envs = int(num_envs)
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self.state: np.ndarray | None = None
        self.steps = np.zeros(self.num_envs, dtype=np.int32)
        self.prev_done = np.zeros(self.num_envs, dtype=bool)
        self._renderer: gym.Env | None = None

    # ------------------------------------------------------------------ subclass hooks
    def _set_reset_bounds(self, options: dict | None) -> None:
        raise NotImplementedError

    def _initial_states(self, n: int) -> np.ndarray:
        """``(state_size, n)`` start states drawn from ``self.np_random``."""
        raise NotImplementedError

    def _advance(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(next states, rewards, terminated) of every env from ``self.state``."""
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError

    def _load_into(self, env: gym.Env, i: int) -> None:
        """Give gymnasium's single env the state of env ``i`` (for drawing it)."""
        env.unwrapped.state = self.state[:, i].copy()

    def _on_reset(self, mask: np.ndarray) -> None:
        """Per-env bookkeeping a subclass clears when the envs in ``mask`` start a new episode."""

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._set_reset_bounds(options)
        self.state = self._initial_states(self.num_envs)
        self.steps[:] = 0
        self.prev_done[:] = False
        self._on_reset(np.ones(self.num_envs, dtype=bool))
        return self._observe(), {}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}.step called before reset")
        state, rewards, terminated = self._advance(actions)
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps
        done = self.prev_done
        if np.count_nonzero(done):  # (ndarray.any costs microseconds on arrays this small)
            state[:, done] = self._initial_states(int(done.sum()))
            self.steps[done] = 0
            rewards[done] = 0.0
            terminated[done] = False
            truncated[done] = False
            self._on_reset(done)
        self.state = state
        self.prev_done = terminated | truncated
        return self._observe(), rewards, terminated, truncated, {}

    def render(self) -> list[np.ndarray] | None:
        """One RGB frame per env, drawn by gymnasium's single env (which needs pygame)."""
        if self.render_mode is None or self.state is None:
            return None
        if self._renderer is None:
            self._renderer = self.single_env_class(render_mode="rgb_array")
        frames = []
        for i in range(self.num_envs):
            self._load_into(self._renderer, i)
            frames.append(self._renderer.render())
        return frames

    def close_extras(self, **kwargs: Any) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ resume
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: states, step counters, autoreset flags, RNG state."""
        if self.state is None:
            raise RuntimeError(f"{type(self).__name__}.get_state called before reset")
        return {"state": self.state.copy(), "steps": self.steps.copy(), "prev_done": self.prev_done.copy(),
                "rng_state": self.np_random.bit_generator.state, **self._extra_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        for key in ("state", "steps", "prev_done"):
            value = np.asarray(state[key])
            expected = (self.state_size, self.num_envs) if key == "state" else (self.num_envs,)
            if value.shape != expected:
                raise ValueError(f"state[{key!r}] has shape {value.shape}, expected {expected}")
        self.state = np.array(state["state"], dtype=np.float64, copy=True)
        self.steps = np.array(state["steps"], dtype=np.int32, copy=True)
        self.prev_done = np.array(state["prev_done"], dtype=bool, copy=True)
        self.np_random.bit_generator.state = state["rng_state"]
        self._set_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        pass
