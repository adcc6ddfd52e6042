"""The native batched DeepRacer environment: N cars stepped together in numpy.

``gymnasium.make_vec("DeepRacer-v0", num_envs=N, vectorization_mode="vector_entry_point", **kwargs)``
returns this class. It follows gymnasium 1.x NEXT_STEP autoreset: after a car's episode ends, the next
``step`` ignores that car's action and returns its first observation of a new episode with reward 0 and
terminated = truncated = False.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .actions import action_spec_from_kwargs, load_model_metadata
from .car import DT, STEPS_PER_SECOND
from .finite import first_bad
from .guard import Guard, UserCodeInterrupted
from .metadata import MetadataWarning
from .observations import make_observer
from .rewards import NonFiniteRewardError, call_reward, load_reward_function
from .sim import LAP_COMPLETE, STATUS_ARRAY, RaceSim
from .simtrace import SimTraceWriter
from .spec import RaceSpec


class DeepRacerCore:
    """Everything both envs share: simulator, action mapping, sensor, reward and simtrace logging.

    Args:
        num_cars: cars simulated together.
        spec: the race's options (the envs' keyword arguments).
        seed: seed of the simulator's generator (random tracks draw from it); ``reset(seed=...)`` reseeds.
    """

    def __init__(self, num_cars: int, spec: RaceSpec, seed: int | None = None):
        meta = load_model_metadata(spec.model_metadata) if spec.model_metadata is not None else {}
        self.actions = action_spec_from_kwargs(spec.action_space_type, spec.actions, spec.steering_range,
                                               spec.speed_range, spec.model_metadata)
        self.sim = RaceSim(num_cars, spec.track, training=spec.training,
                           max_episode_steps=spec.max_episode_steps, seed=seed)
        self.observer = make_observer(choose_observation(spec.observation, meta), self.actions.max_speed,
                                      spec.lidar_rays, spec.lidar_range, spec.lidar_fov)
        self.reward_fn = load_reward_function(spec.reward_function, spec.reward_timeout_s, spec.user_code)
        self.vectorized_reward = getattr(self.reward_fn, "vectorized", None)
        self.guard = Guard(spec.reward_timeout_s) if self.vectorized_reward is None else None
        self.simtrace = SimTraceWriter(spec.simtrace_path) if spec.simtrace_path is not None else None

    def observe(self) -> np.ndarray:
        return self.observer(self.sim)

    def advance(self, steer: np.ndarray, speed: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Step the simulator and score cars ``idx`` (all by default). When a signal interrupts a reward
        function the step is undone before :class:`UserCodeInterrupted` travels up, so the env is left
        exactly as after the last completed step."""
        before = self.sim.snapshot() if self.guard is not None else None
        self.sim.step(steer, speed)
        try:
            return self.rewards(idx)
        except UserCodeInterrupted as exc:
            self.sim.restore(before)
            exc.env_step_undone = True
            raise

    def rewards(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Rewards of all cars; with ``idx`` only those cars are scored (others get 0)."""
        sim = self.sim
        if self.vectorized_reward is not None:
            r = np.asarray(self.vectorized_reward(sim.batch_params()), dtype=np.float64)
            if idx is not None:
                keep = np.zeros(sim.n, dtype=bool)
                keep[idx] = True
                r = np.where(keep, r, 0.0)
            bad = first_bad(r)
            if bad is not None:
                name = getattr(self.reward_fn, "__name__", "reward")
                raise NonFiniteRewardError(f"built-in reward {name!r} gave {r[bad]} for env {bad[0]} at step "
                                           f"{int(sim.steps[bad[0]])}: not a finite float32; check the track file")
            return r
        r = np.zeros(sim.n)
        with self.guard as guard:
            for i in (range(sim.n) if idx is None else idx):
                i = int(i)
                r[i] = call_reward(self.reward_fn, sim.params(i), guard, f"env {i}, step {int(sim.steps[i])}")
        return r

    def log(self, actions: np.ndarray, rewards: np.ndarray, idx: np.ndarray) -> None:
        if self.simtrace is None or idx.size == 0:
            return
        sim = self.sim
        acts = np.asarray(actions)
        self.simtrace.write(
            episode=sim.episode_id[idx], steps=sim.steps[idx], X=sim.x[idx], Y=sim.y[idx],
            yaw=np.degrees(sim.yaw[idx]), steer=sim.steer[idx], throttle=sim.speed_cmd[idx],
            action=[self.actions.describe(acts[i]) for i in idx], reward=rewards[idx],
            done=(sim.terminated | sim.truncated)[idx], all_wheels_on_track=sim.all_wheels_on_track[idx],
            progress=sim.progress[idx], closest_waypoint=sim.closest_waypoint()[idx],
            track_len=sim.stack.length[sim.tid[idx]], tstamp=time.time(),
            episode_status=STATUS_ARRAY[sim.status[idx]])

    def close(self) -> None:
        if self.simtrace is not None:
            self.simtrace.close()


def choose_observation(requested: str | None, meta: dict) -> str:
    """The observation kind: the one asked for, else the model_metadata sensor's, else "features"."""
    from_sensor = meta.get("observation")
    if requested is None:
        return from_sensor or "features"
    if from_sensor is not None and from_sensor != requested:
        warnings.warn(f"observation={requested!r} is used; the model_metadata sensor list {meta.get('sensor')} "
                      f"would give {from_sensor!r}", MetadataWarning, stacklevel=4)
    return requested


class DeepRacerVectorEnv(VectorEnv):
    """N DeepRacer cars in one process, stepped in numpy. ``num_envs`` is the number of cars, ``seed``
    seeds the simulator's generator, and the other keyword arguments are the fields of
    :class:`envs.deepracer.spec.RaceSpec`, as for :class:`envs.deepracer.DeepRacerEnv`.

    ``info`` holds arrays with gymnasium ``_key`` masks: ``progress`` (percent), ``episode_status``
    (DeepRacer's words), ``lap_time`` (seconds, only where a lap was completed this step).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": STEPS_PER_SECOND,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, *, seed: int | None = None,
                 **options: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: allowed None or 'rgb_array'")
        self.core = DeepRacerCore(num_envs, RaceSpec(**options), seed=seed)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = dict(self.metadata)
        self.metadata["autoreset_mode"] = AutoresetMode.NEXT_STEP
        self.single_action_space = self.core.actions.space()
        self.single_observation_space = self.core.observer.space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._all = np.arange(num_envs)

    @property
    def sim(self) -> RaceSim:
        return self.core.sim

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Reset all cars (or those in ``options['reset_mask']``); a seed restarts the generator and
        the round-robin start positions, so a seeded reset is reproducible."""
        if seed is not None:
            self.sim.reseed(seed)
            self.action_space.seed(seed)
        mask = None if options is None else options.get("reset_mask")
        idx = self._all if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        self.sim.reset_cars(idx)
        self._autoreset[idx] = False
        return self.core.observe(), self._info(np.zeros(self.num_envs, dtype=bool))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        core, sim = self.core, self.sim
        steer, speed = core.actions.to_controls(actions)
        reset_idx = np.flatnonzero(self._autoreset)
        if reset_idx.size:
            active = np.flatnonzero(~self._autoreset)
            rewards = core.advance(steer, speed, active)
            core.log(actions, rewards, active)
            sim.reset_cars(reset_idx)
        else:
            rewards = core.advance(steer, speed)
            core.log(actions, rewards, self._all)
        terminated, truncated = sim.terminated, sim.truncated
        self._autoreset = terminated | truncated
        return core.observe(), rewards, terminated, truncated, self._info(self._autoreset)

    def _info(self, done: np.ndarray) -> dict:
        sim = self.sim
        lap = sim.status == LAP_COMPLETE
        ones = np.ones(self.num_envs, dtype=bool)
        return {"progress": sim.progress.copy(), "_progress": ones,
                "episode_status": STATUS_ARRAY[sim.status], "_episode_status": ones,
                "lap_time": np.where(lap, sim.steps * DT, 0.0), "_lap_time": lap}

    def render(self) -> np.ndarray | None:
        """Top-down RGB frame: all cars sharing car 0's track; car 0's step, speed and progress written on it."""
        if self.render_mode != "rgb_array":
            return None
        from .render import render_frame, status_text

        sim = self.sim
        same = sim.tid == sim.tid[0]
        return render_frame(sim.track_of(0), sim.x[same], sim.y[same], sim.yaw[same],
                            text=status_text(sim.steps[0], sim.speed[0], sim.progress[0]))

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly: car states, RNG state, start counter, autoreset flags."""
        state = self.sim.get_state()
        state["autoreset"] = self._autoreset.copy()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.sim.set_state(state)
        self._autoreset = np.array(state["autoreset"], dtype=bool, copy=True)

    def close_extras(self, **kwargs: Any) -> None:
        self.core.close()
