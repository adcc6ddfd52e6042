"""Procedurally generated random tracks.

Random tracks exist so that a policy trained on many shapes generalises to tracks it never saw. The
centre line is a periodic spline of the radius r(theta) through random radial control points, so it is
star-shaped around the origin and cannot cross itself; each candidate is then checked (minimum
curvature radius, borders free of self-intersection) and rejected until one passes, with every draw
taken from one seeded generator so the same seed always gives the same track.
"""
from __future__ import annotations

import numpy as np

from .geometry import (closed_catmull_rom, curvature_radius, resample_closed, segments_intersect,
                       track_from_centerline)
from .track import Track


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
