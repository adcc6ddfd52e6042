"""The single DeepRacer env: API checks, episode rules, action spaces, files and rendering."""
from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from deepracer_helpers import nearest_discrete, pursuit_action
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers DeepRacer-v0)
from envs.deepracer import DeepRacerEnv, load_model_metadata, plot_trajectories, save_gif
from envs.deepracer.car import DT

MODES = [dict(), dict(action_space_type="continuous"), dict(observation="lidar"),
         dict(observation="lidar", track="random", action_space_type="continuous"), dict(observation="camera")]


@pytest.mark.parametrize("kwargs", MODES, ids=["features", "continuous", "lidar", "random-lidar", "camera"])
def test_gymnasium_and_sb3_env_checkers(kwargs):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(DeepRacerEnv(**kwargs), skip_render_check=True)
    sb3_check_env(DeepRacerEnv(**kwargs), warn=True)


def test_camera_observation():
    env = DeepRacerEnv(observation="camera")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 120, 160) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert len(np.unique(obs)) >= 3  # sky, grass, road, lines


def test_gym_make_registers_env():
    env = gym.make("DeepRacer-v0", track="oval", observation="lidar", lidar_rays=7)
    obs, info = env.reset(seed=0)
    assert obs.shape == (9,) and info["episode_status"] == "in_progress"


def test_gym_make_max_episode_steps_truncates():
    env = gym.make("DeepRacer-v0", max_episode_steps=5)  # gymnasium's TimeLimit takes this argument
    env.reset(seed=0)
    for _ in range(5):
        *_, term, trunc, info = env.step(5)
    assert trunc and not term


def test_sb3_ppo_runs_a_few_hundred_steps():
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    model = PPO("MlpPolicy", DeepRacerEnv(), n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)


def _drive(env, controller, max_steps=3000):
    obs, info = env.reset(seed=0)
    for _ in range(max_steps):
        obs, r, term, trunc, info = env.step(controller(env))
        if term or trunc:
            return term, trunc, info
    raise AssertionError("episode did not end")


def test_scripted_driver_completes_a_lap():
    env = DeepRacerEnv(track="circuit", training=False)
    table = env.core.actions.table
    term, trunc, info = _drive(env, lambda e: nearest_discrete(*pursuit_action(e.sim), table))
    assert term and not trunc and info["episode_status"] == "lap_complete"
    assert info["progress"] == 100.0
    assert info["lap_time"] == pytest.approx(env.sim.steps[0] * DT)
    assert env.track.length / 1.0 < info["lap_time"] < env.track.length / 0.5


def test_off_track_ends_episode():
    env = DeepRacerEnv(track="circuit", training=False)
    term, trunc, info = _drive(env, lambda e: 9)  # full left at 1 m/s: circles off the road
    assert term and info["episode_status"] == "off_track" and "lap_time" not in info
    assert not env.sim.wheels[0].any()


def test_reversed_ends_episode():
    env = DeepRacerEnv(track="oval", training=False)
    env.reset(seed=0)
    env.sim.yaw[:] += np.pi  # facing backwards on the start line
    for k in range(40):
        *_, term, trunc, info = env.step(5)  # straight ahead = backwards along the track
        if term:
            break
    assert info["episode_status"] == "reversed" and k + 1 == 15


def test_immobilized_and_time_up():
    env = DeepRacerEnv(action_space_type="continuous", speed_range=(0.0, 0.0))
    term, trunc, info = _drive(env, lambda e: np.zeros(2, np.float32))
    assert term and info["episode_status"] == "immobilized" and env.sim.steps[0] == 30
    env = DeepRacerEnv(max_episode_steps=5)
    term, trunc, info = _drive(env, lambda e: 5)
    assert trunc and not term and info["episode_status"] == "time_up"


