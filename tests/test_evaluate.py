"""Evaluation users can trust: repeatable numbers, standard JSON, one-line refusals before any episode runs,
outputs that do not overwrite each other, --no-user-code, and evaluation during training."""
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import ROOT, scalars
from rlhf.checkpoint import latest_checkpoint, load_checkpoint
from rlhf.cli import main
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.evaluate import (FrameRecorder, check_video_path, eval_name, hide_returns, json_ready, load_policy,
                           name_outputs, run_episodes, stamped, without_user_code)

CARTPOLE = str(ROOT / "configs" / "cartpole.yaml")
TINY = ["total_timesteps=1024", "logging.progress_bar=false", "checkpoint.every=0"]
MARKER_REWARD = '''import pathlib
pathlib.Path({marker!r}).write_text("yes")

def reward_function(params):
    return 2.0
'''


def reject(constant):
    raise ValueError(f"not standard JSON: {constant}")


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out, parse_constant=reject)


@pytest.fixture(scope="module")
def cartpole_runs(tmp_path_factory):
    """The same tiny CartPole run trained with evaluation (sampled actions) every 512 steps and without it."""
    root = tmp_path_factory.mktemp("eval")
    assert main(["train", CARTPOLE, *TINY, "eval.every=512", "eval.episodes=2", "eval.deterministic=false",
                 "--run-dir", str(root / "with")]) == 0
    assert main(["train", CARTPOLE, *TINY, "--run-dir", str(root / "without")]) == 0
    return root / "with", root / "without"


# ----------------------------------------------------------------------------- rlhf eval

def test_eval_twice_prints_identical_standard_json(cartpole_runs, capsys):
    run = str(cartpole_runs[1])
    first, second = eval_json(capsys, run, "--episodes", "3"), eval_json(capsys, run, "--episodes", "3")
    assert first == second
    assert first["seed"] == 10_000 and first["deterministic"] is True and first["episodes"] == 3
    assert first["returns"] == [float(n) for n in first["lengths"]]  # CartPole pays 1 per step
    assert eval_json(capsys, run, "--episodes", "3", "--deterministic") == first  # the no-op alias


