"""Kinematic bicycle model of a DeepRacer-sized car, stepped for many cars at once.

The car turns about its rear axle (curvature tan(steer) / wheelbase) and approaches the commanded speed
at a bounded acceleration. A lateral grip limit caps curvature at high speed (the car understeers), so
going fast costs cornering ability: speed is a real trade-off, as on a physical car.
"""
from __future__ import annotations

import numpy as np

from .track import WHEELBASE  # the wheel layout lives with the on-track rule

CAR_LENGTH = 0.26          # m, body (for drawing)
CAR_WIDTH = 0.20           # m
MAX_STEERING_DEG = 30.0
MAX_SPEED = 4.0            # m/s
STEPS_PER_SECOND = 15
DT = 1.0 / STEPS_PER_SECOND
MAX_ACCEL = 3.0            # m/s^2 when speeding up
MAX_BRAKE = 5.0            # m/s^2 when slowing down
MAX_LATERAL_ACCEL = 6.0    # m/s^2 grip limit: v^2 * curvature is capped at this


def step_cars(x: np.ndarray, y: np.ndarray, yaw: np.ndarray, speed: np.ndarray,
              steer_deg: np.ndarray, speed_cmd: np.ndarray, dt: float = DT
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance cars by one step. ``x, y`` is the car centre, ``yaw`` radians; returns new x, y, yaw, speed."""
    dv = speed_cmd - speed
    dv = np.clip(dv, -MAX_BRAKE * dt, MAX_ACCEL * dt)
    v_new = np.maximum(speed + dv, 0.0)
    v = 0.5 * (speed + v_new)  # average speed over the step
    curv = np.tan(np.radians(steer_deg)) / WHEELBASE
    cap = MAX_LATERAL_ACCEL / np.maximum(v * v, 1e-6)
    curv = np.clip(curv, -cap, cap)
    dyaw = v * curv * dt
    mid = yaw + 0.5 * dyaw
    dist = v * dt
    x = x + dist * np.cos(mid)
    y = y + dist * np.sin(mid)
    yaw = np.angle(np.exp(1j * (yaw + dyaw)))
    return x, y, yaw, v_new
