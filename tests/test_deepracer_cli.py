"""DeepRacer-v0 through the `rlhf` command: the README's main job, lap metrics, simtrace logs,
evaluation artefacts, replay, DeepRacer's own files, user reward functions and generalisation."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from cli_helpers import ROOT, SHARED_TRACKS, rlhf_cmd, scalar_tags, sigterm_while_hanging
from rlhf.cli import main
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.integrations import deepracer as hooks

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
    # each evaluation writes its own simtrace, named by track and time
    assert sorted((trained / "simtrace").glob("evaluation-circuit-*-simtrace.csv"))[-1].stat().st_size > 1000
    png = sorted((trained / "simtrace").glob("evaluation-circuit-*-trajectories.png"))[-1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    saved = (run_dir / "config.yaml").read_text()
    assert "reward_function: '{run_dir}/user/reward.py'" in saved  # the run's own copy
    assert (run_dir / "user" / "reward.py").read_text() == COMMUNITY_REWARD
    assert (run_dir / "user" / "hyperparameters.json").is_file()
    assert "e_greedy_value = 0.05" in proc.stderr  # read, not used: said so by name


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


# ----------------------------------------------------------------------------- self-contained runs
TINY = """\
deepracer:
  model_metadata: files/meta.json
  reward_function: files/reward.py
env:
  num_envs: 2
  kwargs:
    track: files/oval.npy
    max_episode_steps: 60
ppo:
  n_steps: 32
  batch_size: 32
  epochs: 1
total_timesteps: 64
logging:
  tensorboard: false
  progress_bar: false
