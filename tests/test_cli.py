"""End to end through the `rlhf` command: learning, logging, errors, interrupt and resume."""
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def tiny_run(run_dir, *extra):
    """A 1024-step CartPole run with checkpoints at 512 and 1024 (a second or two)."""
    args = ["train", CARTPOLE, "total_timesteps=1024", "checkpoint.every=512", "logging.progress_bar=false",
            *extra, "--run-dir", str(run_dir)]
    assert main(args) == 0


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"rlhf {version('rlhf')}"


def test_a_second_train_on_a_busy_run_directory_fails_fast_and_the_first_finishes(tmp_path, capsys):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(rlhf_cmd("train", CARTPOLE, "total_timesteps=1000000", "checkpoint.every=256",
                                      "logging.progress_bar=false", "--run-dir", str(run_dir)),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = run_dir / ".rlhf.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.02)
    import rlhf.trainer  # noqa: F401  (timed below: the refusal, not the first import)

    t0 = time.perf_counter()
    code = main(["train", CARTPOLE, "total_timesteps=512", "--run-dir", str(run_dir)])
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"rlhf: run directory {str(run_dir)!r} is in use by process {first.pid} ")
    assert len(err.splitlines()) == 1
    while not list((run_dir / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
        time.sleep(0.02)  # training has begun: the interrupt below is a request to stop, not an abort
    first.send_signal(signal.SIGINT)  # the first stops at its next update, checkpoints and exits 0
    _, first_err = first.communicate(timeout=60)
    assert first.returncode == 0, first_err
    from rlhf.checkpoint import latest_valid

    path, state = latest_valid(run_dir, ("policy", "optimizer", "counters"), load=True)
    assert path.name == f"step_{state['counters']['global_step']:012d}.pt"
    assert not lock.exists()


def test_eval_and_resume_fall_back_past_an_unreadable_newest_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    newest = run_dir / "checkpoints" / "step_000000001024.pt"
    newest.write_bytes(newest.read_bytes()[:-100])
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--episodes", "1", "--json"]) == 0
    warning = ("rlhf: warning: skipping step_000000001024.pt (is truncated or not a checkpoint (RuntimeError)); "
               "using step_000000000512.pt")
    assert capsys.readouterr().err.strip() == warning
    assert main(["train", "--resume", str(run_dir), "logging.progress_bar=false"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(warning + "\n") and "finished at step 1024" in err
    assert (run_dir / "checkpoints" / "step_000000001024.pt.unreadable").is_file()
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"")
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlhf: no usable checkpoint in ") and "Traceback" not in err


def test_a_refused_resume_leaves_the_run_directory_byte_identical(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "env.num_envs=2", "total_timesteps=2048"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rlhf: --resume {str(run_dir)!r}: env.num_envs cannot change on a resumed run (the checkpoint "
                   "was trained with 8, got 2); start a new run with --run-dir instead")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_finished_run_resumed_without_more_steps_says_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_run(run_dir)
    files = sorted(run_dir.rglob("*"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert capsys.readouterr().err.strip() == (f"rlhf: {run_dir} already finished (total_timesteps = 1024): nothing "
                                               "to train; resume with a larger total_timesteps=... to train on")
    assert sorted(run_dir.rglob("*")) == files  # no empty event file, no new checkpoint


def test_run_files_have_one_mode_and_default_run_dirs_are_unique(tmp_path, monkeypatch):
    import os
    import stat

    from rlhf.cli import _default_run_dir

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        tiny_run(tmp_path / "run")
        a, b = _default_run_dir("configs/cartpole.yaml"), _default_run_dir("configs/cartpole.yaml")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o644}, modes
    assert a != b and a.parent == b.parent == Path("runs") and a.is_dir() and b.is_dir()
    assert a.name.startswith("cartpole-") and b.name in (a.name + "-2", *(n for n in [b.name] if n[:-2] != a.name))


def test_a_run_written_before_its_env_had_a_batched_version_resumes_under_auto(tmp_path, capsys):
    """A Pendulum run whose config says ``auto`` but whose checkpoint holds a SyncVectorEnv's state (as runs
    did before the batched Pendulum existed) resumes on the kind of env that wrote it."""
    run_dir = tmp_path / "old"
    assert main(["train", "configs/pendulum.yaml", "env.vectorization=sync", "total_timesteps=512", "ppo.n_steps=32",
                 "checkpoint.every=256", "logging.progress_bar=false", "--run-dir", str(run_dir)]) == 0
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("vectorization: sync", "vectorization: auto"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "total_timesteps=1024", "logging.progress_bar=false"]) == 0
    assert "finished at step 1024" in capsys.readouterr().err


_GC_PROBE = """
import gc, json, sys
import rlhf.cli as cli

seen = {}


class Probe:
    def __init__(self, cfg, run_dir, resume=False):
        seen["collector_on_while_building"] = gc.isenabled()
        self.global_step, self.stop_reason = cfg.total_timesteps, None

    def train(self):
        seen["collector_on_while_training"] = gc.isenabled()
        seen["frozen_while_training"] = gc.get_freeze_count()
        return {}


cli._trainer = lambda cfg: Probe
sys.argv = ["rlhf", "train", sys.argv[1], "--run-dir", sys.argv[2], *sys.argv[3:]]
try:
    cli.entry()
except SystemExit as exc:
    seen["code"] = exc.code
seen["collector_on_after"] = gc.isenabled()
print(json.dumps(seen))
"""


def test_the_command_imports_with_the_collector_off_and_trains_with_the_imports_frozen(tmp_path):
    """``entry`` (the console script, ``python -m rlhf``): the long part runs with the collector on and
    the import-time objects frozen; a command that stops early turns the collector back on."""
    def probe(*overrides):
        out = subprocess.run([sys.executable, "-c", _GC_PROBE, CARTPOLE, str(tmp_path / f"r{len(overrides)}"),
                              *overrides], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    seen = probe()
    assert seen["code"] == 0 and seen["collector_on_while_building"] is False
    assert seen["collector_on_while_training"] is True and seen["frozen_while_training"] > 50_000
    stopped = probe("ppo.batch_size=0")
    assert stopped["code"] == 2 and "collector_on_while_building" not in stopped and stopped["collector_on_after"]


def test_main_as_a_function_leaves_the_garbage_collector_alone(tmp_path, monkeypatch):
    import gc

    import rlhf.cli as cli

    class Probe:
        def __init__(self, cfg, run_dir, resume=False):
            self.global_step, self.stop_reason = cfg.total_timesteps, None

        def train(self):
            return {}

    monkeypatch.setattr(cli, "_trainer", lambda cfg: Probe)
    frozen = gc.get_freeze_count()
    assert main(["train", CARTPOLE, "--run-dir", str(tmp_path / "r")]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
