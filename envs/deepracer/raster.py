"""A top-down raster of a track (grass / road / border line / centre line), shared by the camera
sensor and the renderer so that both see exactly the same world. Pure numpy."""
from __future__ import annotations

import numpy as np

from .track import Track

GRASS, ROAD, BORDER, CENTER = 0, 1, 2, 3


def _triangle_fill(grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, tri: np.ndarray, value: int,
                   to_px) -> None:
    """Set cells whose centres lie inside triangle ``tri`` (3, 2) in world metres."""
    (c0, r0), (c1, r1) = to_px(tri.min(axis=0)), to_px(tri.max(axis=0))
    rmin, rmax = max(min(r0, r1), 0), min(max(r0, r1) + 1, grid.shape[0])
    cmin, cmax = max(c0, 0), min(c1 + 1, grid.shape[1])
    if rmin >= rmax or cmin >= cmax:
        return
    px = gx[cmin:cmax][None, :]
    py = gy[rmin:rmax][:, None]
    (ax, ay), (bx, by), (cx, cy) = tri
    d1 = (px - bx) * (ay - by) - (ax - bx) * (py - by)
    d2 = (px - cx) * (by - cy) - (bx - cx) * (py - cy)
    d3 = (px - ax) * (cy - ay) - (cx - ax) * (py - ay)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    inside = ~(neg & pos)
    sub = grid[rmin:rmax, cmin:cmax]
    sub[inside] = value


def _line_fill(grid: np.ndarray, gx: np.ndarray, gy: np.ndarray, a: np.ndarray, b: np.ndarray,
               half_width: float, value: int, to_px) -> None:
    """Set cells within ``half_width`` of segment a-b."""
    lo = np.minimum(a, b) - half_width
    hi = np.maximum(a, b) + half_width
    (c0, r1), (c1, r0) = to_px(lo), to_px(hi)
    rmin, rmax = max(r0, 0), min(r1 + 1, grid.shape[0])
    cmin, cmax = max(c0, 0), min(c1 + 1, grid.shape[1])
    if rmin >= rmax or cmin >= cmax:
        return
    px = gx[cmin:cmax][None, :] - a[0]
    py = gy[rmin:rmax][:, None] - a[1]
    v = b - a
    l2 = max(float(v @ v), 1e-12)
    t = np.clip((px * v[0] + py * v[1]) / l2, 0, 1)
    d2 = (px - t * v[0]) ** 2 + (py - t * v[1]) ** 2
    sub = grid[rmin:rmax, cmin:cmax]
    sub[d2 <= half_width * half_width] = value


class TrackRaster:
    """Grid of surface codes over the track's bounding box; row 0 is the top (largest y).

    Args:
        track: the track to draw.
        resolution: metres per cell.
        margin: metres of grass around the outer border.
    """

    def __init__(self, track: Track, resolution: float = 0.02, margin: float = 0.4):
        self.track = track
        self.resolution = resolution
        pts = np.vstack([track.inner, track.outer])
        self.x0 = float(pts[:, 0].min() - margin)
        self.y1 = float(pts[:, 1].max() + margin)
        width = int(np.ceil((pts[:, 0].max() + margin - self.x0) / resolution))
        height = int(np.ceil((self.y1 - (pts[:, 1].min() - margin)) / resolution))
        self.grid = np.zeros((height, width), dtype=np.uint8)
        gx = self.x0 + (np.arange(width) + 0.5) * resolution
        gy = self.y1 - (np.arange(height) + 0.5) * resolution
        to_px = self.to_pixel
        left, right = track.left, track.right
        for k in range(track.num_segments):
            _triangle_fill(self.grid, gx, gy, np.array([left[k], left[k + 1], right[k + 1]]), ROAD, to_px)
            _triangle_fill(self.grid, gx, gy, np.array([left[k], right[k + 1], right[k]]), ROAD, to_px)
        line = 0.025
        dash = 0.15
        for k in range(track.num_segments):
            mid = 0.5 * (track.cum[k] + track.cum[k + 1])
            if int(mid // dash) % 2 == 0:
                _line_fill(self.grid, gx, gy, track.center[k], track.center[k + 1], line / 2, CENTER, to_px)
        for border in (left, right):
            for k in range(track.num_segments):
                _line_fill(self.grid, gx, gy, border[k], border[k + 1], line, BORDER, to_px)

    def to_pixel(self, xy: np.ndarray) -> tuple[int, int]:
        """(column, row) of a world point."""
        return (int(np.floor((xy[0] - self.x0) / self.resolution)),
                int(np.floor((self.y1 - xy[1]) / self.resolution)))

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Surface codes at world points (grass outside the raster)."""
        c = np.floor((x - self.x0) / self.resolution).astype(np.int64)
        r = np.floor((self.y1 - y) / self.resolution).astype(np.int64)
        h, w = self.grid.shape
        ok = (c >= 0) & (c < w) & (r >= 0) & (r < h)
        out = np.zeros(x.shape, dtype=np.uint8)
        out[ok] = self.grid[r[ok], c[ok]]
        return out