"""
META = {"action_space": [{"steering_angle": s, "speed": 1.0, "index": i} for i, s in enumerate((-20, 0, 20))],
        "action_space_type": "discrete", "training_algorithm": "clipped_ppo", "version": "5"}


def tiny_project(folder):
    """A config whose files sit next to it, named by relative paths."""
    from envs.deepracer import builtin_track

    (folder / "files").mkdir(parents=True)
    (folder / "files" / "meta.json").write_text(json.dumps(META))
    (folder / "files" / "reward.py").write_text("def reward_function(params):\n    return 2.0\n")
    np.save(folder / "files" / "oval.npy", builtin_track("oval").waypoints_array)
    (folder / "tiny.yaml").write_text(TINY)
    return folder / "tiny.yaml"


def test_a_run_keeps_its_own_files_and_evaluates_after_the_originals_are_gone(tmp_path, monkeypatch, capsys):
    config = tiny_project(tmp_path / "project")
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # relative paths in the file are read from its folder, not from here
    assert main(["train", str(config), "--run-dir", str(run_dir)]) == 0
    saved = (run_dir / "config.yaml").read_text()
    for line in ("model_metadata: '{run_dir}/user/meta.json'", "reward_function: '{run_dir}/user/reward.py'",
                 "track: '{run_dir}/user/oval.npy'", "simtrace_path: '{run_dir}/simtrace/training-simtrace.csv'",
                 "training: false"):
        assert line in saved
    assert sorted(p.name for p in (run_dir / "user").iterdir()) == ["meta.json", "oval.npy", "reward.py"]
    shutil.rmtree(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mean_return"] == pytest.approx(2.0 * result["mean_length"])  # the run's reward file
    pngs = list((run_dir / "simtrace").glob("evaluation-*-trajectories.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert main(["deepracer", "replay", str(run_dir), "--reward", "progress_speed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["original_total"] == pytest.approx(2.0 * result["mean_length"])


def test_relative_paths_resolve_against_the_config_folder_and_overrides_against_the_shell(tmp_path, monkeypatch):
    config = tiny_project(tmp_path / "project")
    (tmp_path / "mine.py").write_text("def reward_function(params):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config)
    assert cfg.env.kwargs["track"] == str(tmp_path / "project" / "files" / "oval.npy")
    assert cfg.env.kwargs["model_metadata"] == str(tmp_path / "project" / "files" / "meta.json")
    assert cfg.env.id == "DeepRacer-v0" and cfg.env.eval_kwargs["training"] is False
    cfg = load_config(config, ["deepracer.reward_function=mine.py", "env.kwargs.track=oval"])
    assert cfg.env.kwargs["reward_function"] == str(tmp_path / "mine.py") and cfg.env.kwargs["track"] == "oval"


def test_user_files_are_copied_once_and_never_overwrite_a_different_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, value in ((a, 1.0), (b, 3.0)):
        folder.mkdir()
        (folder / "reward.py").write_text(f"def reward_function(params):\n    return {value}\n")
    cfg = load_config(data={"env": {"id": "DeepRacer-v0", "kwargs": {"reward_function": str(a / "reward.py")},
                                    "eval_kwargs": {"reward_function": str(b / "reward.py")}}})
    out = hooks.prepare_run(cfg, tmp_path / "run")
    assert out.env.kwargs["reward_function"] == "{run_dir}/user/reward.py"
    assert out.env.eval_kwargs["reward_function"] == "{run_dir}/user/reward-2.py"
    assert hooks.prepare_run(out, tmp_path / "run") is out  # already the run's own: nothing to copy
    with pytest.raises(ConfigError, match="env.kwargs.track: track file .*missing.npy"):
        hooks.prepare_run(load_config(data={"env": {"id": "DeepRacer-v0", "kwargs": {
            "track": str(tmp_path / "missing.npy")}}}), tmp_path / "run")


@pytest.mark.parametrize("extra, error", [
    ({"stack_size": 3}, "stack_size = 3 is not implemented here (allowed: 1)"),
    ({"exploration_type": "e-greedy"}, "exploration_type = 'e-greedy' is not implemented"),
    ({"term_cond_max_episodes": 0}, "term_cond_max_episodes = 0: must be a whole number >= 1"),
    ({"lr_decay": 0.1}, "unknown key 'lr_decay'"),
])
def test_hyperparameters_that_cannot_be_honoured_are_refused_by_name(tmp_path, extra, error):
    data = json.loads((ROOT / "tests" / "data" / "hyperparameters.json").read_text())
    (tmp_path / "hp.json").write_text(json.dumps({**data, **extra}))
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(data={"deepracer": {"hyperparameters": str(tmp_path / "hp.json")}})


def test_console_stop_conditions_are_read_from_the_runs_file(tmp_path, capsys):
    hp = ROOT / "tests" / "data" / "hyperparameters.json"
    cfg = load_config(data={"deepracer": {"hyperparameters": str(hp), "reward_timeout_s": 2.5}})
    assert "not used by PPO here" in capsys.readouterr().err
    assert cfg.env.kwargs["reward_timeout_s"] == 2.5 and cfg.ppo.discount_factor == 0.999
    conditions = hooks.stop_conditions(cfg.env.kwargs)
    assert conditions == {"term_cond_max_episodes": 1000.0, "term_cond_avg_score": 350.0}
    assert hooks.stop_reason(conditions, 999, [100.0] * 10) is None
    assert hooks.stop_reason(conditions, 1000, [100.0]).startswith("term_cond_max_episodes = 1000 reached")
    assert hooks.stop_reason(conditions, 10, [300.0, 400.0]).startswith("term_cond_avg_score = 350 reached")


def test_replay_of_a_malformed_csv_is_one_line(tmp_path, capsys):
    csv = tmp_path / "log.csv"
    csv.write_text("episode,steps\n1,2\n")
    assert main(["deepracer", "replay", str(csv), "--reward", "progress_speed", "--track", "oval"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf: simtrace ") and "missing columns" in err and err.count("\n") == 1


def test_console_stop_condition_ends_training_with_a_checkpoint(tmp_path, capsys):
    from rlhf.checkpoint import latest_checkpoint
    from rlhf.trainer import Trainer

    data = json.loads((ROOT / "tests" / "data" / "hyperparameters.json").read_text())
    (tmp_path / "hp.json").write_text(json.dumps({**data, "term_cond_max_episodes": 12, "term_cond_avg_score": 1e6}))
    cfg = load_config(data={"deepracer": {"hyperparameters": str(tmp_path / "hp.json")},
                            "env": {"num_envs": 4}, "total_timesteps": 1_000_000, "checkpoint": {"every": 0}})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.train()
    assert trainer.stop_reason.startswith("term_cond_max_episodes = 12 reached")
    assert trainer.collector.stats.total >= 12 and trainer.global_step < 1_000_000
    assert latest_checkpoint(tmp_path / "run").name == f"step_{trainer.global_step:012d}.pt"


HANGING_REWARD = '''
import os, time

def reward_function(params):
    if os.path.exists({flag!r}):
        while True:  # a reward function that never returns
            time.sleep(0.1)
    return 1.0
'''


def test_sigterm_during_a_hanging_reward_stops_with_a_checkpoint(tmp_path):
    import torch

    flag = tmp_path / "hang"
    (tmp_path / "reward.py").write_text(HANGING_REWARD.format(flag=str(flag)))
    run_dir = tmp_path / "run"
    code, err, seconds = sigterm_while_hanging(
        ["train", str(CONFIGS / "deepracer.yaml"), f"deepracer.reward_function={tmp_path / 'reward.py'}",
         "deepracer.reward_timeout_s=300", "checkpoint.every=512", "env.num_envs=4", "--run-dir", str(run_dir)],
        run_dir, flag, hang_s=2.0)
    assert code == 0 and seconds < 10, err
    assert "stopped; continue with --resume" in err and "Traceback" not in err
    newest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(newest, weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["policy"].values())


def test_replay_without_a_track_names_a_malformed_csv_first(tmp_path, capsys):
    csv = tmp_path / "log.csv"
    csv.write_bytes(b"\x00\x01garbage\n")
    reward = tmp_path / "r.py"
    reward.write_text("def reward_function(params):\n    return 1.0\n")
    assert main(["deepracer", "replay", str(csv), "--reward", str(reward)]) == 2
    err = capsys.readouterr().err
    assert "not a simtrace CSV" in err and "--track" not in err and err.count("\n") == 1
