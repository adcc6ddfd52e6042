"""DeepRacer-v0 through the `rlhf` command: the README's main job, lap metrics, simtrace logs,
evaluation artefacts, replay, DeepRacer's own files, user reward functions and generalisation."""
import json
import subprocess

import pytest

from cli_helpers import ROOT, SHARED_TRACKS, rlhf_cmd, scalar_tags

CONFIGS = ROOT / "configs"
COMMUNITY_REWARD = '''
import math

def reward_function(params):
    """Reward heading along the track direction (a widely shared community example)."""
    waypoints = params["waypoints"]
    prev_wp, next_wp = params["closest_waypoints"]
    x0, y0 = waypoints[prev_wp]
    x1, y1 = waypoints[next_wp]
    track_direction = math.degrees(math.atan2(y1 - y0, x1 - x0))
    diff = abs(track_direction - params["heading"])
    if diff > 180:
        diff = 360 - diff
    reward = 1.0 if diff < 10.0 else 0.5
    if not params["all_wheels_on_track"]:
        reward = 1e-3
    return float(reward)
'''


def run(*args):
    return subprocess.run(rlhf_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The README's main job, exactly: configs/deepracer.yaml on the built-in track."""
    run_dir = tmp_path_factory.mktemp("deepracer") / "run"
    proc = run("train", str(CONFIGS / "deepracer.yaml"), "seed=0", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return run_dir


def test_main_job_laps_the_track(trained):
    proc = run("eval", str(trained), "--episodes", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["episodes"] == 20
    assert result["lap_completion_rate"] >= 0.9, result
    assert result["mean_progress"] >= 90 and result["mean_lap_time"] > 0


def test_metrics_logs_and_artefacts(trained, tmp_path):
    tags = scalar_tags(trained)
    for tag in ("deepracer/progress_mean", "deepracer/lap_completion_rate", "deepracer/lap_time_mean",
                "deepracer/off_track_rate", "rollout/ep_rew_mean", "train/value_loss"):
        assert tag in tags
    header = (trained / "simtrace" / "training-simtrace.csv").open().readline().strip()
    assert header == ("episode,steps,X,Y,yaw,steer,throttle,action,reward,done,all_wheels_on_track,progress,"
                      "closest_waypoint,track_len,tstamp,episode_status")
    gif = tmp_path / "lap.gif"
    proc = run("eval", str(trained), "--episodes", "1", "--video", str(gif))
    assert proc.returncode == 0, proc.stderr
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert (trained / "simtrace" / "evaluation-simtrace.csv").stat().st_size > 1000
    assert (trained / "simtrace" / "evaluation-trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_rescoring(trained, tmp_path):
    reward = tmp_path / "double.py"
    reward.write_text("def reward_function(params):\n    return 2.0\n")
    proc = run("deepracer", "replay", str(trained), "--reward", str(reward), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows and all(r["new_total"] == pytest.approx(2.0 * r["steps"]) for r in rows)
    assert all(r["original_total"] > 0 for r in rows)


def test_community_reward_and_console_files(tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(COMMUNITY_REWARD)
    run_dir = tmp_path / "run"
    proc = run("train", str(CONFIGS / "deepracer.yaml"), f"deepracer.reward_function={reward}",
               f"deepracer.hyperparameters={ROOT / 'tests' / 'data' / 'hyperparameters.json'}",
               "total_timesteps=6000", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "reward_function: " + str(reward) in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("body, words", [
    ("    raise KeyError('speedd')\n", ["raised", "speedd", "params", "'progress'"]),
    ("    return float('nan')\n", ["nan", "params"]),
    ("    return 'fast'\n", ["'fast'", "params"]),
])
def test_bad_reward_function_stops_cleanly(tmp_path, body, words):
    reward = tmp_path / "reward.py"
    reward.write_text("def reward_function(params):\n" + body)
    proc = run("train", str(CONFIGS / "deepracer.yaml"), f"deepracer.reward_function={reward}",
               "total_timesteps=2000", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr


@pytest.mark.skipif(not SHARED_TRACKS.is_dir(), reason="real DeepRacer tracks not available")
def test_lidar_policy_from_random_tracks_laps_real_tracks(tmp_path):
    run_dir = tmp_path / "lidar"
    proc = run("train", str(CONFIGS / "deepracer_lidar.yaml"), "seed=0", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    for track in ("reinvent_base.npy", "Bowtie_track.npy"):
        ev = run("eval", str(run_dir), "--episodes", "10", "--json", f"env.kwargs.track={SHARED_TRACKS / track}")
        assert ev.returncode == 0, ev.stderr
        assert json.loads(ev.stdout)["lap_completion_rate"] >= 0.7, (track, ev.stdout)