def test_stochastic_eval_is_seeded_and_leaves_torch_random_state_alone(cartpole_runs):
    cfg, policy, _ = load_policy(cartpole_runs[1])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run_episodes(policy, cfg, 3, deterministic=False, seed=7)
    b = run_episodes(policy, cfg, 3, deterministic=False, seed=7)
    c = run_episodes(policy, cfg, 3, deterministic=False, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert a["returns"] == b["returns"] and a["seed"] == 7 and a["deterministic"] is False
    assert c["returns"] != a["returns"]


@pytest.mark.parametrize("args, words", [
    (["--episodes", "0"], ["--episodes 0", "at least 1"]),
    (["--episodes", "-2"], ["--episodes -2", "at least 1"]),
    (["--video", "lap.mp4"], ["lap.mp4", ".gif"]),
    (["--stochastic", "--deterministic"], ["--stochastic and --deterministic"]),
    (["--seed", "-1"], ["--seed -1", "4294967295"]),
    (["--prompts", "3"], ["--prompts", "text runs"]),
])
def test_bad_eval_arguments_are_one_line_before_any_episode(cartpole_runs, capsys, monkeypatch, args, words):
    def no_episodes(*a, **k):
        raise AssertionError("an episode ran")

    monkeypatch.setattr("rlhf.evaluate.Collector.collect", no_episodes)
    assert main(["eval", str(cartpole_runs[1]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlhf: ")
    for word in words:
        assert word in err


def test_video_into_a_file_or_an_env_without_frames_is_refused(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_video_path(blocker / "lap.gif")
    with pytest.raises(ConfigError, match="is a folder; give a file name such as"):
        check_video_path(tmp_path)
    assert check_video_path(tmp_path / "new" / "lap.webp") == tmp_path / "new" / "lap.webp"
    import gymnasium as gym

    envs = FrameRecorder(gym.make_vec("CartPole-v1", num_envs=1), "CartPole-v1")  # no render_mode: no frames
    with pytest.raises(ConfigError, match="'CartPole-v1' renders no RGB frames"):
        envs.reset(seed=0)
    envs.close()


# ----------------------------------------------------------------------------- pure helpers

def test_json_ready_turns_non_finite_numbers_into_null_with_reasons():
    out = json_ready({"a": float("nan"), "b": [1.0, float("inf")], "c": None, "d": np.float32(1.5), "e": 2,
                      "null_reasons": {"c": "no laps"}})
    assert out == {"a": None, "b": [1.0, None], "c": None, "d": 1.5, "e": 2,
                   "null_reasons": {"c": "no laps", "a": "not a finite number (nan)", "b": "not a finite number (inf)"}}
    json.loads(json.dumps(out, allow_nan=False), parse_constant=reject)
    hidden = hide_returns({"mean_return": 3.0, "std_return": 0.0, "returns": [3.0], "mean_length": 3.0})
    assert hidden["mean_return"] is None and hidden["returns"] is None and hidden["mean_length"] == 3.0
    assert set(hidden["null_reasons"]) == {"mean_return", "std_return", "returns"}


def test_outputs_are_named_by_track_and_time_and_never_reuse_a_name(tmp_path):
    cfg = load_config(data={"env": {"id": "DeepRacer-v0"}})
    now = datetime(2025, 3, 4, 5, 6, 7)
    assert eval_name(cfg, {"track": "/data/tracks/reinvent_base.npy"}, now) == "reinvent_base-20250304-050607"
    assert eval_name(load_config(data={}), {}, now) == "CartPole-v1-20250304-050607"
    assert stamped("r/simtrace/evaluation-simtrace.csv", "oval-1") == "r/simtrace/evaluation-oval-1-simtrace.csv"
    assert stamped("trace.csv", "oval-1") == "trace-oval-1.csv"
    kwargs = {"track": "oval", "simtrace_path": str(tmp_path / "evaluation-simtrace.csv")}
    first, video = name_outputs(cfg, tmp_path, kwargs, video=True, now=now)
    assert first["simtrace_path"] == str(tmp_path / "evaluation-oval-20250304-050607-simtrace.csv")
    assert video == tmp_path / "videos" / "evaluation-oval-20250304-050607.gif"
    Path(first["simtrace_path"]).write_text("taken")
    second, video = name_outputs(cfg, tmp_path, kwargs, video=True, now=now)
    assert second["simtrace_path"] == str(tmp_path / "evaluation-oval-20250304-050607-2-simtrace.csv")
    assert video.name == "evaluation-oval-20250304-050607-2.gif" and second["track"] == "oval"


def test_without_user_code_drops_reward_files_only():
    cfg = load_config(data={"env": {"id": "DeepRacer-v0", "kwargs": {"reward_function": "mine.py", "track": "oval"},
                                    "eval_kwargs": {"reward_function": "progress_speed"}}})
    safe, dropped = without_user_code(cfg)
    assert dropped == ["env.kwargs.reward_function"]
    assert safe.env.kwargs == {"track": "oval"} and safe.env.eval_kwargs == {"reward_function": "progress_speed"}
    assert cfg.env.kwargs["reward_function"].endswith("mine.py")  # the original is untouched
    with pytest.raises(ConfigError, match="imports module 'mypkg'"):
        without_user_code(load_config(data={"env": {"id": "mypkg:Env-v0"}}))


# ----------------------------------------------------------------------------- --no-user-code on DeepRacer

def test_no_user_code_imports_no_reward_file_and_reports_lengths(tmp_path, capsys):
    marker, reward = tmp_path / "IMPORTED", tmp_path / "reward.py"
    reward.write_text(MARKER_REWARD.format(marker=str(marker)))
    run = tmp_path / "run"
    assert main(["train", str(ROOT / "configs" / "deepracer.yaml"), f"env.kwargs.reward_function={reward}",
                 "env.num_envs=2", "ppo.num_episodes_between_training=5", "total_timesteps=64",
                 "logging.progress_bar=false", "--run-dir", str(run)]) == 0
    marker.unlink()  # training imported it
    safe = eval_json(capsys, str(run), "--episodes", "2", "--no-user-code")
    assert not marker.exists()
    assert safe["mean_return"] is None and safe["returns"] is None
    assert "--no-user-code" in safe["null_reasons"]["mean_return"]
    assert safe["episodes"] == 2 and len(safe["lengths"]) == 2 and safe["mean_length"] > 0
    assert 0 <= safe["mean_progress"] <= 100 and safe["lap_completion_rate"] in (0.0, 0.5, 1.0)
    full = eval_json(capsys, str(run), "--episodes", "2")
    assert marker.exists() and full["returns"] == [2.0 * n for n in full["lengths"]]
    assert full["lengths"] == safe["lengths"] and full["mean_progress"] == safe["mean_progress"]
    traces = sorted((run / "simtrace").glob("evaluation-*-simtrace.csv"))
    assert len(traces) == 2 and all(t.name.startswith("evaluation-circuit-") for t in traces)


# ----------------------------------------------------------------------------- evaluation during training

def test_eval_during_training_logs_sb3_tags_and_keeps_the_best(cartpole_runs, capsys):
    with_eval, _ = cartpole_runs
    rewards = scalars(with_eval, "eval/mean_reward")
    assert [step for step, _ in rewards] == [512, 1024]
    assert [step for step, _ in scalars(with_eval, "eval/mean_ep_length")] == [512, 1024]
    best = load_checkpoint(with_eval / "best" / "best_model.pt")
    assert best["mean_reward"] == pytest.approx(max(v for _, v in rewards))
    again = eval_json(capsys, str(with_eval / "best" / "best_model.pt"), "--episodes", "2", "--stochastic")
    assert again["mean_return"] == pytest.approx(best["mean_reward"])  # same seed, same episodes, same weights


def test_eval_during_training_leaves_training_unchanged(cartpole_runs):
    with_eval, without = (load_checkpoint(latest_checkpoint(d))["policy"] for d in cartpole_runs)
    assert all(torch.equal(with_eval[k], without[k]) for k in without)


def test_eval_every_is_refused_for_text_runs():
    with pytest.raises(ConfigError, match="eval.every = 100: evaluation during training applies to gym runs"):
        load_config(data={"text": {}, "eval": {"every": 100}})
    with pytest.raises(ConfigError, match="eval.episodes"):
        load_config(data={"eval": {"episodes": 0}})
    assert math.isclose(load_config(data={}).eval.every, 0)
