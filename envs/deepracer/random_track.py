"""Building tracks from centre-line sketches, and procedurally generated random tracks.

Random tracks exist so that a policy trained on many shapes generalises to tracks it never saw. The
centre line is a periodic spline of the radius r(theta) through random radial control points, so it is
star-shaped around the origin and cannot cross itself; each candidate is then checked (minimum
curvature radius, borders free of self-intersection) and rejected until one passes, with every draw
taken from one seeded generator so the same seed always gives the same track.
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


def curvature_radius(center: np.ndarray) -> np.ndarray:
    """Turning radius at each point of a closed, evenly spaced curve (open list of points)."""
    d = np.roll(center, -1, axis=0) - center
    ang = np.arctan2(d[:, 1], d[:, 0])
    dang = np.angle(np.exp(1j * (ang - np.roll(ang, 1))))
    seg = np.linalg.norm(d, axis=1)
    ds = 0.5 * (seg + np.roll(seg, 1))
    return ds / np.maximum(np.abs(dang), 1e-12)


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


def is_valid_track(track: Track, min_radius: float) -> bool:
    """Minimum turning radius respected and neither border nor centre line crosses itself."""
    c = track.center[:-1]
    if curvature_radius(c).min() < min_radius:
        return False
    return not any(segments_intersect(p[:-1]) for p in (track.center, track.inner, track.outer))


def generate_random_track(seed: int | np.random.Generator | None = None, *, num_waypoints: int = 160,
                          width: tuple[float, float] = (0.7, 1.1), size: tuple[float, float] = (2.5, 4.5),
                          min_radius: float = 0.5, num_controls: tuple[int, int] = (7, 13),
                          max_tries: int = 500) -> Track:
    """A random closed track, reproducible from ``seed``.

    Args:
        seed: int seed or a numpy Generator (consumed) for the draw.
        num_waypoints: fixed waypoint count, so that tracks of one run can be stacked per car.
        width: range of the constant track width (metres, border to border).
        size: range of the mean radius of the loop (metres); real tracks span about 17-30 m.
        min_radius: smallest allowed turning radius of the centre line (metres).
        num_controls: range of the number of radial control points (more = twistier).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(max_tries):
        k = int(rng.integers(num_controls[0], num_controls[1] + 1))
        base = rng.uniform(*size)
        radii = base * rng.uniform(0.55, 1.0, size=k)
        theta = np.arange(k) * 2 * np.pi / k + rng.uniform(0, 2 * np.pi)
        # periodic spline of r(theta): star-shaped around the origin, so the centre line is simple
        r_fine = closed_catmull_rom(radii[:, None], 64)[:, 0]
        th_fine = theta[0] + np.arange(len(r_fine)) * 2 * np.pi / len(r_fine)
        pts = np.stack([r_fine * np.cos(th_fine), r_fine * np.sin(th_fine)], axis=1)
        pts *= np.array([rng.uniform(1.0, 1.6), rng.uniform(0.7, 1.0)])  # stretch into a rectangle-ish loop
        if rng.random() < 0.5:
            pts = pts[::-1].copy()  # clockwise half of the time
        w = float(rng.uniform(*width))
        center = resample_closed(pts, num=num_waypoints - 1)
        center -= center.min(axis=0) - 0.75  # positive coordinates like DeepRacer's tracks
        track = track_from_centerline(center, w, name="random")
        if is_valid_track(track, max(min_radius, 0.5 * w + 0.15)):
            return track
    raise RuntimeError("could not generate a valid random track; relax min_radius or size")
