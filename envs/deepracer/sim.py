"""The race simulator: N cars, each on its own slot of a track stack, stepped together in numpy.

This is the one piece of simulation code; the single env and the vector env both drive it. It knows
DeepRacer's episode rules (lap complete, off track, reversed, immobilized, time up) and its start
positions (training: each new episode starts 5 % of a lap further round; evaluation: the start line).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from . import car
from .track import Track, TrackStack, wheel_offsets
from .track_registry import RANDOM, TrackLike, as_track, is_random

STATUS_NAMES = ("in_progress", "lap_complete", "off_track", "reversed", "immobilized", "time_up")
IN_PROGRESS, LAP_COMPLETE, OFF_TRACK, REVERSED, IMMOBILIZED, TIME_UP = range(6)
STATUS_ARRAY = np.array(STATUS_NAMES)

REVERSED_STEPS = 15          # consecutive steps of lost progress that end an episode
IMMOBILIZED_STEPS = 30       # consecutive steps (2 s) below IMMOBILIZED_SPEED that end an episode
IMMOBILIZED_SPEED = 0.05     # m/s
START_ADVANCE = 0.05         # fraction of a lap the training start moves on each episode
RANDOM_TRACK_WINDOW = 10      # projection search half-window: fixed, so checkpoints replay exactly

_STEP_KEYS = ("x", "y", "yaw", "speed", "steer", "speed_cmd", "seg", "t", "s", "offset", "travelled", "progress",
              "steps", "rev_count", "immobile_count", "wheels", "status")
_STATE_KEYS = ("x", "y", "yaw", "speed", "steer", "speed_cmd", "seg", "t", "s", "offset", "start_s",
               "travelled", "progress", "steps", "rev_count", "immobile_count", "wheels", "status",
               "episode_id", "tid")


class RaceSim:
    """Batched car simulation.

    Args:
        num_cars: cars simulated together.
        track: built-in name, ``"random"`` (a new generated track per car per episode), a ``.npy`` path,
            an (N, 6) array or a :class:`Track`.
        training: round-robin starts (True) or start line (False).
        max_episode_steps: steps after which an episode is cut short (``time_up``).
        seed: seed of the simulator's random generator (random tracks only draw from it).
    """

    def __init__(self, num_cars: int, track: TrackLike = "circuit", training: bool = True,
                 max_episode_steps: int = 2000, seed: int | None = None):
        if num_cars < 1:
            raise ValueError(f"num_envs={num_cars}: need at least one car")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps={max_episode_steps}: must be >= 1")
        self.n = num_cars
        self.training = bool(training)
        self.max_episode_steps = int(max_episode_steps)
        self.random_tracks = is_random(track)
        self.rng = np.random.default_rng(seed)
        if self.random_tracks:
            self.tracks: list[Track] = [as_track(RANDOM, self.rng) for _ in range(num_cars)]
        else:
            self.tracks = [as_track(track)]
        self.stack = TrackStack.from_tracks(self.tracks, window=RANDOM_TRACK_WINDOW if self.random_tracks else None)
        self.start_counter = 0
        self.episode_counter = 0
        n = num_cars
        self.tid = np.arange(n) if self.random_tracks else np.zeros(n, dtype=np.int64)
        self.x = np.zeros(n)
        self.y = np.zeros(n)
        self.yaw = np.zeros(n)
        self.speed = np.zeros(n)
        self.steer = np.zeros(n)         # degrees, commanded
        self.speed_cmd = np.zeros(n)     # m/s, commanded
        self.seg = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n)
        self.s = np.zeros(n)
        self.offset = np.zeros(n)
        self.start_s = np.zeros(n)
        self.travelled = np.zeros(n)
        self.progress = np.zeros(n)
        self.steps = np.zeros(n, dtype=np.int64)
        self.rev_count = np.zeros(n, dtype=np.int64)
        self.immobile_count = np.zeros(n, dtype=np.int64)
        self.wheels = np.ones((n, 4), dtype=bool)
        self.status = np.zeros(n, dtype=np.int64)
        self.episode_id = np.zeros(n, dtype=np.int64)
        self._wheel_offsets = wheel_offsets()
        self._track_len = self.stack.length[self.tid]
        self._rows = np.arange(n)

    # ------------------------------------------------------------------ helpers
    def track_of(self, i: int) -> Track:
        return self.tracks[int(self.tid[i])]

    def reseed(self, seed: int | None) -> None:
        """Fresh generator and start counter, so that a seeded reset is reproducible."""
        self.rng = np.random.default_rng(seed)
        self.start_counter = 0

    # ------------------------------------------------------------------ reset
    def reset_cars(self, idx: np.ndarray) -> None:
        """Start a new episode for cars ``idx`` (new random track if any, next start position)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return
        for i in idx:
            if self.random_tracks:
                tr = as_track(RANDOM, self.rng)
                self.tracks[i] = tr
                self.stack.set_track(int(i), tr)
            length = self.stack.length[self.tid[i]]
            frac = (self.start_counter * START_ADVANCE) % 1.0 if self.training else 0.0
            self.start_counter += 1
            self.start_s[i] = frac * length
            self.episode_id[i] = self.episode_counter
            self.episode_counter += 1
        self._track_len = self.stack.length[self.tid]
        tid = self.tid[idx]
        pts = self.stack.lookahead(tid, self.start_s[idx], np.array([0.0, 0.1]))
        self.x[idx], self.y[idx] = pts[:, 0, 0], pts[:, 0, 1]
        d = pts[:, 1] - pts[:, 0]
        self.yaw[idx] = np.arctan2(d[:, 1], d[:, 0])
        for arr in (self.speed, self.steer, self.speed_cmd, self.travelled, self.progress):
            arr[idx] = 0.0
        for arr in (self.steps, self.rev_count, self.immobile_count, self.status):
            arr[idx] = 0
        proj = self.stack.project(tid, self.x[idx], self.y[idx])
        self.seg[idx], self.t[idx], self.s[idx], self.offset[idx] = proj["seg"], proj["t"], proj["s"], proj["offset"]
        self.wheels[idx] = self.stack.wheels_on_track(tid, proj, self.yaw[idx], self._wheel_offsets)

    # ------------------------------------------------------------------ step
    def step(self, steer_deg: np.ndarray, speed_cmd: np.ndarray) -> None:
        """Advance every car one step (1/15 s) and update progress, wheels and episode status."""
        self.steer = np.asarray(steer_deg, dtype=np.float64)
        self.speed_cmd = np.asarray(speed_cmd, dtype=np.float64)
        self.x, self.y, self.yaw, self.speed = car.step_cars(self.x, self.y, self.yaw, self.speed,
                                                            self.steer, self.speed_cmd)
        st, tid = self.stack, self.tid
        proj = st.project(tid, self.x, self.y, hint=self.seg)
        length = self._track_len
        ds = proj["s"] - self.s
        ds -= length * np.rint(ds / length)  # wrap across the start/finish line
        self.seg, self.t, self.s, self.offset = proj["seg"], proj["t"], proj["s"], proj["offset"]
        self.travelled = self.travelled + ds
        self.progress = np.clip(self.travelled / length * 100.0, 0.0, 100.0)
        self.steps = self.steps + 1
        self.rev_count = np.where(ds < -1e-6, self.rev_count + 1, 0)
        self.immobile_count = np.where(self.speed < IMMOBILIZED_SPEED, self.immobile_count + 1, 0)
        self.wheels = st.wheels_on_track(tid, proj, self.yaw, self._wheel_offsets)
        status = np.zeros(self.n, dtype=np.int64)
        status[self.steps >= self.max_episode_steps] = TIME_UP
        status[self.immobile_count >= IMMOBILIZED_STEPS] = IMMOBILIZED
        status[self.rev_count >= REVERSED_STEPS] = REVERSED
        status[self.travelled >= length] = LAP_COMPLETE
        status[~self.wheels.any(axis=1)] = OFF_TRACK
        self.status = status

    # ------------------------------------------------------------------ derived quantities
    @property
    def terminated(self) -> np.ndarray:
        return (self.status >= LAP_COMPLETE) & (self.status <= IMMOBILIZED)

    @property
    def truncated(self) -> np.ndarray:
        return self.status == TIME_UP

    @property
    def all_wheels_on_track(self) -> np.ndarray:
        return self.wheels.all(axis=1)

    def next_waypoint(self) -> np.ndarray:
        return (self.seg + 1) % self.stack.num_segments

    def closest_waypoint(self) -> np.ndarray:
        """The single nearest of the two waypoints around each car (simtrace's closest_waypoint)."""
        return np.where(self.t < 0.5, self.seg, self.next_waypoint())

    def waypoint_direction(self) -> np.ndarray:
        """Direction (radians) from the previous to the next waypoint, as a reward function computes it."""
        c = self.stack.center
        d = c[self.tid, self.next_waypoint()] - c[self.tid, self.seg]
        return np.arctan2(d[:, 1], d[:, 0])

    def batch_params(self) -> SimpleNamespace:
        """Arrays with DeepRacer params' meaning, for the vectorised built-in rewards."""
        return SimpleNamespace(
            all_wheels_on_track=self.all_wheels_on_track,
            distance_from_center=np.abs(self.offset),
            track_width=self.stack.width[self.tid],
            steering_angle=self.steer,
            speed=self.speed_cmd,
            heading=np.degrees(self.yaw),
            waypoint_direction=self.waypoint_direction(),
            progress=self.progress,
            steps=self.steps,
            is_offtrack=self.status == OFF_TRACK,
        )

    def params(self, i: int) -> dict:
        """DeepRacer ``params`` dict of car ``i``."""
        from .params import make_params

        tr = self.track_of(i)
        return make_params(
            waypoints=tr.waypoints, x=self.x[i], y=self.y[i], heading=np.degrees(self.yaw[i]),
            steering_angle=self.steer[i], speed=self.speed_cmd[i], progress=self.progress[i],
            steps=self.steps[i], all_wheels_on_track=self.wheels[i].all(),
            is_offtrack=self.status[i] == OFF_TRACK, prev_waypoint=self.seg[i],
            next_waypoint=(self.seg[i] + 1) % tr.num_segments, offset=self.offset[i],
            track_width=tr.width, track_length=tr.length, is_reversed=tr.direction == "clockwise")

    # ------------------------------------------------------------------ undoing one step
    def snapshot(self) -> dict[str, Any]:
        """The arrays :meth:`step` replaces, by reference (``step`` rebinds them, never writes into them),
        so that :meth:`restore` can undo one step for the price of a few attribute reads."""
        return {k: getattr(self, k) for k in _STEP_KEYS}

    def restore(self, snapshot: dict[str, Any]) -> None:
        for k, v in snapshot.items():
            setattr(self, k, v)

    # ------------------------------------------------------------------ checkpointing
    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: np.array(getattr(self, k), copy=True) for k in _STATE_KEYS}
        state["rng_state"] = self.rng.bit_generator.state
        state["start_counter"] = int(self.start_counter)
        state["episode_counter"] = int(self.episode_counter)
        if self.random_tracks:
            state["track_waypoints"] = np.stack([t.waypoints_array for t in self.tracks])
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        for k in _STATE_KEYS:
            value = np.array(state[k], copy=True)
            if value.shape != np.shape(getattr(self, k)):
                raise ValueError(f"state[{k!r}] has shape {value.shape}, expected {np.shape(getattr(self, k))}")
            setattr(self, k, value)
        self.rng.bit_generator.state = state["rng_state"]
        self.start_counter = int(state["start_counter"])
        self.episode_counter = int(state["episode_counter"])
        if self.random_tracks:
            self.tracks = [Track(w, name=RANDOM) for w in state["track_waypoints"]]
            self.stack = TrackStack.from_tracks(self.tracks, window=RANDOM_TRACK_WINDOW)
        self._track_len = self.stack.length[self.tid]
