"""Every way `rlhf train` can fail on the user's input or machine ends in one line and a non-zero exit."""
import errno
import subprocess

import pytest
import torch

import bad_envs  # noqa: F401  (registers BadEnv-v0)
from cli_helpers import ROOT, rlhf_cmd
from rlhf.checkpoint import list_checkpoints, load_checkpoint
from rlhf.cli import main, os_error_message

TINY = ("env:\n  id: bad_envs:BadEnv-v0\n  kwargs: {}\nppo: {n_steps: 16, batch_size: 16, epochs: 1}\n"
        "total_timesteps: 64\ncheckpoint: {every: 32}\nlogging: {progress_bar: false, tensorboard: false}\n")


def one_line(capsys) -> str:
    """The error: one `rlhf:` line (progress lines such as `learner: ...` may precede it), no traceback."""
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("rlhf:")]
    assert len(lines) == 1 and "Traceback" not in err and err.endswith(lines[0]), err
    return lines[0]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


@pytest.mark.parametrize("overrides, words", [
    (["seed=-1"], ["seed = -1", "greater than or equal to 0"]),
    (["seed=99999999999999999999"], ["seed = 99999999999999999999", "less than or equal to 2147483647"]),
    (["env.id=nomodule:X-v0"], ["env.id = 'nomodule:X-v0'", "importing module 'nomodule' raised ModuleNotFoundError"]),
    (["env.kwargs.raise_on_reset=true"], ["env 'BadEnv-v0': reset raised RuntimeError: the simulator is not running"]),
    (["ppo.learning_rate=lin_nan"], ["ppo.learning_rate = 'lin_nan'", "finite number"]),
    (["policy.log_std_init=nan"], ["policy.log_std_init = 'nan'", "finite number"]),
    (["env.num_envs=10000000"], ["env.num_envs = 10000000", "less than or equal to 65536"]),
])
def test_bad_values_and_envs_exit_2_with_one_line(config, tmp_path, capsys, overrides, words):
    assert main(["train", config, *overrides, "--run-dir", str(tmp_path / "run")]) == 2
    line = one_line(capsys)
    for word in words:
        assert word in line, line


def test_env_nan_exits_2_naming_it_and_keeps_a_finite_checkpoint(config, tmp_path, capsys):
    # BadEnv's 40th step is vector step 43 (11, 22 and 33 were autoresets): after the checkpoint at 32
    args = ["train", config, "env.kwargs.bad_step=40", "env.kwargs.field=reward", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    line = one_line(capsys)
    assert "rlhf: env 'BadEnv-v0': reward from env index 0 at rollout step 10 is nan" in line, line
    assert "training stopped after 32 env steps, newest checkpoint kept:" in line and "step_000000000032.pt" in line
    (kept,) = list_checkpoints(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in load_checkpoint(kept)["policy"].values())


def test_run_dir_that_is_a_file_or_under_a_file(config, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for run_dir in (blocker, blocker / "run"):
        assert main(["train", config, "--run-dir", str(run_dir)]) == 2
        line = one_line(capsys)
        assert "is a file or lies under a file, where a directory is needed" in line and str(blocker) in line, line
    assert blocker.read_text() == "not a directory"


def test_disk_full_at_a_checkpoint_keeps_the_earlier_ones(config, tmp_path, capsys, monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", config, "--run-dir", str(tmp_path / "run")]) == 2
    assert one_line(capsys) == ("rlhf: no space left on the device writing the run: free some space and --resume; "
                                "files already written (config, checkpoints) are intact")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000000000032.pt"]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_000000000032.pt"]  # no temp file


def test_os_error_messages_name_the_path():
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run")) == \
        "cannot write '/mnt/ro/run': the file system is read-only; choose another --run-dir"
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/root/x")) == \
        "cannot write '/root/x': permission denied; choose another --run-dir"
    assert os_error_message(OSError(errno.EIO, "Input/output error", "/d")) == "Input/output error: '/d'"


def test_non_utf8_and_duplicate_keys_in_a_subprocess(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("seed: 1  # caf\u00e9\n".encode("latin-1"))
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\nseed: 2\n")
    for path, words in ((latin, "is not UTF-8 text (byte 0xe9"), (dup, "duplicate key 'seed'")):
        proc = subprocess.run(rlhf_cmd("train", str(path)), capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
