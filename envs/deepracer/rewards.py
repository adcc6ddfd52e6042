"""DeepRacer-style reward functions: the classic console examples, a progress-rate default, loading
user functions, and calling them safely.

Every built-in exists twice: a ``reward_function(params)`` identical in behaviour to what a DeepRacer
user writes, and a vectorised twin (attribute ``vectorized``) that scores a whole batch of cars from
arrays, so that the fast path never builds per-car Python dicts.
"""
from __future__ import annotations

import importlib.util
import math
import numbers
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Union

import numpy as np

RewardFn = Callable[[dict], float]
RewardSpec = Union[str, Path, RewardFn]


class RewardFunctionError(ValueError):
    """A reward function could not be loaded, raised, or returned something that is not a finite number."""


# ----------------------------------------------------------------------------- classic examples
def follow_center_line(params: dict) -> float:
    """Console example 1: the closer to the centre line, the higher the reward."""
    width = params["track_width"]
    d = params["distance_from_center"]
    if d <= 0.1 * width:
        return 1.0
    if d <= 0.25 * width:
        return 0.5
    if d <= 0.5 * width:
        return 0.1
    return 1e-3


def stay_inside_borders(params: dict) -> float:
    """Console example 2: reward 1 while all wheels are on track and 5 cm clear of the border."""
    if params["all_wheels_on_track"] and (0.5 * params["track_width"] - params["distance_from_center"]) >= 0.05:
        return 1.0
    return 1e-3


def prevent_zigzag(params: dict) -> float:
    """Console example 3: follow the centre line, with 20 % off when steering harder than 15 degrees."""
    reward = follow_center_line(params)
    if abs(params["steering_angle"]) > 15.0:
        reward *= 0.8
    return float(reward)


def progress_speed(params: dict) -> float:
    """Default: speed along the track direction, kept high near the centre, tiny when a wheel is off.

    Summed over an episode this is roughly the distance covered along the track, so it rewards progress
    *rate*: finishing laps, and finishing them fast, without telling the car which line to take.
    """
    if not params["all_wheels_on_track"] or params["is_offtrack"]:
        return 1e-3
    wp = params["waypoints"]
    prev, nxt = params["closest_waypoints"]
    track_dir = math.atan2(wp[nxt][1] - wp[prev][1], wp[nxt][0] - wp[prev][0])
    err = math.radians(params["heading"]) - track_dir
    along = params["speed"] * math.cos(err)
    centre = 1.0 - min((params["distance_from_center"] / (0.5 * params["track_width"])) ** 2, 1.0)
    return float(max(along, 0.0) * (0.5 + 0.5 * centre) + 1e-3)


# ----------------------------------------------------------------------------- vectorised twins
def _v_follow_center_line(p: SimpleNamespace) -> np.ndarray:
    d, w = p.distance_from_center, p.track_width
    return np.where(d <= 0.1 * w, 1.0, np.where(d <= 0.25 * w, 0.5, np.where(d <= 0.5 * w, 0.1, 1e-3)))


def _v_stay_inside_borders(p: SimpleNamespace) -> np.ndarray:
    ok = p.all_wheels_on_track & ((0.5 * p.track_width - p.distance_from_center) >= 0.05)
    return np.where(ok, 1.0, 1e-3)


def _v_prevent_zigzag(p: SimpleNamespace) -> np.ndarray:
    r = _v_follow_center_line(p)
    return np.where(np.abs(p.steering_angle) > 15.0, r * 0.8, r)


def _v_progress_speed(p: SimpleNamespace) -> np.ndarray:
    err = np.radians(p.heading) - p.waypoint_direction
    along = np.maximum(p.speed * np.cos(err), 0.0)
    centre = 1.0 - np.minimum((p.distance_from_center / (0.5 * p.track_width)) ** 2, 1.0)
    r = along * (0.5 + 0.5 * centre) + 1e-3
    return np.where(p.all_wheels_on_track & ~p.is_offtrack, r, 1e-3)


follow_center_line.vectorized = _v_follow_center_line  # type: ignore[attr-defined]
stay_inside_borders.vectorized = _v_stay_inside_borders  # type: ignore[attr-defined]
prevent_zigzag.vectorized = _v_prevent_zigzag  # type: ignore[attr-defined]
progress_speed.vectorized = _v_progress_speed  # type: ignore[attr-defined]

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "progress_speed": progress_speed,
    "follow_center_line": follow_center_line,
    "stay_inside_borders": stay_inside_borders,
    "prevent_zigzag": prevent_zigzag,
}
DEFAULT_REWARD = "progress_speed"


# ----------------------------------------------------------------------------- loading and calling
def load_reward_function(spec: RewardSpec | None = None) -> RewardFn:
    """A callable ``reward_function(params) -> float`` from a callable, a built-in name, or a .py path."""
    if spec is None:
        spec = DEFAULT_REWARD
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    path = Path(spec)
    if path.suffix != ".py":
        raise RewardFunctionError(f"reward_function={spec!r}: expected a callable, a built-in name "
                                  f"({', '.join(BUILTIN_REWARDS)}) or a path to a .py file")
    if not path.is_file():
        raise RewardFunctionError(f"reward_function={str(spec)!r}: file not found")
    name = f"_deepracer_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except SyntaxError as e:
        raise RewardFunctionError(f"reward_function file {path}: syntax error at line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - any import-time failure is the user's file
        raise RewardFunctionError(f"reward_function file {path}: failed to import "
                                  f"({type(e).__name__}: {e})") from e
    fn = getattr(module, "reward_function", None)
    if not callable(fn):
        raise RewardFunctionError(f"reward_function file {path}: defines no function named 'reward_function'")
    sys.modules.setdefault(name, module)
    return fn


def compact_params(params: dict) -> str:
    """params for an error message: waypoints elided, floats shortened."""
    parts = []
    for k, v in params.items():
        if k == "waypoints":
            parts.append(f"'waypoints': <{len(v)} waypoints>")
        elif isinstance(v, float):
            parts.append(f"{k!r}: {v:.4g}")
        else:
            parts.append(f"{k!r}: {v!r}")
    return "{" + ", ".join(parts) + "}"


def call_reward(fn: RewardFn, params: dict) -> float:
    """Call a user reward function; any failure becomes a RewardFunctionError showing the params."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        value: Any = fn(params)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise RewardFunctionError(f"reward function {name!r} raised {type(e).__name__}: {e}\n"
                                  f"params: {compact_params(params)}") from e
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise RewardFunctionError(f"reward function {name!r} returned {value!r} of type "
                                  f"{type(value).__name__}; it must return a float\n"
                                  f"params: {compact_params(params)}")
    value = float(value)
    if not math.isfinite(value):
        raise RewardFunctionError(f"reward function {name!r} returned {value}; it must be finite\n"
                                  f"params: {compact_params(params)}")
    return value
