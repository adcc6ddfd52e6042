"""The track registry: what a ``track=`` argument may be."""
from __future__ import annotations

import numpy as np
import pytest

from envs.deepracer import as_track, builtin_track


def test_registry_resolves_names_arrays_and_random():
    oval = builtin_track("oval")
    assert as_track("oval") is oval and as_track(oval) is oval
    assert np.array_equal(as_track(oval.waypoints_array).waypoints_array, oval.waypoints_array)
    a, b = as_track("random", np.random.default_rng(5)), as_track("random", np.random.default_rng(5))
    assert a.name == "random" and np.array_equal(a.waypoints_array, b.waypoints_array)
    with pytest.raises(ValueError, match="random"):
        as_track("random")  # a new track per episode: no one track without a generator
