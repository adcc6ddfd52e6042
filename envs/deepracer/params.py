"""The ``params`` dict handed to a DeepRacer reward function, with DeepRacer's keys and units."""
from __future__ import annotations

from typing import Sequence

# Keys about other objects on the track (object-avoidance races); this environment has none.
_NO_OBJECTS = {
    "closest_objects": [0, 0],
    "objects_distance": [],
    "objects_heading": [],
    "objects_left_of_center": [],
    "objects_location": [],
    "objects_speed": [],
    "object_in_camera": False,
}


def make_params(*, waypoints: Sequence[tuple[float, float]], x: float, y: float, heading: float,
                steering_angle: float, speed: float, progress: float, steps: int,
                all_wheels_on_track: bool, is_offtrack: bool, prev_waypoint: int, next_waypoint: int,
                offset: float, track_width: float, track_length: float, is_reversed: bool) -> dict:
    """One car's params.

    Units as in DeepRacer: metres, m/s, degrees (heading in (-180, 180], steering positive = left),
    progress in percent of a lap from the episode's start, ``steps`` counting from 1. ``speed`` is the
    speed commanded by the action, as DeepRacer reports it. ``is_reversed`` is True when the track is
    driven clockwise. ``offset`` is the signed distance from the centre line (left > 0).
    """
    params = {
        "all_wheels_on_track": bool(all_wheels_on_track),
        "x": float(x),
        "y": float(y),
        "heading": float(heading),
        "steering_angle": float(steering_angle),
        "speed": float(speed),
        "progress": float(progress),
        "steps": int(steps),
        "distance_from_center": abs(float(offset)),
        "is_left_of_center": bool(offset > 0),
        "is_offtrack": bool(is_offtrack),
        "is_crashed": False,
        "is_reversed": bool(is_reversed),
        "track_width": float(track_width),
        "track_length": float(track_length),
        "waypoints": list(waypoints),
        "closest_waypoints": [int(prev_waypoint), int(next_waypoint)],
    }
    params.update({k: (list(v) if isinstance(v, list) else v) for k, v in _NO_OBJECTS.items()})
    return params
