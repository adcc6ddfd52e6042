"""Shared helpers for the end-to-end tests: paths, the `rlhf` command, torchrun, TensorBoard event reading."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACKS = ROOT.parent / "shared" / "tracks"
# two data-parallel ranks on gloo, started as users start them
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def rlhf_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf", *args]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def scalar_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def sigterm_while_hanging(args: list[str], run_dir: Path, flag: Path, hang_s: float = 1.5) -> tuple[int, str, float]:
    """Start ``rlhf *args``; once it has a checkpoint, create ``flag`` (its reward function then hangs),
    wait ``hang_s``, send SIGTERM. Returns (exit code, stderr, seconds from the signal to the exit)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(rlhf_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((run_dir / "checkpoints").glob("step_*.pt")) and time.time() < deadline:
            time.sleep(0.1)
        assert list((run_dir / "checkpoints").glob("step_*.pt")), "no checkpoint before the hang"
        flag.touch()
        time.sleep(hang_s)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        return proc.returncode, err, time.time() - sent
    finally:
        proc.kill()
