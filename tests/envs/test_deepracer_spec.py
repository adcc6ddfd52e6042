"""The race options: one keyword-only object behind both envs, with the public keyword names fixed."""
from __future__ import annotations

import dataclasses

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers DeepRacer-v0)
from envs.deepracer import DeepRacerEnv, RaceSpec, builtin_track

# users' configs pass these words to gym.make / gym.make_vec: renaming one breaks them
PUBLIC_OPTIONS = ("track", "action_space_type", "actions", "model_metadata", "steering_range", "speed_range",
                  "observation", "lidar_rays", "lidar_range", "lidar_fov", "reward_function",
                  "max_episode_steps", "training", "simtrace_path", "reward_timeout_s", "user_code",
                  "hyperparameters")


def test_spec_fields_are_the_public_keywords_and_keyword_only():
    assert tuple(f.name for f in dataclasses.fields(RaceSpec)) == PUBLIC_OPTIONS
    with pytest.raises(TypeError):
        RaceSpec("oval")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RaceSpec().track = "oval"  # type: ignore[misc]


def test_both_envs_hand_the_same_options_down():
    kw = dict(track="oval", action_space_type="continuous", speed_range=(0.5, 2.0), observation="lidar",
              lidar_rays=7, max_episode_steps=9, training=False)
    single = DeepRacerEnv(**kw)
    vec = gym.make_vec("DeepRacer-v0", num_envs=3, vectorization_mode="vector_entry_point", **kw).unwrapped
    for core in (single.core, vec.core):
        assert core.actions.speed_range == (0.5, 2.0)
        assert core.observer.rays == 7 and core.sim.max_episode_steps == 9 and not core.sim.training
        assert core.sim.track_of(0) is builtin_track("oval")
    with pytest.raises(TypeError, match="trak"):
        DeepRacerEnv(trak="oval")



@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 0, "5", True])
def test_reward_timeout_is_checked_with_a_builtin_reward_too(value):
    with pytest.raises(ValueError, match="reward_timeout_s=.*: must be a positive number of seconds or None"):
        RaceSpec(reward_function="progress_speed", reward_timeout_s=value)
    assert RaceSpec(reward_timeout_s=2.5).reward_timeout_s == 2.5
    assert RaceSpec(reward_timeout_s=None).reward_timeout_s is None
