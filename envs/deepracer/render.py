"""Top-down pictures: frames of cars on a track, GIFs of episodes, PNGs of trajectories by speed."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .annotate import BLACK, WHITE, colour_bar, draw_line, draw_text
from .car import CAR_LENGTH, CAR_WIDTH
from .imageio import write_gif, write_png
from .raster import TrackRaster
from .track import Track
from .track_registry import as_track

_COLORS = np.array([[46, 120, 50],     # grass
                    [90, 90, 96],      # road
                    [245, 245, 245],   # border
                    [230, 200, 40]],   # centre line
                   dtype=np.uint8)
_CAR_COLORS = np.array([[220, 40, 40], [40, 90, 230], [250, 140, 0], [150, 40, 200], [0, 190, 190],
                        [250, 250, 0]], dtype=np.uint8)


@lru_cache(maxsize=8)
def _raster(track: Track, resolution: float) -> TrackRaster:
    return TrackRaster(track, resolution=resolution)


def track_image(track: Track, resolution: float = 0.02) -> tuple[np.ndarray, TrackRaster]:
    """RGB image of the track alone and the raster that maps world metres to its pixels."""
    r = _raster(track, resolution)
    return _COLORS[r.grid], r


def _fill_polygon(img: np.ndarray, raster: TrackRaster, poly: np.ndarray, color: np.ndarray) -> None:
    """Fill a convex polygon given in world metres."""
    cols = (poly[:, 0] - raster.x0) / raster.resolution
    rows = (raster.y1 - poly[:, 1]) / raster.resolution
    c0, c1 = int(max(np.floor(cols.min()), 0)), int(min(np.ceil(cols.max()) + 1, img.shape[1]))
    r0, r1 = int(max(np.floor(rows.min()), 0)), int(min(np.ceil(rows.max()) + 1, img.shape[0]))
    if c0 >= c1 or r0 >= r1:
        return
    cc, rr = np.meshgrid(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
    inside = np.ones(cc.shape, dtype=bool)
    n = len(poly)
    area = np.sum(cols * np.roll(rows, -1) - np.roll(cols, -1) * rows)
    sign = 1.0 if area > 0 else -1.0
    for i in range(n):
        ax, ay, bx, by = cols[i], rows[i], cols[(i + 1) % n], rows[(i + 1) % n]
        inside &= sign * ((bx - ax) * (rr - ay) - (by - ay) * (cc - ax)) >= 0
    img[r0:r1, c0:c1][inside] = color


def car_polygon(x: float, y: float, yaw: float, scale: float = 1.0) -> np.ndarray:
    """Car outline (5 points, a pointed nose) in world metres; ``yaw`` in radians."""
    l, w = CAR_LENGTH * scale / 2, CAR_WIDTH * scale / 2
    local = np.array([[-l, -w], [l * 0.6, -w], [l, 0.0], [l * 0.6, w], [-l, w]])
    c, s = np.cos(yaw), np.sin(yaw)
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def _to_px(raster: TrackRaster, x: float, y: float) -> tuple[float, float]:
    """World metres -> (row, column) of the raster's image."""
    return (raster.y1 - y) / raster.resolution, (x - raster.x0) / raster.resolution


