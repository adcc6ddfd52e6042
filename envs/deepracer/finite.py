"""Refusing NaN, infinities and float32 overflow where numbers enter a run: observations, rewards, tracks.

Rollouts store observations and rewards as float32, so a value that is finite in float64 (1.7e308) but
not in float32 is refused too. Errors name the car (env index), its step and the offending key.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)


class NonFiniteValueError(ValueError):
    """A NaN, an infinity or a float32 overflow where the env hands numbers to the learner."""


def first_bad(values: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first value that is not finite in float32, or None (fast path: one reduction)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "fc":
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~np.isfinite(arr) | (np.abs(arr) > FLOAT32_MAX)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.argwhere(bad)[0])


def check_observations(obs: np.ndarray, steps: np.ndarray, names: Sequence[str] | None, source: str) -> None:
    """Raise :class:`NonFiniteValueError` naming env index, step and observation key of the first bad value.

    ``obs`` is (num_envs, ...) before any clipping (a clip would hide an infinity); ``names`` label the last
    axis of a flat observation.
    """
    where = first_bad(obs)
    if where is None:
        return
    env, rest = where[0], where[1:]
    key = names[rest[0]] if names is not None and len(rest) == 1 and rest[0] < len(names) else str(list(rest))
    raise NonFiniteValueError(f"observation {key} of env {env} at step {int(steps[env])} is {float(obs[where])} "
                              f"({source}): not a finite float32; check the track file and env options")
