"""Track geometry in DeepRacer's waypoint format and the queries a reward function needs.

A track is an (N, 6) array: centre x, y, inner border x, y, outer border x, y per waypoint, a closed
loop whose last row repeats the first. Waypoint indices are kept exactly as given so that
``closest_waypoints`` matches the indices a DeepRacer user sees in their own ``.npy`` file.

Batched queries (many cars, possibly many tracks of equal size) work on a :class:`TrackStack`, the
structure-of-arrays form that the simulator uses; the scalar :class:`Track` methods call the same code.

This module imports no sibling: everything else in the package builds on it (names and files become
tracks in :mod:`track_registry`, sketches in :mod:`geometry`).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

MAX_COORDINATE = 1e5  # metres: real tracks span tens of metres; far beyond this, squared distances overflow
FINE_SAMPLES = 1024  # uniform arc-length samples of the centre line, used for look-ahead queries

# DeepRacer's on-track rule looks at the car's four wheels, so their layout lives with the rule;
# the car's kinematics (car.py) use the same wheelbase.
WHEELBASE = 0.165          # m, front to rear axle
AXLE_TRACK = 0.16          # m, left to right wheel


def wheel_offsets() -> np.ndarray:
    """Wheel contact points (4, 2) in the car frame relative to its centre: (forward, left)."""
    f, s = WHEELBASE / 2, AXLE_TRACK / 2
    return np.array([[f, s], [f, -s], [-f, s], [-f, -s]])


def _unit_directions(vec: np.ndarray) -> np.ndarray:
    """Unit vectors of segments; zero-length segments borrow the next non-degenerate direction."""
    length = np.linalg.norm(vec, axis=1)
    good = length > 1e-9
    if not good.any():
        raise ValueError("track centre line has no non-zero segment")
    out = np.zeros_like(vec)
    out[good] = vec[good] / length[good, None]
    idx = np.flatnonzero(good)
    # for each segment, the index of the next good segment (cyclically)
    pos = np.searchsorted(idx, np.arange(len(vec)))
    nxt = idx[pos % len(idx)]
    return out[nxt] if not good.all() else out


def read_track_file(path: Path) -> np.ndarray:
    """The array in a DeepRacer ``.npy`` track file; unreadable files raise one-line errors naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"track file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"track file {path}: not a readable .npy array ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'empty file'})") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise ValueError(f"track file {path}: holds several arrays (.npz); expected one (N, 6) .npy array")
    if data.size == 0:
        raise ValueError(f"track file {path}: the array is empty (shape {data.shape}); expected (N>=4, 6)")
    return data


def check_coordinates(arr: np.ndarray, source: str) -> None:
    """Refuse NaN, infinities and coordinates so large that distances overflow (|value| > MAX_COORDINATE)."""
    bad = ~np.isfinite(arr) | (np.abs(arr) > MAX_COORDINATE)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{source}: waypoint {row} column {col} is {float(arr[row, col])}; coordinates "
                                  f"must be finite metres within +-{MAX_COORDINATE:g}")


