"""The single-car DeepRacer environment (a one-car batch of the same simulator)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from .actions import DEFAULT_SPEED_RANGE, DEFAULT_STEERING_RANGE
from .builtin_tracks import DEFAULT_TRACK
from .car import DT, STEPS_PER_SECOND
from .rewards import RewardSpec
from .sim import LAP_COMPLETE, STATUS_NAMES
from .track_registry import TrackLike
from .vector_env import DEFAULT_MAX_EPISODE_STEPS, DeepRacerCore


class DeepRacerEnv(gym.Env):
    """A DeepRacer-like time trial: one car, one track.

    Args:
        track: built-in name ("oval", "circuit" (default), "technical"), "random" (a new generated track
            every episode), a DeepRacer ``.npy`` path, an (N, 6) array or a :class:`Track`.
        action_space_type: "discrete" (default) or "continuous".
        actions: discrete actions as [{"steering_angle": deg, "speed": m/s}, ...]; default the console's
            5 steering angles (-30..30) x 2 speeds (0.5, 1.0).
        model_metadata: path to a DeepRacer model_metadata.json; its action space overrides the above.
        steering_range, speed_range: (low, high) of the continuous action space; a Box [-1, 1]^2 action
            [steering, speed] is scaled linearly onto them.
        observation: "features" (default), "lidar" or "camera".
        lidar_rays, lidar_range, lidar_fov: lidar fan (default 19 rays, 2 m, 180 degrees).
        reward_function: callable ``reward_function(params)``, path to a .py defining it, or a built-in
            name ("progress_speed" (default), "follow_center_line", "stay_inside_borders",
            "prevent_zigzag").
        max_episode_steps: truncate (episode_status "time_up") after this many steps (15 per second).
            Note: ``gym.make`` keeps its own ``max_episode_steps`` argument for gymnasium's TimeLimit
            wrapper (truncated=True, status stays "in_progress"); ``make_vec`` and direct construction
            pass it here.
        training: True = each episode starts 5 % of a lap further round (DeepRacer training);
            False = evaluation, every episode starts on the start line.
        simtrace_path: write a DeepRacer simtrace CSV of every step there.
        render_mode: None or "rgb_array" (top-down view).

    ``info``: ``progress`` (percent of a lap), ``episode_status`` ("in_progress", "lap_complete",
    "off_track", "reversed", "immobilized", "time_up") and, on a completed lap, ``lap_time`` (seconds).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": STEPS_PER_SECOND}

    def __init__(self, track: TrackLike = DEFAULT_TRACK, action_space_type: str = "discrete",
                 actions: Sequence[dict] | None = None, model_metadata: str | Path | None = None,
                 steering_range: Sequence[float] = DEFAULT_STEERING_RANGE,
                 speed_range: Sequence[float] = DEFAULT_SPEED_RANGE, observation: str = "features",
                 lidar_rays: int = 19, lidar_range: float = 2.0, lidar_fov: float = 180.0,
                 reward_function: RewardSpec | None = None, max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
                 training: bool = True, simtrace_path: str | Path | None = None,
                 render_mode: str | None = None):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: allowed None or 'rgb_array'")
        self.core = DeepRacerCore(1, track, action_space_type, actions, model_metadata, steering_range,
                                  speed_range, observation, lidar_rays, lidar_range, lidar_fov,
                                  reward_function, max_episode_steps, training, simtrace_path)
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
        sim.step(steer, speed)
        reward = core.rewards()
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
        from .render import render_frame

        sim = self.sim
        return render_frame(self.track, sim.x, sim.y, sim.yaw)

    def params(self) -> dict:
        """The current DeepRacer ``params`` of the car (what the reward function last saw)."""
        return self.sim.params(0)

    def get_state(self) -> dict[str, Any]:
        return self.sim.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.sim.set_state(state)

    def close(self) -> None:
        self.core.close()
