"""DeepRacer simtrace CSV logs: writing them from a batch of cars, reading them back, and re-scoring
logged episodes with another reward function (the usual "what would this reward have said?" question).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .params import make_params
from .rewards import RewardSpec, call_reward, load_reward_function
from .track_registry import TrackLike, as_track

COLUMNS = ("episode", "steps", "X", "Y", "yaw", "steer", "throttle", "action", "reward", "done",
           "all_wheels_on_track", "progress", "closest_waypoint", "track_len", "tstamp", "episode_status")


class SimTraceWriter:
    """Appends DeepRacer simtrace rows (one per car per step) to a CSV file with a header; an existing
    file (a resumed run) is continued, not overwritten.

    ``yaw`` and ``steer`` are degrees, ``throttle`` the commanded speed (m/s), ``action`` the discrete
    index or ``[steer;speed]`` for continuous actions, ``tstamp`` wall-clock seconds.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        resume = self.path.is_file() and self.path.stat().st_size > 0  # a resumed run appends
        self._file = self.path.open("a" if resume else "w", newline="")
        self._writer = csv.writer(self._file)
        if not resume:
            self._writer.writerow(COLUMNS)

    def write(self, **columns: Any) -> None:
        """Write one row per car; each keyword is a column given as an array (or a scalar for all)."""
        missing = set(COLUMNS) - set(columns)
        if missing:
            raise ValueError(f"simtrace row is missing columns: {sorted(missing)}")
        n = len(np.atleast_1d(columns["episode"]))
        cols = []
        for name in COLUMNS:
            v = columns[name]
            v = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] * n
            if name in ("X", "Y", "yaw", "steer", "throttle", "reward", "progress", "track_len"):
                v = [f"{float(a):.6g}" for a in v]
            elif name in ("done", "all_wheels_on_track"):
                v = ["True" if a else "False" for a in v]
            elif name == "tstamp":
                v = [f"{float(a):.3f}" for a in v]
            elif name in ("episode", "steps", "closest_waypoint"):
                v = [int(a) for a in v]
            cols.append(v)
        self._writer.writerows(zip(*cols))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "SimTraceWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_simtrace(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a simtrace CSV with typed values."""
    rows = []
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            rows.append({
                "episode": int(r["episode"]), "steps": int(float(r["steps"])), "X": float(r["X"]),
                "Y": float(r["Y"]), "yaw": float(r["yaw"]), "steer": float(r["steer"]),
                "throttle": float(r["throttle"]), "action": r["action"], "reward": float(r["reward"]),
                "done": r["done"] == "True", "all_wheels_on_track": r["all_wheels_on_track"] == "True",
                "progress": float(r["progress"]), "closest_waypoint": int(float(r["closest_waypoint"])),
                "track_len": float(r["track_len"]), "tstamp": float(r["tstamp"]),
                "episode_status": r["episode_status"],
            })
    return rows


def params_from_row(row: dict[str, Any], track) -> dict:
    """Reconstruct a reward function's params from a logged row and the track geometry."""
    p = track.project(row["X"], row["Y"])
    return make_params(
        waypoints=track.waypoints, x=row["X"], y=row["Y"], heading=row["yaw"], steering_angle=row["steer"],
        speed=row["throttle"], progress=row["progress"], steps=row["steps"],
        all_wheels_on_track=row["all_wheels_on_track"], is_offtrack=row["episode_status"] == "off_track",
        prev_waypoint=p["seg"], next_waypoint=(p["seg"] + 1) % track.num_segments, offset=p["offset"],
        track_width=track.width, track_length=track.length, is_reversed=track.direction == "clockwise")


def replay(csv_path: str | Path, reward_fn: RewardSpec, track: TrackLike) -> list[dict[str, Any]]:
    """Re-score every logged step with ``reward_fn`` on ``track`` (the track the log was recorded on).

    Steps are replayed in logged order per episode, so stateful reward functions behave as in training.
    Returns one dict per episode: episode, original_total, new_total, steps.
    """
    fn = load_reward_function(reward_fn)
    tr = as_track(track)
    episodes: dict[int, dict[str, Any]] = {}
    for row in read_simtrace(csv_path):
        ep = episodes.setdefault(row["episode"], {"episode": row["episode"], "original_total": 0.0,
                                                  "new_total": 0.0, "steps": 0})
        ep["original_total"] += row["reward"]
        ep["new_total"] += call_reward(fn, params_from_row(row, tr))
        ep["steps"] += 1
    return list(episodes.values())


def trajectories(rows: Iterable[dict[str, Any]]) -> list[np.ndarray]:
    """Per-episode (T, 3) arrays of x, y, throttle, ready for :func:`plot_trajectories`."""
    eps: dict[int, list] = {}
    for r in rows:
        eps.setdefault(r["episode"], []).append((r["X"], r["Y"], r["throttle"]))
    return [np.array(v) for v in eps.values()]
