"""Closed-curve helpers that turn a sketched centre line into a track: splines, arc-length resampling,
smoothing, turning radius, self-intersection, and the constant-width DeepRacer waypoint array.

The built-in and the random tracks are both drawn with these, so they live in one place; the only
sibling imported is :mod:`track`, whose :class:`Track` the last step builds.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .track import Track

DEFAULT_SPACING = 0.15  # metres between waypoints, close to DeepRacer's tracks


def closed_catmull_rom(points: np.ndarray, samples_per_segment: int = 32) -> np.ndarray:
    """Dense samples of the closed uniform Catmull-Rom spline through ``points`` (P, D)."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(n):
        p0, p1, p2, p3 = p[i - 1], p[i], p[(i + 1) % n], p[(i + 2) % n]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    return np.concatenate(out)


def resample_closed(curve: np.ndarray, num: int | None = None, spacing: float = DEFAULT_SPACING) -> np.ndarray:
    """Resample a closed curve (open list of points) at uniform arc length; returns ``num`` points."""
    closed = np.vstack([curve, curve[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if num is None:
        num = max(16, int(round(cum[-1] / spacing)))
    s = np.arange(num) * cum[-1] / num
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def smooth_closed(points: np.ndarray, window: int) -> np.ndarray:
    """Circular moving average: rounds off corners a sketch made too tight for the car."""
    if window <= 1:
        return points
    kernel = np.ones(window) / window
    padded = np.concatenate([points[-window:], points, points[:window]])
    return np.stack([np.convolve(padded[:, d], kernel, "same")[window:-window] for d in range(2)], axis=1)


def curvature_radius(center: np.ndarray) -> np.ndarray:
    """Turning radius at each point of a closed, evenly spaced curve (open list of points)."""
    d = np.roll(center, -1, axis=0) - center
    ang = np.arctan2(d[:, 1], d[:, 0])
    dang = np.angle(np.exp(1j * (ang - np.roll(ang, 1))))
    seg = np.linalg.norm(d, axis=1)
    ds = 0.5 * (seg + np.roll(seg, 1))
    return ds / np.maximum(np.abs(dang), 1e-12)


@lru_cache(maxsize=16)
def _segment_pairs(n: int, skip: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=skip)
    keep = (j - i) < n - skip + 1  # the first and last segments are neighbours too
    return i[keep], j[keep]


def segments_intersect(poly: np.ndarray, skip: int = 2) -> bool:
    """True if the closed polyline (open list of points) crosses itself (non-adjacent segments)."""
    a = poly
    e = np.roll(poly, -1, axis=0) - poly
    i, j = _segment_pairs(len(poly), skip)
    ai, aj, ei, ej = a[i], a[j], e[i], e[j]
    d = aj - ai
    cross = lambda u, v: u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]  # noqa: E731
    den = cross(ei, ej)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = cross(d, ej) / den
        u = cross(d, ei) / den
    return bool(np.any((den != 0) & (t > 0) & (t < 1) & (u > 0) & (u < 1)))


def track_from_centerline(center: np.ndarray, width: float, name: str) -> Track:
    """DeepRacer (N, 6) track from an open list of evenly spaced centre points and a constant width."""
    d = np.roll(center, -1, axis=0) - np.roll(center, 1, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)  # left of the driving direction
    left = center + 0.5 * width * normal
    right = center - 0.5 * width * normal
    area = 0.5 * np.sum(center[:, 0] * np.roll(center[:, 1], -1) - np.roll(center[:, 0], -1) * center[:, 1])
    inner, outer = (left, right) if area > 0 else (right, left)
    arr = np.hstack([center, inner, outer])
    return Track(np.vstack([arr, arr[:1]]), name=name)
