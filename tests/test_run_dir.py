"""One run per directory: the lock file, stale-lock take-over, unique default names."""
import json
import os
import socket
import subprocess
import sys
from datetime import datetime

import pytest

from rlhf.errors import ConfigError
from rlhf.run_dir import LOCK_NAME, RunDirLock, unique_run_dir


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, **owner):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(owner))


def test_lock_names_its_owner_and_refuses_a_second_holder(tmp_path):
    run = tmp_path / "run"
    with RunDirLock(run) as lock:
        owner = json.loads(lock.path.read_text())
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(ConfigError) as err:
            RunDirLock(run).acquire()
        message = str(err.value)
        assert "\n" not in message and f"is in use by process {os.getpid()} on {socket.gethostname()}" in message
        assert lock.path.exists()  # the refused one did not remove the holder's lock
    assert not (run / LOCK_NAME).exists()
    RunDirLock(run).acquire().release()  # free again


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError):
        with RunDirLock(tmp_path):
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    write_lock(tmp_path, pid=dead_pid(), host=socket.gethostname(), started="then")
    lock = RunDirLock(tmp_path).acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left beside it


@pytest.mark.parametrize("owner, words", [
    ({"pid": 1, "host": "elsewhere", "started": "t"}, "process 1 on elsewhere (since t)"),
    (None, "in use by another process"),
])
def test_locks_that_cannot_be_judged_are_refused_with_the_file_to_delete(tmp_path, owner, words):
    if owner is None:
        (tmp_path / LOCK_NAME).write_text("{not json")
    else:
        write_lock(tmp_path, **owner)
    with pytest.raises(ConfigError) as err:
        RunDirLock(tmp_path).acquire()
    assert words in str(err.value) and f"delete {tmp_path / LOCK_NAME}" in str(err.value)
    assert (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_lock_someone_else_took(tmp_path):
    lock = RunDirLock(tmp_path).acquire()
    write_lock(tmp_path, pid=os.getpid() + 1, host="x", started="t")
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "x"


def test_default_run_dirs_started_in_the_same_second_differ(tmp_path):
    now = datetime(2024, 1, 2, 3, 4, 5)
    made = [unique_run_dir(tmp_path / "runs", "cartpole", now) for _ in range(3)]
    assert [p.name for p in made] == ["cartpole-20240102-030405", "cartpole-20240102-030405-2",
                                      "cartpole-20240102-030405-3"]
    assert all(p.is_dir() for p in made)


def test_text_trainer_takes_the_same_lock(tmp_path):
    from rlhf.config import load_config
    from rlhf.text.pipeline import TextTrainer

    cfg = load_config(data={"text": {}, "stages": ["sft"]})
    with RunDirLock(tmp_path / "run"):
        with pytest.raises(ConfigError, match="is in use by process"):
            TextTrainer(cfg, tmp_path / "run")
    trainer = TextTrainer(cfg, tmp_path / "run")
    assert (tmp_path / "run" / LOCK_NAME).exists()
    trainer.close()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
