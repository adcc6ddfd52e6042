"""What the car senses: a compact feature vector (default), a lidar fan, or a 160x120 camera image.

Features and lidar are normalised to about [-1, 1] so that a small MLP learns from them directly.
Everything is relative to the car (its own frame), never absolute map coordinates, so a policy can
carry over to tracks it has not seen.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from .car import MAX_STEERING_DEG
from .finite import check_observations
from .raster import BORDER, CENTER, GRASS, ROAD, TrackRaster
from .sim import RaceSim

LOOKAHEAD = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0])  # metres of centre line ahead
LOOKAHEAD_SCALE = 3.0
LIDAR_MIN_RANGE = 0.15   # DeepRacer's lidar reports nothing nearer than this
CAMERA_SHAPE = (1, 120, 160)
FEATURE_BOUND = 5.0      # features are ~[-1, 1] on track; the clip only bounds the space


def feature_names() -> list[str]:
    names = ["speed", "steering", "sin_heading_error", "cos_heading_error", "offset",
             "room_left", "room_right"]
    for d in LOOKAHEAD:
        names += [f"ahead_{d:g}m_forward", f"ahead_{d:g}m_left"]
    return names


class FeatureObserver:
    """speed / max speed, steering / 30, heading error (sin, cos), signed offset / half width, room to
    the left and right border / width, and centre-line points ahead in the car frame / 3 m."""

    def __init__(self, max_speed: float):
        self.max_speed = max(max_speed, 1e-6)
        n = 7 + 2 * len(LOOKAHEAD)
        self.names = feature_names()
        self.space = spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, shape=(n,), dtype=np.float32)

    def __call__(self, sim: RaceSim) -> np.ndarray:
        st, tid = sim.stack, sim.tid
        err = sim.yaw - st.track_angle(tid, sim.seg)
        hl, hr = st.half_widths(tid, sim.seg, sim.t)
        width = hl + hr
        ahead = st.lookahead(tid, sim.s, LOOKAHEAD)
        dx = ahead[..., 0] - sim.x[:, None]
        dy = ahead[..., 1] - sim.y[:, None]
        c, s = np.cos(sim.yaw)[:, None], np.sin(sim.yaw)[:, None]
        out = np.empty((sim.n, self.space.shape[0]), dtype=np.float32)
        out[:, 0] = sim.speed / self.max_speed
        out[:, 1] = sim.steer / MAX_STEERING_DEG
        out[:, 2] = np.sin(err)
        out[:, 3] = np.cos(err)
        out[:, 4] = sim.offset / (0.5 * width)
        out[:, 5] = (hl - sim.offset) / width
        out[:, 6] = (hr + sim.offset) / width
        out[:, 7::2] = (dx * c + dy * s) / LOOKAHEAD_SCALE
        out[:, 8::2] = (dy * c - dx * s) / LOOKAHEAD_SCALE
        check_observations(out, sim.steps, self.names, "features")  # before the clip, which would hide inf
        return np.clip(out, -FEATURE_BOUND, FEATURE_BOUND, out=out)


class LidarObserver:
    """``rays`` distances to the track borders over a ``fov``-degree fan centred ahead, clipped to
    [0.15, range] and divided by range, followed by speed / max speed and steering / 30."""

    def __init__(self, max_speed: float, rays: int = 19, max_range: float = 2.0, fov: float = 180.0):
        if rays < 1 or max_range <= LIDAR_MIN_RANGE:
            raise ValueError(f"lidar_rays={rays}, lidar_range={max_range}: need rays >= 1 and range > "
                             f"{LIDAR_MIN_RANGE} m")
        self.max_speed = max(max_speed, 1e-6)
        self.rays, self.range = int(rays), float(max_range)
        half = np.radians(fov) / 2
        self.angles = np.linspace(-half, half, self.rays) if self.rays > 1 else np.zeros(1)
        self.space = spaces.Box(-1.0, 1.0, shape=(self.rays + 2,), dtype=np.float32)
        self.names = [f"lidar_{i}" for i in range(self.rays)] + ["speed", "steering"]

    def distances(self, sim: RaceSim) -> np.ndarray:
        st, tid = sim.stack, sim.tid
        w = int(np.ceil(self.range / st.min_seg_len)) + 2
        m = st.num_segments
        w = min(w, m // 2)
        idx = (sim.seg[:, None] + np.arange(-w, w + 1)[None, :]) % m          # (n, S)
        ti = tid[:, None]
        a = np.concatenate([st.left[ti, idx], st.right[ti, idx]], axis=1)      # (n, 2S, 2)
        b = np.concatenate([st.left[ti, idx + 1], st.right[ti, idx + 1]], axis=1)
        e = b - a
        ang = sim.yaw[:, None] + self.angles[None, :]                          # (n, R)
        dxr, dyr = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
        ax = (a[..., 0] - sim.x[:, None])[:, None, :]                          # (n, 1, 2S)
        ay = (a[..., 1] - sim.y[:, None])[:, None, :]
        ex, ey = e[..., 0][:, None, :], e[..., 1][:, None, :]
        denom = dxr * ey - dyr * ex
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (ax * ey - ay * ex) / denom
            u = (ax * dyr - ay * dxr) / denom
        hit = (t > 0) & (u >= 0) & (u <= 1) & (np.abs(denom) > 1e-12)
        t = np.where(hit, t, np.inf).min(axis=2)
        return np.clip(t, LIDAR_MIN_RANGE, self.range)

    def __call__(self, sim: RaceSim) -> np.ndarray:
        out = np.empty((sim.n, self.rays + 2), dtype=np.float32)
        out[:, :self.rays] = self.distances(sim) / self.range
        out[:, -2] = sim.speed / self.max_speed
        out[:, -1] = sim.steer / MAX_STEERING_DEG
        check_observations(out, sim.steps, self.names, "lidar")
        return out


class CameraObserver:
    """A front camera: 160x120 grayscale, channel-first (1, 120, 160) uint8.

    Each pixel below the horizon looks up the ground point it sees (pinhole camera 12 cm high, pitched
    down 20 degrees, 120 degree horizontal field of view) in the track raster. About 2,800 steps/s
    for one car and 4,700 for 64 (one core): a per-car gather of 12k pixels.
    """

    SHADES = np.zeros(256, dtype=np.uint8)
    SHADES[[GRASS, ROAD, BORDER, CENTER]] = [60, 115, 250, 185]
    SKY = 200

    def __init__(self, height: float = 0.12, pitch_deg: float = 20.0, hfov_deg: float = 120.0,
                 max_distance: float = 8.0):
        _, h, w = CAMERA_SHAPE
        f = (w / 2) / np.tan(np.radians(hfov_deg) / 2)
        u, v = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
        left, up = -u / f, -v / f
        p = np.radians(pitch_deg)
        dz = -np.sin(p) + up * np.cos(p)
        fwd = np.cos(p) + up * np.sin(p)
        ground = dz < -1e-6
        with np.errstate(divide="ignore"):
            t = np.where(ground, height / -dz, 0.0)
        ground &= t * np.hypot(fwd, left) < max_distance
        self.mask = ground.ravel()
        self.fwd = (t * fwd).ravel()[self.mask]
        self.left = (t * left).ravel()[self.mask]
        self.space = spaces.Box(0, 255, shape=CAMERA_SHAPE, dtype=np.uint8)
        self._rasters: dict[int, tuple] = {}

    def raster(self, track) -> TrackRaster:
        hit = self._rasters.get(id(track))
        if hit is None or hit[0] is not track:  # the cache holds the track, so ids are not reused
            if len(self._rasters) > 256:
                self._rasters.clear()
            hit = self._rasters[id(track)] = (track, TrackRaster(track, resolution=0.02))
        return hit[1]

    def __call__(self, sim: RaceSim) -> np.ndarray:
        _, h, w = CAMERA_SHAPE
        out = np.full((sim.n, h * w), self.SKY, dtype=np.uint8)
        for i in range(sim.n):
            c, s = np.cos(sim.yaw[i]), np.sin(sim.yaw[i])
            gx = sim.x[i] + self.fwd * c - self.left * s
            gy = sim.y[i] + self.fwd * s + self.left * c
            out[i, self.mask] = self.SHADES[self.raster(sim.track_of(i)).lookup(gx, gy)]
        return out.reshape(sim.n, *CAMERA_SHAPE)


def make_observer(kind: str, max_speed: float, lidar_rays: int = 19, lidar_range: float = 2.0,
                  lidar_fov: float = 180.0):
    if kind == "features":
        return FeatureObserver(max_speed)
    if kind == "lidar":
        return LidarObserver(max_speed, lidar_rays, lidar_range, lidar_fov)
    if kind == "camera":
        return CameraObserver()
    raise ValueError(f"observation={kind!r}: allowed 'features', 'lidar' or 'camera'")
