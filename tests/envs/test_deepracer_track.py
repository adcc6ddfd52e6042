"""Track geometry: built-in, real DeepRacer and random tracks."""
from __future__ import annotations

import numpy as np
import pytest
from deepracer_helpers import real_track_paths

from envs.deepracer import BUILTIN_TRACKS, Track, builtin_track, generate_random_track
from envs.deepracer.random_track import curvature_radius, is_valid_track, segments_intersect


@pytest.mark.parametrize("name", BUILTIN_TRACKS)
def test_builtin_tracks_are_valid(name):
    t = builtin_track(name)
    assert np.allclose(t.waypoints_array[0], t.waypoints_array[-1])
    assert 15 < t.length < 30 and 0.6 < t.width < 1.0
    assert t.direction == "counterclockwise"
    assert is_valid_track(t, 0.5 * t.width + 0.1)


def test_scalar_queries_on_oval():
    t = builtin_track("oval")
    x, y = t.center[10]
    assert t.distance_from_center(x, y) == pytest.approx(0, abs=1e-9)
    prev, nxt = t.closest_waypoints(x + 1e-3 * t.seg_dir[10][0], y + 1e-3 * t.seg_dir[10][1])
    assert (prev, nxt) == (10, 11)
    assert t.progress(x, y) == pytest.approx(t.cum[10] / t.length * 100)
    # a point 0.2 m to the left of the driving direction
    nx, ny = -t.seg_dir[10][1], t.seg_dir[10][0]
    assert t.is_left_of_center(x + 0.2 * nx, y + 0.2 * ny)
    assert not t.is_left_of_center(x - 0.2 * nx, y - 0.2 * ny)
    assert t.distance_from_center(x + 0.2 * nx, y + 0.2 * ny) == pytest.approx(0.2, abs=1e-6)
    assert t.is_on_track(x + 0.4 * nx, y + 0.4 * ny) and not t.is_on_track(x + 0.5 * nx, y + 0.5 * ny)
    heading = t.heading_at(t.cum[10] + 0.01)
    assert t.wheels_on_track(x, y, heading).all()
    assert not t.wheels_on_track(x + 0.6 * nx, y + 0.6 * ny, heading).any()


def test_track_accepts_open_loop_array_and_rejects_bad_shapes():
    t = builtin_track("oval")
    open_loop = Track(t.waypoints_array[:-1])
    assert open_loop.length == pytest.approx(t.length)
    with pytest.raises(ValueError, match="shape"):
        Track(np.zeros((10, 4)))


@pytest.mark.skipif(not real_track_paths(), reason="shared real tracks not available")
@pytest.mark.parametrize("path", real_track_paths(), ids=lambda p: p.stem)
def test_real_tracks_load_consistently(path):
    raw = np.load(path)
    t = Track(path)
    assert t.name == path.stem
    seg = np.linalg.norm(np.diff(raw[:, :2], axis=0), axis=1)
    assert t.length == pytest.approx(seg.sum())
    assert t.width == pytest.approx(np.linalg.norm(raw[:, 2:4] - raw[:, 4:6], axis=1).mean())
    assert 15 < t.length < 30 and 0.6 < t.width < 1.2
    # progress and distance at the centre waypoints themselves
    for k in range(0, t.num_segments, max(1, t.num_segments // 12)):
        if t.seg_len[k] < 1e-6:
            continue
        x, y = raw[k, :2]
        assert t.distance_from_center(x, y) < 1e-6
        assert t.progress(x, y) == pytest.approx(t.cum[k] / t.length * 100, abs=1e-6)
        assert t.is_on_track(x, y)
        # across the driving direction: inside the left border is on track, 10 cm beyond it is not
        u = t.seg_dir[k]
        normal = np.array([-u[1], u[0]])
        assert t.is_on_track(*(raw[k, :2] + normal * (t.hw_left[k] - 0.05)))
        assert not t.is_on_track(*(raw[k, :2] + normal * (t.hw_left[k] + 0.10)))
        assert not t.is_on_track(*(raw[k, :2] - normal * (t.hw_right[k] + 0.10)))


@pytest.mark.skipif(not real_track_paths(), reason="shared real tracks not available")
def test_real_track_directions():
    names = {p.stem: Track(p) for p in real_track_paths()}
    if {"reInvent2019_track_ccw", "reInvent2019_track_cw"} <= set(names):
        assert names["reInvent2019_track_ccw"].direction == "counterclockwise"
        assert names["reInvent2019_track_cw"].direction == "clockwise"


def test_random_tracks_reproducible_and_valid():
    a, b = generate_random_track(7), generate_random_track(7)
    np.testing.assert_array_equal(a.waypoints_array, b.waypoints_array)
    c = generate_random_track(8)
    assert not np.array_equal(a.waypoints_array, c.waypoints_array)
    directions = set()
    for seed in range(12):
        t = generate_random_track(seed)
        assert len(t.waypoints_array) == 160
        for poly in (t.center, t.inner, t.outer):
            assert not segments_intersect(poly[:-1])
        assert curvature_radius(t.center[:-1]).min() >= max(0.5, 0.5 * t.width + 0.15) - 1e-9
        assert 10 < t.length < 40
        directions.add(t.direction)
    assert directions == {"clockwise", "counterclockwise"}


def test_self_intersection_detector():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    bowtie = np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float)
    assert not segments_intersect(square) and segments_intersect(bowtie)


def test_reversed_track_runs_the_other_way():
    t = builtin_track("circuit")
    r = t.reversed()
    assert r.direction == "clockwise" and r.length == pytest.approx(t.length)
    assert r.width == pytest.approx(t.width)
    x, y = t.center[5]
    assert t.distance_from_center(x, y) == pytest.approx(r.distance_from_center(x, y), abs=1e-9)
