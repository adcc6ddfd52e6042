"""Tracks designed for this project, of rising difficulty, generated from sketches at import time.

* ``oval``      - a stadium loop: two straights and two wide half circles (easy).
* ``circuit``   - a mixed circuit with a long straight, sweepers, a chicane and two tighter turns
                  (the default; about as hard as the classic time-trial tracks).
* ``technical`` - a narrow, twisting circuit with hairpins and quick direction changes (hard).

All run counter-clockwise with waypoints about 0.15 m apart.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .geometry import closed_catmull_rom, resample_closed, smooth_closed, track_from_centerline
from .track import Track

_SKETCHES: dict[str, tuple[list[tuple[float, float]], float, int]] = {
    # control points (metres), width (metres), smoothing window (waypoints)
    "circuit": ([(1.6, 0.8), (3.5, 0.8), (6.0, 0.9), (7.4, 1.5), (7.6, 2.8), (6.8, 3.6), (5.6, 3.3),
                 (4.7, 2.4), (3.8, 2.2), (3.1, 3.1), (2.4, 4.3), (1.2, 4.1), (0.6, 3.2), (0.6, 1.6)], 0.76, 5),
    "technical": ([(1.4, 0.9), (3.0, 0.9), (4.4, 1.2), (5.3, 1.9), (6.2, 1.5), (6.9, 0.9), (8.0, 1.2),
                   (8.4, 2.4), (7.8, 3.4), (6.6, 3.3), (6.1, 4.1), (6.9, 4.9), (6.2, 5.9), (4.8, 6.1),
                   (4.1, 5.5), (3.8, 4.5), (2.9, 3.7), (1.9, 4.5), (0.9, 4.2), (0.5, 3.0), (0.7, 1.8)], 0.7, 9),
}


def _oval() -> Track:
    straight, radius = 4.0, 1.6
    s = np.linspace(0, 1, 200, endpoint=False)
    bottom = np.stack([1.0 + radius + straight * s, np.full_like(s, 1.0)], axis=1)
    a = -np.pi / 2 + np.pi * s
    right = np.stack([1.0 + radius + straight + radius * np.cos(a), 1.0 + radius + radius * np.sin(a)], axis=1)
    top = np.stack([1.0 + radius + straight * (1 - s), np.full_like(s, 1.0 + 2 * radius)], axis=1)
    left = np.stack([1.0 + radius + radius * np.cos(a + np.pi), 1.0 + radius + radius * np.sin(a + np.pi)], axis=1)
    dense = np.concatenate([bottom, right, top, left])
    return track_from_centerline(resample_closed(dense), 0.9, "oval")


@lru_cache(maxsize=None)
def _build(name: str) -> Track:
    if name == "oval":
        return _oval()
    points, width, window = _SKETCHES[name]
    center = resample_closed(closed_catmull_rom(np.array(points), 48))
    return track_from_centerline(resample_closed(smooth_closed(center, window)), width, name)


BUILTIN_TRACKS = ("oval", "circuit", "technical")
DEFAULT_TRACK = "circuit"


def builtin_track(name: str) -> Track:
    """One of :data:`BUILTIN_TRACKS` (cached; treat it as read-only)."""
    if name not in BUILTIN_TRACKS:
        raise ValueError(f"unknown built-in track {name!r}; choose from {', '.join(BUILTIN_TRACKS)} or 'random'")
    return _build(name)