def _text_scale(img: np.ndarray) -> int:
    return max(1, img.shape[0] // 150)


def render_frame(track: Track, x: Sequence[float], y: Sequence[float], yaw: Sequence[float],
                 resolution: float = 0.02, text: str | None = None) -> np.ndarray:
    """RGB (H, W, 3) top-down frame of ``track`` with one car per (x, y, yaw[rad]) entry, each with a short
    line showing where it points, and ``text`` (e.g. step, speed, progress) in the top-left corner."""
    img, raster = track_image(track, resolution)
    img = img.copy()
    for i, (xi, yi, yawi) in enumerate(zip(x, y, yaw)):
        color = _CAR_COLORS[i % len(_CAR_COLORS)]
        _fill_polygon(img, raster, car_polygon(xi, yi, yawi, scale=1.5), color)
        nose = _to_px(raster, xi + 0.2 * np.cos(yawi), yi + 0.2 * np.sin(yawi))
        tip = _to_px(raster, xi + 0.45 * np.cos(yawi), yi + 0.45 * np.sin(yawi))
        draw_line(img, nose, tip, color, width=2)
    if text:
        scale = _text_scale(img)
        draw_text(img, text, 2 * scale, 2 * scale, scale)
    return img


def status_text(steps: int, speed: float, progress: float) -> str:
    """The frame overlay: step, speed (m/s) and lap progress (percent)."""
    return f"STEP {int(steps)} {float(speed):.2f} M/S {float(progress):.1f}%"


def save_gif(frames: Iterable[np.ndarray], path: str | Path, fps: float = 15.0) -> Path:
    """Save (H, W, 3) frames (e.g. from ``env.render()``) as an animated GIF."""
    write_gif(path, list(frames), fps=fps)
    return Path(path)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    write_png(path, image)
    return Path(path)


def _speed_color(v: np.ndarray, vmax: float) -> np.ndarray:
    """Blue (slow) -> green -> red (fast)."""
    t = np.clip(v / max(vmax, 1e-6), 0, 1)[:, None]
    blue, green, red = np.array([40, 80, 255.0]), np.array([40, 220, 60.0]), np.array([255, 40, 30.0])
    return np.where(t < 0.5, blue + (green - blue) * (t * 2), green + (red - green) * (t * 2 - 1)).astype(np.uint8)


def plot_trajectories(track: Track | str | Path | np.ndarray, trajectories: Sequence[np.ndarray],
                      path: str | Path, resolution: float = 0.02, vmax: float | None = None) -> Path:
    """PNG of trajectories over the track, coloured by speed, with the start line, an arrow showing the
    driving direction and a speed colour bar (labelled in m/s) on the right.

    Args:
        trajectories: arrays of shape (T, 3) holding x, y, speed per step (e.g. from a simtrace).
        vmax: speed mapped to full red; default the fastest logged speed.
    """
    tr = as_track(track)
    img, raster = track_image(tr, resolution)
    img = img.copy()
    trajs = [np.asarray(t, dtype=np.float64) for t in trajectories]
    vmax = vmax or max((float(t[:, 2].max()) for t in trajs if len(t)), default=1.0)
    h, w = img.shape[:2]
    for t in trajs:
        if len(t) < 2:
            continue
        seg = np.linalg.norm(np.diff(t[:, :2], axis=0), axis=1)
        n = np.maximum(np.ceil(seg / (resolution * 0.5)).astype(int), 1)
        idx = np.repeat(np.arange(len(seg)), n)
        frac = np.concatenate([np.arange(k) / k for k in n])
        pts = t[idx, :3] + (t[idx + 1, :3] - t[idx, :3]) * frac[:, None]
        cols = np.floor((pts[:, 0] - raster.x0) / resolution).astype(int)
        rows = np.floor((raster.y1 - pts[:, 1]) / resolution).astype(int)
        color = _speed_color(pts[:, 2], vmax)
        for dr in (0, 1):
            for dc in (0, 1):
                ok = (rows + dr >= 0) & (rows + dr < h) & (cols + dc >= 0) & (cols + dc < w)
                img[rows[ok] + dr, cols[ok] + dc] = color[ok]
    _start_and_direction(img, raster, tr)
    bar = _speed_color(np.linspace(0.0, vmax, 64), vmax)
    scale = _text_scale(img)
    img = colour_bar(img, bar, "0.00", f"{vmax:.2f} M/S", scale)
    write_png(path, img)
    return Path(path)


def _start_and_direction(img: np.ndarray, raster: TrackRaster, track: Track) -> None:
    """A chequered start line across the road at waypoint 0, and an arrow just after it pointing the way
    the track is driven."""
    a, b = _to_px(raster, *track.left[0]), _to_px(raster, *track.right[0])
    n = 8
    for k in range(n):
        t0, t1 = k / n, (k + 1) / n
        p0 = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
        p1 = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
        draw_line(img, p0, p1, WHITE if k % 2 else BLACK, width=3)
    s = min(0.4, 0.05 * track.length)
    (cx, cy), heading = track.point_at(s), np.radians(track.heading_at(s))
    size = 0.5 * track.width
    d, n_ = np.array([np.cos(heading), np.sin(heading)]), np.array([-np.sin(heading), np.cos(heading)])
    c = np.array([cx, cy])
    arrow = np.array([c + d * size * 0.6, c - d * size * 0.4 + n_ * size * 0.35, c - d * size * 0.4 - n_ * size * 0.35])
    _fill_polygon(img, raster, arrow, WHITE)
