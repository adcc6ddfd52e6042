"""Where a ``track=`` argument becomes a :class:`Track`: built-in names, ``"random"``, DeepRacer ``.npy``
files, (N, 6) arrays or a Track itself.

It sits above the track sources (built-in sketches, the random generator), so that ``track.py`` needs
none of them and the package has no import circle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .builtin_tracks import BUILTIN_TRACKS, builtin_track
from .random_track import generate_random_track
from .track import Track

TrackLike = Union[Track, str, Path, np.ndarray, Sequence[Sequence[float]]]

RANDOM = "random"            # a new generated track per car per episode
RANDOM_TRACK_WAYPOINTS = 160  # one count for all, so that a run's random tracks stack per car


def is_random(spec: TrackLike) -> bool:
    return isinstance(spec, str) and spec == RANDOM


def as_track(spec: TrackLike, rng: np.random.Generator | None = None) -> Track:
    """Track from a Track, a built-in name, a ``.npy`` path or an (N, 6) array; ``"random"`` draws a new
    track from ``rng`` (it names no one track, so without a generator it is an error)."""
    if isinstance(spec, Track):
        return spec
    if is_random(spec) and rng is not None:
        return generate_random_track(rng, num_waypoints=RANDOM_TRACK_WAYPOINTS)
    if isinstance(spec, (str, Path)):
        if isinstance(spec, str) and spec in BUILTIN_TRACKS:
            return builtin_track(spec)
        path = Path(spec)
        if path.suffix == ".npy" or path.exists():
            return Track(path)
        raise ValueError(f"track={spec!r}: not a built-in track ({', '.join(sorted(BUILTIN_TRACKS))}, "
                         f"'random') nor an existing .npy file")
    return Track(np.asarray(spec))