def test_training_starts_advance_round_robin():
    env = DeepRacerEnv(track="oval", training=True)
    starts = []
    env.reset(seed=0)
    for _ in range(4):
        starts.append(env.sim.start_s[0] / env.track.length)
        env.reset()
    np.testing.assert_allclose(starts, [0.0, 0.05, 0.10, 0.15])
    env.reset(seed=0)  # a seeded reset starts the cycle again
    assert env.sim.start_s[0] == 0.0
    ev = DeepRacerEnv(track="oval", training=False)
    for _ in range(3):
        ev.reset()
        assert ev.sim.start_s[0] == 0.0


def test_continuous_actions_scale_like_deepracer():
    env = DeepRacerEnv(action_space_type="continuous", steering_range=(-20, 30), speed_range=(0.5, 3.0))
    steer, speed = env.core.actions.to_controls(np.array([[-1, -1], [0, 0], [1, 1], [2, 2]]))
    np.testing.assert_allclose(steer, [-20, 5, 30, 30])
    np.testing.assert_allclose(speed, [0.5, 1.75, 3.0, 3.0])
    with pytest.raises(ValueError, match="steering"):
        DeepRacerEnv(action_space_type="continuous", steering_range=(-45, 45))


def test_model_metadata(tmp_path):
    disc = tmp_path / "disc.json"
    disc.write_text(json.dumps({"action_space": [
        {"steering_angle": 0, "speed": 2.0, "index": 1}, {"steering_angle": -30, "speed": 1.0, "index": 0}],
        "sensor": ["FRONT_FACING_CAMERA"], "action_space_type": "discrete"}))
    meta = load_model_metadata(disc)
    assert meta["actions"] == [{"steering_angle": -30.0, "speed": 1.0}, {"steering_angle": 0.0, "speed": 2.0}]
    env = DeepRacerEnv(model_metadata=disc)
    assert env.action_space == gym.spaces.Discrete(2)
    cont = tmp_path / "cont.json"
    cont.write_text(json.dumps({"action_space": {"steering_angle": {"high": 25.0, "low": -25.0},
                                                 "speed": {"high": 3.0, "low": 1.0}},
                                "action_space_type": "continuous"}))
    env = DeepRacerEnv(model_metadata=cont)
    assert isinstance(env.action_space, gym.spaces.Box)
    assert env.core.actions.steering_range == (-25.0, 25.0) and env.core.actions.speed_range == (1.0, 3.0)
    with pytest.raises(ValueError, match="action_space"):
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        load_model_metadata(bad)


def test_bad_kwargs_name_the_key():
    with pytest.raises(ValueError, match="observation='radar'"):
        DeepRacerEnv(observation="radar")
    with pytest.raises(ValueError, match="track='nowhere'"):
        DeepRacerEnv(track="nowhere")
    with pytest.raises(ValueError, match="action_space_type"):
        DeepRacerEnv(action_space_type="multi")


def test_render_gif_and_trajectory_png(tmp_path):
    env = DeepRacerEnv(track="oval", render_mode="rgb_array")
    env.reset(seed=0)
    frames, traj = [env.render()], []
    for _ in range(10):
        env.step(5)
        frames.append(env.render())
        traj.append((env.sim.x[0], env.sim.y[0], env.sim.speed[0]))
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])
    gif = save_gif(frames, tmp_path / "ep.gif")
    png = plot_trajectories("oval", [np.array(traj)], tmp_path / "traj.png")
    assert gif.read_bytes()[:6] == b"GIF89a" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pil = pytest.importorskip("PIL.Image")
    with pil.open(gif) as im:
        assert im.n_frames == len(frames) and im.size == frames[0].shape[1::-1]
        im.seek(3)
        got = np.asarray(im.convert("RGB")).astype(int)
        assert np.abs(got - frames[3]).mean() < 30  # palette quantisation only
    with pil.open(png) as im:  # the track picture plus a speed colour bar on its right
        assert im.size[1] == frames[0].shape[0] and im.size[0] == frames[0].shape[1] + 49
