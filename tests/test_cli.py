"""End to end through the `rlhf` command: learning, logging, errors, interrupt and resume."""
import json
import shutil
import signal
import subprocess
import time

import pytest

from cli_helpers import ROOT, rlhf_cmd, scalar_tags, scalars
from rlhf.cli import main

SB3_TAGS = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "train/approx_kl", "train/clip_fraction",
            "train/entropy_loss", "train/policy_gradient_loss", "train/value_loss", "train/explained_variance",
            "train/learning_rate", "time/fps"}
CARTPOLE = str(ROOT / "configs" / "cartpole.yaml")


def run(*args, **kw):
    return subprocess.run(rlhf_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


def test_cartpole_learns_and_logs(tmp_path):
    run_dir = tmp_path / "run"
    train = run("train", CARTPOLE, "seed=0", "--run-dir", str(run_dir))
    assert train.returncode == 0, train.stderr
    assert SB3_TAGS <= scalar_tags(run_dir)
    assert (run_dir / "config.yaml").exists() and list((run_dir / "checkpoints").glob("step_*.pt"))
    ev = run("eval", str(run_dir), "--episodes", "10", "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["episodes"] == 10
    assert result["mean_return"] >= 475, result


@pytest.mark.parametrize("overrides, words", [
    (["ppo.discount_factor=1.5"], ["ppo.discount_factor"]),
    (["ppo.loss_type=l1"], ["ppo.loss_type", "'mse' or 'huber'"]),
    (["ppo.batch_size=0"], ["ppo.batch_size"]),
    (["ppo.epochz=3"], ["ppo.epochz", "did you mean 'epochs'"]),
    (["ppo.num_epochs=5", "ppo.batch_size=48"], ["ppo.batch_size = 48", "32, 64"]),
    (["env.id=NoSuchEnv-v0"], ["env.id", "NoSuchEnv-v0", "not a registered"]),
])
def test_bad_config_values_exit_with_one_line(overrides, words, capsys, tmp_path):
    code = main(["train", CARTPOLE, *overrides, "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_and_malformed_files_exit_cleanly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: {id: CartPole-v1\n")
    for path, word in ((tmp_path / "nope.yaml", "not found"), (bad, "not valid YAML")):
        proc = run("train", str(path))
        assert proc.returncode == 2
        assert word in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("config, steps, every", [
    (CARTPOLE, 24576, 4096),
    (str(ROOT / "configs" / "deepracer.yaml"), 60000, 10000),
], ids=["cartpole", "deepracer"])
def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path, config, steps, every):
    args = [config, "seed=1", f"total_timesteps={steps}", f"checkpoint.every={every}", "logging.progress_bar=false"]
    full = tmp_path / "full"
    assert run("train", *args, "--run-dir", str(full)).returncode == 0

    part = tmp_path / "part"
    proc = subprocess.Popen(rlhf_cmd("train", *args, "--run-dir", str(part)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((part / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped" in err, "the run finished before the interrupt; nothing was resumed"

    copies = [tmp_path / "resume_a", tmp_path / "resume_b"]
    for copy in copies:
        shutil.copytree(part, copy)
        resumed = run("train", "--resume", str(copy))
        assert resumed.returncode == 0, resumed.stderr
    last = [scalars(d, "train/value_loss")[-1] for d in (*copies, full)]
    assert last[0] == last[1] == last[2], last
    assert last[0][0] >= steps


def test_run_dir_is_not_reused_by_accident(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", CARTPOLE, "total_timesteps=512", "logging.progress_bar=false", "--run-dir", str(run_dir)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", CARTPOLE, "--resume", str(run_dir)]) == 2
    assert "pass only key=value overrides" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "total_timesteps=1024"]) == 0  # an override extends it
