"""Shared helpers for the end-to-end tests: paths, the `rlhf` command, TensorBoard event reading."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACKS = ROOT.parent / "shared" / "tracks"


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
