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

from .finite import FLOAT32_MAX, NonFiniteValueError
from .guard import DEFAULT_TIMEOUT_S, Guard, UserCodeError, describe

RewardFn = Callable[[dict], float]
RewardSpec = Union[str, Path, RewardFn]


class RewardFunctionError(ValueError):
    """A reward function could not be loaded, raised, exited, hung, or returned something that is not a
    finite number."""


class NonFiniteRewardError(RewardFunctionError, NonFiniteValueError):
    """A reward is NaN or infinite, or too large for the float32 storage rewards are trained from."""


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
def is_reward_file(spec: Any) -> bool:
    """True when ``spec`` names a user's .py file rather than a built-in or a callable."""
    return isinstance(spec, (str, Path)) and not callable(spec) and str(spec) not in BUILTIN_REWARDS


def load_reward_function(spec: RewardSpec | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                         user_code: bool = True) -> RewardFn:
    """A callable ``reward_function(params) -> float`` from a callable, a built-in name, or a .py path.

    A file is imported with the same containment as its calls (see :mod:`envs.deepracer.guard`): an import
    that raises, exits or runs longer than ``timeout_s`` is a :class:`RewardFunctionError`. With
    ``user_code=False`` a file is not imported at all and the default built-in reward is used instead (for
    evaluating someone else's run without running their code).
    """
    if spec is None:
        spec = DEFAULT_REWARD
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    path = Path(spec)
    if path.suffix != ".py":
        raise RewardFunctionError(f"reward_function={str(spec)!r}: expected a callable, a built-in name "
                                  f"({', '.join(BUILTIN_REWARDS)}) or a path to a .py file")
    if not user_code:
        return BUILTIN_REWARDS[DEFAULT_REWARD]
    if not path.is_file():
        raise RewardFunctionError(f"reward_function={str(spec)!r}: file not found")
    name = f"_deepracer_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    try:
        with Guard(timeout_s) as guard:
            guard.call(module_spec.loader.exec_module, module)  # type: ignore[union-attr]
    except UserCodeError as e:
        if isinstance(e.cause, SyntaxError):
            raise RewardFunctionError(f"reward_function file {path}: syntax error at line {e.cause.lineno}: "
                                      f"{e.cause.msg}") from None
        raise RewardFunctionError(f"reward_function file {path}: failed to import: it {e.reason}") from None
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


def call_reward(fn: RewardFn, params: dict, guard: Guard | None = None, where: str = "") -> float:
    """Call a user reward function; any failure becomes a one-line RewardFunctionError showing the params.

    ``guard`` (entered by the caller) adds the time limit and signal handling; ``where`` (e.g. "env 3,
    step 17") says which car and step the message is about.
    """
    name = getattr(fn, "__name__", repr(fn))
    at = f" at {where}" if where else ""
    try:
        value: Any = guard.call(fn, params) if guard is not None else fn(params)
    except UserCodeError as e:
        raise RewardFunctionError(f"reward function {name!r}{at} {e.reason}; params: {compact_params(params)}") from None
    except KeyboardInterrupt:  # unguarded: no way to tell Ctrl-C from the function's own, so stop
        raise
    except BaseException as e:  # noqa: BLE001 - unguarded calls: user code may raise or exit any way
        raise RewardFunctionError(f"reward function {name!r}{at} {describe(e)}; "
                                  f"params: {compact_params(params)}") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise RewardFunctionError(f"reward function {name!r}{at} returned {value!r} of type "
                                  f"{type(value).__name__}; it must return a float; params: {compact_params(params)}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        why = "it must be finite" if not math.isfinite(value) else "it overflows float32 (|reward| <= 3.4e38)"
        raise NonFiniteRewardError(f"reward function {name!r}{at} returned {value}; {why}; "
                                   f"params: {compact_params(params)}")
    return value
