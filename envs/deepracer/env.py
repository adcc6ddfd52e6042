"""The single-car DeepRacer environment (a one-car batch of the same simulator)."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from .car import DT, STEPS_PER_SECOND
from .sim import LAP_COMPLETE, STATUS_NAMES
from .spec import RaceSpec
from .vector_env import DeepRacerCore


class DeepRacerEnv(gym.Env):
    """A DeepRacer-like time trial: one car, one track.

    Keyword arguments: ``render_mode`` (None or "rgb_array", a top-down view) and the race options, the
    fields of :class:`envs.deepracer.spec.RaceSpec` (track, action space, sensor, reward function,
    episode length, training starts, simtrace log).

    ``info``: ``progress`` (percent of a lap), ``episode_status`` ("in_progress", "lap_complete",
    "off_track", "reversed", "immobilized", "time_up") and, on a completed lap, ``lap_time`` (seconds).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": STEPS_PER_SECOND}

    def __init__(self, *, render_mode: str | None = None, **options: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: allowed None or 'rgb_array'")
        self.core = DeepRacerCore(1, RaceSpec(**options))
        self.render_mode = render_mode
        self.action_space = self.core.actions.space()
        self.observation_space = self.core.observer.space
        self._idx = np.zeros(1, dtype=np.int64)

    @property
    def sim(self):
        return self.core.sim

    @property
    def track(self):
        return self.sim.track_of(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.sim.reseed(seed)
        self.sim.reset_cars(self._idx)
        return self.core.observe()[0], self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        core, sim = self.core, self.sim
        act = np.asarray(action)[None]
        steer, speed = core.actions.to_controls(act)
        reward = core.advance(steer, speed)
        core.log(act, reward, self._idx)
        return (core.observe()[0], float(reward[0]), bool(sim.terminated[0]), bool(sim.truncated[0]),
                self._info())

    def _info(self) -> dict:
        sim = self.sim
        info = {"progress": float(sim.progress[0]), "episode_status": STATUS_NAMES[sim.status[0]]}
        if sim.status[0] == LAP_COMPLETE:
            info["lap_time"] = float(sim.steps[0] * DT)
        return info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from .render import render_frame, status_text

        sim = self.sim
        return render_frame(self.track, sim.x, sim.y, sim.yaw,
                            text=status_text(sim.steps[0], sim.speed[0], sim.progress[0]))

    def params(self) -> dict:
        """The current DeepRacer ``params`` of the car (what the reward function last saw)."""
        return self.sim.params(0)

    def get_state(self) -> dict[str, Any]:
        return self.sim.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.sim.set_state(state)

    def close(self) -> None:
        self.core.close()
