"""Nothing lost, nothing silent, on the env side: user reward code contained (exits, BaseExceptions, hangs,
signals), NaN/inf and float32 overflow refused where they enter, track / metadata / simtrace files refused
in one line, and DeepRacer's model_metadata settings honoured or refused by name."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from envs.deepracer import (DeepRacerEnv, MetadataWarning, NonFiniteRewardError, NonFiniteValueError,
                            RewardFunctionError, SimTraceWriter, Track, UserCodeInterrupted, builtin_track,
                            load_model_metadata, load_reward_function, replay)
from envs.deepracer.guard import Guard
from envs.deepracer.simtrace import COLUMNS
from envs.deepracer.vector_env import DeepRacerVectorEnv


def reward_file(tmp_path, body: str, header: str = "") -> str:
    path = tmp_path / "reward.py"
    path.write_text(header + "def reward_function(params):\n" + body)
    return str(path)


# ----------------------------------------------------------------------------- user code contained
@pytest.mark.parametrize("body, said", [
    ("    raise SystemExit(3)\n", "called sys.exit(3)"),
    ("    import sys; sys.exit()\n", "called sys.exit(None)"),
    ("    raise KeyboardInterrupt('mine')\n", "raised KeyboardInterrupt: mine"),
    ("    raise GeneratorExit()\n", "raised GeneratorExit"),
    ("    raise Custom('boom')\n", "raised Custom: boom"),
])
def test_base_exceptions_from_a_reward_call_become_one_line_errors(tmp_path, body, said):
    env = DeepRacerEnv(track="oval", reward_function=reward_file(tmp_path, body, "class Custom(BaseException): pass\n"))
    env.reset(seed=0)
    with pytest.raises(RewardFunctionError) as err:
        env.step(4)
    message = str(err.value)
    assert "\n" not in message
    assert f"reward function 'reward_function' at env 0, step 1 {said}; params: {{" in message


@pytest.mark.parametrize("module, said", [
    ("import sys\nsys.exit(0)\n", "failed to import: it called sys.exit(0)"),
    ("raise KeyboardInterrupt\n", "failed to import: it raised KeyboardInterrupt"),
    ("def reward_function(params)\n    return 1\n", "syntax error at line 1"),
])
def test_import_time_exits_and_errors_are_refused(tmp_path, module, said):
    path = tmp_path / "r.py"
    path.write_text(module)
    with pytest.raises(RewardFunctionError, match=re.escape(f"reward_function file {path}: {said}")):
        load_reward_function(str(path))


def test_a_hanging_reward_times_out_with_the_limit_named(tmp_path):
    env = DeepRacerEnv(track="oval", reward_timeout_s=0.2,
                       reward_function=reward_file(tmp_path, "    while True:\n        pass\n"))
    env.reset(seed=0)
    start = time.perf_counter()
    with pytest.raises(RewardFunctionError, match=r"at env 0, step 1 did not return within 0.2 s \(reward_timeout_s\)"):
        env.step(4)
    assert time.perf_counter() - start < 2.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left armed


def test_an_import_that_hangs_times_out(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(RewardFunctionError, match="failed to import: it did not return within 0.2 s"):
        load_reward_function(str(path), timeout_s=0.2)


def test_sigterm_during_a_hanging_reward_reaches_the_stop_flag_and_undoes_the_step(tmp_path):
    """The trainer's handler sees the request, the reward is interrupted at once and the env is left exactly
    as after its last completed step, so the trainer can checkpoint it."""
    body = "    import time\n    if params['steps'] >= 3:\n        time.sleep(60)\n    return 1.0\n"
    env = DeepRacerVectorEnv(num_envs=2, track="oval", reward_function=reward_file(tmp_path, body))
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.array([4, 4]))
    before = env.get_state()
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        start = time.perf_counter()
        with pytest.raises(UserCodeInterrupted) as err:
            env.step(np.array([4, 4]))
        elapsed = time.perf_counter() - start
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and err.value.env_step_undone and elapsed < 5.0
    after = env.get_state()
    for key in ("x", "y", "yaw", "speed", "steps", "progress", "status"):
        np.testing.assert_array_equal(after[key], before[key])
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored after the batch


def test_guard_restores_handlers_and_passes_values():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    with Guard(1.0) as guard:
        assert guard.call(lambda a: a * 2, 21) == 42
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(ValueError, match="reward_timeout_s=0"):
        Guard(0)


def test_user_code_false_never_imports_the_file(tmp_path):
    marker = tmp_path / "imported"
    path = tmp_path / "r.py"
    path.write_text(f"open({str(marker)!r}, 'w').close()\ndef reward_function(params):\n    return 5.0\n")
    env = DeepRacerEnv(track="oval", reward_function=str(path), user_code=False)
    env.reset(seed=0)
    _, reward, *_ = env.step(4)
    assert not marker.exists() and reward != 5.0


# ----------------------------------------------------------------------------- non-finite values refused
@pytest.mark.parametrize("value, why", [("float('nan')", "it must be finite"), ("float('-inf')", "it must be finite"),
                                        ("1.7e308", "it overflows float32")])
def test_non_finite_and_float32_overflowing_rewards_are_refused(tmp_path, value, why):
    body = f"    return {value} if params['steps'] == 2 else 1.0\n"
    env = DeepRacerVectorEnv(num_envs=3, track="oval", reward_function=reward_file(tmp_path, body))
    env.reset(seed=0)
    env.step(np.array([4, 4, 4]))
    with pytest.raises(NonFiniteRewardError, match=f"at env 0, step 2 returned .*; {why}"):
        env.step(np.array([4, 4, 4]))


def test_a_non_finite_observation_names_env_step_and_feature():
    env = DeepRacerVectorEnv(num_envs=3, track="oval")
    env.reset(seed=0)
    env.sim.x = env.sim.x.copy()
    env.sim.x[1] = np.nan
    with pytest.raises(NonFiniteValueError, match=r"observation ahead_0.25m_forward of env 1 at step 0 is nan \(features\)"):
        env.core.observe()


def test_a_built_in_reward_that_meets_nan_is_refused():
    env = DeepRacerVectorEnv(num_envs=2, track="oval")
    env.reset(seed=0)
    env.sim.speed_cmd = np.array([1.0, np.nan])
    with pytest.raises(NonFiniteRewardError, match="built-in reward 'progress_speed' gave nan for env 1 at step 0"):
        env.core.rewards()


@pytest.mark.parametrize("edit, words", [
    (lambda w: w.__setitem__((3, 1), 1e300), "waypoint 3 column 1 is 1e+300; coordinates must be finite"),
    (lambda w: w.__setitem__((2, 0), np.nan), "waypoint 2 column 0 is nan"),
])
def test_track_files_with_huge_or_nan_coordinates_are_refused(tmp_path, edit, words):
    w = builtin_track("oval").waypoints_array.copy()
    edit(w)
    np.save(tmp_path / "t.npy", w)
    with pytest.raises(ValueError, match=re.escape(f"track file {tmp_path / 't.npy'}: {words}")):
        Track(tmp_path / "t.npy")


@pytest.mark.parametrize("content, words", [
    (np.zeros((0, 6)), "the array is empty"),
    (np.zeros((0,)), "the array is empty"),
    (b"", "not a readable .npy array"),
    (b"not numpy", "not a readable .npy array"),
    (np.zeros((5, 3)), r"waypoints must have shape \(N>=4, 6\), got \(5, 3\)"),
])
def test_unreadable_or_empty_track_files_fail_in_one_line(tmp_path, content, words):
    path = tmp_path / "t.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=words) as err:
        DeepRacerEnv(track=str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_non_finite_actions_are_refused():
    with pytest.raises(ValueError, match="must be finite numbers"):
        DeepRacerEnv(actions=[{"steering_angle": float("nan"), "speed": 1.0}])


# ----------------------------------------------------------------------------- model_metadata honoured or refused
def metadata(tmp_path, **extra) -> str:
    meta = {"action_space": [{"steering_angle": s, "speed": 1.0, "index": i} for i, s in enumerate((-20, 0, 20))],
            "action_space_type": "discrete", "version": "5", **extra}
    path = tmp_path / "model_metadata.json"
    path.write_text(json.dumps(meta))
    return str(path)


@pytest.mark.parametrize("sensor, kind, shape", [
    (["FRONT_FACING_CAMERA"], "camera", (1, 120, 160)),
    (["SECTOR_LIDAR"], "lidar", (21,)),
])
def test_the_sensor_list_chooses_the_observation(tmp_path, sensor, kind, shape):
    env = DeepRacerEnv(track="oval", model_metadata=metadata(tmp_path, sensor=sensor))
    assert env.observation_space.shape == shape and env.action_space.n == 3


def test_an_explicit_observation_wins_over_the_sensor_with_a_warning(tmp_path):
    with pytest.warns(MetadataWarning, match="observation='features' is used; .*FRONT_FACING_CAMERA.*'camera'"):
        env = DeepRacerEnv(track="oval", observation="features",
                           model_metadata=metadata(tmp_path, sensor=["FRONT_FACING_CAMERA"]))
    assert env.observation_space.shape == (23,)


@pytest.mark.parametrize("extra, error", [
    ({"training_algorithm": "sac"}, "training_algorithm='sac' is not available"),
    ({"sensor": ["THERMAL_CAMERA"]}, "sensor 'THERMAL_CAMERA' is not simulated"),
    ({"action_space": [1, 2]}, "must be a list of actions"),
])
def test_metadata_that_cannot_be_trained_here_is_refused(tmp_path, extra, error):
    with pytest.raises(ValueError, match=error):
        load_model_metadata(metadata(tmp_path, **extra))


@pytest.mark.parametrize("extra, warning", [
    ({"neural_network": "DEEP_CONVOLUTIONAL_NETWORK_DEEP"}, "neural_network='DEEP_CONVOLUTIONAL_NETWORK_DEEP'"),
    ({"sensor": ["STEREO_CAMERAS"]}, "STEREO_CAMERAS is simulated as one front camera"),
    ({"sensor": ["FRONT_FACING_CAMERA", "LIDAR"]}, "lidar observation only"),
    ({"preprocess_type": "GREY_SCALE"}, "keys not used here: preprocess_type"),
])
def test_metadata_read_but_not_simulated_exactly_is_warned_about_by_name(tmp_path, extra, warning):
    with pytest.warns(MetadataWarning, match=warning):
        load_model_metadata(metadata(tmp_path, **extra))


# ----------------------------------------------------------------------------- simtrace files
def write_log(path, track_len: float, rows: int = 3) -> None:
    with SimTraceWriter(path) as w:
        for i in range(rows):
            w.write(episode=0, steps=i + 1, X=1.0, Y=0.5, yaw=0.0, steer=0.0, throttle=1.0, action="4",
                    reward=1.0, done=False, all_wheels_on_track=True, progress=1.0, closest_waypoint=0,
                    track_len=track_len, tstamp=0.0, episode_status="in_progress")


def test_replay_refuses_a_log_from_another_track(tmp_path):
    csv = tmp_path / "log.csv"
    write_log(csv, builtin_track("circuit").length)
    with pytest.raises(ValueError, match=r"logged on a track 19.65 m long, but track 'oval' is 18.05 m"):
        replay(csv, "progress_speed", "oval")
    assert [r["steps"] for r in replay(csv, "progress_speed", "circuit")] == [3]


@pytest.mark.parametrize("text, words", [
    ("a,b\n1,2\n", r"not a simtrace CSV \(missing columns: episode, steps"),
    (",".join(COLUMNS) + "\n0,1,x,0,0,0,1,4,1,False,True,1,0,19,0,in_progress\n", "line 2: could not convert"),
    (",".join(COLUMNS) + "\n0,1,nan,0,0,0,1,4,1,False,True,1,0,19,0,in_progress\n", "line 2: X = nan is not a finite"),
])
def test_malformed_simtrace_files_fail_in_one_line(tmp_path, text, words):
    csv = tmp_path / "log.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=words) as err:
        replay(csv, "progress_speed", "circuit")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- pictures
def test_frames_carry_step_speed_and_progress_and_plots_a_speed_bar(tmp_path):
    from envs.deepracer import plot_trajectories
    from envs.deepracer.render import status_text, track_image

    env = DeepRacerEnv(track="oval", render_mode="rgb_array", training=False)
    env.reset(seed=0)
    for _ in range(3):
        env.step(5)
    assert status_text(env.sim.steps[0], env.sim.speed[0], env.sim.progress[0]).startswith("STEP 3 0.")
    frame = env.render()
    plain = track_image(env.track)[0]
    white = lambda img: int((img[:8, :120] == 255).all(axis=2).sum())  # noqa: E731
    assert white(plain) == 0 and white(frame) > 40
    path = tmp_path / "t.png"
    plot_trajectories("oval", [np.array([[1.6, 0.8, 0.5], [2.0, 0.8, 1.0]])], path)
    width = int.from_bytes(path.read_bytes()[16:20], "big")
    assert width > plain.shape[1] + 40  # the colour bar and its labels sit right of the track
