"""Action spaces in DeepRacer's terms: a discrete list of (steering_angle, speed) pairs or continuous
steering and speed ranges, and the reader for DeepRacer's ``model_metadata.json``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from gymnasium import spaces

from .car import MAX_SPEED, MAX_STEERING_DEG
from .metadata import check_metadata, sensor_observation

# The DeepRacer console's classic default: 5 steering angles x 2 speeds, in the console's order.
DEFAULT_DISCRETE_ACTIONS: list[dict[str, float]] = [
    {"steering_angle": float(s), "speed": float(v)} for s in (-30, -15, 0, 15, 30) for v in (0.5, 1.0)
]
DEFAULT_STEERING_RANGE = (-30.0, 30.0)
DEFAULT_SPEED_RANGE = (0.5, 1.0)


@dataclass
class ActionSpec:
    """Maps policy actions to (steering degrees, speed m/s) commands for many cars at once."""

    kind: str = "discrete"
    actions: list[dict[str, float]] = field(default_factory=lambda: list(DEFAULT_DISCRETE_ACTIONS))
    steering_range: tuple[float, float] = DEFAULT_STEERING_RANGE
    speed_range: tuple[float, float] = DEFAULT_SPEED_RANGE

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"action_space_type={self.kind!r}: allowed 'discrete' or 'continuous'")
        if self.kind == "discrete":
            if not self.actions:
                raise ValueError("actions: the discrete action list is empty")
            table = []
            for i, a in enumerate(self.actions):
                try:
                    table.append((float(a["steering_angle"]), float(a["speed"])))
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"actions[{i}]={a!r}: each action needs numeric 'steering_angle' and "
                                     f"'speed'") from e
            self.table = np.array(table, dtype=np.float64)
            self._check(self.table[:, 0], self.table[:, 1], "actions")
        else:
            lo_s, hi_s = map(float, self.steering_range)
            lo_v, hi_v = map(float, self.speed_range)
            if lo_s > hi_s or lo_v > hi_v:
                raise ValueError(f"steering_range={self.steering_range}, speed_range={self.speed_range}: "
                                 f"each must be (low, high) with low <= high")
            self._check(np.array([lo_s, hi_s]), np.array([lo_v, hi_v]), "steering_range/speed_range")
            self.steering_range, self.speed_range = (lo_s, hi_s), (lo_v, hi_v)

    @staticmethod
    def _check(steer: np.ndarray, speed: np.ndarray, key: str) -> None:
        if not (np.all(np.isfinite(steer)) and np.all(np.isfinite(speed))):
            raise ValueError(f"{key}: steering angles and speeds must be finite numbers, got "
                             f"{steer.tolist()} and {speed.tolist()}")
        if np.any(np.abs(steer) > MAX_STEERING_DEG + 1e-9):
            raise ValueError(f"{key}: steering angles must lie in [-{MAX_STEERING_DEG}, {MAX_STEERING_DEG}] "
                             f"degrees, got {steer.tolist()}")
        if np.any(speed < 0) or np.any(speed > MAX_SPEED + 1e-9):
            raise ValueError(f"{key}: speeds must lie in [0, {MAX_SPEED}] m/s, got {speed.tolist()}")

    @property
    def max_speed(self) -> float:
        return float(self.table[:, 1].max() if self.kind == "discrete" else self.speed_range[1])

    def space(self) -> spaces.Space:
        if self.kind == "discrete":
            return spaces.Discrete(len(self.table))
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def to_controls(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Steering (degrees, left > 0) and speed (m/s) for a batch of actions.

        Continuous actions are [steering, speed] in [-1, 1], scaled linearly onto the ranges.
        """
        if self.kind == "discrete":
            idx = np.asarray(action, dtype=np.int64).reshape(-1)
            if np.any(idx < 0) or np.any(idx >= len(self.table)):
                raise ValueError(f"action index out of range [0, {len(self.table)}): {idx.tolist()}")
            return self.table[idx, 0], self.table[idx, 1]
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1, 2), -1.0, 1.0)
        lo_s, hi_s = self.steering_range
        lo_v, hi_v = self.speed_range
        return lo_s + (a[:, 0] + 1) * 0.5 * (hi_s - lo_s), lo_v + (a[:, 1] + 1) * 0.5 * (hi_v - lo_v)

    def describe(self, action: Any) -> str:
        """Action as logged in a simtrace: the index, or the continuous pair in physical units."""
        if self.kind == "discrete":
            return str(int(action))
        s, v = self.to_controls(np.asarray(action))
        return f"[{s[0]:.3f};{v[0]:.3f}]"


