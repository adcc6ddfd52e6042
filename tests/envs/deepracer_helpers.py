"""Shared helpers for the DeepRacer env tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED_TRACKS = Path(__file__).resolve().parents[2] / ".." / "shared" / "tracks"


def real_track_paths() -> list[Path]:
    return sorted(SHARED_TRACKS.glob("*.npy")) if SHARED_TRACKS.is_dir() else []


def pursuit_action(sim, i: int = 0, lookahead: float = 0.6, steer_limit: float = 30.0) -> tuple[float, float]:
    """Pure-pursuit steering (degrees) toward the centre line ``lookahead`` metres ahead of car ``i``."""
    from envs.deepracer.car import WHEELBASE

    tid = sim.tid[i:i + 1]
    p = sim.stack.lookahead(tid, sim.s[i:i + 1], np.array([lookahead]))[0, 0]
    dx, dy = p[0] - sim.x[i], p[1] - sim.y[i]
    alpha = np.arctan2(dy, dx) - sim.yaw[i]
    alpha = np.angle(np.exp(1j * alpha))
    steer = np.degrees(np.arctan2(2 * WHEELBASE * np.sin(alpha), np.hypot(dx, dy)))
    return float(np.clip(steer, -steer_limit, steer_limit)), 1.0


def nearest_discrete(steer: float, speed: float, table: np.ndarray) -> int:
    return int(np.argmin(np.abs(table[:, 0] - steer) + 10 * np.abs(table[:, 1] - speed)))
