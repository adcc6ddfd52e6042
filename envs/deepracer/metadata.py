"""What a DeepRacer ``model_metadata.json`` asks for beyond its action space, honoured or refused by name.

- ``sensor``: ``["FRONT_FACING_CAMERA"]`` -> the camera observation; a list with ``LIDAR`` or ``SECTOR_LIDAR``
  -> the lidar observation (warned: the camera is not fed alongside); ``STEREO_CAMERAS`` -> one front camera
  (warned). Other names are refused.
- ``neural_network``: ``DEEP_CONVOLUTIONAL_NETWORK_SHALLOW`` is the camera policy's CNN (3 conv layers,
  32-64-64); other sizes are warned about, as that network is what gets built.
- ``training_algorithm``: ``clipped_ppo``; ``sac`` is refused (this project trains PPO).
- ``action_space_type``, ``action_space``, ``version``: read; any other key is warned about by name.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

CAMERA = "FRONT_FACING_CAMERA"
STEREO = "STEREO_CAMERAS"
LIDARS = ("LIDAR", "SECTOR_LIDAR", "DISCRETIZED_SECTOR_LIDAR")
SENSORS = (CAMERA, STEREO) + LIDARS
SHALLOW_CNN = "DEEP_CONVOLUTIONAL_NETWORK_SHALLOW"
NETWORKS = (SHALLOW_CNN, "DEEP_CONVOLUTIONAL_NETWORK", "DEEP_CONVOLUTIONAL_NETWORK_DEEP")
ALGORITHMS = ("clipped_ppo",)
KNOWN_KEYS = ("action_space", "action_space_type", "sensor", "neural_network", "training_algorithm", "version")


class MetadataWarning(UserWarning):
    """A model_metadata.json setting that is read but not simulated exactly."""


def _warn(path: Path, text: str) -> None:
    warnings.warn(f"model_metadata {path}: {text}", MetadataWarning, stacklevel=3)


def sensor_observation(sensors: Any, path: Path) -> str:
    """The observation kind ("camera" or "lidar") for a metadata ``sensor`` list."""
    if isinstance(sensors, str):
        sensors = [sensors]
    if not isinstance(sensors, list) or not sensors or not all(isinstance(s, str) for s in sensors):
        raise ValueError(f"model_metadata {path}: sensor={sensors!r}: expected a non-empty list of names "
                         f"({', '.join(SENSORS)})")
    unknown = [s for s in sensors if s not in SENSORS]
    if unknown:
        raise ValueError(f"model_metadata {path}: sensor {unknown[0]!r} is not simulated (allowed: {', '.join(SENSORS)})")
    if any(s in LIDARS for s in sensors):
        if any(s in (CAMERA, STEREO) for s in sensors):
            _warn(path, f"sensor {sensors}: the car gets the lidar observation only (camera images are not "
                        "fed alongside the lidar here)")
        return "lidar"
    if STEREO in sensors:
        _warn(path, "sensor STEREO_CAMERAS is simulated as one front camera (1x120x160)")
    return "camera"


def check_metadata(meta: dict, path: Path) -> None:
    """Refuse what cannot be trained here, warn about what is read but not simulated exactly."""
    algo = meta.get("training_algorithm")
    if algo is not None and str(algo).lower() not in ALGORITHMS:
        raise ValueError(f"model_metadata {path}: training_algorithm={algo!r} is not available "
                         f"(allowed: {', '.join(ALGORITHMS)}; this project trains PPO)")
    net = meta.get("neural_network")
    if net is not None and net != SHALLOW_CNN:
        known = "" if net in NETWORKS else f" (known: {', '.join(NETWORKS)})"
        _warn(path, f"neural_network={net!r}{known}: image observations use the {SHALLOW_CNN} layout "
                    "(3 conv layers); vector observations use policy.hidden_sizes")
    unknown = sorted(k for k in meta if k not in KNOWN_KEYS)
    if unknown:
        _warn(path, f"keys not used here: {', '.join(unknown)}")
