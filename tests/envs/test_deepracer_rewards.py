"""DeepRacer reward functions: classic examples' documented values, user functions, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from envs.deepracer import (DeepRacerEnv, RewardFunctionError, follow_center_line, load_reward_function,
                            prevent_zigzag, progress_speed, stay_inside_borders)
from envs.deepracer.rewards import BUILTIN_REWARDS

PARAM_KEYS = {"all_wheels_on_track", "x", "y", "heading", "steering_angle", "speed", "progress", "steps",
              "distance_from_center", "is_left_of_center", "is_offtrack", "is_crashed", "is_reversed",
              "track_width", "track_length", "waypoints", "closest_waypoints", "objects_location",
              "objects_left_of_center", "objects_speed", "objects_heading", "objects_distance",
              "closest_objects", "object_in_camera"}


def _params(**kw):
    p = {"track_width": 1.0, "distance_from_center": 0.0, "all_wheels_on_track": True, "steering_angle": 0.0}
    p.update(kw)
    return p


@pytest.mark.parametrize("d, expected", [(0.05, 1.0), (0.1, 1.0), (0.2, 0.5), (0.25, 0.5), (0.4, 0.1),
                                         (0.5, 0.1), (0.6, 1e-3)])
def test_follow_center_line_documented_values(d, expected):
    assert follow_center_line(_params(distance_from_center=d)) == expected


@pytest.mark.parametrize("wheels, d, expected", [(True, 0.44, 1.0), (True, 0.46, 1e-3), (False, 0.0, 1e-3)])
def test_stay_inside_borders_documented_values(wheels, d, expected):
    assert stay_inside_borders(_params(all_wheels_on_track=wheels, distance_from_center=d)) == expected


@pytest.mark.parametrize("steer, d, expected", [(-18, 0.1, 0.8), (-12, 0.1, 1.0), (20, 0.2, 0.4),
                                                (15, 0.2, 0.5), (-30, 0.7, 0.8e-3)])
def test_prevent_zigzag_documented_values(steer, d, expected):
    assert prevent_zigzag(_params(steering_angle=steer, distance_from_center=d)) == pytest.approx(expected)


def test_env_params_have_deepracer_keys_and_units():
    env = DeepRacerEnv(track="oval", training=False)
    env.reset(seed=0)
    env.step(9)  # steer +30 (left), 1 m/s
    p = env.params()
    assert set(p) == PARAM_KEYS
    assert p["steps"] == 1 and p["steering_angle"] == 30.0 and p["speed"] == 1.0
    assert -180 <= p["heading"] <= 180 and 0 <= p["progress"] < 1
    assert p["closest_waypoints"] == [0, 1] and len(p["waypoints"]) == len(env.track.center)
    assert p["is_left_of_center"] is True and p["is_reversed"] is False
    assert p["track_width"] == pytest.approx(0.9) and p["track_length"] == pytest.approx(env.track.length)
    assert p["objects_location"] == [] and p["object_in_camera"] is False


@pytest.mark.parametrize("name", list(BUILTIN_REWARDS))
def test_vectorised_builtins_match_scalar(name):
    fn = BUILTIN_REWARDS[name]
    env_fast = DeepRacerEnv(track="circuit", reward_function=name)
    env_slow = DeepRacerEnv(track="circuit", reward_function=lambda p: fn(p))
    rng = np.random.default_rng(0)
    env_fast.reset(seed=3)
    env_slow.reset(seed=3)
    for _ in range(150):
        a = int(rng.integers(10))
        _, r1, te, tr, _ = env_fast.step(a)
        _, r2, *_ = env_slow.step(a)
        assert r1 == pytest.approx(r2, rel=1e-9, abs=1e-12)
        if te or tr:
            env_fast.reset()
            env_slow.reset()


COMMUNITY = '''
import math

def reward_function(params):
    """Reward heading along the track direction (a popular community recipe)."""
    waypoints = params["waypoints"]
    prev_wp, next_wp = params["closest_waypoints"]
    track_direction = math.degrees(math.atan2(waypoints[next_wp][1] - waypoints[prev_wp][1],
                                              waypoints[next_wp][0] - waypoints[prev_wp][0]))
    diff = abs(track_direction - params["heading"])
    if diff > 180:
        diff = 360 - diff
    reward = 1.0 if params["all_wheels_on_track"] else 1e-3
    if diff > 10.0:
        reward *= 0.5
    return float(reward)
'''


def test_community_reward_from_file_runs(tmp_path):
    path = tmp_path / "reward.py"
    path.write_text(COMMUNITY)
    env = DeepRacerEnv(track="circuit", reward_function=str(path))
    env.reset(seed=0)
    rewards = [env.step(4)[1] for _ in range(10)]
    assert rewards[0] == 1.0 and all(r in (1.0, 0.5, 1e-3, 5e-4) for r in rewards)


@pytest.mark.parametrize("fn, match", [
    (lambda p: 1 / 0, "raised ZeroDivisionError"),
    (lambda p: None, "returned None"),
    (lambda p: "1.0", "returned '1.0'"),
    (lambda p: float("nan"), "must be finite"),
    (lambda p: math.inf, "must be finite"),
    (lambda p: p["no_such_key"], "raised KeyError"),
])
def test_bad_reward_functions_raise_clear_errors(fn, match):
    env = DeepRacerEnv(reward_function=fn)
    env.reset(seed=0)
    with pytest.raises(RewardFunctionError, match=match) as err:
        env.step(0)
    msg = str(err.value)
    assert "params:" in msg and "waypoints>" in msg and "'track_width'" in msg
    assert isinstance(err.value, ValueError)


def test_loading_bad_reward_files(tmp_path):
    no_fn = tmp_path / "no_fn.py"
    no_fn.write_text("def reward(params):\n    return 1.0\n")
    with pytest.raises(RewardFunctionError, match="no function named 'reward_function'"):
        load_reward_function(str(no_fn))
    bad = tmp_path / "bad.py"
    bad.write_text("def reward_function(params)\n    return 1.0\n")
    with pytest.raises(RewardFunctionError, match="syntax error at line 1"):
        load_reward_function(bad)
    with pytest.raises(RewardFunctionError, match="file not found"):
        load_reward_function(str(tmp_path / "missing.py"))
    with pytest.raises(RewardFunctionError, match="built-in name"):
        load_reward_function("follow_the_leader")


def test_default_reward_prefers_progress():
    p = {"all_wheels_on_track": True, "is_offtrack": False, "waypoints": [(0, 0), (1, 0)],
         "closest_waypoints": [0, 1], "heading": 0.0, "speed": 1.0, "distance_from_center": 0.0,
         "track_width": 1.0}
    assert progress_speed(p) == pytest.approx(1.001)
    assert progress_speed({**p, "heading": 180.0}) == pytest.approx(1e-3)
    assert progress_speed({**p, "distance_from_center": 0.5}) == pytest.approx(0.501)
    assert progress_speed({**p, "all_wheels_on_track": False}) == 1e-3
