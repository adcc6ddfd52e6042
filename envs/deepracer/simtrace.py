"""DeepRacer simtrace CSV logs: writing them from a batch of cars, reading them back, and re-scoring
logged episodes with another reward function (the usual "what would this reward have said?" question).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .guard import DEFAULT_TIMEOUT_S, Guard
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


def _typed_row(r: dict[str, str]) -> dict[str, Any]:
    row = {
        "episode": int(r["episode"]), "steps": int(float(r["steps"])), "X": float(r["X"]),
        "Y": float(r["Y"]), "yaw": float(r["yaw"]), "steer": float(r["steer"]),
        "throttle": float(r["throttle"]), "action": r["action"], "reward": float(r["reward"]),
        "done": r["done"] == "True", "all_wheels_on_track": r["all_wheels_on_track"] == "True",
        "progress": float(r["progress"]), "closest_waypoint": int(float(r["closest_waypoint"])),
        "track_len": float(r["track_len"]), "tstamp": float(r["tstamp"]),
        "episode_status": r["episode_status"],
    }
    for key in ("X", "Y", "yaw", "steer", "throttle", "reward", "progress", "track_len"):
        if not np.isfinite(row[key]):
            raise ValueError(f"{key} = {row[key]} is not a finite number")
    return row


def read_simtrace(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a simtrace CSV with typed values; a file that is not one raises a one-line ValueError
    naming the file and the line."""
    path = Path(path)
    rows = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"simtrace {path}: not a simtrace CSV (missing columns: {', '.join(missing)})")
            for line, r in enumerate(reader, start=2):
                try:
                    rows.append(_typed_row(r))
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"simtrace {path} line {line}: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"simtrace {path}: not a text CSV file") from None
    except csv.Error as exc:
        raise ValueError(f"simtrace {path}: malformed CSV ({exc})") from None
    return rows


def logged_track_length(rows: list[dict[str, Any]], path: str | Path) -> float:
    """The one track length a simtrace was logged on (several lengths: random tracks, no single track)."""
    lengths = sorted({round(r["track_len"], 3) for r in rows})
    if len(lengths) != 1:
        raise ValueError(f"simtrace {path} was logged on {len(lengths)} tracks of different lengths "
                         f"(random tracks?); replay needs laps driven on one track")
    return rows[0]["track_len"]


def params_from_row(row: dict[str, Any], track) -> dict:
    """Reconstruct a reward function's params from a logged row and the track geometry."""
    p = track.project(row["X"], row["Y"])
    return make_params(
        waypoints=track.waypoints, x=row["X"], y=row["Y"], heading=row["yaw"], steering_angle=row["steer"],
        speed=row["throttle"], progress=row["progress"], steps=row["steps"],
        all_wheels_on_track=row["all_wheels_on_track"], is_offtrack=row["episode_status"] == "off_track",
        prev_waypoint=p["seg"], next_waypoint=(p["seg"] + 1) % track.num_segments, offset=p["offset"],
        track_width=track.width, track_length=track.length, is_reversed=track.direction == "clockwise")


def replay(csv_path: str | Path, reward_fn: RewardSpec, track: TrackLike,
           timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
    """Re-score every logged step with ``reward_fn`` on ``track`` (the track the log was recorded on).

    The log's ``track_len`` must match the track's length (0.1 %), so a log is never scored against the
    wrong track. Steps are replayed in logged order per episode, so stateful reward functions behave as
    in training. Returns one dict per episode: episode, original_total, new_total, steps.
    """
    rows = read_simtrace(csv_path)
    if not rows:
        raise ValueError(f"simtrace {csv_path}: holds no logged steps")
    tr = as_track(track)
    logged = logged_track_length(rows, csv_path)
    if not np.isclose(logged, tr.length, rtol=1e-3):
        raise ValueError(f"simtrace {csv_path} was logged on a track {logged:.2f} m long, but track "
                         f"{tr.name!r} is {tr.length:.2f} m: replay it against the track it was driven on "
                         f"(--track NAME|PATH.npy)")
    fn = load_reward_function(reward_fn, timeout_s)
    episodes: dict[int, dict[str, Any]] = {}
    with Guard(timeout_s) as guard:
        for row in rows:
            ep = episodes.setdefault(row["episode"], {"episode": row["episode"], "original_total": 0.0,
                                                      "new_total": 0.0, "steps": 0})
            ep["original_total"] += row["reward"]
            ep["new_total"] += call_reward(fn, params_from_row(row, tr), guard,
                                           f"episode {row['episode']}, step {row['steps']}")
            ep["steps"] += 1
    return list(episodes.values())


def trajectories(rows: Iterable[dict[str, Any]]) -> list[np.ndarray]:
    """Per-episode (T, 3) arrays of x, y, throttle, ready for :func:`plot_trajectories`."""
    eps: dict[int, list] = {}
    for r in rows:
        eps.setdefault(r["episode"], []).append((r["X"], r["Y"], r["throttle"]))
    return [np.array(v) for v in eps.values()]