def load_model_metadata(path: str | Path) -> dict[str, Any]:
    """Read a DeepRacer ``model_metadata.json`` into env keyword arguments.

    Returns ``{"action_space_type": "discrete", "actions": [...]}`` or
    ``{"action_space_type": "continuous", "steering_range": (lo, hi), "speed_range": (lo, hi)}``,
    plus ``"sensor"`` (list) and ``"observation"`` (what that sensor list means here) when present.
    Settings that cannot be trained here are refused, others not simulated exactly are warned about
    (see :mod:`envs.deepracer.metadata`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model_metadata file not found: {path}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model_metadata {path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"model_metadata {path}: expected a JSON object, got {type(meta).__name__}")
    check_metadata(meta, path)
    space = meta.get("action_space")
    if space is None:
        raise ValueError(f"model_metadata {path}: no 'action_space' key")
    kind = str(meta.get("action_space_type", "continuous" if isinstance(space, dict) else "discrete")).lower()
    out: dict[str, Any] = {"action_space_type": kind}
    if kind == "discrete":
        if not isinstance(space, list) or not all(isinstance(a, dict) for a in space):
            raise ValueError(f"model_metadata {path}: a discrete 'action_space' must be a list of actions")
        ordered = sorted(space, key=lambda a: a.get("index", 0)) if all("index" in a for a in space) else space
        try:
            out["actions"] = [{"steering_angle": float(a["steering_angle"]), "speed": float(a["speed"])}
                              for a in ordered]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"model_metadata {path}: each discrete action needs numeric 'steering_angle' "
                             f"and 'speed'") from None
    elif kind == "continuous":
        try:
            out["steering_range"] = (float(space["steering_angle"]["low"]), float(space["steering_angle"]["high"]))
            out["speed_range"] = (float(space["speed"]["low"]), float(space["speed"]["high"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"model_metadata {path}: continuous 'action_space' needs steering_angle and "
                             f"speed with low/high") from None
    else:
        raise ValueError(f"model_metadata {path}: action_space_type={kind!r}, allowed discrete|continuous")
    if "sensor" in meta:
        out["observation"] = sensor_observation(meta["sensor"], path)
        out["sensor"] = list(meta["sensor"]) if isinstance(meta["sensor"], list) else [meta["sensor"]]
    return out


def action_spec_from_kwargs(action_space_type: str = "discrete", actions: Sequence[dict] | None = None,
                            steering_range: Sequence[float] = DEFAULT_STEERING_RANGE,
                            speed_range: Sequence[float] = DEFAULT_SPEED_RANGE,
                            model_metadata: str | Path | None = None) -> ActionSpec:
    """Build the action spec; a model_metadata file overrides the other arguments."""
    if model_metadata is not None:
        meta = load_model_metadata(model_metadata)
        action_space_type = meta["action_space_type"]
        actions = meta.get("actions", actions)
        steering_range = meta.get("steering_range", steering_range)
        speed_range = meta.get("speed_range", speed_range)
    return ActionSpec(kind=action_space_type,
                      actions=list(actions) if actions is not None else list(DEFAULT_DISCRETE_ACTIONS),
                      steering_range=tuple(steering_range), speed_range=tuple(speed_range))