class Track:
    """A closed DeepRacer-format track with the geometric queries DeepRacer's ``params`` expose.

    Args:
        waypoints: (N, 6) array, or a path to a DeepRacer ``.npy`` file.
        name: label used in renders and logs.
    """

    def __init__(self, waypoints: Union[np.ndarray, str, Path, Sequence], name: str | None = None):
        source = "track waypoints"
        if isinstance(waypoints, (str, Path)):
            path = Path(waypoints)
            name = name or path.stem
            source = f"track file {path}"
            waypoints = read_track_file(path)
        try:
            arr = np.asarray(waypoints, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: expected an (N, 6) array of numbers") from None
        if arr.ndim != 2 or arr.shape[1] != 6 or arr.shape[0] < 4:
            raise ValueError(f"{source}: waypoints must have shape (N>=4, 6), got {arr.shape}")
        check_coordinates(arr, source)
        if not np.allclose(arr[0], arr[-1]):
            arr = np.vstack([arr, arr[:1]])  # close the loop like DeepRacer files do
        self.name = name or "custom"
        self.waypoints_array = arr
        self.center = arr[:, 0:2].copy()
        self.inner = arr[:, 2:4].copy()
        self.outer = arr[:, 4:6].copy()
        self.num_segments = len(arr) - 1
        seg_vec = self.center[1:] - self.center[:-1]
        self.seg_vec = seg_vec
        self.seg_len = np.linalg.norm(seg_vec, axis=1)
        self.seg_dir = _unit_directions(seg_vec)
        self.cum = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.length = float(self.cum[-1])
        self.width = float(np.mean(np.linalg.norm(self.inner - self.outer, axis=1)))
        c = self.center[:-1]
        area = 0.5 * np.sum(c[:, 0] * np.roll(c[:, 1], -1) - np.roll(c[:, 0], -1) * c[:, 1])
        self.direction = "counterclockwise" if area > 0 else "clockwise"
        # which border lies left of the driving direction (inner for a counter-clockwise loop)
        wp_dir = np.vstack([self.seg_dir, self.seg_dir[:1]])
        rel = self.inner - self.center
        inner_left = np.mean(wp_dir[:, 0] * rel[:, 1] - wp_dir[:, 1] * rel[:, 0]) > 0
        self.left, self.right = (self.inner, self.outer) if inner_left else (self.outer, self.inner)
        # half widths measured across the driving direction (some tracks' border points are skewed)
        incoming = np.vstack([self.seg_dir[-1:], self.seg_dir])
        normal_dir = incoming + wp_dir
        normal_dir /= np.maximum(np.linalg.norm(normal_dir, axis=1, keepdims=True), 1e-12)
        lat = lambda p: np.abs(normal_dir[:, 0] * (p - self.center)[:, 1] - normal_dir[:, 1] * (p - self.center)[:, 0])  # noqa: E731
        self.hw_left = np.maximum(lat(self.left), 0.05)
        self.hw_right = np.maximum(lat(self.right), 0.05)
        s = np.arange(FINE_SAMPLES) * (self.length / FINE_SAMPLES)
        self.fine = np.stack([np.interp(s, self.cum, self.center[:, 0]),
                              np.interp(s, self.cum, self.center[:, 1])], axis=1)
        self.min_seg_len = float(max(np.min(self.seg_len[self.seg_len > 1e-9]), 1e-3))
        self._waypoint_list: list | None = None
        self._stack: TrackStack | None = None

    # ------------------------------------------------------------------ convenience
    @property
    def waypoints(self) -> list:
        """Centre-line waypoints as a list of (x, y) tuples, DeepRacer's ``params['waypoints']``."""
        if self._waypoint_list is None:
            self._waypoint_list = [(float(x), float(y)) for x, y in self.center]
        return self._waypoint_list

    def __repr__(self) -> str:
        return (f"Track(name={self.name!r}, waypoints={len(self.center)}, length={self.length:.2f} m, "
                f"width={self.width:.2f} m, direction={self.direction})")

    def stack(self) -> "TrackStack":
        """This track as a one-track stack (cached: the scalar queries below run on it)."""
        if self._stack is None:
            self._stack = TrackStack.from_tracks([self])
        return self._stack

    # ------------------------------------------------------------------ scalar queries
    def project(self, x: float, y: float) -> dict:
        """Nearest point on the centre line: segment index, arc position s, signed offset (left > 0)."""
        st = self.stack()
        r = st.project(np.zeros(1, dtype=np.int64), np.array([x], float), np.array([y], float))
        return {k: (v[0].item() if isinstance(v, np.ndarray) else v) for k, v in r.items()}

    def closest_waypoints(self, x: float, y: float) -> tuple[int, int]:
        """Indices [previous, next] of the waypoints around the car, in driving order."""
        seg = self.project(x, y)["seg"]
        return seg, (seg + 1) % self.num_segments

    def distance_from_center(self, x: float, y: float) -> float:
        return abs(self.project(x, y)["offset"])

    def is_left_of_center(self, x: float, y: float) -> bool:
        return self.project(x, y)["offset"] > 0

    def progress(self, x: float, y: float, start_s: float = 0.0) -> float:
        """Percent (0-100) of the lap between the start position ``start_s`` and the car's projection."""
        s = self.project(x, y)["s"]
        return float(((s - start_s) % self.length) / self.length * 100.0)

    def half_widths(self, x: float, y: float) -> tuple[float, float]:
        """Distance from the centre line to the left and right border at the car's projection."""
        p = self.project(x, y)
        k, t = p["seg"], p["t"]
        return (float(self.hw_left[k] * (1 - t) + self.hw_left[k + 1] * t),
                float(self.hw_right[k] * (1 - t) + self.hw_right[k + 1] * t))

    def is_on_track(self, x: float, y: float) -> bool:
        p = self.project(x, y)
        hl, hr = self.half_widths(x, y)
        return -hr <= p["offset"] <= hl

    def wheels_on_track(self, x: float, y: float, heading_deg: float) -> np.ndarray:
        """Per-wheel on-track flags (front-left, front-right, rear-left, rear-right)."""
        st = self.stack()
        tid = np.zeros(1, dtype=np.int64)
        p = st.project(tid, np.array([x], float), np.array([y], float))
        return st.wheels_on_track(tid, p, np.array([np.radians(heading_deg)]), wheel_offsets())[0]

    def reversed(self) -> "Track":
        """The same loop driven the other way round (DeepRacer's clockwise / counter-clockwise pairs)."""
        return Track(self.waypoints_array[::-1].copy(), name=f"{self.name}_reversed")

    def heading_at(self, s: float) -> float:
        """Direction of travel (degrees) of the centre line at arc position ``s``."""
        k = int(np.clip(np.searchsorted(self.cum, s % self.length, side="right") - 1, 0, self.num_segments - 1))
        d = self.seg_dir[k]
        return float(np.degrees(np.arctan2(d[1], d[0])))

    def point_at(self, s: float) -> tuple[float, float]:
        s = s % self.length
        return float(np.interp(s, self.cum, self.center[:, 0])), float(np.interp(s, self.cum, self.center[:, 1]))


@dataclass
class TrackStack:
    """Several tracks with the same waypoint count, stacked for vectorised queries.

    Arrays are indexed [track, ...]; a car refers to its track through an integer ``tid``.
    """

    center: np.ndarray    # (T, N, 2)
    seg_vec: np.ndarray   # (T, M, 2)
    seg_len: np.ndarray   # (T, M)
    seg_dir: np.ndarray   # (T, M, 2)
    cum: np.ndarray       # (T, N)
    hw_left: np.ndarray   # (T, N)
    hw_right: np.ndarray  # (T, N)
    fine: np.ndarray      # (T, K, 2)
    left: np.ndarray      # (T, N, 2) border left of the driving direction
    right: np.ndarray     # (T, N, 2)
    length: np.ndarray    # (T,)
    width: np.ndarray     # (T,)
    window: int           # half-width (in segments) of the local projection search

    @classmethod
    def from_tracks(cls, tracks: Sequence[Track], max_step: float = 0.3, window: int | None = None) -> "TrackStack":
        n = {len(t.center) for t in tracks}
        if len(n) != 1:
            raise ValueError("tracks in a stack must have the same number of waypoints")
        st = lambda attr: np.stack([getattr(t, attr) for t in tracks])  # noqa: E731
        min_seg = min(t.min_seg_len for t in tracks)
        m = tracks[0].num_segments
        if window is None:
            window = int(np.ceil(max_step / min_seg) + 3)
        window = int(min(m // 2, window))
        return cls(st("center"), st("seg_vec"), st("seg_len"), st("seg_dir"), st("cum"), st("hw_left"),
                   st("hw_right"), st("fine"), st("left"), st("right"), np.array([t.length for t in tracks]),
                   np.array([t.width for t in tracks]), window)

    def set_track(self, slot: int, track: Track) -> None:
        """Replace one track in place (a new random track for one car)."""
        for attr in ("center", "seg_vec", "seg_len", "seg_dir", "cum", "hw_left", "hw_right", "fine", "left", "right"):
            getattr(self, attr)[slot] = getattr(track, attr)
        self.length[slot] = track.length
        self.width[slot] = track.width

    @property
    def num_segments(self) -> int:
        return self.seg_len.shape[1]

    @property
    def min_seg_len(self) -> float:
        return float(max(self.seg_len[self.seg_len > 1e-9].min(), 1e-3))

    def project(self, tid: np.ndarray, px: np.ndarray, py: np.ndarray,
                hint: np.ndarray | None = None) -> dict:
        """Project points onto their track's centre line.

        With ``hint`` (previous segment per car) only a window of nearby segments is searched, which is
        both faster and keeps a car on its own leg of a hairpin; without it every segment is searched.
        Returns seg (segment index), t (0-1 along it), s (arc position), offset (signed, left > 0).
        """
        m = self.num_segments
        if hint is None:
            cand = np.broadcast_to(np.arange(m), (len(px), m))
        else:
            cand = (hint[:, None] + np.arange(-self.window, self.window + 1)[None, :]) % m
        ti = tid[:, None]
        a = self.center[ti, cand]                      # (n, W, 2)
        v = self.seg_vec[ti, cand]
        l2 = np.maximum(v[..., 0] ** 2 + v[..., 1] ** 2, 1e-18)
        rx = px[:, None] - a[..., 0]
        ry = py[:, None] - a[..., 1]
        t = np.clip((rx * v[..., 0] + ry * v[..., 1]) / l2, 0.0, 1.0)
        dx = rx - t * v[..., 0]
        dy = ry - t * v[..., 1]
        d2 = dx * dx + dy * dy
        j = np.argmin(d2, axis=1)
        rows = np.arange(len(px))
        seg = cand[rows, j]
        tt = t[rows, j]
        dxx, dyy = dx[rows, j], dy[rows, j]
        u = self.seg_dir[tid, seg]
        cross = u[:, 0] * dyy - u[:, 1] * dxx
        dist = np.sqrt(d2[rows, j])
        offset = np.where(cross >= 0, dist, -dist)
        s = self.cum[tid, seg] + tt * self.seg_len[tid, seg]
        return {"seg": seg, "t": tt, "s": s, "offset": offset}

    def half_widths(self, tid: np.ndarray, seg: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hl = self.hw_left[tid, seg] * (1 - t) + self.hw_left[tid, seg + 1] * t
        hr = self.hw_right[tid, seg] * (1 - t) + self.hw_right[tid, seg + 1] * t
        return hl, hr

    def wheels_on_track(self, tid: np.ndarray, proj: dict, yaw: np.ndarray, wheels: np.ndarray) -> np.ndarray:
        """Per-wheel on-track flags (n, 4): each wheel's lateral offset against the local borders."""
        seg = proj["seg"]
        u = self.seg_dir[tid, seg]
        rel = yaw - np.arctan2(u[:, 1], u[:, 0])
        sn, cs = np.sin(rel), np.cos(rel)
        lat = proj["offset"][:, None] + wheels[None, :, 0] * sn[:, None] + wheels[None, :, 1] * cs[:, None]
        hl, hr = self.half_widths(tid, seg, proj["t"])
        return (lat <= hl[:, None]) & (lat >= -hr[:, None])

    def track_angle(self, tid: np.ndarray, seg: np.ndarray) -> np.ndarray:
        u = self.seg_dir[tid, seg]
        return np.arctan2(u[:, 1], u[:, 0])

    def lookahead(self, tid: np.ndarray, s: np.ndarray, distances: np.ndarray) -> np.ndarray:
        """Centre-line points (n, D, 2) at arc distances ahead of arc positions ``s``."""
        k = self.fine.shape[1]
        ds = self.length[tid] / k
        j = np.rint((s[:, None] + distances[None, :]) / ds[:, None]).astype(np.int64) % k
        return self.fine[tid[:, None], j]

